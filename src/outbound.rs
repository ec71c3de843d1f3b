//! persona-guard's own outgoing HTTP calls (the `trigger` command, the OTLP
//! trace exporter, the JWKS of an OAuth route): one blocking client on
//! `ureq`. The client to the app is
//! another matter ([`crate::upstream`], on pingora's connector and pool).
//!
//! Every status is an answer, no redirect is followed, no proxy is read from
//! the environment, no header is added beyond `Host` and the body's length,
//! and an answer's body is read up to [`MAX_ANSWER`] bytes (the rest is
//! dropped). HTTPS is verified against the platform's trust roots (the
//! system's certificate store, through `rustls-platform-verifier`).

use std::io::Read;
use std::time::Duration;

use ureq::config::AutoHeaderValue;
use ureq::tls::{RootCerts, TlsConfig};

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
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::PlatformVerifier)
                    .build(),
            )
            .build();
        Client(config.into())
    }

    /// Sends `request` and reads its answer.
    pub fn send(&self, request: http::Request<&[u8]>) -> Result<http::Response<Vec<u8>>, Error> {
        self.send_up_to(request, MAX_ANSWER)
    }

    /// Sends `request` and reads its answer, keeping at most `max` bytes of
    /// its body (a page of Persona's events can pass [`MAX_ANSWER`]).
    pub fn send_up_to(
        &self,
        request: http::Request<&[u8]>,
        max: u64,
    ) -> Result<http::Response<Vec<u8>>, Error> {
        let (head, body) = self.0.run(request)?.into_parts();
        let mut kept = Vec::new();
        body.into_reader().take(max).read_to_end(&mut kept)?;
        Ok(http::Response::from_parts(head, kept))
    }
}

/// A `GET` of `url`: the body of a 2xx answer (at most [`MAX_ANSWER`]
/// bytes), else why not, in words that never quote the answer.
pub fn get(client: &Client, url: &str) -> Result<Vec<u8>, String> {
    let request = http::Request::get(url)
        .body(&[][..])
        .map_err(|_| "not a URL".to_string())?;
    match client.send(request) {
        Ok(answer) if answer.status().is_success() => Ok(answer.into_body()),
        Ok(answer) => Err(format!("answered {}", answer.status().as_u16())),
        Err(e) => Err(describe(&e)),
    }
}

/// An error in a few words, without the URL's query or anything received.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Timeout(_) => "timed out".into(),
        Error::HostNotFound => "host not found".into(),
        Error::ConnectionFailed => "connection failed".into(),
        Error::Io(io) => format!("I/O error ({:?})", io.kind()),
        Error::Tls(_) | Error::Rustls(_) => "TLS handshake or certificate refused".into(),
        _ => "request failed".into(),
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
