//! The smuggling defence (`framing::check`) on arbitrary request heads. When
//! it accepts a head, an independent strict parser (httparse) must read the
//! same one framing from it: at most one Content-Length, digits only;
//! Transfer-Encoding only `chunked`, never both; no header line that httparse
//! drops or folds. Also: no panic on any input. And the `Host` rule
//! (`framing::valid_host`): a Host it accepts, used as a URL base the way
//! Node's documentation does (`new URL(target, 'http://' + host)`, here the
//! `url` crate), adds no path, query, fragment or user info, so asterisk-form
//! and any target keep their own path.
//!
//! Shared by the cargo-fuzz target of the same name and by the ordinary
//! test `tests/fuzz_corpus.rs`, which runs it over the committed corpus.

use persona_guard::framing;

pub fn check(data: &[u8]) {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        let _ = framing::check(data);
        return;
    };
    let head = &data[..end + 4];
    if framing::check(head).is_err() {
        return;
    }
    check_hosts(head);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = req.parse(head) else {
        return; // pingora refuses what httparse cannot read
    };
    assert_eq!(n, head.len());
    let lines = head[..end].split(|b| *b == b'\n').count() - 1;
    assert_eq!(
        req.headers.len(),
        lines,
        "a header line was read as something else"
    );
    let named = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
            .collect::<Vec<_>>()
    };
    let cl = named("content-length");
    let te = named("transfer-encoding");
    assert!(
        cl.len() <= 1 && te.len() <= 1,
        "repeated framing headers accepted"
    );
    assert!(
        cl.is_empty() || te.is_empty(),
        "both framing headers accepted"
    );
    for v in cl {
        assert!(
            !v.is_empty() && v.iter().all(u8::is_ascii_digit),
            "odd Content-Length accepted"
        );
    }
    for v in te {
        assert!(
            v.eq_ignore_ascii_case(b"chunked"),
            "odd Transfer-Encoding accepted"
        );
    }
}

/// Every `Host` line of `head` that `valid_host` accepts is a bare authority
/// to a WHATWG URL parser.
fn check_hosts(head: &[u8]) {
    for line in head.split(|b| *b == b'\n') {
        let Some(value) = line
            .strip_prefix(b"Host:")
            .or_else(|| line.strip_prefix(b"host:"))
        else {
            continue;
        };
        let value = value.trim_ascii();
        if !framing::valid_host(value) {
            continue;
        }
        let Ok(host) = std::str::from_utf8(value) else {
            panic!("a Host that is not ASCII was accepted");
        };
        if let Ok(base) = url::Url::parse(&format!("http://{host}")) {
            assert_eq!(base.path(), "/", "Host {host:?} carries a path");
            assert!(
                base.query().is_none() && base.fragment().is_none(),
                "{host:?}"
            );
            assert!(
                base.username().is_empty() && base.password().is_none(),
                "{host:?}"
            );
            let star = base.join("*").expect("a base takes `*`");
            assert_eq!(star.path(), "/*", "OPTIONS * with Host {host:?}");
        }
    }
}
