//! The static header tokens a route requires (`require_headers`).

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::RequiredHeader;

/// Every required header present exactly once with exactly its value.
/// Compared as SHA-256 digests in constant time, so neither the value nor
/// its length shows in the time taken. `Err` names the check that failed.
pub fn check(headers: &HeaderMap, required: &[RequiredHeader]) -> Result<(), &'static str> {
    for r in required {
        let mut all = headers.get_all(&r.name).iter();
        let value = match (all.next(), all.next()) {
            (None, _) => return Err("a required header is missing"),
            (Some(_), Some(_)) => return Err("a required header came more than once"),
            (Some(v), None) => v,
        };
        let (got, want) = (Sha256::digest(value.as_bytes()), Sha256::digest(&r.value));
        if !bool::from(got.ct_eq(&want)) {
            return Err("a required header has another value");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn required() -> Vec<RequiredHeader> {
        vec![RequiredHeader {
            name: HeaderName::from_static("x-webhook-token"),
            value: b"s3cret-token".to_vec(),
        }]
    }

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-webhook-token", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_right_value_once_passes_and_anything_else_fails() {
        assert_eq!(check(&with(&["s3cret-token"]), &required()), Ok(()));
        for (headers, why) in [
            (with(&[]), "a required header is missing"),
            (
                with(&["s3cret-toke"]),
                "a required header has another value",
            ),
            (
                with(&["s3cret-token "]),
                "a required header has another value",
            ),
            (
                with(&["S3CRET-TOKEN"]),
                "a required header has another value",
            ),
            (
                with(&["s3cret-token", "s3cret-token"]),
                "a required header came more than once",
            ),
            (
                with(&["wrong", "s3cret-token"]),
                "a required header came more than once",
            ),
        ] {
            assert_eq!(check(&headers, &required()), Err(why), "{headers:?}");
        }
    }

    #[test]
    fn no_requirement_passes_everything() {
        assert_eq!(check(&with(&["anything"]), &[]), Ok(()));
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert!(!format!("{:?}", required()).contains("s3cret"));
    }
}
