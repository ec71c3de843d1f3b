use std::collections::{BTreeSet, HashMap};

use super::super::tests::keys;
use super::super::{Config, Env, HostHeader, from_str};
use super::*;

/// Variables: both the settings and what `env:` references read.
struct Vars(HashMap<&'static str, &'static str>);
impl Env for Vars {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|s| s.to_string())
    }
    fn settings(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
}

fn vars(extra: &[(&'static str, &'static str)]) -> Vars {
    let mut m = HashMap::from([
        ("SECRET", "wbhsec_abc"),
        (
            "SPOOL_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
    ]);
    m.extend(extra.iter().copied());
    Vars(m)
}

const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n";
const TWO_ROUTES: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n[[route]]\npath = \"/b\"\nsecrets = [\"env:SECRET\"]\n";

fn load(text: &str, env: &Vars) -> Result<super::super::Effective, Vec<Problem>> {
    super::super::load::compile(text, std::path::Path::new("."), env, "text")
}

#[test]
fn variables_override_each_kind_of_value() {
    let env = vars(&[
        ("PERSONA_GUARD_REPLAY_TTL", "48h"),
        ("PERSONA_GUARD_SERVER_THREADS", "3"),
        ("PERSONA_GUARD_UPSTREAM_VERIFY", "false"),
        ("PERSONA_GUARD_UPSTREAM_HOST_HEADER", "upstream"),
        (
            "PERSONA_GUARD_SERVER_TRUSTED_PROXIES",
            "10.0.0.0/8, 192.168.0.1",
        ),
        (
            "PERSONA_GUARD_ROUTE_EVENTS",
            "inquiry.*,report.run.completed",
        ),
        ("PERSONA_GUARD_ROUTE_SECRETS", "env:SECRET, env:OTHER"),
        ("OTHER", "wbhsec_other"),
        ("PERSONA_GUARD_SPOOL_KEY", "env:SPOOL_KEY"),
        ("PERSONA_GUARD_REPLAY_CAPACITY", "1_000"),
        ("PERSONA_GUARD_UNMATCHED", "deny"),
    ]);
    let file = format!("[replay]\nttl = \"80h\"\n{ROUTE}");
    let c: Config = load(&file, &env).unwrap().config;
    assert_eq!(
        c.policy.replay.ttl,
        std::time::Duration::from_secs(48 * 3600)
    );
    assert_eq!(c.process.threads, 3);
    assert!(!c.policy.upstream.verify);
    assert_eq!(c.policy.upstream.host_header, HostHeader::Upstream);
    assert_eq!(c.process.capacity, 1000);
    assert_eq!(c.policy.unmatched, super::super::Unmatched::Deny);
    assert!(c.policy.routes[0].allows("inquiry.approved"));
    assert!(!c.policy.routes[0].allows("case.created"));
    let secrets: Vec<&[u8]> = c.policy.routes[0]
        .secrets
        .iter()
        .map(|s| s.expose())
        .collect();
    assert_eq!(secrets, vec![&b"wbhsec_abc"[..], b"wbhsec_other"]);
    assert!(c.process.spool.key.is_some());
    assert_eq!(c.policy.routes[0].path, "/a");
}

#[test]
fn print_shows_where_each_value_came_from() {
    let env = vars(&[("PERSONA_GUARD_REPLAY_TTL", "48h")]);
    let file = format!("[server]\ngrace_period = \"20s\"\n{ROUTE}");
    let printed = load(&file, &env).unwrap().printed;
    for line in [
        "ttl = \"48h\"  # env PERSONA_GUARD_REPLAY_TTL",
        "grace_period = \"20s\"  # file",
        "body_timeout = \"10s\"  # default",
        "path = \"/a\"  # file",
        "secrets = [\"env:SECRET\"]  # file",
        "# threads not set: the number of CPUs  # default",
        "[[route]]",
        "# [listen.tls]",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}\n{printed}");
    }
    // The printed configuration is TOML (comments aside) and loads back.
    let again = from_str(&printed, &vars(&[])).unwrap();
    assert_eq!(
        again.policy.replay.ttl,
        std::time::Duration::from_secs(48 * 3600)
    );
}

