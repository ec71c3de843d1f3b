//! Every reading of a request target that some application router takes.
//!
//! persona-guard is only as strong as the most liberal router behind it: a
//! request must be verified whenever *some* framework could run a handler
//! under a route for it. So the route decision does not normalise a target
//! once, its own way; it enumerates the target's readings along independent
//! axes, and a route covers the request when it covers **any** reading:
//!
//! | axis | choices | who reads a target that way |
//! |---|---|---|
//! | authority | the target as a path; the path after `scheme://authority` (any scheme, any case, any run of `/` and `\`); what follows `scheme:`; the path after a `//host` or `/\host` prefix | every server, for absolute-form; WHATWG URL parsers (`new URL(req.url, base)`) for `//host` |
//! | decoding | none; once; until stable (at most [`super::DECODE_ROUNDS`]) | Express routes on the undecoded path; werkzeug and Starlette decode once; stacked layers decode twice |
//! | decoded `?` and `#` | data; the end of the path | code that decodes before it splits off the query |
//! | separators | `/`; `/` and `\` | WHATWG URL, IIS |
//! | parameters | kept; `;…` dropped from every segment | Tomcat, Jetty, Spring |
//! | dot segments | literal; resolved after merging `//`; resolved with empty segments kept and `%2e` read as `.` | Express and Flask route `/x/..` to a handler under `/x`; Go's `path.Clean`; WHATWG URL |
//! | raw white space | data; the end of the target; trimmed and with tabs and newlines removed | Python's `http.server` (werkzeug, Flask) splits the request line on any Unicode white space, so a raw `0x85` or `0xA0` ends the path; WHATWG URL parsers trim C0 controls and spaces at both ends and drop tabs and newlines |
//! | last segment | kept; trailing white space and control bytes dropped; then cut at each `.` in turn | Python's `re` `$` matches before a final `\n` (Starlette runs `/webhooks/persona%0A`); Rails' `(.:format)`, Express's `{.:format}` (a route `/a/b.v2` under `/a/b.v2.json`) |
//!
//! Empty segments are ignored when a reading is compared with a route (routers
//! that merge `//` match more, never less), and so is ASCII case (Express
//! routes case-insensitively). A target of visible ASCII with none of `%`,
//! `\`, `;`, `.`, not starting with `//`, has a single reading, so the common
//! case stays cheap.

use std::borrow::Cow;

use super::{PathError, decode_further, decode_round};

/// A route's path as lower-case segments, ready to compare with readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePath {
    segments: Vec<Vec<u8>>,
}

impl RoutePath {
    /// From a path already normalised by [`super::normalize`].
    pub fn new(normalized: &[u8]) -> RoutePath {
        let segments = normalized
            .split(|b| *b == b'/')
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_ascii_lowercase)
            .collect();
        RoutePath { segments }
    }

    /// How many segments the route has (a deeper route is more specific).
    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    /// Whether `reading` lies at or below this path: its non-empty segments
    /// start with the route's, ASCII case ignored. The root covers everything.
    pub fn covers(&self, reading: &[&[u8]]) -> bool {
        let mut segments = reading.iter().filter(|s| !s.is_empty());
        self.segments
            .iter()
            .all(|r| segments.next().is_some_and(|s| s.eq_ignore_ascii_case(r)))
    }
}

