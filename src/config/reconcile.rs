//! `[route.reconcile]` (the contract's §9): the Persona API key, the mode and
//! the timing of a route's reconciliation with Persona's Events API. The key
//! is a reference (`env:`/`file:`), never a literal, and never repeated in a
//! message.

use std::time::Duration;

use super::check::Check;
use super::secret::Secret;

/// The shortest `interval`.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What a run does with a missing event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Logged at `warn` and counted.
    Report,
    /// Delivered to the app like a verified first-time delivery.
    Backfill,
}

/// `Key-Inflection`: how the API spells multi-word attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflection {
    Kebab,
    Camel,
    Snake,
}

impl Inflection {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Inflection::Kebab => "kebab",
            Inflection::Camel => "camel",
            Inflection::Snake => "snake",
        }
    }
}

/// A route's reconciliation, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRule {
    /// The API key (`Debug` never shows it).
    pub api_key: Secret,
    pub mode: ReconcileMode,
    /// `https://...` or loopback `http://...`, without a trailing `/`.
    pub api_base: String,
    pub interval: Duration,
    pub window: Duration,
    pub grace: Duration,
    pub webhook_id: Option<String>,
    pub inflection: Inflection,
}

/// `[route.reconcile]` of route `i`, when written; `ttl` is `replay.ttl`
/// (a window longer than it would call delivered events missing).
pub(super) fn reconcile(c: &mut Check, i: usize, ttl: Duration) -> Option<ReconcileRule> {
    let table = format!("route[{i}].reconcile");
    if !c.doc().has_table(&table) {
        return None;
    }
    let k = |name: &str| format!("{table}.{name}");
    let api_key = match c.reference(
        &k("api_key"),
        "must be `env:NAME` or `file:/path`: an API key is not written in the file",
    ) {
        Some(spec) => c.secret(k("api_key"), spec),
        None => {
            if !c.doc().has(&k("api_key")) {
                c.problem(
                    k("api_key"),
                    "is required in [route.reconcile]: `env:NAME` or `file:/path` of a Persona API key",
                );
            }
            None
        }
    };
    if api_key.as_ref().is_some_and(|s| s.expose().is_empty()) {
        c.problem(k("api_key"), "is empty");
    }
    let modes = [ReconcileMode::Report, ReconcileMode::Backfill];
    let mode = c.choice(&k("mode"), modes);
    let inflections = [Inflection::Kebab, Inflection::Camel, Inflection::Snake];
    let inflection = c.choice(&k("inflection"), inflections);
    let api_base = c.text(&k("api_base")).unwrap_or_default().to_string();
    if let Err(why) = api_base_ok(&api_base) {
        c.problem(k("api_base"), why);
    }
    let interval = c.duration(&k("interval"));
    if interval < MIN_INTERVAL {
        c.problem(k("interval"), "must be at least 1s");
    }
    let window = c.duration(&k("window"));
    if window > ttl {
        c.problem(
            k("window"),
            "is longer than replay.ttl: events delivered before the store's memory would be reported missing; shorten window or lengthen replay.ttl",
        );
    }
    let grace = c.duration(&k("grace"));
    if grace >= window && window > Duration::ZERO {
        c.problem(
            k("grace"),
            "must be shorter than window: no event would ever be judged",
        );
    }
    let webhook_id = c.doc().str(&k("webhook_id")).map(str::to_string);
    if let Some(w) = &webhook_id
        && (w.is_empty()
            || !w
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        c.problem(
            k("webhook_id"),
            "is not a webhook id such as \"wbh_ABC123\" (letters, digits, `_` and `-`)",
        );
    }
    Some(ReconcileRule {
        api_key: api_key.unwrap_or_else(|| Secret::new(Vec::new())),
        mode,
        api_base: api_base.trim_end_matches('/').to_string(),
        interval,
        window,
        grace,
        webhook_id,
        inflection,
    })
}

/// `https://`, or `http://` on a loopback address, with a host, no user
/// info, no query.
pub(super) fn api_base_ok(url: &str) -> Result<(), &'static str> {
    match super::auth::https_or_loopback(url)?.query() {
        Some(_) => Err("must not have a query"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};
    use super::*;

    const ROUTE: &str = "[[route]]\npath = \"/w\"\nsecrets = [\"env:SECRET\"]\n";

    #[test]
    fn a_reconcile_table_gets_its_defaults() {
        let text = format!("{ROUTE}[route.reconcile]\napi_key = \"env:SECRET_44\"\n");
        let c = from_str(&text, &env()).unwrap();
        let r = c.policy.routes[0].reconcile.clone().unwrap();
        assert_eq!(r.mode, ReconcileMode::Report);
        assert_eq!(r.api_base, "https://api.withpersona.com");
        assert_eq!(r.interval, Duration::from_secs(900));
        assert_eq!(r.window, Duration::from_secs(48 * 3600));
        assert_eq!(r.grace, Duration::from_secs(900));
        assert_eq!(r.inflection, Inflection::Kebab);
        assert_eq!(r.webhook_id, None);
        assert!(format!("{r:?}").contains("<redacted>"));
        assert!(!format!("{r:?}").contains("LEAKCANARY"));
        assert!(
            from_str(ROUTE, &env()).unwrap().policy.routes[0]
                .reconcile
                .is_none()
        );
    }

    #[test]
    fn a_literal_key_a_long_window_and_a_bad_base_are_refused() {
        let text = format!(
            "{ROUTE}[route.reconcile]\napi_key = \"persona_production_LEAKCANARY\"\nwindow = \"80h\"\napi_base = \"http://api.example.com\"\nmode = \"fix\"\n"
        );
        let problems = from_str(&text, &env()).unwrap_err();
        let k = keys(&problems);
        for key in [
            "route[0].reconcile.api_key",
            "route[0].reconcile.window",
            "route[0].reconcile.api_base",
            "route[0].reconcile.mode",
        ] {
            assert!(k.contains(&key), "{key} in {k:?}");
        }
        assert!(!format!("{problems:?}").contains("LEAKCANARY"));
        let missing = format!("{ROUTE}[route.reconcile]\nmode = \"backfill\"\n");
        let problems = from_str(&missing, &env()).unwrap_err();
        assert_eq!(keys(&problems), ["route[0].reconcile.api_key"]);
    }

    #[test]
    fn the_api_base_is_https_or_loopback_http() {
        for ok in [
            "https://api.withpersona.com",
            "http://127.0.0.1:8000",
            "http://[::1]:1/",
        ] {
            assert_eq!(api_base_ok(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://api.withpersona.com",
            "https://k:s@api.withpersona.com",
            "ftp://127.0.0.1",
            "https://api.withpersona.com/?x=1",
            "nope",
        ] {
            assert!(api_base_ok(bad).is_err(), "{bad}");
        }
    }
}
