//! Persona's optional request authentication (the contract's §10), end to
//! end: the real binary, a JWKS served on loopback by the test, tokens
//! minted here with real RSA, P-256 and Ed25519 keys, and a static header
//! token. Every refusal forwards nothing; every pass reaches the app without
//! the token.

use jsonwebtoken::Algorithm;
use toml::{Table, Value};

use crate::harness::jwt::{self, AUDIENCE, ISSUER, SCOPE};
use crate::harness::*;

const HEADER: &str = "X-Webhook-Token";
const HEADER_VALUE: &str = "hdr-token-7f3a9c1e";

/// The JWKS endpoint: a recording upstream answering the document.
fn jwks_server(kids: &[&str]) -> Upstream {
    let s = Upstream::start();
    s.set_body(&jwt::jwks(kids));
    s
}

fn oauth_table(jwks: &Upstream, refresh: &str) -> Value {
    let mut t = Table::new();
    t.insert(
        "jwks_url".into(),
        format!("http://{}/jwks", jwks.addr).into(),
    );
    t.insert("issuer".into(), ISSUER.into());
    t.insert("audience".into(), AUDIENCE.into());
    t.insert("scopes".into(), vec![Value::from(SCOPE)].into());
    t.insert("jwks_refresh".into(), refresh.into());
    Value::Table(t)
}

/// A proxy whose route requires a bearer token from `jwks`.
fn oauth_proxy(up: &Upstream, jwks: &Upstream, refresh: &str) -> Proxy {
    Proxy::builder()
        .upstream(up)
        .route(|r| r.set("oauth", oauth_table(jwks, refresh)))
        .start()
}

fn wait_ready(p: &Proxy) {
    wait_for("/readyz 200 (the JWKS fetched)", W, || p.readyz() == 200);
}

