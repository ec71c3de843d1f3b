//! What lives for the whole process, across configuration reloads: the
//! running [`Policy`] (the configuration compiled for the request path), the
//! replay store, metrics, the body-memory budget, the upstream connector, and
//! the counters that readiness and shutdown read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use pingora::connectors::http::v1::Connector;
use pingora::upstreams::peer::HttpPeer;
use prometheus::{Histogram, IntCounter};
use tokio::sync::Notify;

use crate::attempts;
use crate::auth::keyring::{Keyring, OutboundFetch};
use crate::budget::BodyBudget;
use crate::config::{Config, Route};
use crate::metrics::{self, Metrics};
use crate::outcome::Outcome;
use crate::replay::{ReplayStore, StoreError};
use crate::upstream::peer_for;

/// The configuration as the request path uses it: compiled once per load, so
/// a request builds no peer and looks up no metric series by name.
pub struct Policy {
    pub config: Config,
    /// One per `config.routes`, in the same order (`config.routes` is what
    /// requests are matched on; everything after the match reads these).
    pub routes: Vec<CompiledRoute>,
    /// Where requests under no route go.
    pub passthrough: HttpPeer,
    /// `persona_guard_requests_total{route="(none)"}` by outcome.
    pub no_route: OutcomeCounters,
}

/// A route, with its upstream peer and metric handles.
pub struct CompiledRoute {
    pub route: Route,
    pub peer: HttpPeer,
    pub outcomes: OutcomeCounters,
    /// `persona_guard_verify_duration_seconds{route}`.
    pub verify: Histogram,
    /// `persona_guard_secret_matches_total{route, secret}` by secret position.
    pub secret_matches: Vec<IntCounter>,
    /// `persona_guard_upstream_duration_seconds{route, class}` by status class.
    pub upstream: [Histogram; 5],
    /// `persona_guard_delivery_attempts_total{route, attempt}` by
    /// [`attempts::label_index`].
    pub attempts: [IntCounter; attempts::LABELS.len()],
    /// `persona_guard_final_attempt_failures_total{route}`.
    pub final_failures: IntCounter,
    /// What the route requires beside the signature, with its key set.
    pub auth: crate::auth::RouteAuth,
}

/// `persona_guard_requests_total{route, outcome}` for one route, by outcome.
pub struct OutcomeCounters(Vec<IntCounter>);

impl OutcomeCounters {
    fn new(metrics: &Metrics, route: &str) -> Self {
        OutcomeCounters(
            Outcome::all()
                .map(|o| metrics.requests.with_label_values(&[route, o.code()]))
                .collect(),
        )
    }

    pub fn inc(&self, outcome: Outcome) {
        self.0[outcome.index()].inc();
    }
}

impl Policy {
    /// Compiles `config` and pre-creates every series its routes report.
    /// Compiles `config`; an OAuth route's key set comes from `keyring`
    /// (the running one when its rule is unchanged).
    pub fn compile(config: Config, metrics: &Metrics, keyring: &Keyring) -> Policy {
        for r in &config.policy.routes {
            metrics.register_route(&r.path);
            if r.spool != crate::config::SpoolMode::Off {
                metrics.register_spool_route(&r.path);
            }
            if r.oauth.is_some() {
                metrics.auth.register_route(&r.path);
            }
            if r.reconcile.is_some() {
                metrics.reconcile.register_route(&r.path);
            }
        }
        metrics.register_no_route();
        let routes: Vec<CompiledRoute> = config
            .policy
            .routes
            .iter()
            .map(|r| CompiledRoute::new(r, metrics, keyring))
            .collect();
        let used: Vec<_> = routes
            .iter()
            .filter_map(|r| r.auth.oauth.as_ref().map(|(_, set)| set.clone()))
            .collect();
        keyring.keep_only(&used);
        Policy {
            passthrough: peer_for(&config.policy.upstream),
            no_route: OutcomeCounters::new(metrics, metrics::NO_ROUTE),
            routes,
            config,
        }
    }
}

