//! Path normalisation for route matching.
//!
//! A route protects its own path and every path below it on a segment
//! boundary. Matching compares normalised paths, and normalisation takes the
//! *safest reading*: any spelling that some upstream framework could read as a
//! protected route must normalise onto it. Over-matching is safe (more requests
//! get verified); under-matching would be a bypass.
//!
//! [`normalize`] applies, in order:
//! 1. everything from the first raw `?` or `#` on is ignored;
//! 2. percent-decoding, repeated until stable, at most [`DECODE_ROUNDS`] rounds,
//!    so double-encoded spellings such as `%252F` match too. Round one is
//!    strict: `%` not followed by two hex digits is [`PathError::BadEncoding`].
//!    Later rounds keep such a `%` literally, finish the round and stop;
//! 3. a NUL byte, raw or decoded in any round, is [`PathError::Nul`];
//! 4. `\` counts as `/` (as some servers and frameworks read it), and decoded
//!    `%2F` / `%5C` count as separators;
//! 5. in each segment, the parameters from the first `;` on are dropped
//!    (`/a;x=1/b` reads as `/a/b`, as Tomcat/Spring do), also for a decoded
//!    `%3B`; a segment that becomes empty is dropped and `..;x` counts as `..`;
//! 6. empty and `.` segments are dropped, `..` removes the previous segment
//!    (never going above the root);
//! 7. ASCII letters are lower-cased; other bytes (non-UTF-8 too) compare as
//!    bytes. A decoded `?` or `#` is an ordinary byte. The result has no
//!    trailing slash, except the root `/`.
//!
//! [`normalize`] gives a route's own path its canonical form (the replay
//! store's key, duplicate detection in the config). Deciding whether a
//! *request* falls under a route takes every reading some router takes:
//! see [`readings`].

pub mod readings;

pub use readings::{RoutePath, any_reading};

/// Most percent-decoding rounds [`normalize`] applies.
pub const DECODE_ROUNDS: usize = 3;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits (first decoding round).
    #[error("the path has invalid percent-encoding")]
    BadEncoding,
    /// A raw or decoded NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
}

/// Normalises a request target's path (bytes as received; anything from the first `?` or `#` on is ignored).
/// Result: starts with `/`, has no empty, `.` or `..` segments, no trailing slash (except the root "/"), lower-case ASCII.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let end = raw
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(raw.len());
    let once = decode_round(&raw[..end], true)?.0;
    Ok(resolve(&decode_further(once)?))
}

/// Decodes an already once-decoded path again until it is stable, a round
/// leaves a `%` that is not an escape, or [`DECODE_ROUNDS`] rounds are done.
fn decode_further(mut bytes: Vec<u8>) -> Result<Vec<u8>, PathError> {
    for _ in 1..DECODE_ROUNDS {
        if !bytes.contains(&b'%') {
            break;
        }
        let (next, clean) = decode_round(&bytes, false)?;
        let changed = next != bytes;
        bytes = next;
        if !clean || !changed {
            break;
        }
    }
    Ok(bytes)
}

/// True when normalised `path` equals normalised `route` or lies below it on a segment boundary.
/// Both arguments must already be normalised. Route "/" covers everything.
pub fn is_within(path: &[u8], route: &[u8]) -> bool {
    if route == b"/" {
        return true;
    }
    match path.strip_prefix(route) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
        None => false,
    }
}

/// One percent-decoding pass. Returns the decoded bytes and whether every `%`
/// was a valid escape. `strict` turns an invalid escape into an error.
fn decode_round(input: &[u8], strict: bool) -> Result<(Vec<u8>, bool), PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut clean = true;
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let mut byte = b;
        let mut width = 1;
        if b == b'%' {
            let hi = input.get(i + 1).and_then(|c| hex_value(*c));
            let lo = input.get(i + 2).and_then(|c| hex_value(*c));
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    byte = (h << 4) | l;
                    width = 3;
                }
                _ if strict => return Err(PathError::BadEncoding),
                _ => clean = false,
            }
        }
        if byte == 0 {
            return Err(PathError::Nul);
        }
        out.push(byte);
        i += width;
    }
    Ok((out, clean))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Splits decoded bytes into segments and resolves them (steps 4 to 7).
