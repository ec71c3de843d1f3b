//! Records to bytes and back (see [`crate::spool`]).

/// `[spool] key`: the 32-byte AES-256-GCM key that seals spooled records at
/// rest. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}
