//! persona-guard: a reverse proxy that admits only genuine, fresh, first-time
//! Persona webhook deliveries. See `README.md` and `docs/behaviour.md` for the contract.
//!
//! Module map: pure parts first ([`signature`], [`path`], [`event`],
//! [`framing`], [`replay`], [`config`], [`outcome`]), then the pingora phases
//! ([`proxy`]), the admin listener ([`admin`]), metrics ([`metrics`]) and the
//! process wiring ([`server`], with the listener's certificate in [`tls`] and
//! HTTP/2 head deadlines in [`h2_watch`]).

pub mod admin;
pub mod budget;
pub mod config;
pub mod echo;
pub mod event;
pub mod framing;
pub mod h2_watch;
pub mod metrics;
pub mod outcome;
pub mod path;
pub mod proxy;
pub mod replay;
pub mod server;
pub mod signature;
pub mod state;
pub mod tls;
