//! Parsing, verification and creation of Persona's `Persona-Signature` header.
//!
//! The header value is `t=<unix seconds>,v1=<hex HMAC-SHA256>`. The HMAC key is
//! the webhook secret's raw bytes (not base64-decoded) and the signed message is
//! `<t>.<raw body>`. During secret rotation the header carries several
//! space-separated sets, e.g. `t=<t1>,v1=<sig1> t=<t2>,v1=<sig2>`.
//!
//! Parsing is liberal in form and strict in content:
//! - tokens are separated by commas and/or ASCII whitespace; empty tokens are
//!   skipped, and every other token must be `key=value` with a non-empty key;
//! - keys are case-sensitive: `t=` starts a new set, `v1=` adds a signature to
//!   the current set (a set may hold several), all other keys (`v0=`, …) are
//!   ignored;
//! - `t` is ASCII digits only (no sign) and must fit in an `i64`; `v1` is exactly
//!   64 hex digits in either case;
//! - malformed: non-ASCII bytes, no set at all, a `v1` before any `t`, a set
//!   without `v1`, more than [`MAX_SETS`] sets or [`MAX_SIGNATURES`] signatures.
//!
//! The signed message uses the timestamp re-formatted from the parsed `i64`
//! (canonical decimal), so `t=017…` is checked as `17…` (Persona sends no
//! leading zeros; a forger gains nothing, the number is the same).
//! Error messages never contain the header text or any signature.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Most signature sets one header may carry; more is malformed (bounds HMAC work per request).
pub const MAX_SETS: usize = 8;
/// Most v1 signatures in one header in total.
pub const MAX_SIGNATURES: usize = 16;

/// One `t=…,v1=…` set: a timestamp and the signatures claimed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSet {
    /// Unix seconds from `t=`.
    pub timestamp: i64,
    /// Decoded `v1=` HMAC-SHA256 values (at least one).
    pub signatures: Vec<[u8; 32]>,
}

/// A parsed `Persona-Signature` header: one or more sets, in header order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signature sets (1 to [`MAX_SETS`]).
    pub sets: Vec<SignatureSet>,
}

/// Why a header value is malformed. Messages never echo the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value contains a non-ASCII byte.
    #[error("header is not ASCII")]
    NotAscii,
    /// The value holds no `t=` at all (empty, whitespace or unknown keys only).
    #[error("no signature set")]
    NoSet,
    /// A token lacks `=` or has an empty key.
    #[error("a field is not of the form key=value")]
    NotKeyValue,
    /// A `t` value is not ASCII digits fitting in an `i64`.
    #[error("timestamp is not a whole number of seconds")]
    BadTimestamp,
    /// A `v1` value is not exactly 64 hex digits.
    #[error("v1 is not 64 hex digits")]
    BadSignature,
    /// A `v1` appears before any `t`.
    #[error("a v1 signature comes before any t=")]
    SignatureBeforeTimestamp,
    /// A set has a `t` but no `v1`.
    #[error("a signature set has no v1")]
    SetWithoutSignature,
    /// More than [`MAX_SETS`] sets.
    #[error("too many signature sets")]
    TooManySets,
    /// More than [`MAX_SIGNATURES`] `v1` values.
    #[error("too many signatures")]
    TooManySignatures,
}

/// Parses the header value (raw bytes as received).
pub fn parse(value: &[u8]) -> Result<SignatureHeader, ParseError> {
    if !value.is_ascii() {
        return Err(ParseError::NotAscii);
    }
    let mut sets: Vec<SignatureSet> = Vec::new();
    let mut total_signatures = 0usize;
    let tokens = value
        .split(|b| *b == b',' || b.is_ascii_whitespace())
        .filter(|t| !t.is_empty());
    for token in tokens {
        let eq = token
            .iter()
            .position(|b| *b == b'=')
            .ok_or(ParseError::NotKeyValue)?;
        let (key, val) = (&token[..eq], &token[eq + 1..]);
        match key {
            [] => return Err(ParseError::NotKeyValue),
            b"t" => {
                if sets.last().is_some_and(|s| s.signatures.is_empty()) {
                    return Err(ParseError::SetWithoutSignature);
                }
                if sets.len() == MAX_SETS {
                    return Err(ParseError::TooManySets);
                }
                let timestamp = parse_timestamp(val)?;
                sets.push(SignatureSet {
                    timestamp,
                    signatures: Vec::new(),
                });
            }
            b"v1" => {
                let set = sets
                    .last_mut()
                    .ok_or(ParseError::SignatureBeforeTimestamp)?;
                if total_signatures == MAX_SIGNATURES {
                    return Err(ParseError::TooManySignatures);
                }
                let mut sig = [0u8; 32];
                hex::decode_to_slice(val, &mut sig).map_err(|_| ParseError::BadSignature)?;
                set.signatures.push(sig);
                total_signatures += 1;
            }
            _ => {}
        }
    }
    match sets.last() {
        None => Err(ParseError::NoSet),
        Some(s) if s.signatures.is_empty() => Err(ParseError::SetWithoutSignature),
        Some(_) => Ok(SignatureHeader { sets }),
    }
}