#[test]
fn print_never_shows_a_secret() {
    let env = vars(&[(
        "PERSONA_GUARD_REPLAY_REDIS_URL",
        "redis://:LEAKCANARY@r:6379",
    )]);
    let file = "[replay]\nstore = \"redis\"\nredis_password = \"LEAKCANARY_PW\"\n[[route]]\npath = \"/a\"\nsecrets = [\"LEAKCANARY_LITERAL\", \"env:SECRET\"]\n";
    let printed = load(file, &env).unwrap().printed;
    assert!(!printed.contains("LEAKCANARY"), "{printed}");
    assert!(!printed.contains("wbhsec_abc"), "{printed}");
    assert!(printed.contains("secrets = [\"<redacted>\", \"env:SECRET\"]  # file"));
    assert!(printed.contains("redis_url = \"<redacted>\"  # env PERSONA_GUARD_REPLAY_REDIS_URL"));
}

#[test]
fn an_unknown_variable_is_an_error() {
    let env = vars(&[
        ("PERSONA_GUARD_REPLAY_TTLL", "48h"),
        ("PERSONA_GUARD_BIN", "/x"),
    ]);
    let p = load(ROUTE, &env).unwrap_err();
    assert_eq!(keys(&p), vec!["PERSONA_GUARD_REPLAY_TTLL"]);
}

#[test]
fn a_variable_an_env_reference_names_is_a_secret_not_a_setting() {
    // The example file's spool key: a literal key in a variable that the
    // naming rule would also read as `spool.key`.
    let env = vars(&[(
        "PERSONA_GUARD_SPOOL_KEY",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    )]);
    let file = format!("[spool]\nkey = \"env:PERSONA_GUARD_SPOOL_KEY\"\n{ROUTE}");
    assert!(
        load(&file, &env)
            .unwrap()
            .config
            .process
            .spool
            .key
            .is_some()
    );
    // Named by a reference a variable sets: also a secret.
    let env = vars(&[
        (
            "PERSONA_GUARD_ROUTE_SECRETS",
            "env:PERSONA_GUARD_HOOK_SECRET",
        ),
        ("PERSONA_GUARD_HOOK_SECRET", "wbhsec_x"),
        ("PERSONA_GUARD_ROUTE_PATH", "/a"),
    ]);
    let c = load("", &env).unwrap().config;
    assert_eq!(c.policy.routes[0].secrets[0].expose(), b"wbhsec_x");
    // Not named by any reference: a literal in PERSONA_GUARD_SPOOL_KEY is refused.
    let env = vars(&[("PERSONA_GUARD_SPOOL_KEY", "LEAKCANARY0123")]);
    let p = load(ROUTE, &env).unwrap_err();
    assert_eq!(keys(&p), vec!["PERSONA_GUARD_SPOOL_KEY"]);
    assert!(!p[0].message.contains("LEAKCANARY"));
}

/// `admin.token` by variable: a reference is a setting; the variable a
/// reference names holds the token itself.
#[test]
fn the_admin_token_comes_from_a_variable_as_a_reference() {
    let env = vars(&[
        ("PERSONA_GUARD_ADMIN_TOKEN", "env:ADMIN_TOKEN"),
        ("ADMIN_TOKEN", "t0ken-by-reference"),
    ]);
    let effective = load(ROUTE, &env).unwrap();
    let token = effective.config.policy.admin_token.as_ref().unwrap();
    assert_eq!(token.expose(), b"t0ken-by-reference");
    assert!(
        effective
            .printed
            .contains("token = \"env:ADMIN_TOKEN\"  # env PERSONA_GUARD_ADMIN_TOKEN"),
        "{}",
        effective.printed
    );
    assert!(
        !effective.printed.contains("t0ken"),
        "{}",
        effective.printed
    );

    let env = vars(&[("PERSONA_GUARD_ADMIN_TOKEN", "t0ken-in-the-variable")]);
    let file = format!("[admin]\ntoken = \"env:PERSONA_GUARD_ADMIN_TOKEN\"\n{ROUTE}");
    let c = load(&file, &env).unwrap().config;
    assert_eq!(
        c.policy.admin_token.unwrap().expose(),
        b"t0ken-in-the-variable"
    );
}

