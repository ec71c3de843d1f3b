//! Event field extraction from arbitrary (verified) bodies: no panic, and
//! whatever is returned is safe to put in a header.
//!
//! Shared by the cargo-fuzz target of the same name and by the ordinary
//! test `tests/fuzz_corpus.rs`, which runs it over the committed corpus.

use persona_guard::event;

pub fn check(data: &[u8]) {
    if let Ok(ev) = event::parse(data) {
        for v in [
            Some(ev.id.as_ref()),
            Some(ev.name.as_ref()),
            ev.created_at.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(!v.is_empty() && v.len() <= event::MAX_FIELD_LEN);
            assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)));
            assert!(http::HeaderValue::from_str(v).is_ok());
        }
    }
}
