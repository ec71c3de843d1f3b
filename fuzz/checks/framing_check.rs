//! The smuggling defence (`framing::check`) on arbitrary request heads. When
//! it accepts a head, an independent strict parser (httparse) must read the
//! same one framing from it: at most one Content-Length, digits only;
//! Transfer-Encoding only `chunked`, never both; no header line that httparse
//! drops or folds. Also: no panic on any input.
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
