//! Persona's attempt headers: `Persona-Webhook-Attempts-Made` (1 on the first
//! attempt) and `Persona-Webhook-Attempts-Left` (0 on the last automatic one).
//! Pure: a header's values in, a count or a metric label out.

/// `Persona-Webhook-Attempts-Made`.
pub const MADE: &str = "persona-webhook-attempts-made";
/// `Persona-Webhook-Attempts-Left`.
pub const LEFT: &str = "persona-webhook-attempts-left";

/// The `attempt` labels of `persona_guard_delivery_attempts_total`: `1` to
/// `8` (Persona makes at most 8 automatic attempts; a larger count, such as a
/// manual retry's, is counted under `8`), then `unknown` for a missing,
/// repeated or unreadable header (or `0`).
pub const LABELS: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "unknown"];

/// The largest count with a label of its own.
const CAP: u32 = 8;

/// The count a header carries: exactly one value of ASCII digits (no sign,
/// no spaces inside), within `u32`. Anything else is `None`.
pub fn count<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<u32> {
    let v = values.next()?;
    if values.next().is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The position in [`LABELS`] of an Attempts-Made count.
pub fn label_index(made: Option<u32>) -> usize {
    match made {
        Some(n @ 1..=CAP) => n as usize - 1,
        Some(n) if n > CAP => CAP as usize - 1,
        _ => LABELS.len() - 1,
    }
}

/// Whether an Attempts-Left count says Persona will not retry on its own.
/// A missing or unreadable header is not taken as the last attempt.
pub fn is_last(left: Option<u32>) -> bool {
    left == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &[u8]) -> Option<u32> {
        count(std::iter::once(v))
    }

    #[test]
    fn reads_one_decimal_value() {
        assert_eq!(one(b"1"), Some(1));
        assert_eq!(one(b"007"), Some(7));
        assert_eq!(one(b"4294967295"), Some(u32::MAX));
        assert_eq!(count(std::iter::empty()), None);
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b"1.0",
            b"x",
            b"4294967296",
            b"\xff",
        ] {
            assert_eq!(one(bad), None, "{bad:?}");
        }
        assert_eq!(count([&b"1"[..], b"2"].into_iter()), None);
    }

    #[test]
    fn labels_cap_at_eight_and_name_the_unknown() {
        assert_eq!(LABELS[label_index(Some(1))], "1");
        assert_eq!(LABELS[label_index(Some(8))], "8");
        assert_eq!(LABELS[label_index(Some(9))], "8");
        assert_eq!(LABELS[label_index(Some(u32::MAX))], "8");
        assert_eq!(LABELS[label_index(Some(0))], "unknown");
        assert_eq!(LABELS[label_index(None)], "unknown");
    }

    #[test]
    fn only_zero_left_is_the_last_attempt() {
        assert!(is_last(Some(0)));
        assert!(!is_last(Some(1)));
        assert!(!is_last(None));
    }
}