/// A signed delivery of `body` with `extra` headers.
fn deliver_with(p: &Proxy, body: &[u8], extra: &[(&str, &str)]) -> Response {
    let sig = sign(p.secret(), now(), body);
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Persona-Signature", sig.as_str()),
    ];
    headers.extend_from_slice(extra);
    p.send(&request("POST", ROUTE, &headers, body))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_valid_token_from_each_key_kind_is_forwarded_without_authorization() {
    let (up, jwks) = (
        Upstream::start(),
        jwks_server(&["rsa1", "rsa2", "ec1", "ed1"]),
    );
    let p = oauth_proxy(&up, &jwks, "1h");
    wait_ready(&p);
    for (alg, kid) in [
        (Algorithm::RS256, "rsa1"),
        (Algorithm::PS256, "rsa2"),
        (Algorithm::ES256, "ec1"),
        (Algorithm::EdDSA, "ed1"),
    ] {
        let id = event_id();
        let body = event_body(&id, "inquiry.approved");
        let token = jwt::mint(alg, kid, &jwt::good_claims());
        let r = deliver_with(&p, &body, &[("Authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
        assert_eq!(r.body, DEFAULT_UPSTREAM_BODY, "{alg:?}");
        let rec = up
            .requests()
            .into_iter()
            .find(|q| q.header("x-persona-event-id") == Some(id.as_str()))
            .expect("forwarded");
        assert!(
            rec.header_all("authorization").is_empty(),
            "{alg:?}: the token reached the app"
        );
        assert_eq!(rec.body, body);
    }
    let logs = p.logs();
    assert!(!logs.contains("eyJ"), "a token reached the log:\n{logs}");
}

#[test]
fn each_failed_check_is_refused_and_forwards_nothing() {
    let (up, jwks) = (Upstream::start(), jwks_server(&["rsa1", "ec1"]));
    let p = oauth_proxy(&up, &jwks, "1h");
    wait_ready(&p);
    let rs = |c: &serde_json::Value| jwt::mint(Algorithm::RS256, "rsa1", c);
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no Authorization", None, "missing_token"),
        (
            "expired",
            Some(rs(&jwt::claims_with(|c| c["exp"] = jwt::now_plus(-120)))),
            "invalid_token",
        ),
        (
            "not yet valid",
            Some(rs(&jwt::claims_with(|c| c["nbf"] = jwt::now_plus(120)))),
            "invalid_token",
        ),
        (
            "wrong issuer",
            Some(rs(&jwt::claims_with(|c| {
                c["iss"] = "https://evil.test/".into()
            }))),
            "invalid_token",
        ),
        (
            "wrong audience",
            Some(rs(&jwt::claims_with(|c| c["aud"] = "someone-else".into()))),
            "invalid_token",
        ),
        (
            "missing scope",
            Some(rs(&jwt::claims_with(|c| c["scope"] = "other".into()))),
            "invalid_token",
        ),
        (
            "alg none",
            Some(jwt::alg_none("rsa1", &jwt::good_claims())),
            "invalid_token",
        ),
        (
            "HS256 with the RSA public key",
            Some(jwt::hs256_with_public_key("rsa1", &jwt::good_claims())),
            "invalid_token",
        ),
        (
            "HS256 with the EC public key",
            Some(jwt::hs256_with_public_key("ec1", &jwt::good_claims())),
            "invalid_token",
        ),
        (
            "signed by a key not in the set",
            Some(jwt::mint_as(
                Algorithm::RS256,
                "rsa2",
                "rsa1",
                &jwt::good_claims(),
            )),
            "invalid_token",
        ),
        ("garbage", Some("not.a.jwt".into()), "invalid_token"),
    ];
    for (what, token, code) in &cases {
        let body = event_body(&event_id(), "inquiry.approved");
        let auth = token.as_deref().map(bearer);
        let extra: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = deliver_with(&p, &body, &extra);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some(*code), "{what}");
    }
    // A bearer header of another form, and two of them.
    let good = bearer(&rs(&jwt::good_claims()));
    let body = event_body(&event_id(), "inquiry.approved");
    for extra in [
        vec![("Authorization", "Basic dXNlcjpwYXNz")],
        vec![
            ("Authorization", good.as_str()),
            ("Authorization", good.as_str()),
        ],
    ] {
        deliver_with(&p, &body, &extra).assert_error(401, "invalid_token");
    }
    up.assert_nothing_seen("refused tokens");
    // Positive: the same proxy forwards a good one.
    let r = deliver_with(&p, &body, &[("Authorization", &good)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    // The log names the check, never the token.
    let logs = p.logs();
    assert!(logs.contains("expired"), "{logs}");
    assert!(!logs.contains("eyJ"), "a token reached the log:\n{logs}");
}

/// The token is judged after the signature header's form and before the
/// body: no signature header is `missing_signature` whatever the token; a
/// missing token is `missing_token` even over a body that would not verify.
#[test]
fn the_token_is_checked_after_the_signature_header_and_before_the_body() {
    let (up, jwks) = (Upstream::start(), jwks_server(&["rsa1"]));
    let p = oauth_proxy(&up, &jwks, "1h");
    wait_ready(&p);
    let body = event_body(&event_id(), "inquiry.approved");
    p.post(ROUTE, &[("Content-Type", "application/json")], &body)
        .assert_error(401, "missing_signature");
    let forged = sign("wbhsec_not_the_secret", now(), &body);
    let r = p.post(ROUTE, &[("Persona-Signature", forged.as_str())], &body);
    r.assert_error(401, "missing_token");
    // Decided before the body was read: the connection closes, so the
    // unread body is never taken for a next request.
    assert!(
        r.connection_close(),
        "a refusal before the body keeps the connection"
    );
    up.assert_nothing_seen("refusals");
}

#[test]
fn a_key_added_to_the_jwks_later_is_fetched_on_its_unknown_kid() {
    let (up, jwks) = (Upstream::start(), jwks_server(&["rsa1"]));
    let p = oauth_proxy(&up, &jwks, "1h");
    wait_ready(&p);
    let fetches = jwks.count();
    // The issuer rotates: rsa2 is published, and a token signed by it comes.
    jwks.set_body(&jwt::jwks(&["rsa1", "rsa2"]));
    let body = event_body(&event_id(), "inquiry.approved");
    let token = jwt::mint(Algorithm::RS256, "rsa2", &jwt::good_claims());
    let r = deliver_with(&p, &body, &[("Authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.count(), fetches + 1, "one fetch for the unknown kid");
    // A kid no set will have: refused, and no second fetch within the minute.
    // Signed by a known key, under a kid no set will have.
    let stranger = jwt::mint_as(Algorithm::RS256, "rsa1", "unknown-kid", &jwt::good_claims());
    for _ in 0..5 {
        let body = event_body(&event_id(), "inquiry.approved");
        deliver_with(&p, &body, &[("Authorization", &bearer(&stranger))])
            .assert_error(401, "invalid_token");
    }
    assert_eq!(
        jwks.count(),
        fetches + 1,
        "unknown kids fetch at most once a minute"
    );
}

#[test]
fn with_the_jwks_down_at_start_the_proxy_is_not_ready_until_it_comes_up() {
    let up = Upstream::start();
    let mut jwks = jwks_server(&["rsa1"]);
    jwks.stop();
    let p = oauth_proxy(&up, &jwks, "1h");
    wait_for("the fetch failure in the log", W, || {
        p.logs().contains("JWKS: cannot fetch the issuer's keys")
    });
    assert_eq!(p.readyz(), 503);
    let token = jwt::mint(Algorithm::RS256, "rsa1", &jwt::good_claims());
    let body = event_body(&event_id(), "inquiry.approved");
    deliver_with(&p, &body, &[("Authorization", &bearer(&token))])
        .assert_error(401, "invalid_token");
    jwks.restart();
    wait_ready(&p);
    let r = deliver_with(&p, &body, &[("Authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        p.metric(
            "persona_guard_jwks_refreshes_total{result=\"error\",route=\"/webhooks/persona\"}"
        ) >= 1.0
    );
    assert!(
        p.metric("persona_guard_jwks_refreshes_total{result=\"ok\",route=\"/webhooks/persona\"}")
            >= 1.0
    );
}

#[test]
fn a_failed_refresh_keeps_the_last_good_keys() {
    let up = Upstream::start();
    let mut jwks = jwks_server(&["ec1"]);
    let p = oauth_proxy(&up, &jwks, "1s");
    wait_ready(&p);
    jwks.stop();
    let errors = "persona_guard_jwks_refreshes_total{result=\"error\",route=\"/webhooks/persona\"}";
    wait_for("a failed refresh", W, || p.metric_or_zero(errors) >= 1.0);
    let token = jwt::mint(Algorithm::ES256, "ec1", &jwt::good_claims());
    let body = event_body(&event_id(), "inquiry.approved");
    let r = deliver_with(&p, &body, &[("Authorization", &bearer(&token))]);
    assert_eq!(
        r.status,
        200,
        "the last good set stays in use: {}",
        r.text()
    );
    assert_eq!(
        p.readyz(),
        200,
        "a failed refresh does not unready the proxy"
    );
    let age = p.metric("persona_guard_jwks_age_seconds{route=\"/webhooks/persona\"}");
    assert!(
        age >= 1.0,
        "the age of the set in use grows while refreshes fail: {age}"
    );
}

fn header_proxy(up: &Upstream) -> Proxy {
    let mut t = Table::new();
    t.insert(HEADER.into(), "env:PERSONA_HEADER_TOKEN".into());
    Proxy::builder()
        .upstream(up)
        .env("PERSONA_HEADER_TOKEN", HEADER_VALUE)
        .route(|r| r.set("require_headers", Value::Table(t)))
        .start()
}

#[test]
fn a_static_header_token_is_required_compared_and_never_forwarded() {
    let up = Upstream::start();
    let p = header_proxy(&up);
    let wrong = format!("{HEADER_VALUE}x");
    for extra in [
        vec![],
        vec![(HEADER, wrong.as_str())],
        vec![(HEADER, "")],
        vec![(HEADER, &HEADER_VALUE[..HEADER_VALUE.len() - 1])],
        vec![(HEADER, HEADER_VALUE), (HEADER, HEADER_VALUE)],
        vec![(HEADER, "spoofed"), (HEADER, HEADER_VALUE)],
    ] {
        let body = event_body(&event_id(), "inquiry.approved");
        deliver_with(&p, &body, &extra).assert_error(401, "invalid_header_token");
    }
    up.assert_nothing_seen("refused header tokens");
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let r = deliver_with(&p, &body, &[(HEADER, HEADER_VALUE)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = &up.wait_for_requests(1, W)[0];
    assert!(
        rec.header_all("x-webhook-token").is_empty(),
        "the token reached the app"
    );
    assert!(
        !p.logs().contains(HEADER_VALUE),
        "the token reached the log"
    );
}

#[test]
fn both_requirements_follow_a_reload() {
    let (up, jwks) = (Upstream::start(), jwks_server(&["rsa1"]));
    let p = header_proxy(&up);
    let token = jwt::mint(Algorithm::RS256, "rsa1", &jwt::good_claims());
    let auth = bearer(&token);
    let body = event_body(&event_id(), "inquiry.approved");
    // OAuth added by SIGHUP: a delivery without a token is refused after it.
    p.edit_config(|b| b.route(|r| r.set("oauth", oauth_table(&jwks, "1h"))));
    p.reload_ok();
    // Until the new route's JWKS is in, /readyz is 503 (and tokens 401).
    wait_ready(&p);
    deliver_with(&p, &body, &[(HEADER, HEADER_VALUE)]).assert_error(401, "missing_token");
    let r = deliver_with(
        &p,
        &body,
        &[(HEADER, HEADER_VALUE), ("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Both removed by SIGHUP: a bare signed delivery passes.
    p.edit_config(|b| b.route(|r| r.remove("oauth").remove("require_headers")));
    p.reload_ok();
    let r = p.deliver(&event_body(&event_id(), "inquiry.approved"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 2);
}

#[test]
fn check_validates_and_fetches_the_jwks_once_unless_offline() {
    let jwks = jwks_server(&["rsa1"]);
    let b = Proxy::builder().route(|r| r.set("oauth", oauth_table(&jwks, "1h")));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persona-guard.toml");
    std::fs::write(&file, b.toml()).unwrap();
    let env = [("PERSONA_WEBHOOK_SECRET", "wbhsec_check")];
    let out = run_cli(&["check", "--config", file.to_str().unwrap()], &env, None);
    let text = crate::cli::both_streams(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("JWKS"),
        "check says it fetched the JWKS: {text}"
    );
    assert_eq!(jwks.count(), 1);
    let out = run_cli(
        &["check", "--offline", "--config", file.to_str().unwrap()],
        &env,
        None,
    );
    assert_succeeded(&out);
    assert_eq!(jwks.count(), 1, "--offline fetches nothing");
    // A JWKS that cannot be fetched fails `check` (online), naming the key.
    let bad = b.clone().route(|r| {
        let mut t = oauth_table(&jwks, "1h");
        t.as_table_mut().unwrap().insert(
            "jwks_url".into(),
            format!("http://127.0.0.1:{}/jwks", free_port()).into(),
        );
        r.set("oauth", t)
    });
    std::fs::write(&file, bad.toml()).unwrap();
    let out = run_cli(&["check", "--config", file.to_str().unwrap()], &env, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("oauth.jwks_url"));
    // Not https and not loopback: refused, naming the key.
    let remote = b.route(|r| {
        let mut t = oauth_table(&jwks, "1h");
        t.as_table_mut()
            .unwrap()
            .insert("jwks_url".into(), "http://auth.example.com/jwks".into());
        r.set("oauth", t)
    });
    std::fs::write(&file, remote.toml()).unwrap();
    let out = run_cli(
        &["check", "--offline", "--config", file.to_str().unwrap()],
        &env,
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("oauth.jwks_url"));
}

/// `trigger --bearer` and `--header` try a route with both requirements end
/// to end; without them the same command is refused.
#[test]
fn trigger_sends_a_bearer_token_and_required_headers() {
    let (up, jwks) = (Upstream::start(), jwks_server(&["ed1"]));
    let mut t = Table::new();
    t.insert(HEADER.into(), "env:PERSONA_HEADER_TOKEN".into());
    let p = Proxy::builder()
        .upstream(&up)
        .env("PERSONA_HEADER_TOKEN", HEADER_VALUE)
        .route(|r| {
            r.set("require_headers", Value::Table(t))
                .set("oauth", oauth_table(&jwks, "1h"))
        })
        .start();
    wait_ready(&p);
    let url = format!("http://{}{ROUTE}", p.listen);
    let token = jwt::mint(Algorithm::EdDSA, "ed1", &jwt::good_claims());
    let header = format!("{HEADER}:{HEADER_VALUE}");
    let env = [("PG_E2E_TRIGGER_SECRET", p.secret())];
    let base = [
        "trigger",
        "inquiry.approved",
        "--url",
        &url,
        "--secret-env",
        "PG_E2E_TRIGGER_SECRET",
    ];
    let bare = run_cli(&base, &env, None);
    assert!(String::from_utf8_lossy(&bare.stdout).contains("invalid_header_token"));
    let mut args = base.to_vec();
    args.extend_from_slice(&["--bearer", &token, "--header", &header]);
    let out = run_cli(&args, &env, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HTTP/1.1 200"),
        "{stdout}"
    );
    let rec = &up.wait_for_requests(1, W)[0];
    assert!(rec.header_all("authorization").is_empty());
    assert!(rec.header_all("x-webhook-token").is_empty());
    assert!(!stdout.contains(&token) && !stdout.contains(HEADER_VALUE));
}

/// `check --print` never shows a header token written in the file, shows a
/// reference as written, and shows `[route.oauth]`; the same requirement
/// from a variable takes only references.
#[test]
fn check_print_redacts_header_tokens_and_variables_take_only_references() {
    let jwks = jwks_server(&["rsa1"]);
    let mut t = Table::new();
    t.insert("X-Literal".into(), "hdr-literal-5e3c".into());
    t.insert("X-Ref".into(), "env:PG_E2E_HDR".into());
    let b = Proxy::builder().route(|r| {
        r.set("require_headers", Value::Table(t))
            .set("oauth", oauth_table(&jwks, "1h"))
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persona-guard.toml");
    std::fs::write(&file, b.toml()).unwrap();
    let env = [
        ("PERSONA_WEBHOOK_SECRET", "wbhsec_check"),
        ("PG_E2E_HDR", "hdr-ref-value"),
    ];
    let out = run_cli(
        &[
            "check",
            "--print",
            "--offline",
            "--config",
            file.to_str().unwrap(),
        ],
        &env,
        None,
    );
    let text = crate::cli::both_streams(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("hdr-literal-5e3c") && !text.contains("hdr-ref-value"),
        "{text}"
    );
    assert!(
        text.contains("<redacted>") && text.contains("env:PG_E2E_HDR"),
        "{text}"
    );
    assert!(
        text.contains("[route.oauth]") && text.contains(ISSUER),
        "{text}"
    );
    // From the environment, with no file: a reference passes, a literal is refused unrepeated.
    let ok = run_cli(
        &["check", "--offline"],
        &[
            ("PERSONA_GUARD_ROUTE_PATH", "/webhooks/persona"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:PERSONA_WEBHOOK_SECRET"),
            ("PERSONA_WEBHOOK_SECRET", "wbhsec_check"),
            (
                "PERSONA_GUARD_ROUTE_REQUIRE_HEADERS",
                "X-Webhook-Token=env:PG_E2E_HDR",
            ),
            ("PG_E2E_HDR", "hdr-ref-value"),
        ],
        None,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run_cli(
        &["check", "--offline"],
        &[
            ("PERSONA_GUARD_ROUTE_PATH", "/webhooks/persona"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:PERSONA_WEBHOOK_SECRET"),
            ("PERSONA_WEBHOOK_SECRET", "wbhsec_check"),
            (
                "PERSONA_GUARD_ROUTE_REQUIRE_HEADERS",
                "X-Webhook-Token=hdr-pasted-literal",
            ),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("PERSONA_GUARD_ROUTE_REQUIRE_HEADERS") && !err.contains("hdr-pasted-literal"),
        "{err}"
    );
}
