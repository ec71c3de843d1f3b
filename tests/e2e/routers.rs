//! The differential router suite: real application frameworks behind the
//! real proxy, attacked with thousands of generated request targets.
//!
//! Each framework in `tests/routers/` (installed by `tests/routers/setup.sh`)
//! runs an app with a webhook handler at the route, a handler below it and a
//! catch-all; every answer names its handler in `X-Handler`, and the app
//! counts how often each ran (`GET /__pg_counts`, asked directly). For each
//! framework:
//!
//! 1. signed deliveries through the proxy reach both webhook handlers (so the
//!    suite can see a success and cannot pass vacuously);
//! 2. every generated target is sent **unsigned** through the proxy over
//!    HTTP/1.1, and the valid `:path` ones over HTTP/2 too: no answer may come
//!    from a webhook handler, and the app's webhook counters must not move;
//! 3. the same targets are sent straight to the app: how many reach a webhook
//!    handler there is what the proxy had to catch, and must be a real share.
//!
//! Targets come from a seeded generator (`PG_ROUTER_SEED`, `PG_ROUTER_TARGETS`
//! override the defaults) combining every class of spelling the route
//! decision knows: absolute-form and `//host` prefixes, percent-encoding
//! (single, double, `%2F`, `%5C`), `\`, case, dot segments (`%2e` too),
//! `;parameters`, format suffixes, trailing white space, queries, fragments
//! and raw bytes that Python splits request lines on.
//!
//! Two more cases: a dotted route (`/webhooks/persona.v2`, Express's
//! `{.:format}` handler behind it, so every dot of the last segment counts),
//! and `Host` spellings with asterisk-form (`hosts`: the Node app routes on
//! `'http://' + Host`).

mod hosts;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::*;
use crate::tls::{Pki, h2_connect, listen_tls};

const DEFAULT_TARGETS: usize = 2500;
const DEFAULT_SEED: u64 = 0x5eed_0011;
const H2_TARGETS: usize = 400;
const WORKERS: usize = 4;

/// Which route the proxy protects, and which handlers are under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// `/webhooks/persona`: the handlers `webhook`, `webhook-sub` (and
    /// Express's `webhook-v2`, which the route covers too).
    Persona,
    /// `/webhooks/persona.v2` alone: Express's `webhook-v2` handler.
    Dotted,
}

