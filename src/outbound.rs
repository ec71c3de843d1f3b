//! persona-guard's own outgoing HTTP calls (the `trigger` command, the OTLP
//! trace exporter): one blocking client on `ureq`. The client to the app is
//! another matter ([`crate::upstream`], on pingora's connector and pool).
//!
//! Every status is an answer, no redirect is followed, no proxy is read from
//! the environment, no header is added beyond `Host` and the body's length,
//! and an answer's body is read up to [`MAX_ANSWER`] bytes (the rest is
//! dropped). Plain HTTP only: calls over HTTPS (with platform roots) need
//! `ureq`'s `rustls` feature and a TLS config here.

use std::io::Read;
use std::time::Duration;

use ureq::config::AutoHeaderValue;

pub use ureq::Error;

/// Most bytes of an answer's body kept.
pub const MAX_ANSWER: u64 = 1024 * 1024;

/// A blocking HTTP/1.1 client; connections are kept for the next call.
#[derive(Debug, Clone)]
pub struct Client(ureq::Agent);

impl Client {
    /// A client that waits `connect` for a connection and `io` for each read
    /// or write.
    pub fn new(connect: Duration, io: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(AutoHeaderValue::None)
            .accept(AutoHeaderValue::None)
            .accept_encoding(AutoHeaderValue::None)
            .timeout_connect(Some(connect))
            .timeout_per_read(Some(io))
            .timeout_per_write(Some(io))
            .build();
        Client(config.into())
    }

    /// Sends `request` and reads its answer.
    pub fn send(&self, request: http::Request<&[u8]>) -> Result<http::Response<Vec<u8>>, Error> {
        let (head, body) = self.0.run(request)?.into_parts();
        let mut kept = Vec::new();
        body.into_reader().take(MAX_ANSWER).read_to_end(&mut kept)?;
        Ok(http::Response::from_parts(head, kept))
    }
}

/// Whether `e` means no connection was made (as opposed to no answer on one).
pub fn not_connected(e: &Error) -> bool {
    use std::io::ErrorKind::{
        AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable,
    };
    match e {
        Error::HostNotFound | Error::ConnectionFailed | Error::BadUri(_) => true,
        Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
        ),
        _ => false,
    }
}
