//! Rules that relate two sections, checked once each section is compiled.

use super::check::Check;
use super::{Replay, Route, Upstream};

/// `replay.ttl` covers twice the largest tolerance (a delivery is remembered as
/// long as its signature could be replayed), `server.max_buffered` holds the
/// largest `max_body`, and `replay.inflight_ttl` outlasts a delivery's trip to
/// the default upstream.
pub(super) fn check(
    c: &mut Check,
    replay: &Replay,
    max_buffered: u64,
    upstream: &Upstream,
    routes: &[Route],
) {
    let ttl = replay.ttl;
    if let Some(max_tol) = routes.iter().map(|r| r.tolerance).max()
        && ttl < max_tol * 2
    {
        c.problem_with(
            "replay.ttl",
            format!(
                "{} is less than twice the largest route tolerance ({}); set ttl to at least {}",
                humantime::format_duration(ttl),
                humantime::format_duration(max_tol),
                humantime::format_duration(max_tol * 2)
            ),
        );
    }
    if let Some((i, r)) = routes.iter().enumerate().max_by_key(|(_, r)| r.max_body)
        && r.max_body > max_buffered
    {
        c.problem_with(
            "server.max_buffered",
            format!(
                "{} is less than route[{i}].max_body ({}): a delivery that large could never be held",
                bytesize::ByteSize(max_buffered),
                bytesize::ByteSize(r.max_body)
            ),
        );
    }
    let inflight_ttl = replay.inflight_ttl;
    if inflight_ttl < upstream.connect_timeout + upstream.read_timeout {
        c.problem_with(
            "replay.inflight_ttl",
            format!(
                "{} is shorter than upstream.connect_timeout + upstream.read_timeout; a slow delivery could outlive its in-flight mark",
                humantime::format_duration(inflight_ttl)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};

    #[test]
    fn ttl_exactly_twice_tolerance_is_accepted() {
        let text = r#"
[replay]
ttl = "10m"
[[route]]
path = "/a"
secrets = ["x"]
tolerance = "5m"
"#;
        assert!(from_str(text, &env()).is_ok());
    }

    #[test]
    fn the_budget_holds_the_largest_body_and_inflight_outlasts_the_upstream() {
        let text = r#"
[server]
max_buffered = "1MiB"
[upstream]
read_timeout = "59s"
[replay]
inflight_ttl = "1m"
[[route]]
path = "/a"
secrets = ["x"]
max_body = "2MiB"
"#;
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["server.max_buffered", "replay.inflight_ttl"]);
        assert!(p[0].message.contains("route[0].max_body"), "{p:?}");
        // Equal is enough: 1MiB held, 2s + 58s within 1m.
        let fits = text.replace("59s", "58s").replace("2MiB", "1MiB");
        assert!(from_str(&fits, &env()).is_ok());
    }
}