#[test]
fn a_bad_value_names_the_variable_never_the_value() {
    let env = vars(&[
        ("PERSONA_GUARD_SERVER_THREADS", "LEAKCANARY"),
        ("PERSONA_GUARD_UPSTREAM_TLS", "LEAKCANARY"),
    ]);
    let p = load(ROUTE, &env).unwrap_err();
    assert_eq!(
        keys(&p),
        vec!["PERSONA_GUARD_SERVER_THREADS", "PERSONA_GUARD_UPSTREAM_TLS"]
    );
    // Found bad by validation: named by the variable, with the key.
    let env = vars(&[
        ("PERSONA_GUARD_REPLAY_TTL", "LEAKCANARY"),
        ("PERSONA_GUARD_SERVER_THREADS", "-1"),
        (
            "PERSONA_GUARD_ROUTE_SECRETS",
            "env:LEAKCANARY_UNSET_VARIABLE_NAME_X",
        ),
    ]);
    let p2 = load(ROUTE, &env).unwrap_err();
    assert_eq!(
        keys(&p2),
        vec!["PERSONA_GUARD_SERVER_THREADS (server.threads)"],
        "{p2:?}"
    );
    let env = vars(&[
        ("PERSONA_GUARD_REPLAY_TTL", "LEAKCANARY"),
        ("PERSONA_GUARD_ROUTE_SECRETS", "env:NOT_SET_HERE"),
    ]);
    let p3 = load(ROUTE, &env).unwrap_err();
    assert_eq!(
        keys(&p3),
        vec![
            "PERSONA_GUARD_REPLAY_TTL (replay.ttl)",
            "PERSONA_GUARD_ROUTE_SECRETS (route[0].secrets[0])"
        ]
    );
    for p in p.iter().chain(&p2).chain(&p3) {
        assert!(!p.message.contains("LEAKCANARY"), "{p:?}");
    }
}

#[test]
fn route_variables_and_the_number_of_routes() {
    // No route in the file: the variables make one.
    let env = vars(&[
        ("PERSONA_GUARD_ROUTE_PATH", "/hooks"),
        ("PERSONA_GUARD_ROUTE_SECRETS", "env:SECRET"),
    ]);
    let c = load("", &env).unwrap().config;
    assert_eq!(c.policy.routes.len(), 1);
    assert_eq!(c.policy.routes[0].path, "/hooks");
    // One route: overridden.
    let c = load(ROUTE, &env).unwrap().config;
    assert_eq!(c.policy.routes.len(), 1);
    assert_eq!(c.policy.routes[0].path, "/hooks");
    // Two: each route variable is an error.
    let p = load(TWO_ROUTES, &env).unwrap_err();
    assert_eq!(
        keys(&p),
        vec!["PERSONA_GUARD_ROUTE_PATH", "PERSONA_GUARD_ROUTE_SECRETS"]
    );
    assert!(p[0].message.contains("2 routes"));
    // Two routes and only non-route variables: fine.
    let env = vars(&[("PERSONA_GUARD_REPLAY_TTL", "48h")]);
    assert_eq!(
        load(TWO_ROUTES, &env).unwrap().config.policy.routes.len(),
        2
    );
    // No route anywhere: the usual problem.
    assert!(load("", &vars(&[])).is_err());
}

