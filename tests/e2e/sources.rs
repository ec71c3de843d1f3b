//! Source allow-lists (`docs/behaviour.md` § Source addresses): `allow_from`
//! on a route and `[server] trusted_proxies`. Two clients on one machine are told apart by binding to
//! 127.0.0.1 or 127.0.0.2 (all of 127/8 is local on Linux).

use std::net::{IpAddr, Ipv4Addr};

use crate::harness::*;

const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A genuine delivery of a new event, signed now, with extra headers.
fn genuine(p: &Proxy, extra: &[(&str, &str)]) -> (String, Vec<u8>) {
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let mut headers = vec![("Persona-Signature", sig.as_str())];
    headers.extend_from_slice(extra);
    (id, request("POST", ROUTE, &headers, &body))
}

fn send_from(local: IpAddr, p: &Proxy, raw: &[u8]) -> Response {
    Client::connect_from(local, p.listen).request(raw)
}

#[test]
fn a_peer_outside_allow_from_is_refused_before_any_check_and_its_twin_is_forwarded() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("allow_from", vec!["persona", "127.0.0.1"])));

    // Refused before the method, the signature or the body are looked at.
    let (_, raw) = genuine(&p, &[]);
    let r = send_from(TWO, &p, &raw);
    r.assert_error(403, "source_not_allowed");
    assert!(r.connection_close(), "decided before the body: closes");
    let r = send_from(TWO, &p, &request("GET", ROUTE, &[], b""));
    r.assert_error(403, "source_not_allowed");
    let r = send_from(TWO, &p, &request("POST", ROUTE, &[], b"{}"));
    r.assert_error(403, "source_not_allowed");
    p.wait_for_outcome(ROUTE, "source_not_allowed", 3);
    up.assert_nothing_seen("a refused source");

    // The same delivery from an allowed address goes through.
    let (id, raw) = genuine(&p, &[]);
    let r = send_from(ONE, &p, &raw);
    assert_eq!(r.status, 200, "{}", r.text());
    p.wait_for_outcome(ROUTE, "forwarded", 1);
    let seen = up.wait_for_requests(1, W);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-persona-event-id"), Some(id.as_str()));
    // And from the allowed address the other checks apply as before.
    send_from(ONE, &p, &request("GET", ROUTE, &[], b"")).assert_error(405, "method_not_allowed");
}

#[test]
fn a_cidr_admits_its_block_and_paths_under_no_route_are_unchanged() {
    let (up, p) = rig_with(|b| {
        b.route(|r| r.set("allow_from", vec!["127.0.0.0/31"]))
            .set("unmatched", "forward")
    });
    let (_, raw) = genuine(&p, &[]);
    assert_eq!(send_from(ONE, &p, &raw).status, 200);
    let (_, raw) = genuine(&p, &[]);
    send_from(TWO, &p, &raw).assert_error(403, "source_not_allowed");
    // Off route, no allow-list applies.
    let r = send_from(TWO, &p, &request("GET", "/elsewhere", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(2, W).len(), 2);
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // 127.0.0.2 may send; 127.0.0.1 may not, and is no trusted proxy, so what
    // it writes in X-Forwarded-For counts for nothing.
    let (up, p) = rig_with(|b| {
        b.route(|r| r.set("allow_from", vec!["127.0.0.2"]))
            .set("server.trusted_proxies", vec!["10.0.0.0/8"])
    });
    let (_, raw) = genuine(&p, &[("X-Forwarded-For", "127.0.0.2")]);
    send_from(ONE, &p, &raw).assert_error(403, "source_not_allowed");
    up.assert_nothing_seen_for(std::time::Duration::from_millis(200), "spoofed XFF");
    // Its positive twin: the allowed peer itself, with a spoofed header too.
    let (_, raw) = genuine(&p, &[("X-Forwarded-For", "198.51.100.9")]);
    let r = send_from(TWO, &p, &raw);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(1, W).len(), 1);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_decides() {
    // The peer 127.0.0.1 is a trusted proxy; the client is the right-most
    // X-Forwarded-For entry that is not one.
    let (up, p) = rig_with(|b| {
        b.route(|r| r.set("allow_from", vec!["persona"]))
            .set("server.trusted_proxies", vec!["127.0.0.1", "10.0.0.0/8"])
    });
    // A Persona address, then an inner proxy: admitted; the spoofed left part is not read.
    let (_, raw) = genuine(
        &p,
        &[("X-Forwarded-For", "1.1.1.1, 35.232.44.140, 10.1.2.3")],
    );
    let r = send_from(ONE, &p, &raw);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(1, W).len(), 1);

    // Someone else behind the proxy, who put a Persona address on the left: refused.
    for xff in [
        "35.232.44.140, 198.51.100.7",
        "35.232.44.140, garbage",
        "unknown",
    ] {
        let (_, raw) = genuine(&p, &[("X-Forwarded-For", xff)]);
        send_from(ONE, &p, &raw).assert_error(403, "source_not_allowed");
    }
    // The trusted proxy itself, with no X-Forwarded-For, is not Persona.
    let (_, raw) = genuine(&p, &[]);
    send_from(ONE, &p, &raw).assert_error(403, "source_not_allowed");
    p.wait_for_outcome(ROUTE, "source_not_allowed", 4);
    assert_eq!(up.count(), 1, "nothing more forwarded");

    // Not trusted: 127.0.0.2's X-Forwarded-For naming Persona is ignored.
    let (_, raw) = genuine(&p, &[("X-Forwarded-For", "35.232.44.140")]);
    send_from(TWO, &p, &raw).assert_error(403, "source_not_allowed");
    p.wait_for_outcome(ROUTE, "source_not_allowed", 5);
    assert_eq!(up.count(), 1);
}

#[test]
fn allow_from_and_trusted_proxies_follow_a_reload_and_a_bad_list_is_refused() {
    let (up, p) = rig_with(|b| b);
    let (_, raw) = genuine(&p, &[]);
    assert_eq!(
        send_from(TWO, &p, &raw).status,
        200,
        "no allow_from: any source"
    );

    p.edit_config(|b| b.route(|r| r.set("allow_from", vec!["127.0.0.1"])));
    p.reload_ok();
    let (_, raw) = genuine(&p, &[]);
    send_from(TWO, &p, &raw).assert_error(403, "source_not_allowed");

    p.edit_config(|b| {
        b.route(|r| r.set("allow_from", vec!["127.0.0.1"]))
            .set("server.trusted_proxies", vec!["127.0.0.2"])
    });
    p.reload_ok();
    let (_, raw) = genuine(&p, &[("X-Forwarded-For", "127.0.0.1")]);
    assert_eq!(send_from(TWO, &p, &raw).status, 200, "trusted on reload");

    // A bad entry is refused whole, never quoted; the running lists stay.
    p.edit_config(|b| b.route(|r| r.set("allow_from", vec!["wbhsec_not_an_address"])));
    p.reload_refused();
    assert!(!p.stderr().contains("wbhsec_not_an_address"));
    let (_, raw) = genuine(&p, &[("X-Forwarded-For", "127.0.0.1")]);
    assert_eq!(send_from(TWO, &p, &raw).status, 200);
    assert_eq!(up.wait_for_requests(3, W).len(), 3);
}
