//! The `persona-guard` process under test (started from a [`ProxyBuilder`] on
//! free ports): signals and exit, its logs, metrics and admin endpoints, and
//! the binary's other subcommands.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::config::secret_env;
use super::{
    Client, ProxyBuilder, ROUTE, Response, W, delivery, free_port, kill, now, one_shot, poll,
    request, sign, wait_until,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_persona-guard");

/// The binary under test: `PERSONA_GUARD_BIN` when set (to run the suite
/// against another build, e.g. an older release), else this crate's.
pub fn bin() -> String {
    std::env::var("PERSONA_GUARD_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// How long a proxy may take to answer on both listeners after its start.
const START_DEADLINE: Duration = Duration::from_secs(20);

impl ProxyBuilder {
    /// Starts the proxy and waits until it is ready.
    pub fn start(self) -> Proxy {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match self.try_start() {
                Ok(p) => return p,
                Err(e) if e.to_ascii_lowercase().contains("in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("proxy could not bind after 3 attempts: {last_err}");
    }

    fn try_start(&self) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let running = self
            .clone()
            .set("listen.address", listen.to_string())
            .set("admin.address", admin.to_string());
        let config = dir.path().join("persona-guard.toml");
        fs::write(&config, running.toml()).unwrap();
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        for (i, s) in self.secrets.iter().enumerate() {
            cmd.env(secret_env(i), s);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin()))?;
        let mut p = Proxy {
            child: Some(child),
            dir,
            config,
            listen,
            admin,
            secrets: self.secrets.clone(),
            builder: running,
            stdout_path,
            stderr_path,
        };
        // Ready once this process answers on both of its listeners.
        let ready = poll(START_DEADLINE, || {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(Err(format!("persona-guard exited early with {status}")));
            }
            if p.stderr().contains("is in use") {
                // pingora retries a bind for 30 s: another process has the port.
                return Some(Err("a port is in use".into()));
            }
            let ours = listens_on(p.pid(), listen.port()) && listens_on(p.pid(), admin.port());
            (ours && p.healthz_ok()).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(p),
            Some(Err(why)) => Err(format!(
                "{why}\nconfig:\n{}\nstderr:\n{}\nstdout:\n{}",
                fs::read_to_string(&p.config).unwrap_or_default(),
                p.stderr(),
                p.stdout()
            )),
            None => panic!(
                "persona-guard not ready within {START_DEADLINE:?} (healthz on {admin}, listen on {listen})\nstderr:\n{}",
                p.stderr()
            ),
        }
    }
}

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect()
}

/// The local addresses of process `pid`'s established connections to
/// `to` (127.0.0.1): as the server at `to` sees them, its peers.
pub fn connections_to(pid: u32, to: SocketAddr) -> std::collections::HashSet<SocketAddr> {
    let inodes = socket_inodes(pid);
    let remote = format!("0100007F:{:04X}", to.port());
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() <= 9 || f[2] != remote || f[3] != "01" || !inodes.contains(f[9]) {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect()
}

/// Whether process `pid` holds the listening socket on 127.0.0.1:`port`
/// (another test's process may have taken a port between its choice and the bind).
fn listens_on(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let Some(inode) = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| f[9].to_string())
    }) else {
        return false;
    };
    let socket = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
}