fn resolve(decoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(decoded.len() + 1);
    // Where each kept segment's leading '/' sits in `out`, for `..`.
    let mut starts: Vec<usize> = Vec::new();
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        let name = match segment.iter().position(|b| *b == b';') {
            Some(semi) => &segment[..semi],
            None => segment,
        };
        match name {
            b"" | b"." => {}
            b".." => {
                if let Some(start) = starts.pop() {
                    out.truncate(start);
                }
            }
            _ => {
                starts.push(out.len());
                out.push(b'/');
                out.extend(name.iter().map(u8::to_ascii_lowercase));
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROUTE: &[u8] = b"/webhooks/persona";

    fn norm(p: &[u8]) -> Vec<u8> {
        match normalize(p) {
            Ok(n) => n,
            Err(e) => panic!("{} failed: {e}", String::from_utf8_lossy(p)),
        }
    }

    #[test]
    fn spellings_that_match() {
        for p in [
            "/webhooks/persona",
            "/webhooks/persona/",
            "/WEBHOOKS/Persona",
            "//webhooks///persona",
            "/webhooks/./persona",
            "/x/../webhooks/persona",
            "/../webhooks/persona",
            "/webhooks%2Fpersona",
            "/webhooks%2fpersona",
            "/%77ebhooks/persona",
            "/webhooks/persona?x=1",
            "/webhooks/persona#frag",
            "/webhooks/persona/sub",
            "/webhooks\\persona",
            "/webhooks%5Cpersona",
            "/webhooks;a=b/persona",
            "/webhooks/persona;jsessionid=1",
            "/webhooks%3Bx/persona",
            "/webhooks/..;x/webhooks/persona",
            "/webhooks%252Fpersona",
            "/webhooks%25252Fpersona",
            "/webhooks/persona/.",
            "/webhooks/persona/x/..",
            "/webhooks/%2e/persona",
            "/webhooks/%2E%2E/webhooks/persona",
            "webhooks/persona",
        ] {
            let n = norm(p.as_bytes());
            assert!(
                is_within(&n, ROUTE),
                "{p} -> {}",
                String::from_utf8_lossy(&n)
            );
        }
    }

    #[test]
    fn spellings_that_do_not_match() {
        for p in [
            "/webhooks/personal",
            "/webhooks/persona-x",
            "/webhooks",
            "/webhooks/persona/../other",
            "/",
            "",
            "/other/webhooks/persona",
            "/webhooks/persona%3Fx",
        ] {
            let n = norm(p.as_bytes());
            assert!(
                !is_within(&n, ROUTE),
                "{p} -> {}",
                String::from_utf8_lossy(&n)
            );
        }
    }

    #[test]
    fn exact_results() {
        for (p, want) in [
            ("", "/"),
            ("/..", "/"),
            ("/a/b/../../..", "/"),
            ("/A/%C3%A9", "/a/\u{e9}"),
            ("/100%25", "/100%"),
            ("/a%25zz", "/a%zz"),
            ("/a%2525252F", "/a%2f"),
        ] {
            assert_eq!(norm(p.as_bytes()), want.as_bytes(), "{p}");
        }
        assert_eq!(norm(b"/a/\xff\xFE"), b"/a/\xff\xfe");
        assert!(is_within(b"/anything", b"/"));
        assert!(is_within(b"/", b"/"));
    }

    #[test]
    fn errors() {
        for (p, want) in [
            (&b"/webhooks/%zz"[..], PathError::BadEncoding),
            (b"/a%", PathError::BadEncoding),
            (b"/a%2", PathError::BadEncoding),
            (b"/a%00b", PathError::Nul),
            (b"/a\0b", PathError::Nul),
            (b"/a%2500", PathError::Nul),
        ] {
            assert_eq!(normalize(p), Err(want), "{}", String::from_utf8_lossy(p));
        }
        assert_eq!(normalize(b"/ok?%zz\0"), Ok(b"/ok".to_vec()));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("webhooks".to_string()),
            Just("persona".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2e%2E".to_string()),
            Just("%2F".to_string()),
            Just("%77ebhooks".to_string()),
            Just("persona;v=1".to_string()),
            "[a-zA-Z0-9_-]{1,6}",
        ]
    }

    fn flip_case(s: &str, mask: u64) -> String {
        let flip = |(i, c): (usize, char)| match (mask >> (i % 64)) & 1 {
            1 if c.is_ascii_lowercase() => c.to_ascii_uppercase(),
            1 => c.to_ascii_lowercase(),
            _ => c,
        };
        s.chars().enumerate().map(flip).collect()
    }

    proptest! {
        #[test]
        fn prop_never_panics_and_idempotent(p in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(n) = normalize(&p) {
                prop_assert_eq!(n.first(), Some(&b'/'));
                // `%`, `?` and `#` in the output are data; re-reading them as syntax differs.
                if !n.iter().any(|b| matches!(b, b'%' | b'?' | b'#')) {
                    prop_assert_eq!(normalize(&n), Ok(n));
                }
            }
        }

        #[test]
        fn prop_idempotent_on_tricky_alphabet(p in "[/\\\\.;%25fFeE2aA]{0,64}") {
            if let Ok(n) = normalize(p.as_bytes())
                && !n.contains(&b'%')
            {
                prop_assert_eq!(normalize(&n), Ok(n));
            }
        }

        #[test]
        fn prop_respellings_match_alike(
            parts in proptest::collection::vec((segment(), 0usize..4, any::<u64>()), 0..8)
        ) {
            let mut plain = String::new();
            let mut respelled = String::new();
            for (seg, extra, mask) in &parts {
                plain.push('/');
                plain.push_str(seg);
                respelled.push('/');
                respelled.push_str(["", "/", "./", "//./"][*extra]);
                respelled.push_str(&flip_case(seg, *mask));
            }
            let a = normalize(plain.as_bytes());
            let b = normalize(respelled.as_bytes());
            prop_assert!(a.is_ok());
            prop_assert_eq!(&a, &b);
            let a = a.unwrap_or_default();
            let b = b.unwrap_or_default();
            prop_assert_eq!(is_within(&a, ROUTE), is_within(&b, ROUTE));
        }

        /// A path whose decoded segments never spell the route is never
        /// mapped into it, however it is encoded.
        #[test]
        fn prop_outside_paths_never_map_in(
            segs in proptest::collection::vec("[a-z0-9_.-]{1,10}", 0..6),
            encode in any::<u64>(),
        ) {
            let plain: String = segs.iter().map(|s| format!("/{s}")).collect();
            let n = normalize(plain.as_bytes()).unwrap_or_default();
            prop_assume!(!is_within(&n, ROUTE));
            // Percent-encode some bytes (including `/`-free ones): same decision.
            let encoded: String = plain
                .bytes()
                .enumerate()
                .map(|(i, b)| {
                    if b != b'/' && encode >> (i % 64) & 1 == 1 {
                        format!("%{b:02X}")
                    } else {
                        (b as char).to_string()
                    }
                })
                .collect();
            let m = normalize(encoded.as_bytes()).unwrap_or_default();
            prop_assert!(!is_within(&m, ROUTE), "{encoded} maps into the route");
        }
    }
}
