//! One redelivery attempt at one held entry (see [`super`]): bury it past
//! `max_age`, hold its replay mark, send it.

use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::v1::Connector;
use pingora::upstreams::peer::HttpPeer;

use super::{Held, Step, backoff};
use crate::replay::{self, Claim, Lease};
use crate::spool::{self, Handle, SpoolStore};
use crate::state::Shared;
use crate::upstream::{self, Wire};

/// One attempt at one entry: bury it if it is past `max_age`, adopt its
/// replay mark if not held yet, send it, and settle.
pub(super) async fn attempt(
    shared: &Arc<Shared>,
    handle: &Handle,
    connector: &Connector,
    held: &mut Held,
) -> Step {
    let policy = shared.policy.load_full();
    let cfg = &policy.config;
    let record = &held.entry.record;
    let route_path = record.route.as_str();
    let Some(compiled) = policy.routes.iter().find(|c| c.route.path == record.route) else {
        tracing::warn!(
            route = route_path,
            "spool: the entry's route is no longer configured; the entry is kept"
        );
        return Step::Deferred(cfg.policy.spool.max_backoff);
    };
    let route = &compiled.route;
    let store = handle.store.as_ref();
    let age = Duration::from_millis(spool::now_ms().saturating_sub(record.live_since_ms));
    if age > cfg.policy.spool.max_age {
        return bury(store, held, age, cfg.policy.spool.max_backoff).await;
    }
    let (inflight_ttl, max_backoff) =
        (cfg.policy.replay.inflight_ttl, cfg.policy.spool.max_backoff);
    if let Some(step) = hold(
        shared,
        store,
        held,
        &route.normalized,
        inflight_ttl,
        max_backoff,
    )
    .await
    {
        return step;
    }
    if !send(connector, &compiled.peer, &held.entry.record).await {
        return Step::Failed;
    }
    let ttl = cfg.policy.replay.ttl;
    delivered(shared, store, held, &route.normalized, ttl).await
}

/// Buries an entry that is past `max_age` (it was live for `age`) and
/// releases its replay mark.
async fn bury(
    store: &dyn SpoolStore,
    held: &mut Held,
    age: Duration,
    max_backoff: Duration,
) -> Step {
    let record = &held.entry.record;
    let route_path = record.route.as_str();
    match store.bury(route_path, &held.entry.id).await {
        Ok(()) => {
            if let Some(lease) = held.lease.take() {
                // Persona's manual retry from its dashboard may deliver it now.
                lease.release().await;
            }
            tracing::error!(
                route = route_path,
                event_id = record.event_id.as_deref(),
                event_type = record.event_type.as_deref(),
                age_seconds = age.as_secs(),
                "spool: delivery not taken by the app within max_age; kept as a dead letter (GET /spool, POST /spool/retry)"
            );
            Step::Dead
        }
        Err(e) => {
            tracing::warn!(route = route_path, error = %e, "spool: cannot bury an entry past max_age");
            Step::Deferred(max_backoff)
        }
    }
}

/// Makes sure the entry's replay mark is held: confirms the lease this
/// worker has, or adopts the mark (route key `normalized`). `None` when it
/// is held and the entry may be sent; otherwise what the attempt came to.
async fn hold(
    shared: &Arc<Shared>,
    store: &dyn SpoolStore,
    held: &mut Held,
    normalized: &[u8],
    inflight_ttl: Duration,
    max_backoff: Duration,
) -> Option<Step> {
    let replay_store = shared.store();
    let mut from = held.entry.record.token;
    if let Some(lease) = held.lease.take() {
        if lease.is_on(&replay_store) {
            return confirm(shared, held, lease, inflight_ttl, max_backoff).await;
        }
        // A reload replaced the replay store's client (a rotated Redis
        // password, say), and the old one may no longer be let in: the mark
        // moves to the new client by this lease's token.
        from = lease.detach();
    }
    let record = &held.entry.record;
    let route_path = record.route.as_str();
    match replay::adopt(
        &replay_store,
        normalized,
        &record.replay_id,
        from,
        inflight_ttl,
    )
    .await
    {
        Ok(Claim::Claimed(lease)) => {
            let shared = shared.clone();
            held.lease = Some(lease.on_error(move |op, e| shared.store_error(op, e)));
            None
        }
        Ok(Claim::Duplicate) => {
            if let Err(e) = store.remove(route_path, &held.entry.id).await {
                tracing::warn!(route = route_path, error = %e, "spool: cannot remove an entry found delivered");
            }
            Some(Step::Duplicate)
        }
        Ok(Claim::InFlight { retry_after }) => Some(Step::Deferred(retry_after)),
        Err(e) => {
            shared.store_error("claim", &e);
            Some(Step::Deferred(backoff(held.failures + 1, max_backoff)))
        }
    }
}

/// Confirms the lease the worker holds on the entry's mark (see [`hold`]).
async fn confirm(
    shared: &Arc<Shared>,
    held: &mut Held,
    lease: Lease,
    inflight_ttl: Duration,
    max_backoff: Duration,
) -> Option<Step> {
    match lease.confirm(inflight_ttl).await {
        Ok(true) => {
            held.lease = Some(lease);
            None
        }
        Ok(false) => {
            // Lost (expired while the store failed, or taken over): adopt
            // again next time, which says who holds it now.
            lease.detach();
            Some(Step::Deferred(Duration::from_secs(1)))
        }
        Err(e) => {
            held.lease = Some(lease);
            shared.store_error("renew", &e);
            Some(Step::Deferred(backoff(held.failures + 1, max_backoff)))
        }
    }
}

/// Sends the entry to `peer`; whether the app answered 2xx.
async fn send(connector: &Connector, peer: &HttpPeer, record: &spool::Record) -> bool {
    let wire = Wire::from_parts(&record.head, &record.body);
    match upstream::exchange(connector, peer, &wire).await {
        Ok(answer) => {
            let status = answer.head.status;
            answer.discard(connector, peer).await;
            status.is_success()
        }
        Err(_) => false,
    }
}

/// The app took the entry: commits its lease (for `ttl`, through the replay
/// store now, should a reload have replaced it during the send) and removes
/// the entry.
async fn delivered(
    shared: &Arc<Shared>,
    store: &dyn SpoolStore,
    held: &mut Held,
    normalized: &[u8],
    ttl: Duration,
) -> Step {
    let record = &held.entry.record;
    let route_path = record.route.as_str();
    if let Some(lease) = held.lease.take() {
        lease
            .commit_through(&shared.store(), normalized, &record.replay_id, ttl)
            .await;
    }
    if let Err(e) = store.remove(route_path, &held.entry.id).await {
        tracing::warn!(route = route_path, error = %e, "spool: delivered, but the entry could not be removed; it is not sent again (the replay store or the spool remembers it: see the spool's own log line for how long)");
    }
    Step::Delivered
}
