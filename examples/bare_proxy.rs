//! The floor of the foundation: pingora's few-line reverse proxy, on the same
//! pingora 0.9.1 and features as persona-guard, forwarding every request to one
//! upstream and doing nothing else (no verification, no route decision, no
//! metrics). The load benchmarks run it beside persona-guard and nginx, so
//! persona-guard's cost can be read against what pingora itself costs.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:8081 127.0.0.1:9000
//! ```
//!
//! Arguments: the listen address and the upstream address (plain HTTP). One
//! worker thread and pingora's default pool of 128 upstream connections, as
//! persona-guard runs in the benchmarks. SIGINT or SIGTERM stop it at once.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR (e.g. 127.0.0.1:8081 127.0.0.1:9000)"
        );
        std::process::exit(2);
    };
    let upstream: std::net::SocketAddr = upstream.parse().expect("UPSTREAM_ADDR: ip:port");
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let peer = HttpPeer::new(upstream, false, String::new());
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
