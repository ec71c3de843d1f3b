//! Refusing HTTP/1 requests whose framing could be read two ways (`docs/behaviour.md` § Framing).
//!
//! pingora's parser is lenient where RFC 9112 allows it (it accepts bare LF line
//! ends, and resolves `Transfer-Encoding` + `Content-Length` by dropping the
//! latter). An application server behind the proxy might resolve the same bytes
//! differently, which is how request smuggling starts. So the raw request head,
//! exactly as received, is checked here and anything ambiguous is refused.
//!
//! [`valid_host`] is the `Host` rule (`host[:port]`, nothing else) every
//! request is held to, HTTP/1 and HTTP/2 alike, before routing.

/// What made a request head ambiguous. Messages never quote the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("a line contains a bare CR")]
    BareCr,
    #[error("a line ends with a bare LF")]
    BareLf,
    #[error("the head contains a NUL byte")]
    Nul,
    #[error("obsolete line folding")]
    ObsFold,
    #[error("white space before a header colon")]
    SpaceBeforeColon,
    #[error("a header line has no name or no colon")]
    BadHeaderLine,
    #[error("both Transfer-Encoding and Content-Length")]
    TransferEncodingAndContentLength,
    #[error("Content-Length is repeated")]
    RepeatedContentLength,
    #[error("Content-Length is not a plain number")]
    BadContentLength,
    #[error("Transfer-Encoding is repeated")]
    RepeatedTransferEncoding,
    #[error("Transfer-Encoding other than plain chunked")]
    UnsupportedTransferEncoding,
}

/// Checks a raw HTTP/1 request head (request line, header lines, blank line).
pub fn check(head: &[u8]) -> Result<(), FramingError> {
    if head.contains(&0) {
        return Err(FramingError::Nul);
    }
    // Every CR must start a CRLF and every LF must end one.
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(FramingError::BareCr),
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(FramingError::BareLf),
            _ => {}
        }
    }
    let mut content_length = 0usize;
    let mut transfer_encoding = 0usize;
    // Skip the request line; stop at the blank line.
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err(FramingError::ObsFold);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(FramingError::BadHeaderLine)?;
        let name = &line[..colon];
        if name.is_empty() {
            return Err(FramingError::BadHeaderLine);
        }
        if matches!(name[name.len() - 1], b' ' | b'\t') {
            return Err(FramingError::SpaceBeforeColon);
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::BadContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::UnsupportedTransferEncoding);
            }
        }
    }
    match (content_length, transfer_encoding) {
        (c, t) if c > 0 && t > 0 => Err(FramingError::TransferEncodingAndContentLength),
        (c, _) if c > 1 => Err(FramingError::RepeatedContentLength),
        (_, t) if t > 1 => Err(FramingError::RepeatedTransferEncoding),
        _ => Ok(()),
    }
}

