//! The bearer header's parsing: fixed cases, then generated headers by the
//! thousand against a model of RFC 6750's grammar.
use super::*;
use http::HeaderValue;
use proptest::prelude::*;

fn one(v: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
    h
}

#[test]
fn a_bearer_token_in_any_case_of_the_scheme() {
    for v in [
        "Bearer abc.def-ghi",
        "bearer abc.def-ghi",
        "BEARER abc.def-ghi",
        "Bearer   abc.def-ghi",
    ] {
        assert_eq!(
            parse(&one(v.as_bytes())),
            Bearer::Token("abc.def-ghi"),
            "{v}"
        );
    }
    assert_eq!(parse(&one(b"Bearer a+/b==")), Bearer::Token("a+/b=="));
}

#[test]
fn none_is_missing_and_anything_else_malformed() {
    assert_eq!(parse(&HeaderMap::new()), Bearer::Missing);
    for v in [
        &b"Bearer"[..],
        b"Bearer ",
        b"Bearer  ",
        b"Basic dXNlcjpwYXNz",
        b"Bearer a b",
        b"Bearer abc ",
        b"Bearer\tabc",
        b"Bearerabc",
        b" Bearer abc",
        b"Bearer ==",
        b"Bearer a=b",
        b"Bearer a,b",
        b"Token abc",
        b"Bearer \xc3\xa9t\xc3\xa9",
    ] {
        assert_eq!(
            parse(&one(v)),
            Bearer::Malformed,
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
}

#[test]
fn several_authorization_headers_are_refused_even_when_each_is_good() {
    let mut h = one(b"Bearer abc");
    h.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
    assert_eq!(parse(&h), Bearer::Malformed);
    let mut h = one(b"Bearer abc");
    h.append(AUTHORIZATION, HeaderValue::from_static(""));
    assert_eq!(parse(&h), Bearer::Malformed);
}

/// The grammar, written independently of the parser: `Bearer` (any case),
/// 1*SP, 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
fn model(v: &[u8]) -> Option<&[u8]> {
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
        return None;
    }
    let mut i = 6;
    while i < v.len() && v[i] == b' ' {
        i += 1;
    }
    let token = &v[i..];
    let mut j = 0;
    while j < token.len() && (token[j].is_ascii_alphanumeric() || b"-._~+/".contains(&token[j])) {
        j += 1;
    }
    if j == 0 || token[j..].iter().any(|&b| b != b'=') {
        return None;
    }
    Some(token)
}

fn pieces() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"Bearer".to_vec()),
        Just(b"bEaReR".to_vec()),
        Just(b"Basic".to_vec()),
        Just(b" ".to_vec()),
        Just(b"  ".to_vec()),
        Just(b"\t".to_vec()),
        Just(b"=".to_vec()),
        Just(b",".to_vec()),
        Just(b"eyJhbGciOiJSUzI1NiJ9".to_vec()),
        Just(b"a.b-c_d~e+f/g".to_vec()),
        Just("é".as_bytes().to_vec()),
        proptest::collection::vec(0x20u8..0x7f, 1..4),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Every generated header that HTTP can carry: the parser and the
    /// grammar agree, and a token is always a slice of what was sent.
    #[test]
    fn the_parser_agrees_with_the_grammar(v in pieces()) {
        let Ok(value) = HeaderValue::from_bytes(&v) else { return Ok(()); };
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value);
        let got = match parse(&h) {
            Bearer::Token(t) => Some(t.as_bytes().to_vec()),
            Bearer::Malformed => None,
            Bearer::Missing => panic!("a header was sent"),
        };
        prop_assert_eq!(got, model(&v).map(<[u8]>::to_vec), "{:?}", String::from_utf8_lossy(&v));
    }

    /// Two headers are refused whatever they hold.
    #[test]
    fn two_headers_are_always_refused(a in pieces(), b in pieces()) {
        let (Ok(a), Ok(b)) = (HeaderValue::from_bytes(&a), HeaderValue::from_bytes(&b)) else {
            return Ok(());
        };
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, a);
        h.append(AUTHORIZATION, b);
        prop_assert_eq!(parse(&h), Bearer::Malformed);
    }
}
