//! OpenTelemetry tracing (`[tracing]`): spans for each request, its signature
//! check, its replay claim and its upstream call, exported over OTLP/HTTP
//! (protobuf) in batches, and the W3C trace context passed on to the app.
//!
//! Off unless `otlp_endpoint` is set: then no provider exists, the request
//! context's `trace` stays `None` and each phase pays one branch on it.
//!
//! What a span carries is fixed here: the route, the outcome code, the
//! event's id and type, HTTP status codes. Never a body, a signature, a
//! secret or any other header value.
//!
//! A client's trace context is read within the W3C limits, and its sampled
//! flag counts only from `trusted_proxies` ([`context`]).
//!
//! The exporter speaks plain HTTP/1.1 through [`Exporter`], the blocking
//! [`crate::outbound`] client, on the batch processor's own thread: no async
//! runtime of its own.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::config::TracingSettings;
use crate::outbound;

mod context;
pub use context::{MAX_MEMBERS, MAX_TRACESTATE};

/// Attribute keys: the only ones persona-guard records.
pub const ROUTE: &str = "http.route";
pub const OUTCOME: &str = "persona_guard.outcome";
pub const STATUS: &str = "http.response.status_code";
pub const EVENT_ID: &str = "persona.event.id";
pub const EVENT_TYPE: &str = "persona.event.type";

/// The W3C trace-context headers.
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// How long one export may take (connect, write, read).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer provider and its tracer, built once at start.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// The provider for `settings`, or `None` when tracing is off. Batches
    /// are sent every 5 s by default (`OTEL_BSP_SCHEDULE_DELAY`, in
    /// milliseconds, changes that: the tests use it).
    pub fn start(settings: &TracingSettings) -> Result<Option<Telemetry>, String> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Exporter(outbound::Client::new(
                EXPORT_TIMEOUT,
                EXPORT_TIMEOUT,
            )))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let ratio = settings.sampling_ratio.0;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(context::PeerSampler::new(ratio))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("persona-guard");
        Ok(Some(Telemetry { provider, tracer }))
    }

    /// Sends what is batched and stops the exporter (bounded by the SDK's
    /// own timeout). Called once, on the way out.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "tracing: the last spans could not be exported");
        }
    }

    /// Starts a request's span: a child of the client's `traceparent` (and
    /// `tracestate`) when they are valid and within the W3C limits, else a
    /// new trace's root. `trusted`: the peer is in `trusted_proxies`, so its
    /// sampled flag may raise sampling above the ratio.
    pub fn request(&self, headers: &http::HeaderMap, trusted: bool) -> Box<RequestTrace> {
        let parent = context::extract(headers, trusted);
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        Box::new(RequestTrace {
            tracer: self.tracer.clone(),
            cx: parent.with_span(span),
            upstream: None,
        })
    }
}

/// A request's spans: its own (in `cx`), and the upstream call's while open.
pub struct RequestTrace {
    tracer: SdkTracer,
    cx: Context,
    upstream: Option<Span>,
}

/// The `traceparent` and `tracestate` values written to the app.
pub struct Propagation {
    pub traceparent: String,
    /// Empty when the trace has none: no header is written.
    pub tracestate: String,
}

impl Propagation {
    fn of(sc: &SpanContext) -> Propagation {
        Propagation {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
            tracestate: sc.trace_state().header(),
        }
    }

    /// The headers for [`crate::upstream::Wire::new`]'s `extra`.
    pub fn headers(&self) -> impl Iterator<Item = (&http::HeaderName, &str)> {
        std::iter::once((&TRACEPARENT, self.traceparent.as_str()))
            .chain((!self.tracestate.is_empty()).then_some((&TRACESTATE, self.tracestate.as_str())))
    }
}

impl RequestTrace {
    /// A child span of the request's (the signature check, the claim).
    pub fn child(&self, name: &'static str) -> Span {
        self.tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .start_with_context(&self.tracer, &self.cx)
    }