impl Case {
    fn route(self) -> &'static str {
        match self {
            Case::Persona => "/webhooks/persona",
            Case::Dotted => "/webhooks/persona.v2",
        }
    }

    /// The route's last segment, which the generator respells.
    fn last(self) -> &'static str {
        match self {
            Case::Persona => "persona",
            Case::Dotted => "persona.v2",
        }
    }

    /// Whether the handler named `h` runs under the route.
    fn guards(self, h: &str) -> bool {
        match self {
            Case::Persona => h.starts_with("webhook"),
            Case::Dotted => h == "webhook-v2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framework {
    /// Node's `http`, routing on `new URL(req.url, base).pathname`.
    NodeUrl,
    Express,
    /// Flask on werkzeug's server.
    Flask,
    /// Starlette on uvicorn (h11).
    Starlette,
}

impl Framework {
    fn command(self) -> Command {
        let (program, script) = match self {
            Framework::NodeUrl => ("node", "node_url.js"),
            Framework::Express => ("node", "express_app.js"),
            Framework::Flask => ("python3", "flask_app.py"),
            Framework::Starlette => ("python3", "starlette_app.py"),
        };
        let mut c = Command::new(program);
        c.arg(script)
            .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/routers"));
        c
    }
}

/// A framework app on 127.0.0.1, stopped on drop.
struct App {
    framework: Framework,
    child: Child,
    addr: SocketAddr,
}

impl App {
    fn start(framework: Framework) -> App {
        let mut child = framework
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{framework:?} cannot start ({e}); run tests/routers/setup.sh")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(port) = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            let _ = child.kill();
            panic!(
                "{framework:?} did not start (said {line:?}); run tests/routers/setup.sh to install it"
            );
        };
        App {
            framework,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// How often the handlers under `case`'s route have run.
    fn webhook_runs(&self, case: Case) -> u64 {
        self.counts()
            .iter()
            .filter(|(k, _)| case.guards(k))
            .map(|(_, n)| n)
            .sum()
    }

    /// How often each handler has run.
    fn counts(&self) -> BTreeMap<String, u64> {
        let a = exchange(self.addr, "GET", b"/__pg_counts", "h", &[], b"")
            .unwrap_or_else(|| panic!("{:?}: no answer from /__pg_counts", self.framework));
        let counts: serde_json::Value = serde_json::from_slice(&a.body).expect("counts JSON");
        let counts = counts.as_object().expect("a JSON object of counts");
        let count = |v: &serde_json::Value| v.as_u64().expect("a count");
        counts.iter().map(|(k, v)| (k.clone(), count(v))).collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer: status, the handler that ran (if the app answered), the
/// proxy's error code (if it refused), the body.
struct Answer {
    status: u16,
    handler: Option<String>,
    code: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn ran_webhook(&self, case: Case) -> bool {
        self.handler.as_deref().is_some_and(|h| case.guards(h))
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to
/// the end. `None` when the server closed without an answer.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &[u8],
    host: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Option<Answer> {
    let mut req = Vec::with_capacity(256 + body.len());
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    let _ = write!(
        req,
        "Host: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(&req).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let mut heads = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut heads);
    let Ok(httparse::Status::Complete(n)) = resp.parse(&out) else {
        return None;
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let handler = header("x-handler");
    let body = out[n..].to_vec();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    Some(Answer {
        status: resp.code.unwrap_or(0),
        handler,
        code,
        body,
    })
}

// ------------------------------------------------------------- the targets

/// A generated request: its target and the `Host` that goes with it (an
/// absolute-form authority must equal `Host`, or the proxy refuses it outright).
struct Target {
    bytes: Vec<u8>,
    host: String,
}

fn pick<'a, T: ?Sized>(rng: &mut StdRng, from: &'a [&'a T]) -> &'a T {
    from[rng.gen_range(0..from.len())]
}

/// `name` with some bytes respelled: upper-case, `%XX`, `%xx`, or `%25XX`.
fn respell(rng: &mut StdRng, name: &str, encode: bool) -> String {
    let rate = *pick(rng, &[&0.15, &0.4, &1.0]);
    name.bytes()
        .map(|b| {
            if !rng.gen_bool(rate) {
                return (b as char).to_string();
            }
            match (encode, rng.gen_range(0..3)) {
                (false, _) => (b as char).to_ascii_uppercase().to_string(),
                (true, 0) => format!("%{b:02X}"),
                (true, 1) => format!("%{b:02x}"),
                (true, _) => format!("%25{b:02X}"),
            }
        })
        .collect()
}

/// The classes of spelling a target can combine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trick {
    Authority,
    Lead,
    Case,
    Encoding,
    Separator,
    Tail,
    End,
    RandomByte,
}

const TRICKS: [Trick; 8] = [
    Trick::Authority,
    Trick::Lead,
    Trick::Case,
    Trick::Encoding,
    Trick::Separator,
    Trick::Tail,
    Trick::End,
    Trick::RandomByte,
];

fn generate(rng: &mut StdRng, case: Case) -> Target {
    const AUTHORITIES: &[&str] = &[
        "http://h",
        "HTTP://h",
        "https://h:443",
        "hTtPs://h",
        "http://h:80",
        "foo://h",
        "javascript://h",
        "ws://h",
        "//h",
        "/\\h",
        "///h",
        "//h:80",
        "\\\\h",
        "http:",
        "http:/",
        "x:",
    ];
    const LEADS: &[&str] = &[
        "/.",
        "/%2e",
        "/x/..",
        "/x/%2e%2e",
        "/..",
        "/%2E%2E",
        "/",
        "/%2F",
        "/;p",
        "/x/..;p",
    ];
    const SEPARATORS: &[&str] = &[
        "//",
        "\\",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "%252F",
        "/./",
        "/%2e/",
        "/%2E/",
        "/x/../",
        "/x/%2e%2e/",
        "/X/%2E./",
        "/;p/",
        "/x/..;p/",
        "/.//",
        "\\.\\",
        "/x\\..\\",
    ];
    const TAILS: &[&str] = &[
        "/",
        "/sub",
        "/sub/deeper",
        "/..",
        "/../",
        "/%2e%2e",
        "/%2E.",
        "/.%2e",
        "/..;x",
        "/.",
        "/%2e",
        ";p=1",
        ";",
        "/x/..",
        "//..",
        "/../x",
        "/sub/../..",
        "/%2F",
        "%2F..",
        "%2f%2e%2e",
        "%0a",
        "%0A",
        "%0d%0a",
        "%20",
        "%09",
        "\\",
        "\\x",
        "/%zz",
        "/%00",
        "/...",
    ];
    const ENDS: &[&str] = &[
        ".json", ".", "%2e", ".xml", "?q=1", "?", "#f", "#", "%3Fq", "%23f", "?/..", "%2F", "/?x",
        "\u{85}", "\u{a0}", ".tar.gz", ".v2.json", "%2ejson",
    ];
    // One to three classes per target: each alone already fools some router,
    // and combinations find what no single class does.
    let mut tricks = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        tricks.push(TRICKS[rng.gen_range(0..TRICKS.len())]);
    }
    let has = |t: Trick| tricks.contains(&t);
    let mut t = String::new();
    let mut host = "h".to_string();
    if has(Trick::Authority) {
        let a = pick(rng, AUTHORITIES);
        if let Some(rest) = a.split("://").nth(1) {
            host = rest.to_string();
        }
        t.push_str(a);
    }
    if has(Trick::Lead) {
        t.push_str(pick(rng, LEADS));
    }
    for (i, name) in ["webhooks", case.last()].into_iter().enumerate() {
        t.push_str(match i {
            0 => "/",
            _ if has(Trick::Separator) => pick(rng, SEPARATORS),
            _ => "/",
        });
        let spelled = match (has(Trick::Case), has(Trick::Encoding)) {
            (_, true) if rng.gen_bool(0.7) => respell(rng, name, true),
            (true, _) => respell(rng, name, false),
            _ => name.to_string(),
        };
        t.push_str(&spelled);
    }
    if has(Trick::Tail) {
        for _ in 0..rng.gen_range(1..3) {
            t.push_str(pick(rng, TAILS));
        }
    }
    if has(Trick::End) {
        t.push_str(pick(rng, ENDS));
    }
    // Latin-1 for the two raw white-space bytes Python splits on.
    let mut bytes: Vec<u8> = t
        .chars()
        .map(|c| u32::from(c).try_into().unwrap_or(b'?'))
        .collect();
    // A random byte from the syntax alphabet, anywhere.
    if has(Trick::RandomByte) {
        let at = rng.gen_range(0..=bytes.len());
        let b = *pick(
            rng,
            &[&b'/', &b'\\', &b'.', &b';', &b'%', &b'~', &0x85u8, &b':'],
        );
        bytes.insert(at, b);
    }
    Target { bytes, host }
}

fn targets(seed: u64, n: usize, case: Case) -> Vec<Target> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| generate(&mut rng, case)).collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends every target to `addr` from [`WORKERS`] threads; returns the answers
/// (in target order; `None` where the server closed without one).
fn send_all(
    addr: SocketAddr,
    targets: &[Target],
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<Option<Answer>> {
    let chunk = targets.len().div_ceil(WORKERS).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = targets
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|t| exchange(addr, "POST", &t.bytes, &t.host, headers, body))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sender thread"))
            .collect()
    })
}

/// Sends the targets that are valid HTTP/2 `:path` values over HTTP/2 (TLS,
/// ALPN h2); returns how many were sent and which ran a handler under the route.
fn send_h2(
    pki: &Pki,
    addr: SocketAddr,
    targets: &[Target],
    body: &[u8],
    case: Case,
) -> (usize, Vec<String>) {
    let paths: Vec<http::uri::PathAndQuery> = targets
        .iter()
        .filter(|t| t.bytes.first() == Some(&b'/'))
        .filter_map(|t| http::uri::PathAndQuery::try_from(t.bytes.as_slice()).ok())
        .take(H2_TARGETS)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bypasses = rt.block_on(async {
        let (client, _conn) = h2_connect(pki, addr).await;
        let mut bypasses = Vec::new();
        for p in &paths {
            let uri = http::Uri::builder()
                .scheme("https")
                .authority(format!("localhost:{}", addr.port()))
                .path_and_query(p.clone())
                .build()
                .unwrap();
            let req = http::Request::post(uri)
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            let mut client = client.clone().ready().await.unwrap();
            let Ok((resp, mut stream)) = client.send_request(req, false) else {
                continue;
            };
            let _ = stream.send_data(bytes::Bytes::copy_from_slice(body), true);
            let Ok(resp) = resp.await else { continue };
            if resp
                .headers()
                .get("x-handler")
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| case.guards(h))
            {
                bypasses.push(p.to_string());
            }
            let mut recv = resp.into_body();
            while let Some(Ok(chunk)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(chunk.len());
            }
        }
        bypasses
    });
    (paths.len(), bypasses)
}

/// The route exactly, then nothing or `/`, `?`, `#`.
fn plain_spelling(t: &[u8], case: Case) -> bool {
    t.strip_prefix(case.route().as_bytes())
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'/' | b'?' | b'#')))
}

