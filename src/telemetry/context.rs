//! A client's W3C trace context, read within the W3C limits, and who may
//! decide sampling with it.
//!
//! - `traceparent`: one value (repeated headers must agree), version `00`
//!   (55 characters) or a
//!   later version read by its first 55; lower-case hex ids, neither all
//!   zeros. Anything else: the request starts a new trace.
//! - `tracestate`: every `tracestate` header, joined by `,`, at most
//!   [`MAX_TRACESTATE`] characters and [`MAX_MEMBERS`] list members, each
//!   member a valid key and value. Anything else: the `tracestate` is
//!   dropped, not truncated, while a valid `traceparent` is still continued.
//!   The length is judged before anything is copied, so no per-request copy
//!   grows with the header.
//! - Sampling: a client's sampled flag raises sampling above
//!   `sampling_ratio` only for a peer in `[server] trusted_proxies`
//!   ([`PeerSampler`]); for any other peer the ratio decides on the trace id.

use opentelemetry::trace::{
    Link, SamplingResult, SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, ShouldSample};

use super::{TRACEPARENT, TRACESTATE};

/// Most characters of a `tracestate` (W3C Trace Context §3.3.1.5).
pub const MAX_TRACESTATE: usize = 512;
/// Most list members of a `tracestate` (W3C Trace Context §3.3.1.1).
pub const MAX_MEMBERS: usize = 32;
/// Length of a version-`00` `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Marks a request's context as coming from a peer outside
/// `trusted_proxies`: its sampled flag does not count.
#[derive(Debug, Clone, Copy)]
struct Untrusted;

/// The context a request's span continues: the client's, when its
/// `traceparent` is valid, else an empty one (a new trace).
pub(super) fn extract(headers: &http::HeaderMap, trusted: bool) -> Context {
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let Some(one) = parents.next() else {
        return Context::new();
    };
    if parents.any(|other| other != one) {
        return Context::new();
    }
    let Some((trace_id, span_id, flags)) = traceparent(one.as_bytes()) else {
        return Context::new();
    };
    let state = tracestate(headers).unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id.into(), flags, true, state);
    let cx = Context::new().with_remote_span_context(sc);
    if trusted {
        cx
    } else {
        cx.with_value(Untrusted)
    }
}

/// The ids and flags of a well-formed `traceparent`.
fn traceparent(v: &[u8]) -> Option<(TraceId, u64, TraceFlags)> {
    if v.len() < TRACEPARENT_LEN || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-') {
        return None;
    }
    let field = |from: usize, len: usize| {
        let f = &v[from..from + len];
        let hex = f
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        hex.then(|| std::str::from_utf8(f).ok()).flatten()
    };
    let dashes = [2, 35, 52].iter().all(|&i| v[i] == b'-');
    let version = field(0, 2)?;
    if !dashes || version == "ff" || (version == "00" && v.len() != TRACEPARENT_LEN) {
        return None;
    }
    let trace = u128::from_str_radix(field(3, 32)?, 16).ok()?;
    let span = u64::from_str_radix(field(36, 16)?, 16).ok()?;
    let flags = u8::from_str_radix(field(53, 2)?, 16).ok()?;
    (trace != 0 && span != 0).then(|| {
        let flags = TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8());
        (TraceId::from(trace), span, flags)
    })
}

/// The client's `tracestate` when it is within the limits and every member
/// is valid; `None` (dropped) otherwise.
fn tracestate(headers: &http::HeaderMap) -> Option<TraceState> {
    let values = headers.get_all(&TRACESTATE);
    let mut len = 0usize;
    for v in values.iter() {
        len += v.len() + usize::from(len > 0);
        if len > MAX_TRACESTATE {
            return None;
        }
    }
    let members = values
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()?
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .map(|m| m.split_once('='))
        .collect::<Option<Vec<(&str, &str)>>>()?;
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return None;
    }
    TraceState::from_key_value(members).ok()
}

/// `sampling_ratio` on the trace id for a new trace and for a client outside
/// `trusted_proxies`; the parent's sampled flag for a trusted peer's trace and
/// for the request's own child spans.
#[derive(Debug, Clone)]
pub(super) struct PeerSampler {
    parent_based: Sampler,
    ratio: Sampler,
}