fn parse_timestamp(val: &[u8]) -> Result<i64, ParseError> {
    if val.is_empty() || !val.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadTimestamp);
    }
    std::str::from_utf8(val)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ParseError::BadTimestamp)
}

/// Outcome of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Some set verified with `secrets[secret_index]` and its timestamp is within tolerance.
    Valid {
        /// Index into the `secrets` slice of the (lowest-index) secret that verified.
        secret_index: usize,
    },
    /// No set verified with any secret.
    Invalid,
    /// A set verified, but every verifying set's timestamp is further than tolerance from now.
    Stale,
}

/// Verifies; a set is accepted iff one of its v1 equals `HMAC(secret, "<t>.<body>")` for some secret
/// AND |now - t| <= tolerance_secs (exactly tolerance away is still fresh). Constant-time comparison (subtle).
/// `secrets` are raw key bytes. Compute each HMAC once per (set, secret), not per v1.
/// When several secrets verify fresh sets, the lowest secret index is reported.
pub fn verify<S: AsRef<[u8]>>(
    header: &SignatureHeader,
    secrets: &[S],
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Verdict {
    verify_timed(header, secrets, body, now, tolerance_secs).0
}

/// [`verify`], with the timestamp of the set that verified when the verdict
/// is `Valid` (what a signed request is told apart by, with its body).
pub fn verify_timed<S: AsRef<[u8]>>(
    header: &SignatureHeader,
    secrets: &[S],
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> (Verdict, Option<i64>) {
    let mut stale = false;
    for (secret_index, secret) in secrets.iter().enumerate() {
        for set in &header.sets {
            let Some(expected) = hmac_of(secret.as_ref(), set.timestamp, body) else {
                continue;
            };
            let matched = set
                .signatures
                .iter()
                .fold(Choice::from(0), |acc, sig| acc | sig.ct_eq(&expected));
            if !bool::from(matched) {
                continue;
            }
            let age = i128::from(now) - i128::from(set.timestamp);
            if age.abs() <= i128::from(tolerance_secs) {
                return (Verdict::Valid { secret_index }, Some(set.timestamp));
            }
            stale = true;
        }
    }
    if stale {
        (Verdict::Stale, None)
    } else {
        (Verdict::Invalid, None)
    }
}

/// The header value (without header name) for a body: `t=<t>,v1=<lower hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    match hmac_of(secret, timestamp, body) {
        Some(mac) => format!("t={timestamp},v1={}", hex::encode(mac)),
        // Unreachable (HMAC takes keys of any length); an empty v1 fails closed.
        None => format!("t={timestamp},v1="),
    }
}

