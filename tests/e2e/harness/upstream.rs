//! The application behind the proxy: a recording upstream (hyper) whose
//! status, body, delay and hold the test sets, and a scripted upstream that
//! answers each request with the next raw bytes of a list.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;

use super::{W, poll, wait_for, wait_until};

/// What the recording upstream answers unless told otherwise.
pub const DEFAULT_UPSTREAM_BODY: &[u8] = br#"{"received":true,"by":"e2e-upstream"}"#;

/// What the scripted upstream was sent: each request's head and body.
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// One answer of a [`ScriptedUpstream`].
pub enum Reply {
    /// These bytes; a `Connection: close` in them closes the socket after.
    Raw(Vec<u8>),
    /// These bytes, then the socket is closed: a response cut short.
    Cut(Vec<u8>),
    /// `count` interim heads, one every `every`, then these bytes.
    Interim {
        head: Vec<u8>,
        every: Duration,
        count: usize,
        then: Vec<u8>,
    },
}

/// An upstream that answers each request with the next of a list of raw
/// responses, on keep-alive connections, and records what it was sent.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    seen: Seen,
}

impl ScriptedUpstream {
    pub fn start(responses: Vec<Vec<u8>>) -> ScriptedUpstream {
        Self::start_with(responses.into_iter().map(Reply::Raw).collect())
    }

    pub fn start_with(replies: Vec<Reply>) -> ScriptedUpstream {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let script = Arc::new(Mutex::new(replies.into_iter()));
        let seen_t = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(s) = conn else { return };
                let (seen, script) = (seen_t.clone(), script.clone());
                thread::spawn(move || Self::serve(s, &seen, &script));
            }
        });
        ScriptedUpstream { addr, seen }
    }

    fn serve(mut s: TcpStream, seen: &Seen, script: &Mutex<std::vec::IntoIter<Reply>>) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 65536];
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let body = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            seen.lock().unwrap().push((head, body));
            let Some(reply) = script.lock().unwrap().next() else {
                return;
            };
            let last = match reply {
                Reply::Raw(bytes) => bytes,
                Reply::Cut(bytes) => {
                    let _ = s.write_all(&bytes);
                    return;
                }
                Reply::Interim {
                    head,
                    every,
                    count,
                    then,
                } => {
                    for _ in 0..count {
                        if s.write_all(&head).is_err() {
                            return;
                        }
                        // The app's pace between interim answers, as scripted.
                        thread::sleep(every);
                    }
                    then
                }
            };
            if s.write_all(&last).is_err() {
                return;
            }
            if String::from_utf8_lossy(&last)
                .to_ascii_lowercase()
                .contains("connection: close")
            {
                return;
            }
        }
    }

    pub fn seen(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    /// Lower-case names, in received order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status this app answered (or was about to answer) with.
    pub status: u16,
}

impl Recorded {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    /// Headers whose name, with `_` read as `-`, matches `name` case-insensitively.
    pub fn header_variants(&self, name: &str) -> Vec<(String, String)> {
        let want = name.to_ascii_lowercase().replace('_', "-");
        self.headers
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().replace('_', "-") == want)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Behaviour {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

struct UpstreamState {
    behaviour: Mutex<Behaviour>,
    /// While true, requests are recorded, then held unanswered.
    hold: tokio::sync::watch::Sender<bool>,
    requests: Mutex<Vec<Recorded>>,
    heads: AtomicUsize,
    /// Each connection's peer and the task serving it.
    conns: Mutex<Vec<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

/// A recording HTTP/1.1 application on 127.0.0.1, answering every request
/// with the status and body it was given (200 and [`DEFAULT_UPSTREAM_BODY`]).
pub struct Upstream {
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
    state: Arc<UpstreamState>,
    acceptor: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let state = Arc::new(UpstreamState {
            behaviour: Mutex::new(Behaviour {
                status: 200,
                body: DEFAULT_UPSTREAM_BODY.to_vec(),
                delay: Duration::ZERO,
            }),
            hold: tokio::sync::watch::channel(false).0,
            requests: Mutex::new(Vec::new()),
            heads: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let mut up = Upstream {
            addr: listener.local_addr().unwrap(),
            rt: Some(rt),
            state,
            acceptor: None,
        };
        up.serve(listener);
        up
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().unwrap()
    }

    fn serve(&mut self, listener: StdTcpListener) {
        listener.set_nonblocking(true).unwrap();
        let state = self.state.clone();
        let _guard = self.rt().enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let handle = self.rt().spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        // Out of descriptors, or a connection reset before it
                        // was taken: back off a little and keep listening.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let conn = tokio::spawn(Self::connection(sock, state.clone()));
                let mut conns = state.conns.lock().unwrap();
                conns.retain(|(_, c)| !c.is_finished());
                conns.push((peer, conn));
            }
        });
        self.acceptor = Some(handle);
    }

    async fn connection(sock: tokio::net::TcpStream, st: Arc<UpstreamState>) {
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let st = st.clone();
            async move {
                st.heads.fetch_add(1, Ordering::SeqCst);
                let method = req.method().to_string();
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| req.uri().to_string());
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().to_vec(),
                    Err(_) => b"<<body read error>>".to_vec(),
                };
                // The answer is decided when the request is taken, held or not.
                let b = st.behaviour.lock().unwrap().clone();
                st.requests.lock().unwrap().push(Recorded {
                    method,
                    target,
                    headers,
                    body,
                    status: b.status,
                });
                let _ = st.hold.subscribe().wait_for(|held| !held).await;
                if !b.delay.is_zero() {
                    // The app's own slowness, as the test asked.
                    tokio::time::sleep(b.delay).await;
                }
                let resp = hyper::Response::builder()
                    .status(b.status)
                    .header("content-type", "application/json")
                    .header("x-e2e-upstream", "yes")
                    .body(Full::new(Bytes::from(b.body)))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
            .await;
    }

