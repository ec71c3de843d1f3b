//! Backfill: a missing event delivered like a verified first-time delivery.
//! The claim decides (so two replicas on one Redis, or a Persona retry at the
//! same moment, never deliver it twice); the app's 2xx commits it, anything
//! else releases it (or spools it when the route spools, for the redelivery
//! worker). The request is `POST <route path>` with the body
//! `{"data": <the event as listed>}`, the trusted headers and
//! `X-Persona-Guard-Source: reconciled`.

use std::sync::Arc;

use pingora::connectors::http::v1::Connector;

use crate::config::SpoolMode;
use crate::event::{self, Facts};
use crate::reconcile::{Missing, SOURCE_HEADER, SOURCE_RECONCILED};
use crate::replay::{self, Claim, Lease};
use crate::spool;
use crate::state::{CompiledRoute, Policy, Shared};
use crate::upstream::{self, Wire};

/// The body the app receives: `{"data": <event>}`, as a webhook delivery's.
pub fn body(m: &Missing) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "data": m.event.object })).unwrap_or_default()
}

/// The request head: `POST <path>`, `Host` (the route's upstream),
/// `Content-Type`, the trusted headers, the source header, the length.
pub fn head(policy: &Policy, compiled: &CompiledRoute, facts: &Facts, len: usize) -> Vec<u8> {
    use std::fmt::Write;
    let route = &compiled.route;
    let mut h = String::with_capacity(256);
    let _ = write!(
        h,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n",
        route.path, route.upstream.authority
    );
    for (fact, name) in &policy.config.policy.headers {
        if let Some(v) = facts.get(*fact) {
            let _ = write!(h, "{name}: {v}\r\n");
        }
    }
    let _ = write!(
        h,
        "{SOURCE_HEADER}: {SOURCE_RECONCILED}\r\nContent-Length: {len}\r\n\r\n"
    );
    h.into_bytes()
}

/// Delivers one missing event; what it came to (a
/// `persona_guard_reconcile_backfilled_total` result).
pub async fn deliver(
    shared: &Arc<Shared>,
    policy: &Policy,
    compiled: &CompiledRoute,
    connector: &Connector,
    m: &Missing,
) -> &'static str {
    let route = &compiled.route;
    let body = body(m);
    let Ok(ev) = event::parse(&body) else {
        return "failed";
    };
    let facts = Facts::of(&ev);
    // The facts become header lines written here: a value a header cannot
    // carry (a line break from a damaged or hostile answer) is never sent.
    if [&facts.id, &facts.event_type, &facts.created_at]
        .into_iter()
        .flatten()
        .any(|v| !header_safe(v))
    {
        tracing::warn!(
            route = route.path.as_str(),
            "reconcile: a listed event's id, type or created-at cannot be a header value; not backfilled"
        );
        return "failed";
    }
    let replay = &policy.config.policy.replay;
    let store = shared.store();
    let lease =
        match replay::claim(&store, &route.normalized, &m.event.id, replay.inflight_ttl).await {
            Ok(Claim::Claimed(lease)) => {
                let s = shared.clone();
                lease.on_error(move |op, e| s.store_error(op, e))
            }
            Ok(Claim::Duplicate) => return "duplicate",
            Ok(Claim::InFlight { .. }) => return "in_flight",
            Err(e) => {
                shared.store_error("claim", &e);
                return "store_error";
            }
        };
    let head = head(policy, compiled, &facts, body.len());
    let spool = shared.spool.get().filter(|_| route.spool != SpoolMode::Off);
    if route.spool == SpoolMode::Always
        && let Some(spool) = spool
    {
        return keep(spool, route, &facts, &m.event.id, head, body, lease).await;
    }
    let wire = Wire::from_parts(&head, &body);
    let status = match upstream::exchange(connector, &compiled.peer, &wire).await {
        Ok(answer) => {
            let status = answer.head.status;
            answer.discard(connector, &compiled.peer).await;
            Some(status)
        }
        Err(_) => None,
    };
    match status {
        Some(s) if s.is_success() => {
            lease.commit(replay.ttl).await;
            "delivered"
        }
        _ => match spool {
            Some(spool) if route.spool == SpoolMode::OnFailure => {
                keep(spool, route, &facts, &m.event.id, head, body, lease).await
            }
            _ => {
                lease.release().await;
                "failed"
            }
        },
    }
}

/// Whether `v` can be written into a header line as it is: visible ASCII
/// and spaces, nothing that could end the line.
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Keeps the delivery in the spool under the lease's mark (detached once
/// durable, as the request path does); released when it cannot be kept.
async fn keep(
    spool: &Arc<spool::Handle>,
    route: &crate::config::Route,
    facts: &Facts,
    id: &str,
    head: Vec<u8>,
    body: Vec<u8>,
    lease: Lease,
) -> &'static str {
    let now = spool::now_ms();
    let record = spool::Record {
        route: route.path.clone(),
        replay_id: id.to_string(),
        event_id: facts.id.clone(),
        event_type: facts.event_type.clone(),
        token: lease.token(),
        spooled_at_ms: now,
        live_since_ms: now,
        head,
        body,
    };
    match spool.store.put(&record).await {
        Ok(_) => {
            lease.detach();
            spool.stored();
            "spooled"
        }
        Err(e) => {
            tracing::warn!(route = route.path.as_str(), event_id = id, error = %e, "reconcile: cannot spool a backfilled event; released for the next run");
            lease.release().await;
            "failed"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::header_safe;

    #[test]
    fn only_values_a_header_line_can_carry_are_written() {
        assert!(header_safe("evt_abc123"));
        assert!(header_safe("2026-11-26T10:00:00.000Z"));
        for bad in ["", "evt\r\nX-Injected: 1", "evt\n", "evt\u{7f}", "évt"] {
            assert!(!header_safe(bad), "{bad:?}");
        }
    }
}
