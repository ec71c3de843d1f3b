//! The client's trace context is continued only within the W3C limits
//! (`tracestate`: 32 members, 512 characters; else dropped, not truncated,
//! while a valid `traceparent` is still continued), a huge `tracestate`
//! costs no memory that grows with it, and the client's sampled flag raises
//! sampling above `sampling_ratio` only for peers in `trusted_proxies`.

use super::*;

/// The proxy's resident memory, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

fn get_with(p: &Proxy, path: &str, tp: &str, tracestate: &[&str]) -> Response {
    let mut headers = vec![("traceparent", tp)];
    headers.extend(tracestate.iter().map(|v| ("tracestate", *v)));
    p.send(&request("GET", path, &headers, b""))
}

#[test]
fn a_tracestate_over_the_w3c_limits_is_dropped_and_the_traceparent_continued() {
    let c = Collector::start();
    let (up, p) = rig_with(traced(&c));
    let members = |n: usize| -> String {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // W3C caps a value at 256 characters: two members make 512.
    let at_limit = format!("a={},b={}", "x".repeat(254), "y".repeat(253));
    assert_eq!(at_limit.len(), 512);
    let cases: [(&str, Vec<String>, bool); 6] = [
        ("32 members", vec![members(32)], true),
        ("512 characters", vec![at_limit.clone()], true),
        ("33 members", vec![members(33)], false),
        ("513 characters", vec![format!("{at_limit}y")], false),
        (
            "two headers over 512 together",
            vec![at_limit.clone(), "b=1".into()],
            false,
        ),
        ("an invalid member", vec!["a=1,UPPER=2".into()], false),
    ];
    for (i, (what, ts, kept)) in cases.iter().enumerate() {
        let (trace, _, tp) = client_context();
        let ts: Vec<&str> = ts.iter().map(String::as_str).collect();
        assert_eq!(get_with(&p, "/app", &tp, &ts).status, 200, "{what}");
        let rec = &up.wait_for_requests(i + 1, W)[i];
        let parent = rec.header_all("traceparent");
        assert_eq!(parent.len(), 1, "{what}");
        assert!(
            parent[0].starts_with(&format!("00-{trace}-")),
            "{what}: {parent:?}"
        );
        let state = rec.header_all("tracestate");
        if *kept {
            assert_eq!(state, vec![ts.join(",")], "{what}");
        } else {
            assert!(state.is_empty(), "{what}: the tracestate was forwarded");
        }
    }
}

/// An 800 kB `tracestate` on 100 passthrough requests: dropped, never
/// forwarded, and the proxy's memory does not grow with it (before: RSS
/// 16 → 221 MiB).
#[test]
fn a_huge_tracestate_costs_no_memory_that_grows_with_it() {
    let c = Collector::start();
    let (up, p) = rig_with(traced(&c));
    let huge: String = (0..3_400)
        .map(|i| format!("vendor{i}=opaque-value-{:0>220}", i))
        .collect::<Vec<_>>()
        .join(",");
    assert!(huge.len() > 800_000);
    let before = rss_mib(p.pid());
    let mut c1 = p.client();
    let mut last = String::new();
    for i in 0..100 {
        let (trace, _, tp) = client_context();
        last = trace;
        let raw = request(
            "GET",
            "/app/items",
            &[("traceparent", &tp), ("tracestate", &huge)],
            b"",
        );
        c1.send(&raw);
        assert_eq!(c1.read_response().status, 200, "request {i}");
    }
    // Measured once the last request's span is exported (they go in order).
    c.wait_for_spans(&last, &["request"]);
    let after = rss_mib(p.pid());
    let recs = up.wait_for_requests(100, W);
    assert!(recs.iter().all(|r| r.header_all("tracestate").is_empty()));
    assert!(
        after - before < 48.0,
        "RSS grew from {before:.1} to {after:.1} MiB under 100 requests with an 800 kB tracestate"
    );
    eprintln!("huge tracestate × 100: RSS {before:.1} → {after:.1} MiB");
}

/// With `sampling_ratio = 0`, a client's sampled flag samples its trace only
/// when the peer is in `trusted_proxies`; the trace is continued either way.
#[test]
fn a_client_sampled_flag_counts_only_from_trusted_proxies() {
    for trusted in [false, true] {
        let c = Collector::start();
        let (up, mut p) = rig_with(|b| {
            let b = traced(&c)(b).set("tracing.sampling_ratio", 0.0);
            if trusted {
                b.set("server.trusted_proxies", vec!["127.0.0.1"])
            } else {
                b
            }
        });
        let (trace, _, tp) = client_context();
        assert_eq!(get_with(&p, "/app", &tp, &[]).status, 200);
        let rec = &up.wait_for_requests(1, W)[0];
        let parent = rec.header_all("traceparent");
        let flag = if trusted { "-01" } else { "-00" };
        assert!(
            parent.len() == 1
                && parent[0].starts_with(&format!("00-{trace}-"))
                && parent[0].ends_with(flag),
            "trusted {trusted}: {parent:?}"
        );
        if trusted {
            c.wait_for_spans(&trace, &["request", "upstream"]);
        } else {
            // Stopped, the proxy has exported everything it recorded.
            super::stop_flushed(&mut p);
            assert!(
                c.trace(&trace).is_empty(),
                "an untrusted client's flag sampled its trace"
            );
        }
    }
}
