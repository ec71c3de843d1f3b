//! The spool's side of a delivery: keeping it for the redelivery worker.

use std::sync::Arc;

use super::OnRoute;
use crate::event::Facts;
use crate::replay::Lease;
use crate::spool;
use crate::state::Shared;
use crate::upstream::Wire;

/// Keeps the delivery in the spool: `true` once it is durable (its claim is
/// then detached: the id stays in flight for the redelivery worker to adopt).
/// `false`, counted and logged, when there is no spool, no claim to hand on
/// (the store failed open), or the spool is full or cannot be written: the
/// caller answers as without a spool, and Persona retries.
pub(super) struct Keeper<'a> {
    pub(super) shared: &'a Shared,
    pub(super) spool: Option<&'a Arc<spool::Handle>>,
    pub(super) on: &'a OnRoute<'a>,
    pub(super) facts: &'a Facts,
    pub(super) wire: &'a Wire<'a>,
    pub(super) body: &'a [u8],
    pub(super) replay_id: &'a str,
}

impl Keeper<'_> {
    pub(super) async fn keep(&self, claim: &mut Option<Lease>) -> bool {
        let Keeper {
            shared,
            spool,
            on,
            facts,
            wire,
            body,
            replay_id,
        } = *self;
        let route = on.route.path.as_str();
        let fallback = |reason: &str| {
            shared
                .metrics
                .spool_fallbacks
                .with_label_values(&[route, reason])
                .inc();
        };
        let Some(spool) = spool else {
            return false;
        };
        let Some(lease) = claim.as_ref() else {
            fallback("no_claim");
            tracing::warn!(
                route,
                event_id = facts.id.as_deref(),
                "spool: a delivery without a replay claim is not spooled"
            );
            return false;
        };
        let now = spool::now_ms();
        let record = spool::Record {
            route: route.to_string(),
            replay_id: replay_id.to_string(),
            event_id: facts.id.clone(),
            event_type: facts.event_type.clone(),
            token: lease.token(),
            spooled_at_ms: now,
            live_since_ms: now,
            head: wire.head().to_vec(),
            body: body.to_vec(),
        };
        match spool.store.put(&record).await {
            Ok(_) => {
                if let Some(lease) = claim.take() {
                    lease.detach();
                }
                spool.stored();
                true
            }
            Err(e) => {
                fallback(match e {
                    spool::SpoolError::Full => "full",
                    _ => "unavailable",
                });
                tracing::warn!(route, event_id = facts.id.as_deref(), error = %e, "spool: cannot keep the delivery; answered as without a spool");
                false
            }
        }
    }
}