/// Calls `visit` with the segments of each reading of `target` (a request
/// target exactly as received) until `visit` returns `true`; returns whether
/// it did. A reading's segments may include empty ones.
///
/// Errors: a `%` not followed by two hex digits before any `?` or `#`
/// ([`PathError::BadEncoding`]), or a NUL byte, raw or decoded
/// ([`PathError::Nul`]): no reading of such a target is safe to guess.
pub fn any_reading(
    target: &[u8],
    mut visit: impl FnMut(&[&[u8]]) -> bool,
) -> Result<bool, PathError> {
    let end = target
        .iter()
        .position(|b| matches!(b, b'?' | b'#'))
        .unwrap_or(target.len());
    let raw = &target[..end];
    let once = decode_round(raw, true)?.0;
    if raw.first() == Some(&b'/')
        && !raw.starts_with(b"//")
        && raw
            .iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'\\' | b';' | b'.'))
    {
        let segments: Vec<&[u8]> = raw.split(|b| *b == b'/').collect();
        return Ok(visit(&segments));
    }
    for view in views(raw, once)? {
        if segment_readings(&view, &mut visit) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The distinct strings to read as paths: each decoding of the target (with
/// and without a decoded `?`/`#` ending it), and each authority view of those.
fn views(raw: &[u8], once: Vec<u8>) -> Result<Vec<Vec<u8>>, PathError> {
    let mut decodings: Vec<Cow<'_, [u8]>> = vec![Cow::Borrowed(raw)];
    if let Some(cut) = raw.iter().position(|b| python_space(*b)) {
        decodings.push(Cow::Borrowed(&raw[..cut]));
    }
    // WHATWG URL parsers trim leading and trailing C0 controls and spaces,
    // then remove tabs and newlines anywhere.
    let start = raw.iter().position(|b| *b > b' ').unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| *b > b' ').map_or(start, |i| i + 1);
    let whatwg: Vec<u8> = raw[start..end]
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\t' | b'\n' | b'\r'))
        .collect();
    if whatwg != raw {
        decodings.push(Cow::Owned(whatwg));
    }
    let full = decode_further(once.clone())?;
    for decoded in [once, full] {
        if let Some(cut) = decoded.iter().position(|b| matches!(b, b'?' | b'#')) {
            decodings.push(Cow::Owned(decoded[..cut].to_vec()));
        }
        decodings.push(Cow::Owned(decoded));
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for d in &decodings {
        for view in authority_views(d) {
            if !out.iter().any(|o| o.as_slice() == view) {
                out.push(view.to_vec());
            }
        }
    }
    Ok(out)
}

/// What Python's `str.split()` splits a Latin-1 request line on.
fn python_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x20 | 0x85 | 0xa0)
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// The target itself, and the paths an authority-aware parser finds in it.
fn authority_views(s: &[u8]) -> Vec<&[u8]> {
    let mut views = vec![s];
    if let Some(rest) = after_scheme(s) {
        views.push(rest);
        views.extend(after_authority(rest));
    }
    if s.len() >= 2 && is_slash(s[0]) && is_slash(s[1]) {
        views.extend(after_authority(s));
    }
    views
}

/// What follows `scheme:` when `s` starts with a scheme (RFC 3986 §3.1: a
/// letter, then letters, digits, `+`, `-`, `.`), in any case.
fn after_scheme(s: &[u8]) -> Option<&[u8]> {
    let colon = s.iter().position(|b| *b == b':')?;
    let scheme = &s[..colon];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    valid.then(|| &s[colon + 1..])
}

/// The path after a run of `/` and `\` and an authority, the authority ending
/// at `/`, `?`, `#` and (as WHATWG URL parsers read special schemes) `\`, or
/// not at `\` (as they read other schemes).
fn after_authority(s: &[u8]) -> [&[u8]; 2] {
    let start = s.iter().position(|b| !is_slash(*b)).unwrap_or(s.len());
    let rest = &s[start..];
    let end = |stop: fn(u8) -> bool| rest.iter().position(|b| stop(*b)).unwrap_or(rest.len());
    let special = end(|b| matches!(b, b'/' | b'\\' | b'?' | b'#'));
    let other = end(|b| matches!(b, b'/' | b'?' | b'#'));
    [&rest[special..], &rest[other..]]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    One,
    Two,
}

/// `.` and `..`, also spelled with `%2e` (as WHATWG URL parsers read them).
fn dot(segment: &[u8]) -> Option<Dot> {
    let unit = |s: &[u8]| s == b"." || s.eq_ignore_ascii_case(b"%2e");
    if unit(segment) {
        return Some(Dot::One);
    }
    let two = [(1, 1), (1, 3), (3, 1), (3, 3)]
        .iter()
        .any(|&(a, b)| segment.len() == a + b && unit(&segment[..a]) && unit(&segment[a..]));
    two.then_some(Dot::Two)
}

/// Resolves dot segments. `merge`: empty segments are dropped first (as Go's
/// `path.Clean` does); otherwise they count (RFC 3986, WHATWG), so `x//..`
/// stays at `x`.
fn resolve<'a>(segments: &[&'a [u8]], merge: bool) -> Vec<&'a [u8]> {
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for s in segments {
        if merge && s.is_empty() {
            continue;
        }
        match dot(s) {
            Some(Dot::One) => {}
            Some(Dot::Two) => {
                out.pop();
            }
            None => out.push(s),
        }
    }
    out
}

/// Visits every reading of one path string along the separator, parameter,
/// dot-segment and suffix axes; stops when `visit` returns `true`.
fn segment_readings(view: &[u8], visit: &mut impl FnMut(&[&[u8]]) -> bool) -> bool {
    let separators: &[fn(&u8) -> bool] = if view.contains(&b'\\') {
        &[|b| *b == b'/', |b| is_slash(*b)]
    } else {
        &[|b| *b == b'/']
    };
    for separator in separators {
        let segments: Vec<&[u8]> = view.split(separator).collect();
        let has_params = segments.iter().any(|s| s.contains(&b';'));
        let without_params: Vec<&[u8]>;
        let mut by_params = vec![&segments];
        if has_params {
            without_params = segments
                .iter()
                .map(|s| s.split(|b| *b == b';').next().unwrap_or(s))
                .collect();
            by_params.push(&without_params);
        }
        for segments in by_params {
            let mut by_dots = vec![Cow::Borrowed(segments.as_slice())];
            if segments.iter().any(|s| dot(s).is_some()) {
                by_dots.push(Cow::Owned(resolve(segments, true)));
                by_dots.push(Cow::Owned(resolve(segments, false)));
            }
            for reading in &by_dots {
                if visit(reading) || last_segment_readings(reading, visit) {
                    return true;
                }
            }
        }
    }
    false
}

/// The reading with its last non-empty segment trimmed of trailing white
/// space and control bytes, and then also cut at each of its `.` (a route
/// `/a/b.v2` is reached by `/a/b.v2.json`, as Express's `{.:format}` and
/// Rails' `(.:format)` read it); visits each that differs from the reading.
fn last_segment_readings(reading: &[&[u8]], visit: &mut impl FnMut(&[&[u8]]) -> bool) -> bool {
    let Some(last) = reading.iter().rposition(|s| !s.is_empty()) else {
        return false;
    };
    let segment = reading[last];
    let keep = segment
        .iter()
        .rposition(|b| !(b.is_ascii_whitespace() || b.is_ascii_control()))
        .map_or(0, |i| i + 1);
    let trimmed = &segment[..keep];
    let mut out = reading[..=last].to_vec();
    if trimmed.len() < segment.len() {
        out[last] = trimmed;
        if visit(&out) {
            return true;
        }
    }
    for (dot, _) in trimmed.iter().enumerate().filter(|(_, b)| **b == b'.') {
        out[last] = &trimmed[..dot];
        if visit(&out) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
