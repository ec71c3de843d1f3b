//! Redis key names (see "Keys" in the parent module): `<key_prefix><route>:<event id>`
//! with `%` and `:` escaped in the route, so distinct pairs never share a key.

/// The Redis key of an event id on a route (see the parent module's documentation).
pub fn key(prefix: &str, route: &[u8], event_id: &str) -> Vec<u8> {
    let escapes = route.iter().filter(|b| matches!(b, b'%' | b':')).count();
    let mut k = Vec::with_capacity(prefix.len() + route.len() + 2 * escapes + 1 + event_id.len());
    k.extend_from_slice(prefix.as_bytes());
    for &b in route {
        match b {
            b'%' => k.extend_from_slice(b"%25"),
            b':' => k.extend_from_slice(b"%3A"),
            _ => k.push(b),
        }
    }
    k.push(b':');
    k.extend_from_slice(event_id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads a key back; `key` is injective because this always succeeds.
    fn parse(prefix: &str, k: &[u8]) -> (Vec<u8>, String) {
        let rest = k.strip_prefix(prefix.as_bytes()).unwrap();
        let colon = rest.iter().position(|b| *b == b':').unwrap();
        let (escaped, id) = (&rest[..colon], &rest[colon + 1..]);
        let mut route = Vec::new();
        let mut i = 0;
        while i < escaped.len() {
            match &escaped[i..] {
                [b'%', b'2', b'5', ..] => (route.push(b'%'), i += 3),
                [b'%', b'3', b'A', ..] => (route.push(b':'), i += 3),
                [b'%', ..] => panic!("a lone % in {k:?}"),
                [b, ..] => (route.push(*b), i += 1),
                [] => unreachable!(),
            };
        }
        (route, String::from_utf8(id.to_vec()).unwrap())
    }

    #[test]
    fn the_old_collision_is_gone() {
        let p = "persona-guard:";
        assert_ne!(key(p, b"/a:b", "c"), key(p, b"/a", "b:c"));
        assert_eq!(key(p, b"/a:b", "c"), b"persona-guard:/a%3Ab:c");
        assert_eq!(key(p, b"/a", "b:c"), b"persona-guard:/a:b:c");
        // `%` is escaped too, so an escape cannot be forged by a route.
        assert_ne!(key(p, b"/a%3Ab", "c"), key(p, b"/a:b", "c"));
        assert_eq!(key(p, b"/a%3Ab", "c"), b"persona-guard:/a%253Ab:c");
    }

    #[test]
    fn keys_of_ordinary_routes_are_unchanged() {
        // The format before this change, for routes without `%` or `:`:
        // marks written by an older version are still found.
        assert_eq!(
            key("persona-guard:", b"/webhooks/persona", "evt_1"),
            b"persona-guard:/webhooks/persona:evt_1"
        );
    }

    /// Routes and ids from the characters that could make keys ambiguous.
    fn tricky() -> impl Strategy<Value = String> {
        "[/:%3Aab5]{0,8}"
    }

    proptest! {
        #[test]
        fn a_key_reads_back_as_its_route_and_event_id(
            route in prop::collection::vec(any::<u8>(), 0..24),
            id in any::<String>(),
            prefix in "[a-z:]{0,6}",
        ) {
            let k = key(&prefix, &route, &id);
            prop_assert_eq!(parse(&prefix, &k), (route, id));
        }

        #[test]
        fn distinct_inputs_never_share_a_key(
            r1 in tricky(), i1 in tricky(), r2 in tricky(), i2 in tricky(),
        ) {
            let p = "persona-guard:";
            let same_key = key(p, r1.as_bytes(), &i1) == key(p, r2.as_bytes(), &i2);
            prop_assert_eq!(same_key, (r1, i1) == (r2, i2));
        }

        #[test]
        fn routes_without_percent_or_colon_keep_the_old_key(
            route in "/[a-zA-Z0-9/._~-]{0,20}",
            id in "[ -~]{1,20}",
        ) {
            let old = format!("persona-guard:{route}:{id}");
            prop_assert_eq!(key("persona-guard:", route.as_bytes(), &id), old.into_bytes());
        }
    }
}