/// `host[:port]`: a registered name or IPv4 address (RFC 3986 `reg-name`
/// without percent-encoding: letters, digits, `-._~` and `!$&'()*+,;=`) or a
/// bracketed IPv6 address (hex digits, `:` and `.`), then optionally `:` and
/// 1 to 5 digits. Nothing else: no `/`, `?`, `#`, `@`, `\`, `%`, white space,
/// and never empty.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|b| *b == b']') {
            Some(end) => {
                let inner = &v[1..end];
                let ok = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !ok {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|b| *b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &v[v.len()..]),
        },
    };
    let name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host.iter().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            }));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        Some(_) => false,
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use FramingError::*;

    fn head(headers: &str) -> Vec<u8> {
        format!("POST /x HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(check(&head("")), Ok(()));
        assert_eq!(check(&head("Content-Length: 12\r\n")), Ok(()));
        assert_eq!(check(&head("transfer-encoding:  Chunked \r\n")), Ok(()));
        assert_eq!(check(&head("X-A: b:c\r\n")), Ok(()));
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let cases: &[(&[u8], FramingError)] = &[
            (
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                TransferEncodingAndContentLength,
            ),
            (
                b"Content-Length: 5\r\nContent-Length: 5\r\n",
                RepeatedContentLength,
            ),
            (
                b"Content-Length: 5\r\nContent-Length: 6\r\n",
                RepeatedContentLength,
            ),
            (b"Content-Length: 5, 5\r\n", BadContentLength),
            (b"Content-Length: +5\r\n", BadContentLength),
            (
                b"Transfer-Encoding: gzip, chunked\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                b"Transfer-Encoding: xchunked\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                RepeatedTransferEncoding,
            ),
            (b"Content-Length : 5\r\n", SpaceBeforeColon),
            (b"Transfer-Encoding\t: chunked\r\n", SpaceBeforeColon),
            (b"X-A: b\r\n c\r\n", ObsFold),
            (b"X-A: b\rc\r\n", BareCr),
            (b"X-A: b\nX-B: c\r\n", BareLf),
            (b"X-A: b\0\r\n", Nul),
            (b"NoColon\r\n", BadHeaderLine),
            (b": empty\r\n", BadHeaderLine),
        ];
        for (headers, want) in cases {
            let mut h = b"POST /x HTTP/1.1\r\nHost: a\r\n".to_vec();
            h.extend_from_slice(headers);
            h.extend_from_slice(b"\r\n");
            assert_eq!(
                check(&h),
                Err(*want),
                "{}",
                String::from_utf8_lossy(headers)
            );
        }
        assert_eq!(check(b"POST /x HTTP/1.1\nHost: a\n\n"), Err(BareLf));
    }

    use proptest::prelude::*;

    /// A header line built from the pieces smuggling tricks are made of.
    fn header_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "transfer-encoding",
            "TRANSFER-ENCODING",
            "Content-Length ",
            " Transfer-Encoding",
            "Transfer_Encoding",
            "X-A",
            "",
        ]);
        let value = prop::sample::select(vec![
            "5",
            " 5 ",
            "05",
            "+5",
            "5, 5",
            "-1",
            "",
            "chunked",
            "Chunked",
            " chunked",
            "chunked, chunked",
            "gzip, chunked",
            "xchunked",
            "chunked\t",
            "identity",
            "a:b",
        ]);
        let eol = prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n "]);
        (name, value, eol).prop_map(|(n, v, e)| format!("{n}:{v}{e}").into_bytes())
    }

    proptest! {
        /// When `check` accepts a head, an independent strict parser (httparse)
        /// reads the same single framing from it.
        #[test]
        fn prop_accepted_heads_have_one_framing(lines in prop::collection::vec(header_line(), 0..5)) {
            let mut h = b"POST /x HTTP/1.1\r\nHost: a\r\n".to_vec();
            for l in &lines {
                h.extend_from_slice(l);
            }
            h.extend_from_slice(b"\r\n");
            prop_assume!(check(&h).is_ok());
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let parsed = req.parse(&h);
            prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "{:?}", parsed);
            prop_assert_eq!(req.headers.len(), lines.len() + 1);
            let named = |n: &str| req.headers.iter().filter(|x| x.name.eq_ignore_ascii_case(n)).count();
            let (cl, te) = (named("content-length"), named("transfer-encoding"));
            prop_assert!(cl + te <= 1, "{}", String::from_utf8_lossy(&h));
            for x in req.headers.iter() {
                let v = x.value.trim_ascii();
                if x.name.eq_ignore_ascii_case("content-length") {
                    prop_assert!(v.iter().all(u8::is_ascii_digit) && !v.is_empty());
                }
                if x.name.eq_ignore_ascii_case("transfer-encoding") {
                    prop_assert!(v.eq_ignore_ascii_case(b"chunked"));
                }
            }
        }

        #[test]
        fn prop_never_panics(h in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&h);
        }
    }

    #[test]
    fn hosts_are_a_name_or_address_and_a_port() {
        for ok in [
            "h",
            "e2e.test",
            "app.example:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "[::ffff:1.2.3.4]",
            "xn--bcher-kva.example",
            "a_b~c",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "x/webhooks/persona/",
            "x/",
            "x?y",
            "x#y",
            "u@x",
            "x y",
            " x",
            "x\t",
            "x\\y",
            "x%2Fy",
            "x:",
            "x:80:80",
            "x:8o",
            "x:123456",
            ":80",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "[v1.x]",
            "h\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