    pub fn set_status(&self, status: u16) {
        self.state.behaviour.lock().unwrap().status = status;
    }

    pub fn set_body(&self, body: &[u8]) {
        self.state.behaviour.lock().unwrap().body = body.to_vec();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.behaviour.lock().unwrap().delay = delay;
    }

    /// From now on, requests are recorded and then held unanswered until
    /// [`Upstream::release`]: an app that is still working on them. A held
    /// request gets the status and body set when it arrived.
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    /// Lets every held request (and every later one) be answered.
    pub fn release(&self) {
        self.state.hold.send_replace(false);
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        let rt = self.rt.as_ref().unwrap();
        if let Some(a) = self.acceptor.take() {
            a.abort();
            let _ = rt.block_on(a);
        }
        let conns: Vec<_> = std::mem::take(&mut *self.state.conns.lock().unwrap());
        for (_, c) in conns {
            c.abort();
            let _ = rt.block_on(c);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.acceptor.is_none(), "restart() without stop()");
        let addr = self.addr;
        // std's bind sets SO_REUSEADDR on Unix; the port may still be in
        // use for a moment after stop().
        let listener = poll(W, || StdTcpListener::bind(addr).ok())
            .unwrap_or_else(|| panic!("cannot bind the upstream's port {addr} again"));
        self.serve(listener);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `X-Persona-Event-Id` of every request this app answered 2xx, in
    /// the order they came: an event taken twice appears twice.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .filter_map(|r| r.header("x-persona-event-id").map(str::to_string))
            .collect()
    }

    /// The app received exactly one request: event `id`, with `body` as sent.
    pub fn assert_saw_once(&self, id: &str, body: &[u8]) {
        let recs = self.requests();
        assert_eq!(recs.len(), 1, "forwarded other than once: {recs:?}");
        assert_eq!(recs[0].header(super::persona::TRUSTED_ID), Some(id));
        assert_eq!(recs[0].body, body);
    }

    /// Connections the app holds open right now.
    pub fn open_connections(&self) -> usize {
        let conns = self.state.conns.lock().unwrap();
        conns.iter().filter(|(_, c)| !c.is_finished()).count()
    }

    /// The peers of the connections open now.
    pub fn open_peers(&self) -> HashSet<SocketAddr> {
        let conns = self.state.conns.lock().unwrap();
        conns
            .iter()
            .filter(|(_, c)| !c.is_finished())
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Waits until none of `peers`' connections is open: given a killed
    /// proxy's connections (`harness::connections_to`, taken before the
    /// kill), the app has read everything it wrote to them (what sat in the
    /// socket buffers included) and answered or dropped it.
    pub fn wait_closed(&self, peers: &HashSet<SocketAddr>) {
        wait_for(
            "the app's connections from the killed proxy to close",
            W,
            || self.open_peers().is_disjoint(peers),
        );
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Request heads seen (even when the body was never completed).
    pub fn heads(&self) -> usize {
        self.state.heads.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` complete requests were recorded.
    pub fn wait_for_requests(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        if !wait_until(deadline, || self.count() >= n) {
            panic!(
                "upstream expected {n} request(s) within {deadline:?}, got {}: {:?}",
                self.count(),
                self.requests()
            );
        }
        self.requests()
    }

    /// Watches for `window` and fails at the first request head the upstream
    /// sees. For refusals the proxy does not count in its metrics, where no
    /// event says "this request is over": the window is the check.
    pub fn assert_nothing_seen_for(&self, window: Duration, ctx: &str) {
        if wait_until(window, || self.heads() > 0) {
            self.assert_nothing_seen(ctx);
        }
    }

    pub fn assert_nothing_seen(&self, ctx: &str) {
        assert_eq!(
            self.heads(),
            0,
            "{ctx}: upstream should have seen nothing, saw {:?}",
            self.requests()
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.release();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