fn shown(t: &[u8]) -> String {
    t.escape_ascii().to_string()
}

fn suite(framework: Framework, case: Case) {
    let started = Instant::now();
    let n = env_or("PG_ROUTER_TARGETS", DEFAULT_TARGETS);
    let seed = env_or("PG_ROUTER_SEED", DEFAULT_SEED);
    let app = App::start(framework);
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let p = Proxy::builder()
        .upstream_addr(app.addr)
        .route(|r| r.set("path", case.route()))
        .start();
    let p2 = Proxy::builder()
        .upstream_addr(app.addr)
        .route(|r| r.set("path", case.route()))
        .secrets(vec![p.secret().to_string()])
        .apply(listen_tls(&leaf))
        .start();

    // 1. Genuine deliveries reach the handlers: the suite can see a success.
    let runs = app.webhook_runs(case);
    let positives: &[(&[u8], &str)] = match case {
        Case::Persona => &[
            (b"/webhooks/persona", "webhook"),
            (b"/webhooks/persona/sub", "webhook-sub"),
            (b"/webhooks/persona?x=1", "webhook"),
            (b"http://h/webhooks/persona", "webhook"),
        ],
        Case::Dotted => &[
            (b"/webhooks/persona.v2", "webhook-v2"),
            (b"/webhooks/persona.v2.json", "webhook-v2"),
            (b"/webhooks/persona.v2?x=1", "webhook-v2"),
        ],
    };
    for &(target, want) in positives {
        let body = event_body(&event_id(), "inquiry.approved");
        let sig = vec![("Persona-Signature", sign(p.secret(), now(), &body))];
        let a = exchange(p.listen, "POST", target, "h", &sig, &body)
            .unwrap_or_else(|| panic!("{framework:?}: no answer to a signed delivery"));
        assert_eq!(
            (a.status, a.handler.as_deref()),
            (200, Some(want)),
            "{framework:?}: a signed delivery to {} did not reach {want}: {}",
            shown(target),
            String::from_utf8_lossy(&a.body)
        );
    }
    assert_eq!(app.webhook_runs(case), runs + positives.len() as u64);

    // 2. Unsigned, through the proxy: no webhook handler runs.
    let targets = targets(seed ^ framework as u64 ^ case as u64, n, case);
    let body = event_body("evt_unsigned_router_suite", "inquiry.approved");
    let runs = app.webhook_runs(case);
    let answers = send_all(p.listen, &targets, &[], &body);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut bypasses = Vec::new();
    for (t, a) in targets.iter().zip(&answers) {
        let key = match a {
            None => "closed".to_string(),
            Some(a) if a.ran_webhook(case) => {
                bypasses.push(shown(&t.bytes));
                "BYPASS".to_string()
            }
            Some(a) => format!("{} {}", a.status, a.code.as_deref().unwrap_or("app")),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let (h2_sent, h2_bypasses) = send_h2(&pki, p2.listen, &targets, &body, case);
    let leaked = app.webhook_runs(case) - runs;

    // 3. The same targets straight to the app: what the proxy had to catch.
    let direct = send_all(app.addr, &targets, &[], &body);
    let dangerous: Vec<&Target> = targets
        .iter()
        .zip(&direct)
        .filter(|(_, a)| a.as_ref().is_some_and(|a| a.ran_webhook(case)))
        .map(|(t, _)| t)
        .collect();
    // Those spelled other than the route itself, as a naive proxy compares.
    let tricky = dangerous
        .iter()
        .filter(|t| !plain_spelling(&t.bytes, case))
        .count();
    let dangerous = dangerous.len();

    eprintln!(
        "router suite {framework:?} {case:?}: seed {seed:#x}, {n} targets over HTTP/1.1 + {h2_sent} over HTTP/2; \
         {dangerous} run a webhook handler when sent straight to the app ({tricky} of them not \
         spelled {}[/?#...]), \
         {} through the proxy unsigned; proxy answers {outcomes:?}; {:.1} s",
        case.route(),
        bypasses.len() + h2_bypasses.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        bypasses.is_empty() && h2_bypasses.is_empty(),
        "{framework:?}: unsigned requests ran a webhook handler through the proxy:\n  HTTP/1.1: {:?}\n  HTTP/2: {:?}",
        &bypasses[..bypasses.len().min(30)],
        &h2_bypasses[..h2_bypasses.len().min(30)]
    );
    assert_eq!(
        leaked, 0,
        "{framework:?}: the app's webhook handlers ran {leaked} times during the unsigned phase"
    );
    assert!(
        tricky * 50 >= n,
        "{framework:?}: only {tricky} of {n} targets reach a webhook handler directly when \
         spelled unlike the route; the generator no longer exercises this framework"
    );
    assert!(
        h2_sent >= H2_TARGETS / 2,
        "{framework:?}: only {h2_sent} HTTP/2 targets"
    );
}

#[test]
fn router_suite_node_new_url() {
    suite(Framework::NodeUrl, Case::Persona);
}

#[test]
fn router_suite_express() {
    suite(Framework::Express, Case::Persona);
}

#[test]
fn router_suite_flask() {
    suite(Framework::Flask, Case::Persona);
}

#[test]
fn router_suite_starlette() {
    suite(Framework::Starlette, Case::Persona);
}

/// A dotted route: Express's `{.:format}` runs its handler for
/// `/webhooks/persona.v2.json`, which the proxy must read under the route.
#[test]
fn router_suite_express_dotted_route() {
    suite(Framework::Express, Case::Dotted);
}
