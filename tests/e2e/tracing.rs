//! OpenTelemetry tracing: spans exported over OTLP/HTTP to a collector run by
//! the test, the W3C trace context continued from the client and passed on to
//! the app, nothing secret in any attribute, nothing exported when off.
//!
//! A client's trace context within the W3C limits, and its sampled flag
//! from trusted proxies only: `limits`.
//!
//! The proxy exports in batches; `OTEL_BSP_SCHEDULE_DELAY=100` (the SDK's
//! standard variable, in milliseconds) makes it send every 100 ms here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::harness::*;

mod limits;

/// A span as the collector received it, ids in hex.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attrs: HashMap<String, String>,
}

impl Got {
    fn of(service: &str, s: &Span) -> Got {
        let attrs = s
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    Some(Value::IntValue(i)) => i.to_string(),
                    Some(Value::BoolValue(b)) => b.to_string(),
                    Some(Value::DoubleValue(d)) => d.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect();
        Got {
            service: service.to_string(),
            name: s.name.clone(),
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_id: hex(&s.parent_span_id),
            attrs,
        }
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP receiver: decodes each `ExportTraceServiceRequest` posted to
/// `/v1/traces` and keeps its spans.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    posts: Arc<AtomicUsize>,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(AtomicUsize::new(0));
        let (s, p) = (spans.clone(), posts.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let (s, p) = (s.clone(), p.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let (s, p) = (s.clone(), p.clone());
                                async move {
                                    assert_eq!(req.uri().path(), "/v1/traces");
                                    assert_eq!(
                                        req.headers()["content-type"],
                                        "application/x-protobuf"
                                    );
                                    let body = req.into_body().collect().await?.to_bytes();
                                    let export = ExportTraceServiceRequest::decode(body.as_ref())
                                        .expect("an ExportTraceServiceRequest");
                                    let mut got = s.lock().unwrap();
                                    for rs in &export.resource_spans {
                                        let service = rs
                                            .resource
                                            .iter()
                                            .flat_map(|r| &r.attributes)
                                            .find(|kv| kv.key == "service.name")
                                            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                                            .map(|v| match v {
                                                Value::StringValue(s) => s.clone(),
                                                _ => String::new(),
                                            })
                                            .unwrap_or_default();
                                        for ss in &rs.scope_spans {
                                            got.extend(
                                                ss.spans.iter().map(|sp| Got::of(&service, sp)),
                                            );
                                        }
                                    }
                                    p.fetch_add(1, Ordering::SeqCst);
                                    Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .header("content-type", "application/x-protobuf")
                                            .body(Full::new(Bytes::new()))
                                            .unwrap(),
                                    )
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                            .await;
                    });
                }
            });
        });
        Collector { addr, spans, posts }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn trace(&self, trace_id: &str) -> Vec<Got> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The spans of `trace_id` once `names` have all arrived (bounded wait).
    fn wait_for_spans(&self, trace_id: &str, names: &[&str]) -> Vec<Got> {
        wait_for(format!("spans {names:?} of {trace_id}"), W, || {
            let got = self.trace(trace_id);
            names.iter().all(|n| got.iter().any(|s| s.name == *n))
        });
        self.trace(trace_id)
    }
}

/// A fresh client context: (trace id, span id, `traceparent`).
fn client_context() -> (String, String, String) {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", n ^ (u128::from(std::process::id()) << 64) | 1);
    let span = format!("{:016x}", (n as u64).rotate_left(17) | 1);
    let tp = format!("00-{trace}-{span}-01");
    (trace, span, tp)
}

fn traced(c: &Collector) -> impl FnOnce(ProxyBuilder) -> ProxyBuilder {
    let endpoint = c.endpoint();
    move |b| {
        b.set("tracing.otlp_endpoint", endpoint)
            .set("tracing.service_name", "guard-under-test")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    }
}

/// SIGTERM, and the exit that follows: the proxy exports its batched spans
/// before it exits, so what the collector holds then is all there is.
pub(crate) fn stop_flushed(p: &mut Proxy) {
    let st = p.terminate(W).expect("exit within W after SIGTERM");
    assert!(st.success(), "{st:?}\n{}", p.logs());
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

/// A signed delivery with the client's trace context.
fn traced_delivery(secret: &str, body: &[u8], traceparent: &str) -> Vec<u8> {
    let sig = sign(secret, now(), body);
    request(
        "POST",
        ROUTE,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", &sig),
            ("traceparent", traceparent),
            ("tracestate", "vendor=opaque"),
        ],
        body,
    )
}