impl CompiledRoute {
    fn new(route: &Route, metrics: &Metrics, keyring: &Keyring) -> Self {
        let path = route.path.as_str();
        let auth = crate::auth::RouteAuth {
            headers: route.require_headers.clone(),
            oauth: route
                .oauth
                .as_ref()
                .map(|rule| (rule.clone(), keyring.set_for(path, rule))),
        };
        let class = |c: &str| metrics.upstream_duration.with_label_values(&[path, c]);
        CompiledRoute {
            route: route.clone(),
            peer: peer_for(&route.upstream),
            outcomes: OutcomeCounters::new(metrics, path),
            verify: metrics.verify_duration.with_label_values(&[path]),
            secret_matches: (0..route.secrets.len())
                .map(|i| {
                    metrics
                        .secret_matches
                        .with_label_values(&[path, &metrics::index_label(i)])
                })
                .collect(),
            upstream: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            attempts: attempts::LABELS
                .map(|a| metrics.delivery_attempts.with_label_values(&[path, a])),
            final_failures: metrics.final_attempt_failures.with_label_values(&[path]),
            auth,
        }
    }

    /// The upstream-duration histogram of a status's class.
    pub fn upstream_duration(&self, status: u16) -> &Histogram {
        &self.upstream[usize::from(status.clamp(100, 599) / 100 - 1)]
    }
}

/// Process state shared by the proxy, the admin listener and the signal handlers.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    /// The replay store; a reload swaps in a new Redis client when its
    /// settings change (leases of the old one settle on the old one).
    store: ArcSwap<Arc<dyn ReplayStore>>,
    pub metrics: Metrics,
    /// The delivery spool, when the process started with one.
    pub spool: std::sync::OnceLock<Arc<crate::spool::Handle>>,
    /// OpenTelemetry export (`[tracing]`), when the process started with it.
    pub telemetry: std::sync::OnceLock<crate::telemetry::Telemetry>,
    /// Request body bytes held at once (`[server] max_buffered`, and
    /// `max_buffered_per_client` for one client address).
    pub budget: Arc<BodyBudget>,
    pub connector: Connector,
    /// Requests being handled now (for the SIGTERM drain).
    pub inflight: AtomicUsize,
    /// Woken when the last request in flight ends.
    idle: Notify,
    /// Latched once the public listener accepts connections (readiness).
    pub started: AtomicBool,
    /// Set on SIGTERM: readiness turns 503.
    pub draining: AtomicBool,
    /// Set while the process waits for the spool directory's lock (another
    /// process uses the spool): readiness is 503 and routes answer as if they
    /// had no spool until the lock is held and [`Shared::spool`] is set.
    pub spool_waiting: AtomicBool,
    /// The key sets of OAuth routes, kept across reloads.
    pub keyring: Keyring,
    /// Each reconciling route's last run (`GET /reconcile`).
    pub reconcile: crate::reconcile::Status,
}

/// The keyring: JWKS fetched through the project's HTTP client (5 s to
/// connect, 10 s per read), each fetch counted.
fn keyring(metrics: &Metrics) -> Keyring {
    let counter = metrics.auth.jwks_refreshes.clone();
    Keyring::new(
        Arc::new(OutboundFetch(crate::outbound::Client::new(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10),
        ))),
        Arc::new(move |route, result| {
            counter.with_label_values(&[route, result.label()]).inc();
        }),
    )
}

impl Shared {
    pub fn new(
        config: Config,
        store: Arc<dyn ReplayStore>,
        metrics: Metrics,
        connector: Connector,
    ) -> Self {
        let keyring = keyring(&metrics);
        let policy = Policy::compile(config, &metrics, &keyring);
        Shared {
            keyring,
            budget: BodyBudget::new(
                policy.config.policy.max_buffered,
                policy.config.policy.max_buffered_per_client,
            ),
            policy: ArcSwap::from_pointee(policy),
            store: ArcSwap::from_pointee(store),
            metrics,
            spool: std::sync::OnceLock::new(),
            telemetry: std::sync::OnceLock::new(),
            connector,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            spool_waiting: AtomicBool::new(false),
            reconcile: crate::reconcile::Status::default(),
        }
    }

    /// The replay store now.
    pub fn store(&self) -> Arc<dyn ReplayStore> {
        self.store.load().as_ref().clone()
    }

    /// Puts `store` in place of the running one and returns that one.
    pub fn swap_store(&self, store: Arc<dyn ReplayStore>) -> Arc<dyn ReplayStore> {
        self.store.swap(Arc::new(store)).as_ref().clone()
    }

    /// Returns once no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Counts and logs a failed replay store operation.
    pub fn store_error(&self, op: &'static str, e: &StoreError) {
        self.metrics
            .replay_store_errors
            .with_label_values(&[op])
            .inc();
        tracing::warn!(op, error = %e, "replay store error");
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(shared.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
