//! Black-box end-to-end tests of the `persona-guard` binary (see `docs/behaviour.md`).
//!
//! Each test starts its own upstream and its own proxy process on free
//! loopback ports, so tests are independent and run in parallel. What goes
//! where, with the section of `docs/behaviour.md` each module holds to:

/// The harness: client, upstreams, the proxy process, Persona's signing, Redis.
mod harness;

/// The admin listener: state-changing calls from loopback or with the token only, 405 vs 404, dead-letter retries past `ttl` need `force` (§ Operations, § Delivery spool).
mod admin;
/// Persona's attempt headers: the attempt metrics, failures on the last attempt (§ Persona's delivery details).
mod attempts;
/// `check` and `sign`; configuration errors never quote the file (§ Configuration, § Command line).
mod cli;
/// Client limits: bodies against the memory budget as they arrive, one address's share, `min_body_rate` (§ Client limits).
mod client_limits;
/// Configuration from `PERSONA_GUARD_*` variables, with no file; `check --print`.
mod env;
/// Ambiguous framing is refused and nothing ambiguous is forwarded (§ Outcomes, Framing).
mod framing;
/// Hostile load and broken upstreams: the body budget, truncated and interim answers.
mod hostile;
/// SIGHUP, SIGTERM and SIGINT, with and without deliveries in flight (§ Configuration, Reload; § Operations).
mod lifecycle;
/// Connection limits and the whole-head deadline: one client cannot hold the proxy's connections (§ Client limits).
mod limits;
/// A secret written in the wrong place is never printed by `check`, `run` or a refused reload.
mod misplaced_secrets;
/// Logs, admin endpoints, metrics, and the timeouts on slow and idle clients.
mod oauth;
mod operations;
/// The operator kit in `deploy/`: every metric the alert rules and the Grafana dashboard name is exported.
mod operator_kit;
/// Paths under no route (§ Paths and the route decision).
mod passthrough;
/// Route matching and path normalisation (§ Paths and the route decision).
mod paths;
/// Reconciliation with Persona's Events API: report, backfill, 429, the command (§ Reconciliation).
mod reconcile;
/// The Redis replay store, shared by replicas; Redis down, slow or cutting connections (§ Replay memory).
mod redis;
/// Replays, concurrent deliveries and the in-flight claim on a webhook route.
mod replay;
/// The differential router suite: real frameworks behind the proxy.
mod routers;
/// Signature-only routes: `kind = "signature"`, `id_pointer` (§ Persona's delivery details).
mod signature_routes;
/// Signature verification and timestamps on a webhook route.
mod signatures;
/// The fault soak: nothing lost, nothing doubled while the app and Redis fail.
mod soak;
/// Source allow-lists: `allow_from` and `trusted_proxies` (§ Persona's delivery details).
mod sources;
/// The delivery spool: 202 once durable, redelivered once, dead letters, fallbacks (§ Delivery spool).
mod spool;
/// The randomized fault run: SIGTERM, kill -9, app failures and a slow disk while Persona delivers to a spooling route.
mod spool_chaos;
/// The embedded spool on a failing disk: unreadable entries skipped, kept and shown; delivered means gone; a failed flush leaves nothing behind (§ Delivery spool).
mod spool_faults;
/// The spool and the leases through a rolling deploy's SIGTERM, a second process on one spool, an earlier process's lease token, a paused replica.
mod spool_ops;
/// The delivery spool on Redis: a stream shared by replicas, takeover after kill -9, Redis down, dead letters, sealed entries.
mod spool_redis;
/// TLS on the listener, certificate reloads, a TLS upstream.
mod tls;
/// HTTP/2 over TLS: deliveries, header and idle timeouts on HTTP/2 connections.
mod tls_h2;
/// OpenTelemetry: spans exported over OTLP/HTTP, the trace context passed to the app.
mod tracing;
/// `trigger`: a signed test event sent to a running proxy.
mod trigger;
/// Outcomes on a webhook route (§ Outcomes).
mod webhook;