#[test]
fn a_traced_delivery_exports_its_spans_and_passes_the_context_on() {
    let c = Collector::start();
    let (up, p) = rig_with(traced(&c));
    let (trace, client_span, tp) = client_context();
    let id = event_id();
    let body = event_body(&id, "inquiry.completed");
    let raw = traced_delivery(p.secret(), &body, &tp);
    let r = p.send(&raw);
    assert_eq!(r.status, 200, "{}", r.text());

    let spans = c.wait_for_spans(&trace, &["request", "verify", "claim", "upstream"]);
    let request = one(&spans, "request");
    let verify = one(&spans, "verify");
    let claim = one(&spans, "claim");
    let upstream = one(&spans, "upstream");
    assert_eq!(request.service, "guard-under-test");
    // The request continues the client's span; the others are its children.
    assert_eq!(request.parent_id, client_span);
    for s in [verify, claim, upstream] {
        assert_eq!(s.parent_id, request.span_id, "{s:#?}");
        assert_ne!(s.span_id, request.span_id);
    }
    assert_eq!(request.attr("http.route"), Some(ROUTE));
    assert_eq!(request.attr("persona_guard.outcome"), Some("forwarded"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.attr("persona.event.id"), Some(id.as_str()));
    assert_eq!(
        request.attr("persona.event.type"),
        Some("inquiry.completed")
    );
    assert_eq!(verify.attr("persona_guard.outcome"), Some("valid"));
    assert_eq!(claim.attr("persona_guard.outcome"), Some("claimed"));
    assert_eq!(claim.attr("persona.event.id"), Some(id.as_str()));
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_eq!(upstream.attr("http.route"), Some(ROUTE));

    // Nothing secret or from the body in any attribute.
    let sig = sign(p.secret(), now(), &body);
    let sig_hex = sig.rsplit("v1=").next().unwrap().to_string();
    for s in &spans {
        for (k, v) in &s.attrs {
            for (what, secret) in [
                ("the body", String::from_utf8_lossy(&body).to_string()),
                ("the secret", p.secret().to_string()),
                ("the signature", sig_hex.clone()),
                ("the tracestate", "opaque".to_string()),
            ] {
                assert!(!v.contains(&secret), "{} {k} holds {what}", s.name);
            }
            assert!(
                [
                    "http.route",
                    "persona_guard.outcome",
                    "http.response.status_code",
                    "persona.event.id",
                    "persona.event.type"
                ]
                .contains(&k.as_str()),
                "unexpected attribute {k} on {}",
                s.name
            );
        }
    }

    // The app gets one traceparent: the same trace, the upstream span as parent.
    let recs = up.wait_for_requests(1, W);
    let got = recs[0].header_all("traceparent");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0], format!("00-{trace}-{}-01", upstream.span_id));
    assert_eq!(recs[0].header_all("tracestate"), vec!["vendor=opaque"]);
}

#[test]
fn a_refused_delivery_has_a_request_span_and_no_upstream_span() {
    let c = Collector::start();
    let (up, mut p) = rig_with(traced(&c));
    let (trace, client_span, tp) = client_context();
    let body = event_body(&event_id(), "inquiry.completed");
    let r = p.send(&traced_delivery("wbhsec_not_the_secret", &body, &tp));
    r.assert_error(401, "invalid_signature");

    let spans = c.wait_for_spans(&trace, &["request", "verify"]);
    let request = one(&spans, "request");
    assert_eq!(request.parent_id, client_span);
    assert_eq!(
        request.attr("persona_guard.outcome"),
        Some("invalid_signature")
    );
    assert_eq!(request.attr("http.response.status_code"), Some("401"));
    assert_eq!(
        one(&spans, "verify").attr("persona_guard.outcome"),
        Some("invalid_signature")
    );
    // Stopped, the proxy has exported every span it had: none is late.
    stop_flushed(&mut p);
    let spans = c.trace(&trace);
    assert!(
        !spans
            .iter()
            .any(|s| s.name == "upstream" || s.name == "claim"),
        "{spans:#?}"
    );
    up.assert_nothing_seen("a refused delivery");
}

#[test]
fn a_passthrough_request_is_traced_and_its_context_replaced() {
    let c = Collector::start();
    let (up, p) = rig_with(traced(&c));
    let (trace, client_span, tp) = client_context();
    let r = p.send(&request(
        "GET",
        "/app/items",
        &[("traceparent", &tp), ("TraceParent", &tp)],
        b"",
    ));
    assert_eq!(r.status, 200);
    let spans = c.wait_for_spans(&trace, &["request", "upstream"]);
    let request = one(&spans, "request");
    let upstream = one(&spans, "upstream");
    assert_eq!(request.parent_id, client_span);
    assert_eq!(upstream.parent_id, request.span_id);
    assert_eq!(request.attr("persona_guard.outcome"), Some("passthrough"));
    assert_eq!(request.attr("http.route"), None);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(
        recs[0].header_all("traceparent"),
        vec![format!("00-{trace}-{}-01", upstream.span_id)]
    );
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_the_context_passes_unchanged() {
    // A collector listens, and the SDK's own endpoint variable names it: only
    // `[tracing] otlp_endpoint` turns export on.
    let c = Collector::start();
    let endpoint = format!("http://{}", c.addr);
    let (up, mut p) = rig_with(|b| {
        b.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &c.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    });
    let (_, _, tp) = client_context();
    let body = event_body(&event_id(), "inquiry.completed");
    let r = p.send(&traced_delivery(p.secret(), &body, &tp));
    assert_eq!(r.status, 200);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].header_all("traceparent"), vec![tp.as_str()]);
    assert_eq!(recs[0].header_all("tracestate"), vec!["vendor=opaque"]);
    // Stopped, the proxy has exported whatever it would have.
    stop_flushed(&mut p);
    assert_eq!(c.posts.load(Ordering::SeqCst), 0);
    let logs = p.logs().to_ascii_lowercase();
    assert!(
        !logs.contains("export") && !logs.contains("opentelemetry"),
        "{logs}"
    );
}

