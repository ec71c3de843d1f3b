//! The operator kit in `deploy/` names only metrics persona-guard exports:
//! every `persona_guard_*` name in the Prometheus alert rules and in the
//! Grafana dashboard is found in a real `/metrics` scrape of a proxy with a
//! spooling route, and every exported metric is on the dashboard.

use std::collections::BTreeSet;
use std::path::Path;

use crate::harness::*;
use crate::spool::spooling;

const PREFIX: &str = "persona_guard_";
const RULES: &str = "deploy/prometheus/persona-guard-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/persona-guard-rules.test.yaml";
const DASHBOARD: &str = "deploy/grafana/persona-guard-dashboard.json";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `persona_guard_...` identifier in `text` (expressions, annotations,
/// comments alike): the prefix followed by `[a-z0-9_]`, longest match.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// What a scrape exports: each family from its `# TYPE` line, and each
/// sample's name (a histogram's `_bucket`, `_sum`, `_count`).
struct Exported {
    families: BTreeSet<String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn parse(scrape: &str) -> Self {
        let mut families = BTreeSet::new();
        let mut samples = BTreeSet::new();
        for line in scrape.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                if let Some(name) = t.split_whitespace().next() {
                    families.insert(name.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exported { families, samples }
    }

    /// A name as a query uses it: a sample name, or a family name (a
    /// histogram named whole, as in a description).
    fn exports(&self, name: &str) -> bool {
        self.samples.contains(name) || self.families.contains(name)
    }

    fn missing<'a>(&self, names: &'a BTreeSet<String>) -> Vec<&'a str> {
        names
            .iter()
            .map(String::as_str)
            .filter(|n| !self.exports(n))
            .collect()
    }

    /// The family a sample name belongs to (a histogram's suffix stripped).
    fn family_of<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.families.contains(base)
            {
                return base;
            }
        }
        name
    }
}

#[test]
fn every_metric_in_the_alert_rules_and_the_dashboard_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    // A reconciling route too (its API unreachable: the series exist anyway).
    let mut reconcile = toml::Table::new();
    reconcile.insert("api_key".into(), "env:PERSONA_API_KEY".into());
    reconcile.insert("api_base".into(), "http://127.0.0.1:9".into());
    reconcile.insert("window".into(), "10m".into());
    reconcile.insert("grace".into(), "1m".into());
    // An OAuth route's JWKS, so that its series exist (the age once fetched).
    let jwks = Upstream::start();
    jwks.set_body(&crate::harness::jwt::jwks(&["rsa1"]));
    let mut oauth = toml::Table::new();
    oauth.insert(
        "jwks_url".into(),
        format!("http://{}/jwks", jwks.addr).into(),
    );
    oauth.insert("issuer".into(), "https://issuer.e2e/".into());
    oauth.insert("audience".into(), "persona-webhooks".into());
    let (_up, p) = rig_with(|b| {
        spooling(b, dir.path(), "on_failure")
            .env("PERSONA_API_KEY", "persona_sandbox_k")
            .route(|r| {
                r.set("reconcile", toml::Value::Table(reconcile))
                    .set("oauth", toml::Value::Table(oauth))
            })
    });
    wait_for("the JWKS fetched (/readyz 200)", W, || p.readyz() == 200);
    let scrape = p.metrics();
    let exported = Exported::parse(&scrape);
    let ours: BTreeSet<&String> = exported
        .families
        .iter()
        .filter(|f| f.starts_with(PREFIX))
        .collect();

    // The scanner and the scrape, on names known to be there or not.
    assert!(
        exported.exports("persona_guard_requests_total"),
        "positive control: persona_guard_requests_total not found in:\n{scrape}"
    );
    assert!(exported.exports("persona_guard_upstream_duration_seconds_bucket"));
    assert!(exported.exports("persona_guard_spool_depth"), "{scrape}");
    let bogus: BTreeSet<String> = ["persona_guard_no_such_metric_total".to_string()].into();
    assert_eq!(
        exported.missing(&bogus),
        ["persona_guard_no_such_metric_total"]
    );
    assert_eq!(
        names_in(
            "rate(persona_guard_a_total{x=\"y\"}[5m]) / my_persona_guard_b + persona_guard_c_bucket"
        ),
        BTreeSet::from([
            "persona_guard_a_total".into(),
            "persona_guard_c_bucket".into()
        ])
    );

    let rules = names_in(&read(RULES));
    let rule_tests = names_in(&read(RULE_TESTS));
    let dashboard = names_in(&read(DASHBOARD));
    // The scan found what the files are known to hold (12 alerts over 11
    // metrics; a panel for each of the 18 metrics).
    assert!(
        rules.len() >= 11,
        "only {} names in {RULES}: {rules:?}",
        rules.len()
    );
    assert!(
        dashboard.len() >= 18,
        "only {} names in {DASHBOARD}: {dashboard:?}",
        dashboard.len()
    );
    assert!(
        rules.contains("persona_guard_spool_dead_letters"),
        "{rules:?}"
    );
    assert!(
        dashboard.contains("persona_guard_upstream_duration_seconds_bucket"),
        "{dashboard:?}"
    );

    for (file, names) in [
        (RULES, &rules),
        (RULE_TESTS, &rule_tests),
        (DASHBOARD, &dashboard),
    ] {
        let missing = exported.missing(names);
        assert!(
            missing.is_empty(),
            "{file} names metrics that /metrics does not export: {missing:?}\nexported families: {ours:?}"
        );
    }

    // And the other way: every exported metric has a panel.
    let on_dashboard: BTreeSet<&str> = dashboard.iter().map(|n| exported.family_of(n)).collect();
    let without_panel: Vec<_> = ours
        .iter()
        .filter(|f| !on_dashboard.contains(f.as_str()))
        .collect();
    assert!(
        without_panel.is_empty(),
        "exported but not on {DASHBOARD}: {without_panel:?}"
    );
    assert!(ours.len() >= 18, "{ours:?}");
}