/// HMAC-SHA256 of `"<timestamp>.<body>"`; `None` only if the key were rejected.
fn hmac_of(secret: &[u8], timestamp: i64, body: &[u8]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"wbhsec_test_secret";
    const BODY: &[u8] = br#"{"data":{"id":"evt_1"}}"#;
    const T: i64 = 1_700_000_000;
    // python3 -c "import hmac,hashlib;print(hmac.new(b'wbhsec_test_secret', b'1700000000.{\"data\":{\"id\":\"evt_1\"}}', hashlib.sha256).hexdigest())"
    const PY_HEX: &str = "1453295a46c2e8175f8f94c6ffe45dab640eba1c9de78c8e73883fa50c87a68a";
    const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn check(header: &str, secrets: &[&[u8]], body: &[u8], now: i64, tol: i64) -> Verdict {
        match parse(header.as_bytes()) {
            Ok(h) => verify(&h, secrets, body, now, tol),
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    const VALID0: Verdict = Verdict::Valid { secret_index: 0 };

    #[test]
    fn python_vector() {
        assert_eq!(sign(SECRET, T, BODY), format!("t={T},v1={PY_HEX}"));
        let h = format!("t={T},v1={PY_HEX}");
        assert_eq!(check(&h, &[SECRET], BODY, T, 300), VALID0);
    }

    #[test]
    fn round_trip_and_rejections() {
        let h = sign(b"k", 42, b"hello");
        assert_eq!(check(&h, &[b"k"], b"hello", 42, 0), VALID0);
        assert_eq!(check(&h, &[b"k"], b"hellp", 42, 0), Verdict::Invalid);
        assert_eq!(check(&h, &[b"other"], b"hello", 42, 0), Verdict::Invalid);
        assert_eq!(check(&h, &[], b"hello", 42, 0), Verdict::Invalid);
    }

    #[test]
    fn rotation() {
        let h = format!("t=5,v1={ZERO_HEX} t={T},v1={PY_HEX}");
        assert_eq!(check(&h, &[SECRET], BODY, T, 300), VALID0);
        let h = format!("t={T},v1={PY_HEX}");
        let v = check(&h, &[b"new-secret", SECRET], BODY, T, 300);
        assert_eq!(v, Verdict::Valid { secret_index: 1 });
    }

    #[test]
    fn staleness() {
        let h = format!("t={T},v1={PY_HEX}");
        for (now, want) in [
            (T + 300, VALID0),
            (T - 300, VALID0),
            (T + 301, Verdict::Stale),
            (T - 301, Verdict::Stale),
            (T + 100_000, Verdict::Stale),
            (T - 100_000, Verdict::Stale),
            (i64::MIN, Verdict::Stale),
        ] {
            assert_eq!(check(&h, &[SECRET], BODY, now, 300), want, "now={now}");
        }
        // A fresh, wrong set does not make a stale, verifying set valid.
        let h = format!("t={T},v1={PY_HEX} t={},v1={ZERO_HEX}", T + 1000);
        assert_eq!(check(&h, &[SECRET], BODY, T + 1000, 300), Verdict::Stale);
    }

    #[test]
    fn liberal_forms() {
        let upper = PY_HEX.to_ascii_uppercase();
        for h in [
            format!("t={T},v1={upper}"),
            format!("t={T},v0=abc,v1={PY_HEX},x=,scheme=v1"),
            format!("t={T}, v1={PY_HEX}"),
            format!("  t=1,v1={ZERO_HEX}   t={T},v1={PY_HEX}  "),
            format!("t={T},v1={ZERO_HEX},v1={PY_HEX}"),
            format!("\tt={T} ,, v1={PY_HEX},\r\n"),
        ] {
            assert_eq!(check(&h, &[SECRET], BODY, T, 300), VALID0, "{h}");
        }
    }

    #[test]
    fn leading_zero_timestamp_is_read_canonically() {
        let h = format!("t=0{T},v1={PY_HEX}");
        assert_eq!(check(&h, &[SECRET], BODY, T, 300), VALID0);
    }

    #[test]
    fn malformed() {
        use ParseError::*;
        let z = ZERO_HEX;
        let many_sets: String = (0..=MAX_SETS).map(|i| format!("t={i},v1={z} ")).collect();
        let many_sigs: String = (0..=MAX_SIGNATURES).map(|_| format!(",v1={z}")).collect();
        let cases: Vec<(String, ParseError)> = vec![
            (String::new(), NoSet),
            ("  , ,".into(), NoSet),
            (format!("v0={z}"), NoSet),
            (format!("t=1,v1{z}"), NotKeyValue),
            (format!("t=1,={z}"), NotKeyValue),
            (format!("t=1x,v1={z}"), BadTimestamp),
            (format!("t=-1,v1={z}"), BadTimestamp),
            (format!("t=+1,v1={z}"), BadTimestamp),
            (format!("t=,v1={z}"), BadTimestamp),
            (format!("t=99999999999999999999,v1={z}"), BadTimestamp),
            ("t=1,v1=abcd".into(), BadSignature),
            (format!("t=1,v1={}g", &z[1..]), BadSignature),
            (format!("t=1,v1={z}0"), BadSignature),
            (format!("v1={z},t=1"), SignatureBeforeTimestamp),
            ("t=1".into(), SetWithoutSignature),
            (format!("t=1 t=2,v1={z}"), SetWithoutSignature),
            (many_sets, TooManySets),
            (format!("t=1{many_sigs}"), TooManySignatures),
        ];
        for (h, want) in cases {
            assert_eq!(parse(h.as_bytes()), Err(want), "{h}");
        }
        assert_eq!(parse("t=1,v1=é".as_bytes()), Err(NotAscii));
        let max: String = (0..MAX_SETS).map(|i| format!("t={i},v1={z} ")).collect();
        assert_eq!(parse(max.as_bytes()).map(|h| h.sets.len()), Ok(MAX_SETS));
    }

    proptest! {
        #[test]
        fn prop_sign_verify(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            secret in proptest::collection::vec(any::<u8>(), 1..80),
            t in 0i64..4_000_000_000,
            bit in any::<usize>(),
            delta in prop_oneof![Just(-1i64), Just(1i64)],
        ) {
            let s: &[u8] = &secret;
            let h = parse(sign(s, t, &body).as_bytes());
            prop_assert!(h.is_ok());
            let h = h.unwrap_or(SignatureHeader { sets: vec![] });
            prop_assert_eq!(verify(&h, &[s], &body, t, 0), VALID0);
            let big = i64::MAX;
            if !body.is_empty() {
                let mut b = body.clone();
                let i = bit % (b.len() * 8);
                b[i / 8] ^= 1 << (i % 8);
                prop_assert_eq!(verify(&h, &[s], &b, t, big), Verdict::Invalid);
            }
            let mut moved = h.clone();
            moved.sets[0].timestamp += delta;
            prop_assert_eq!(verify(&moved, &[s], &body, t, big), Verdict::Invalid);
            let mut flipped = h.clone();
            let i = bit % 256;
            flipped.sets[0].signatures[0][i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(verify(&flipped, &[s], &body, t, big), Verdict::Invalid);
        }

        #[test]
        fn prop_parse_never_panics(v in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&v);
        }

        #[test]
        fn prop_parse_never_panics_near_valid(s in "[tv01=, a-fA-F0-9x-]{0,200}") {
            let _ = parse(s.as_bytes());
        }
    }
}
