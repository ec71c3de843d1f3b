//! Rules that relate two sections, checked once each section is compiled.

use std::time::Duration;

use super::check::Check;
use super::{Problem, Replay, Route};

/// Persona retries a failed delivery up to 7 more times, about 3, 64, 729,
/// 4096, 15625, 46656 and 117649 s after the first attempt: the last one comes
/// 184,822 s (about 51.3 h) after it. A `replay.ttl` shorter than this lets a
/// late retry of a delivered event through; `check` warns about it.
pub const PERSONA_RETRY_WINDOW: Duration = Duration::from_secs(184_822);

/// What is valid but probably not meant, for `check` (exit 0) and the start
/// log: a replay window (`replay.ttl`, every route's) shorter than Persona's
/// automatic retries.
pub(super) fn warnings(replay: &Replay, routes: &[Route]) -> Vec<Problem> {
    let mut w = Vec::new();
    if replay.ttl < PERSONA_RETRY_WINDOW && !routes.is_empty() {
        w.push(Problem::new(
            "replay.ttl",
            format!(
                "{} is shorter than Persona's automatic retries (the last comes ~51.3h after the first attempt): \
                 on every route a retry of a delivered event arriving later is delivered again; \
                 set ttl to at least 52h (the default is 72h)",
                humantime::format_duration(replay.ttl)
            ),
        ));
    }
    w
}

/// `replay.ttl` covers twice the largest tolerance (a delivery is remembered as
/// long as its signature could be replayed), and `server.max_buffered` holds
/// the largest `max_body`.
///
/// There is no rule relating `replay.inflight_ttl` to the upstream timeouts
/// any more: the delivering instance renews its in-flight mark for as long as
/// the delivery lives (see [`crate::replay`]), so a slow delivery can no longer
/// outlive its mark; `inflight_ttl` is only how long a dead instance's mark
/// holds the event.
pub(super) fn check(c: &mut Check, replay: &Replay, max_buffered: u64, routes: &[Route]) {
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
}

/// `server.max_buffered_per_client`: as written, or an eighth of
/// `max_buffered` raised to the largest route `max_body` (a delivery that
/// large must fit one client's share). Written, it must hold the largest
/// `max_body` and fit in `max_buffered`.
pub(super) fn per_client(
    c: &mut Check,
    written: Option<u64>,
    max_buffered: u64,
    routes: &[Route],
) -> u64 {
    let key = "server.max_buffered_per_client";
    let largest = routes.iter().map(|r| r.max_body).max().unwrap_or(0);
    let Some(written) = written else {
        return (max_buffered / 8).max(largest).min(max_buffered);
    };
    if written < largest {
        c.problem_with(
            key,
            format!(
                "{} is less than the largest route max_body ({}): a delivery that large could never be held",
                bytesize::ByteSize(written),
                bytesize::ByteSize(largest)
            ),
        );
    }
    if written > max_buffered {
        c.problem(key, "is more than server.max_buffered");
    }
    written
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
    fn the_budget_holds_the_largest_body_and_inflight_may_be_shorter_than_the_upstream() {
        let text = r#"
[server]
max_buffered = "1MiB"
[upstream]
read_timeout = "5m"
[replay]
inflight_ttl = "1s"
[[route]]
path = "/a"
secrets = ["x"]
max_body = "2MiB"
"#;
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["server.max_buffered"]);
        assert!(p[0].message.contains("route[0].max_body"), "{p:?}");
        // Equal is enough; a renewed in-flight mark may be far shorter than
        // the upstream's timeouts.
        let fits = text.replace("2MiB", "1MiB");
        assert!(from_str(&fits, &env()).is_ok());
    }

    #[test]
    fn one_client_s_share_defaults_to_an_eighth_and_holds_the_largest_body() {
        let route = |max_body: &str| {
            format!("[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\nmax_body = \"{max_body}\"\n")
        };
        let c = from_str(&route("1MiB"), &env()).unwrap();
        assert_eq!(
            c.policy.max_buffered_per_client,
            8 * 1024 * 1024,
            "64 MiB / 8"
        );
        assert_eq!(c.policy.min_body_rate, 1024);
        // Raised to the largest max_body.
        let c = from_str(&route("12MiB"), &env()).unwrap();
        assert_eq!(c.policy.max_buffered_per_client, 12 * 1024 * 1024);
        // Written: within max_buffered and at least the largest max_body.
        let written = |share: &str| {
            format!(
                "[server]\nmax_buffered_per_client = \"{share}\"\n{}",
                route("2MiB")
            )
        };
        let c = from_str(&written("4MiB"), &env()).unwrap();
        assert_eq!(c.policy.max_buffered_per_client, 4 * 1024 * 1024);
        for bad in ["1MiB", "65MiB"] {
            let p = from_str(&written(bad), &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["server.max_buffered_per_client"], "{bad}");
        }
        let p = from_str(
            &format!("[server]\nmin_body_rate = \"0\"\n{}", route("1MiB")),
            &env(),
        );
        assert_eq!(keys(&p.unwrap_err()), vec!["server.min_body_rate"]);
    }

    #[test]
    fn the_default_ttl_outlasts_persona_retries_and_a_shorter_one_is_a_warning() {
        use super::super::PERSONA_RETRY_WINDOW;
        use std::time::Duration;
        const DEFAULT_TTL: Duration = Duration::from_secs(72 * 3600);
        assert_eq!(DEFAULT_TTL, Duration::from_secs(72 * 3600));
        // 3 + 64 + 729 + 4096 + 15625 + 46656 + 117649 s after the first attempt.
        let schedule: u64 = [3, 64, 729, 4096, 15625, 46656, 117649].iter().sum();
        assert_eq!(schedule, 184_822);
        assert_eq!(PERSONA_RETRY_WINDOW, Duration::from_secs(schedule));
        assert!(DEFAULT_TTL > PERSONA_RETRY_WINDOW);

        let route = "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";
        let c = from_str(route, &env()).unwrap();
        assert_eq!(c.policy.replay.ttl, DEFAULT_TTL);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());

        let short = format!("[replay]\nttl = \"24h\"\n{route}");
        let c = from_str(&short, &env()).unwrap();
        let w = c.warnings();
        assert_eq!(keys(&w), vec!["replay.ttl"]);
        assert!(w[0].message.contains("1day"), "{w:?}");
        assert!(w[0].message.contains("51.3h"), "{w:?}");
        // The boundary: exactly the schedule is enough.
        let edge = format!("[replay]\nttl = \"184822s\"\n{route}");
        assert!(from_str(&edge, &env()).unwrap().warnings().is_empty());
    }
}