    /// Opens the upstream call's span and returns the context the app gets:
    /// the upstream span's own (its id is the app's parent id).
    pub fn start_upstream(&mut self, route: Option<&str>) -> Propagation {
        let mut span = self
            .tracer
            .span_builder("upstream")
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &self.cx);
        if let Some(r) = route {
            span.set_attribute(KeyValue::new(ROUTE, r.to_string()));
        }
        let p = Propagation::of(span.span_context());
        // A second call (none today) ends the first span rather than leak it.
        if let Some(mut old) = self.upstream.replace(span) {
            old.end();
        }
        p
    }

    /// Ends the upstream span with the app's status, or the outcome code
    /// that took its place (no answer, timeout, spooled).
    pub fn end_upstream(&mut self, status: Option<u16>, outcome: Option<&'static str>) {
        let Some(mut span) = self.upstream.take() else {
            return;
        };
        if let Some(s) = status {
            span.set_attribute(KeyValue::new(STATUS, i64::from(s)));
            if s >= 500 {
                span.set_status(Status::error(""));
            }
        }
        if let Some(o) = outcome {
            span.set_attribute(KeyValue::new(OUTCOME, o));
            if status.is_none() {
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }

    /// Ends the request's span (and an upstream span still open) with what
    /// the request's log line says.
    pub fn finish(
        mut self,
        route: Option<&str>,
        outcome: &'static str,
        status: Option<u16>,
        event_id: Option<&str>,
        event_type: Option<&str>,
    ) {
        if self.upstream.is_some() {
            self.end_upstream(None, Some(outcome));
        }
        let span = self.cx.span();
        let mut attrs = Vec::with_capacity(5);
        if let Some(r) = route {
            attrs.push(KeyValue::new(ROUTE, r.to_string()));
        }
        attrs.push(KeyValue::new(OUTCOME, outcome));
        if let Some(s) = status {
            attrs.push(KeyValue::new(STATUS, i64::from(s)));
            if s >= 500 {
                span.set_status(Status::error(""));
            }
        }
        if let Some(id) = event_id {
            attrs.push(KeyValue::new(EVENT_ID, id.to_string()));
        }
        if let Some(t) = event_type {
            attrs.push(KeyValue::new(EVENT_TYPE, t.to_string()));
        }
        span.set_attributes(attrs);
        span.end();
    }
}

/// Ends a child span with its outcome (and the event's id, when known).
pub fn end_child(mut span: Span, outcome: &'static str, route: &str, event_id: Option<&str>) {
    span.set_attribute(KeyValue::new(ROUTE, route.to_string()));
    span.set_attribute(KeyValue::new(OUTCOME, outcome));
    if let Some(id) = event_id {
        span.set_attribute(KeyValue::new(EVENT_ID, id.to_string()));
    }
    span.end();
}

/// The OTLP exporter's client for `http://` endpoints. It runs on the batch
/// span processor's own thread (the SDK drives the export future there with
/// a blocking executor), so blocking I/O stalls no request.
#[derive(Debug, Clone)]
pub struct Exporter(outbound::Client);

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        if request.uri().scheme_str() != Some("http") {
            return Err("only http:// endpoints are supported".into());
        }
        let (head, body) = request.into_parts();
        let answer = self.0.send(Request::from_parts(head, &body[..]))?;
        Ok(answer.map(Bytes::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_an_endpoint() {
        assert!(
            Telemetry::start(&TracingSettings::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_client_context_is_continued_and_passed_on_as_the_upstream_span() {
        let settings = TracingSettings {
            // Nothing listens: exports fail quietly in the background.
            otlp_endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
            ..TracingSettings::default()
        };
        let t = Telemetry::start(&settings).unwrap().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let mut rt = t.request(&headers, true);
        let p = rt.start_upstream(Some("/a"));
        assert!(
            p.traceparent
                .starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{}",
            p.traceparent
        );
        assert!(p.traceparent.ends_with("-01"));
        assert!(!p.traceparent.contains("b7ad6b7169203331"));
        assert_eq!(p.tracestate, "congo=t61rcWkgMzE");
        assert_eq!(p.headers().count(), 2);
        rt.end_upstream(Some(200), None);
        rt.finish(Some("/a"), "forwarded", Some(200), Some("evt"), Some("t"));

        // An unsampled client trace stays unsampled.
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
                .parse()
                .unwrap(),
        );
        headers.remove("tracestate");
        let mut rt = t.request(&headers, true);
        let p = rt.start_upstream(None);
        assert!(p.traceparent.ends_with("-00"), "{}", p.traceparent);
        assert_eq!(p.headers().count(), 1);
        rt.finish(None, "passthrough", Some(200), None, None);
        t.shutdown();
    }
}