#[test]
fn an_unreachable_collector_is_logged_and_deliveries_go_on() {
    // Nothing listens on this port.
    let port = free_port();
    let (up, p) = rig_with(|b| {
        b.set(
            "tracing.otlp_endpoint",
            format!("http://127.0.0.1:{port}/v1/traces"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    });
    let (_, _, tp) = client_context();
    let body = event_body(&event_id(), "inquiry.completed");
    let r = p.send(&traced_delivery(p.secret(), &body, &tp));
    assert_eq!(r.status, 200);
    assert_eq!(up.wait_for_requests(1, W).len(), 1);
    wait_for("the export error in the log", W, || {
        p.logs().contains("BatchSpanProcessor.ExportError")
    });
    let logs = p.logs();
    assert!(!logs.contains(p.secret()), "{logs}");
}

#[test]
fn a_spool_redelivery_carries_the_original_context_and_records_no_span() {
    let c = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let (up, mut p) = rig_with(|b| crate::spool::spooling(traced(&c)(b), dir.path(), "on_failure"));
    up.set_status(500);
    let (trace, _, tp) = client_context();
    let body = event_body(&event_id(), "inquiry.approved");
    p.send(&traced_delivery(p.secret(), &body, &tp))
        .assert_status_json(202, "spooled");
    let spans = c.wait_for_spans(&trace, &["request", "upstream"]);
    let upstream = one(&spans, "upstream");
    assert_eq!(upstream.attr("http.response.status_code"), Some("500"));
    assert_eq!(
        one(&spans, "request").attr("persona_guard.outcome"),
        Some("spooled")
    );

    up.set_status(200);
    let recs = up.wait_for_requests(2, W);
    let want = format!("00-{trace}-{}-01", upstream.span_id);
    for r in &recs {
        assert_eq!(r.header_all("traceparent"), vec![want.as_str()]);
    }
    // Stopped, every span is exported: still one upstream span in the trace.
    stop_flushed(&mut p);
    let upstreams = c.trace(&trace).into_iter().filter(|s| s.name == "upstream");
    assert_eq!(upstreams.count(), 1);
}

/// `otlp_endpoint` carries no credentials: user info, a query or a fragment
/// is a configuration error naming the key, and `check --print` prints
/// neither the URL nor the credential, from the file or the environment.
#[test]
fn an_endpoint_with_credentials_is_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for (i, endpoint) in [
        "http://collector:4318/v1/traces?api_key=LEAKCANARY",
        "http://LEAKCANARY@collector:4318/v1/traces",
        "http://user:LEAKCANARY@collector:4318",
        "http://collector:4318/v1/traces#LEAKCANARY",
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.path().join(format!("pg-{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "[tracing]\notlp_endpoint = \"{endpoint}\"\n[[route]]\npath = \"/a\"\nsecrets = [\"env:PG_E2E_OTLP_SECRET\"]\n"
            ),
        )
        .unwrap();
        let secret = [("PG_E2E_OTLP_SECRET", "wbhsec_x")];
        let from_file = run_cli(
            &["check", "--print", "--config", file.to_str().unwrap()],
            &secret,
            None,
        );
        let from_env = run_cli(
            &["check", "--print"],
            &[
                ("PG_E2E_OTLP_SECRET", "wbhsec_x"),
                ("PERSONA_GUARD_ROUTE_PATH", "/a"),
                ("PERSONA_GUARD_ROUTE_SECRETS", "env:PG_E2E_OTLP_SECRET"),
                ("PERSONA_GUARD_TRACING_OTLP_ENDPOINT", endpoint),
            ],
            None,
        );
        for (how, out, key) in [
            ("file", from_file, "tracing.otlp_endpoint: must not carry"),
            (
                "env",
                from_env,
                "PERSONA_GUARD_TRACING_OTLP_ENDPOINT (tracing.otlp_endpoint): must not carry",
            ),
        ] {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(64), "{how} {endpoint}: {all}");
            assert!(all.contains(key), "{how} {endpoint}: {all}");
            assert!(!all.contains("LEAKCANARY"), "{how} {endpoint}: {all}");
        }
    }
}
