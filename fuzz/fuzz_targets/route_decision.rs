//! Path normalisation on arbitrary request targets: no panic; the result is a
//! clean absolute path; normalising it again changes nothing unless decoding
//! produced `%`, `?` or `#` (data after decoding); route matching agrees.
#![no_main]
use libfuzzer_sys::fuzz_target;
use persona_guard::path;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = path::normalize(data) {
        assert!(n.starts_with(b"/"));
        assert!(n == b"/" || !n.ends_with(b"/"));
        assert!(!n.windows(2).any(|w| w == b"//"));
        assert!(!n.iter().any(|b| b.is_ascii_uppercase()));
        if !n.iter().any(|b| matches!(b, b'%' | b'?' | b'#')) {
            assert_eq!(path::normalize(&n).as_deref(), Ok(n.as_slice()));
        }
        let route = b"/webhooks/persona";
        if path::is_within(&n, route) {
            assert!(n.starts_with(route));
        }
    }
});