impl PeerSampler {
    pub(super) fn new(ratio: f64) -> PeerSampler {
        PeerSampler {
            parent_based: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            ratio: Sampler::TraceIdRatioBased(ratio),
        }
    }
}

impl ShouldSample for PeerSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let untrusted_remote = parent.is_some_and(|cx| {
            cx.get::<Untrusted>().is_some()
                && cx.has_active_span()
                && cx.span().span_context().is_remote()
        });
        let by = match untrusted_remote {
            true => &self.ratio,
            false => &self.parent_based,
        };
        by.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(tp: &[&str], ts: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in tp {
            h.append(&TRACEPARENT, v.parse().unwrap());
        }
        for v in ts {
            h.append(&TRACESTATE, v.parse().unwrap());
        }
        h
    }

    fn state_of(cx: &Context) -> Option<String> {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_state().header())
    }

    #[test]
    fn traceparents_are_read_as_w3c_says() {
        assert!(traceparent(TP.as_bytes()).is_some());
        assert!(traceparent(format!("01{}-extra", &TP[2..]).as_bytes()).is_some());
        for bad in [
            "",
            &TP[..54],
            &format!("{TP}-x"),
            &TP.to_uppercase(),
            &format!("ff{}", &TP[2..]),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333x-01",
        ] {
            assert!(traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // Two traceparent headers that differ: a new trace; that agree: one.
        let other = TP.replace("-01", "-00");
        assert_eq!(state_of(&extract(&headers(&[TP, &other], &[]), true)), None);
        assert!(state_of(&extract(&headers(&[TP, TP], &[]), true)).is_some());
    }

    #[test]
    fn a_tracestate_within_the_limits_is_kept() {
        let cx = extract(&headers(&[TP], &["a=1, b=2", "c=3"]), true);
        assert_eq!(state_of(&cx).as_deref(), Some("a=1,b=2,c=3"));
        let members: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
        let cx = extract(&headers(&[TP], &[&members.join(",")]), true);
        assert_eq!(state_of(&cx), Some(members.join(",")));
    }

    #[test]
    fn a_tracestate_over_the_limits_or_invalid_is_dropped_not_the_traceparent() {
        let many: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
        let long = format!("a={},b={}", "x".repeat(254), "y".repeat(254));
        let split_long = [
            "a=".to_string() + &"x".repeat(300),
            "b=".to_string() + &"y".repeat(300),
        ];
        for ts in [
            vec![many.join(",")],
            vec![long],
            split_long.to_vec(),
            vec!["UPPER=1".into()],
            vec!["novalue".into()],
            vec!["a=1=2".into()],
        ] {
            let ts: Vec<&str> = ts.iter().map(String::as_str).collect();
            let cx = extract(&headers(&[TP], &ts), true);
            assert_eq!(state_of(&cx).as_deref(), Some(""), "{ts:?}");
            let sc = cx.span().span_context().clone();
            assert_eq!(format!("{:032x}", sc.trace_id()), &TP[3..35]);
        }
    }

    #[test]
    fn only_a_trusted_peer_raises_sampling_with_its_flag() {
        let s = PeerSampler::new(0.0);
        let decide = |trusted: bool| {
            let cx = extract(&headers(&[TP], &[]), trusted);
            let id = cx.span().span_context().trace_id();
            s.should_sample(Some(&cx), id, "request", &SpanKind::Server, &[], &[])
                .decision
        };
        use opentelemetry::trace::SamplingDecision::{Drop, RecordAndSample};
        assert_eq!(decide(true), RecordAndSample);
        assert_eq!(decide(false), Drop);
        // With ratio 1 an untrusted client's trace is still sampled.
        let s = PeerSampler::new(1.0);
        let cx = extract(&headers(&[TP], &[]), false);
        let id = cx.span().span_context().trace_id();
        let d = s.should_sample(Some(&cx), id, "request", &SpanKind::Server, &[], &[]);
        assert_eq!(d.decision, RecordAndSample);
    }
}
