use super::*;
use std::time::Duration;

fn upstream(host_header: HostHeader) -> Upstream {
    Upstream {
        address: "127.0.0.1:3000".parse().unwrap(),
        authority: "app.internal:3000".into(),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        tls: false,
        sni: String::new(),
        verify: true,
        host_header,
    }
}

fn client() -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/webhooks/persona?x=1", None).unwrap();
    for (k, v) in [
        ("Host", "public.example"),
        ("X-Mixed-Case", "one"),
        ("Connection", "keep-alive"),
        ("Transfer-Encoding", "chunked"),
        ("content-length", "999"),
        ("x-mixed-case", "two"),
        ("Expect", "100-continue"),
        ("TE", "trailers"),
    ] {
        req.append_header(k.to_string(), v).unwrap();
    }
    req
}

fn text(w: &Wire<'_>) -> String {
    String::from_utf8(w.first.to_vec()).unwrap()
}

#[test]
fn wire_keeps_client_headers_in_their_case_and_drops_hop_by_hop_ones() {
    let up = upstream(HostHeader::Keep);
    let event_id = HeaderName::from_static("x-persona-event-id");
    let w = Wire::new(&client(), &up, &[(&event_id, "evt_1")], Some(4), b"body").unwrap();
    assert_eq!(
        text(&w),
        "POST /webhooks/persona?x=1 HTTP/1.1\r\n\
         Host: public.example\r\n\
         X-Mixed-Case: one\r\n\
         x-mixed-case: two\r\n\
         x-persona-event-id: evt_1\r\n\
         Content-Length: 4\r\n\r\nbody"
    );
    assert!(w.rest.is_empty());
}

#[test]
fn a_traceparent_in_extra_replaces_the_clients_trace_context() {
    let up = upstream(HostHeader::Keep);
    let mut req = client();
    req.append_header("TraceParent", "00-client").unwrap();
    req.append_header("tracestate", "client=1").unwrap();
    let tp = HeaderName::from_static("traceparent");
    let w = Wire::new(&req, &up, &[(&tp, "00-ours")], None, b"").unwrap();
    let t = text(&w);
    assert!(t.contains("traceparent: 00-ours\r\n"), "{t}");
    assert!(!t.contains("client"), "{t}");
    // Without one (tracing off), the client's are forwarded as they are.
    let w = Wire::new(&req, &up, &[], None, b"").unwrap();
    let t = text(&w);
    assert!(t.contains("TraceParent: 00-client\r\n"), "{t}");
    assert!(t.contains("tracestate: client=1\r\n"), "{t}");
}

#[test]
fn wire_host_policy_and_absolute_targets() {
    let mut req = client();
    req.set_uri("http://public.example/app/a?b=c".parse().unwrap());
    let w = Wire::new(&req, &upstream(HostHeader::Upstream), &[], None, b"").unwrap();
    let t = text(&w);
    assert!(t.starts_with("POST /app/a?b=c HTTP/1.1\r\n"), "{t}");
    assert!(t.contains("\r\nHost: app.internal:3000\r\n"), "{t}");
    assert!(!t.contains("public.example\r\n"), "{t}");
    assert!(!t.to_ascii_lowercase().contains("content-length"), "{t}");

    // An HTTP/2 client has no Host, only :authority.
    let mut h2 = RequestHeader::build("GET", b"/", None).unwrap();
    h2.set_uri("https://public.example/app".parse().unwrap());
    let w = Wire::new(&h2, &upstream(HostHeader::Keep), &[], None, b"").unwrap();
    assert_eq!(
        text(&w),
        "GET /app HTTP/1.1\r\nHost: public.example\r\n\r\n"
    );
}

#[test]
fn wire_writes_large_bodies_after_the_head() {
    let wire = |body: &[u8]| -> (String, usize, bool) {
        let up = upstream(HostHeader::Keep);
        let w = Wire::new(&client(), &up, &[], Some(body.len()), body).unwrap();
        (text(&w), w.rest.len(), w.first.ends_with(body))
    };
    let large = vec![b'x'; COALESCE_LIMIT + 1];
    let (head, rest, _) = wire(&large);
    assert!(head.ends_with(&format!("Content-Length: {}\r\n\r\n", large.len())));
    assert_eq!(rest, large.len());
    let small = vec![b'y'; COALESCE_LIMIT];
    let (_, rest, ends_with_body) = wire(&small);
    assert!(rest == 0 && ends_with_body);
}
