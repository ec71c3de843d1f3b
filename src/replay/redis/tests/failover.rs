//! A failover behind one address: the connection the store holds reaches
//! the demoted primary, now a read-only replica, while a new connection to
//! the same address reaches the new primary. A TCP forwarder here plays the
//! address (a Kubernetes Service, a Sentinel-managed DNS name).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use super::*;

/// Accepts on a loopback port and pipes each connection to the server port
/// `target` holds when the connection is accepted.
struct Forwarder {
    port: u16,
    target: Arc<AtomicU16>,
}

impl Forwarder {
    fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let to = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Forwarder { port, target }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn a_demoted_primary_is_left_for_the_new_one_behind_the_same_address() {
    let (a, b) = (Server::start(), Server::start());
    let address = Forwarder::start(a.1);
    let store = RedisStore::open(&address.url(), None, "t:", Duration::from_secs(2)).unwrap();
    let rt = rt();
    let long = Duration::from_secs(60);
    let route = b"/r".as_slice();
    claimed(
        rt.block_on(store.claim(&store.key(route, "e1"), 1, long))
            .unwrap(),
    );

    // The failover: B is the primary now, A replicates it (and so refuses
    // writes); the address sends new connections to B.
    assert!(
        a.command(&["REPLICAOF", "127.0.0.1", &b.1.to_string()])
            .starts_with("+OK")
    );
    let refused = a.command(&["SET", "probe", "1"]);
    assert!(refused.starts_with("-READONLY"), "{refused}");
    address.target.store(b.1, Ordering::SeqCst);

    // The store's connection still reaches A; the first write's READONLY makes
    // it reconnect, and the write is tried once more, on B.
    let t2 = claimed(
        rt.block_on(store.claim(&store.key(route, "e2"), 2, long))
            .unwrap(),
    );
    assert_eq!(t2, 2);
    let mark = b.command(&["GET", "t:/r:e2"]);
    assert!(
        mark.contains("inflight:"),
        "the claim landed on the new primary: {mark}"
    );
    rt.block_on(store.commit(&store.key(route, "e2"), long))
        .unwrap();
    assert_eq!(
        rt.block_on(store.claim(&store.key(route, "e2"), 3, long))
            .unwrap(),
        Claim::Duplicate
    );
}
