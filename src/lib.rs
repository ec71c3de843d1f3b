//! persona-guard: a reverse proxy that admits only genuine, fresh, first-time
//! Persona webhook deliveries. See `README.md` and the pages of `docs/`, with
//! `docs/behaviour.md` for the contract.
//!
//! Module map (no module imports one that imports it back; `scripts/shape.py`
//! checks that, and that no file is over 500 lines or function over 80):
//!
//! - pure, unit-tested beside the code: [`signature`] (parse and verify
//!   `Persona-Signature`), [`path`] (percent-decoding and every reading of a
//!   request target), [`framing`] (ambiguous HTTP/1 heads), [`event`] (id, type,
//!   created-at), [`attempts`] (Persona's attempt headers), [`outcome`] (every
//!   way a request ends: status, code, close, `Retry-After`), [`budget`] (the
//!   body-memory budget), [`source`] (CIDRs, Persona's addresses, the client
//!   address behind trusted proxies), [`clock`] (the wall clock, read once);
//! - [`config`]: the route file, raw (serde, never quoting the file), the
//!   `PERSONA_GUARD_*` environment laid over it, then compiled one section at
//!   a time; [`config::ProcessConfig`] names what only a restart changes;
//! - [`replay`]: the [`replay::ReplayStore`] trait, the memory and Redis
//!   stores, the [`replay::Lease`] a winning claim carries, and
//!   [`replay::kind`], the one place that names the stores;
//! - [`spool`]: the delivery spool's [`spool::SpoolStore`] trait, its records
//!   (sealed by [`spool::codec`]), the embedded directory spool and the Redis
//!   stream spool; [`redelivery`]: the worker that sends spooled entries to
//!   the app under their replay lease;
//! - [`state`]: what lives across reloads: the compiled [`state::Policy`]
//!   (each route with its peer and metric handles), the store, the counters;
//! - [`upstream`]: the HTTP/1 client to the app, on pingora's connector
//!   and pool, below both [`proxy`] and [`redelivery`];
//! - [`proxy`]: the pingora phases, the decision on a webhook route
//!   (`proxy/webhook.rs`) and the client side (`downstream.rs`);
//! - [`server`]: pingora's server, the client connection (the connection
//!   limits, TLS via [`tls`], HTTP/2 head deadlines via [`h2_watch`], HTTP/1
//!   ones via [`head_watch`], both passing the rest of the stream's traits
//!   through `wrapped_stream`), SIGHUP reload, readiness and the
//!   SIGTERM drain; [`admin`] and [`metrics`] for operators; [`telemetry`]
//!   the OpenTelemetry spans and trace-context propagation; [`echo`] the demo
//!   app and [`trigger`] the signed test event sender; [`outbound`] the one
//!   HTTP client of persona-guard's own calls (`trigger`, the OTLP exporter).

pub mod admin;
pub mod attempts;
pub mod auth;
pub mod budget;
pub mod clock;
pub mod config;
pub mod echo;
pub mod event;
pub mod framing;
pub mod h2_watch;
pub mod head_watch;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod path;
pub mod proxy;
pub mod reconcile;
pub mod reconciler;
pub mod redelivery;
pub mod replay;
pub mod server;
pub mod signature;
pub mod source;
pub mod spool;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod trigger;
pub mod upstream;
mod wrapped_stream;
