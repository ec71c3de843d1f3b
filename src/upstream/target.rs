//! How a client's request target is written, and which bodies travel with
//! their head.

use std::borrow::Cow;

use http::Method;
use pingora::http::RequestHeader;

/// Bodies up to this size are sent in the same write as the request head,
/// and passthrough requests up to it take the buffered path.
pub const COALESCE_LIMIT: usize = 64 * 1024;

/// How a request target is written (RFC 9112 §3.2), for the forms the proxy forwards.
pub enum TargetForm<'a> {
    /// `/path?query`, forwarded as it is; or `*` for `OPTIONS`, which the
    /// proxy answers itself (`answer_asterisk`).
    Origin,
    /// `scheme://authority/path?query`: forwarded as `origin`, with the
    /// authority as `Host`.
    Absolute {
        authority: &'a [u8],
        origin: Cow<'a, [u8]>,
    },
}

/// The request's target form; `None` for every other form (authority-form
/// `CONNECT`, `scheme:opaque`, a bare `?query`), which is refused: nothing
/// but an origin-form target is forwarded, so the app never routes on a form
/// the proxy did not judge.
pub fn target_form(req: &RequestHeader) -> Option<TargetForm<'_>> {
    use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') || (raw == b"*" && req.method == Method::OPTIONS) {
        return Some(TargetForm::Origin);
    }
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            authority,
            path_and_query,
            ..
        } => {
            let origin = match path_and_query.first() {
                None => Cow::Borrowed(&b"/"[..]),
                Some(b'/') => Cow::Borrowed(path_and_query),
                Some(_) => Cow::Owned([b"/", path_and_query].concat()),
            };
            Some(TargetForm::Absolute { authority, origin })
        }
        _ => None,
    }
}