/// A running `persona-guard run`, killed when dropped.
pub struct Proxy {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub secrets: Vec<String>,
    /// The configuration it was started with, addresses included.
    builder: ProxyBuilder,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

const RELOAD_OK: &str = "persona_guard_config_reloads_total{result=\"ok\"}";
const RELOAD_ERROR: &str = "persona_guard_config_reloads_total{result=\"error\"}";

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    fn healthz_ok(&self) -> bool {
        let Ok(mut c) = TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut c, &mut head).is_ok() && head.ends_with(b" 200")
    }

    pub fn secret(&self) -> &str {
        &self.secrets[0]
    }

    pub fn client(&self) -> Client {
        Client::connect(self.listen)
    }

    pub fn send(&self, raw: &[u8]) -> Response {
        one_shot(self.listen, raw)
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send(&request("POST", path, headers, body))
    }

    /// A genuine delivery of `body` to the route, signed now with the first secret.
    pub fn deliver(&self, body: &[u8]) -> Response {
        self.deliver_to(ROUTE, self.secret(), body)
    }

    /// A delivery of `body` to `path`, signed now with `secret`.
    pub fn deliver_to(&self, path: &str, secret: &str, body: &[u8]) -> Response {
        self.send(&delivery(path, &sign(secret, now(), body), body))
    }

    /// Delivers `body` until the answer is no longer 409 (another request's
    /// claim on the event is settled), within `deadline`.
    pub fn deliver_after_inflight(&self, body: &[u8], deadline: Duration) -> Response {
        let mut last = None;
        poll(deadline, || {
            let r = self.deliver(body);
            let settled = r.status != 409;
            last = Some(r);
            settled.then_some(())
        });
        last.expect("at least one attempt")
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!("{}\n{}", self.stdout(), self.stderr())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal (e.g. "HUP") to this child, by its own PID.
    pub fn signal(&self, sig: &str) {
        kill(sig, self.pid());
    }

    /// Rewrites the configuration file: the running one edited by `f`.
    pub fn edit_config(&self, f: impl FnOnce(ProxyBuilder) -> ProxyBuilder) {
        fs::write(&self.config, f(self.builder.clone()).toml()).unwrap();
    }

    /// SIGHUP, then waits until the reload is counted as `ok`.
    pub fn reload_ok(&self) {
        self.reload(RELOAD_OK);
    }

    /// SIGHUP, then waits until the reload is counted as refused.
    pub fn reload_refused(&self) {
        self.reload(RELOAD_ERROR);
    }

    fn reload(&self, series: &str) {
        let before = self.metric_or_zero(series);
        self.signal("HUP");
        if !wait_until(W, || self.metric_or_zero(series) > before) {
            panic!(
                "SIGHUP: {series} did not move from {before}\nstderr:\n{}",
                self.stderr()
            );
        }
    }

    /// One request to the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        self.admin_request("GET", path)
    }

    /// One request with `method` (no body) to the admin listener.
    pub fn admin_request(&self, method: &str, path: &str) -> Response {
        one_shot(self.admin, &request(method, path, &[], b""))
    }

    /// The status of `GET /readyz`.
    pub fn readyz(&self) -> u16 {
        self.admin_get("/readyz").status
    }

    /// The admin /metrics text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").text()
    }

    fn sample(scrape: &str, series: &str) -> Option<f64> {
        scrape.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The value of one metric sample (`name{labels}` exactly as exported), if exported.
    pub fn metric_opt(&self, series: &str) -> Option<f64> {
        Self::sample(&self.metrics(), series)
    }

    /// The value of one metric sample (`name{labels}` exactly as exported).
    /// Panics when the series is absent: a pre-registered series exports 0.
    pub fn metric(&self, series: &str) -> f64 {
        let scrape = self.metrics();
        Self::sample(&scrape, series)
            .unwrap_or_else(|| panic!("metric series {series} is absent from /metrics:\n{scrape}"))
    }

    /// Like [`Proxy::metric`], but 0 when the series is absent. Only for series
    /// that are legitimately not exported until first counted.
    pub fn metric_or_zero(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or(0.0)
    }

    /// Waits until `series` reads `want`; panics with the scrape otherwise.
    pub fn wait_for_metric(&self, series: &str, want: f64) {
        if !wait_until(W, || self.metric_opt(series) == Some(want)) {
            panic!("{series} did not reach {want}:\n{}", self.metrics());
        }
    }

    /// Waits until `n` requests on `route` ended with `outcome` (the outcome
    /// is counted once the request is over: nothing more of it can follow).
    pub fn wait_for_outcome(&self, route: &str, outcome: &str, n: u32) {
        self.wait_for_metric(&requests_series(route, outcome), f64::from(n));
    }

    /// How many requests on any route (or none) ended with `outcome`.
    pub fn outcome_total(&self, outcome: &str) -> f64 {
        let prefix = format!("persona_guard_requests_total{{outcome=\"{outcome}\",");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `n` requests, on whatever route, ended with `outcome`.
    pub fn wait_for_outcome_anywhere(&self, outcome: &str, n: u32) {
        if !wait_until(W, || self.outcome_total(outcome) == f64::from(n)) {
            panic!("not {n} request(s) ended {outcome}:\n{}", self.metrics());
        }
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        poll(within, || child.try_wait().unwrap())
    }

    /// Sends `sig` and waits up to `within` for the process to exit.
    pub fn stop_with(&mut self, sig: &str, within: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        self.wait_exit(within)
    }

    /// Sends SIGTERM to this child (by its PID) and waits for it to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.stop_with("TERM", within)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `persona_guard_requests_total` series of `route` (`(none)` off route).
pub fn requests_series(route: &str, outcome: &str) -> String {
    format!("persona_guard_requests_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

/// Asserts that a subcommand run by [`run_cli`] exited 0, showing its stderr
/// when it did not.
pub fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs another subcommand (`check`, `sign`, ...) to its end, within 30 s.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn persona-guard");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input).unwrap();
        drop(si);
    }
    let started = Instant::now();
    if poll(Duration::from_secs(30), || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "persona-guard {args:?} did not exit within {:?}; stderr: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}