#[test]
fn a_literal_secret_in_a_variable_is_refused() {
    for (var, value) in [
        ("PERSONA_GUARD_ROUTE_SECRETS", "wbhsec_LEAKCANARY"),
        (
            "PERSONA_GUARD_ROUTE_SECRETS",
            "env:SECRET,wbhsec_LEAKCANARY",
        ),
        ("PERSONA_GUARD_REPLAY_REDIS_PASSWORD", "LEAKCANARY"),
        ("PERSONA_GUARD_ADMIN_TOKEN", "LEAKCANARY"),
    ] {
        let p = load(ROUTE, &vars(&[(var, value)])).unwrap_err();
        assert_eq!(keys(&p), vec![var]);
        assert!(!p[0].message.contains("LEAKCANARY"));
    }
}

#[test]
fn variable_names_follow_the_rule() {
    let names: Vec<String> = KEYS.iter().map(Key::var).collect();
    for n in [
        "PERSONA_GUARD_UPSTREAM_ADDRESS",
        "PERSONA_GUARD_REPLAY_TTL",
        "PERSONA_GUARD_SERVER_GRACE_PERIOD",
        "PERSONA_GUARD_SPOOL_MAX_AGE",
        "PERSONA_GUARD_UNMATCHED",
        "PERSONA_GUARD_LOG_FORMAT",
        "PERSONA_GUARD_LISTEN_TLS_CERT",
        "PERSONA_GUARD_ROUTE_PATH",
        "PERSONA_GUARD_ROUTE_SECRETS",
    ] {
        assert!(names.iter().any(|x| x == n), "{n}");
    }
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    for r in RESERVED {
        assert!(!names.iter().any(|x| x == r));
    }
}

/// The defaults `check --print` shows are the loader's: written out
/// explicitly they give the configuration an empty file gives.
#[test]
fn printed_defaults_are_the_defaults() {
    let mut text = String::new();
    let mut current = None;
    for key in KEYS.iter().filter(|k| !k.is_route()) {
        let Def::Value(d) = key.default else { continue };
        if current != Some(key.table) {
            current = Some(key.table);
            if !key.table.is_empty() {
                text.push_str(&format!("[{}]\n", key.table));
            }
        }
        text.push_str(&format!("{} = {d}\n", key.name));
    }
    text.push_str("[[route]]\n");
    for key in KEYS.iter().filter(|k| k.table == "route") {
        if let Def::Value(d) = key.default {
            text.push_str(&format!("{} = {d}\n", key.name));
        }
    }
    text.push_str("path = \"/a\"\nsecrets = [\"env:SECRET\"]\n");
    let explicit = from_str(&text, &vars(&[])).unwrap();
    let implicit = from_str(ROUTE, &vars(&[])).unwrap();
    assert_eq!(format!("{explicit:?}"), format!("{implicit:?}"));
    // The Redis-only defaults, with the Redis store.
    let redis = "[replay]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let mut explicit = redis.to_string();
    explicit.push_str(
        "redis_timeout = \"500ms\"\nkey_prefix = \"persona-guard:\"\non_store_error = \"reject\"\n",
    );
    let a = from_str(&format!("{explicit}{ROUTE}"), &vars(&[])).unwrap();
    let b = from_str(&format!("{redis}{ROUTE}"), &vars(&[])).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// Prints the table of `docs/configuration.md`: `cargo test --lib print_readme_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_readme_table() {
    print!("{}", readme_table());
}

/// The table of variables in `docs/configuration.md` is [`readme_table`], exactly.
#[test]
fn the_readme_lists_exactly_the_variables() {
    let readme = include_str!("../../../docs/configuration.md");
    let start = "<!-- env-table: generated by config::env::readme_table -->\n";
    let end = "<!-- /env-table -->";
    let from = readme
        .find(start)
        .expect("docs/configuration.md env-table marker")
        + start.len();
    let to = from
        + readme[from..]
            .find(end)
            .expect("docs/configuration.md env-table end marker");
    assert_eq!(
        &readme[from..to],
        readme_table(),
        "regenerate the table in docs/configuration.md from config::env::readme_table()"
    );
}
