//! The route file loader on arbitrary text: no panic, and every problem it
//! reports names a key and a message.
//!
//! Shared by the cargo-fuzz target of the same name and by the ordinary
//! test `tests/fuzz_corpus.rs`, which runs it over the committed corpus.

use persona_guard::config::{self, Env};

struct FuzzEnv;
impl Env for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "SECRET").then(|| "wbhsec_fuzz".to_string())
    }
    // Literal addresses only: no DNS look-ups while fuzzing.
    fn resolve(&self, addr: &str) -> Result<std::net::SocketAddr, String> {
        addr.parse()
            .map_err(|_| "not a literal address".to_string())
    }
}

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = config::from_str(text, &FuzzEnv) {
        assert!(!problems.is_empty());
        for p in problems {
            assert!(!p.key.is_empty() && !p.message.is_empty());
        }
    }
}
