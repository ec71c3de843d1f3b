//! A real `redis-server` child on a free loopback port, persistence off:
//! started, stopped, restarted and paused (SIGSTOP) by its own PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{W, free_port, kill, wait_for};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Whether every write is in the append-only file before it is answered,
    /// so that a restart forgets nothing.
    persistent: bool,
}

impl RedisServer {
    /// Persistence off: a restart forgets every key.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// `appendonly yes`, `appendfsync always`: what `docs/replay.md` advises to keep
    /// the replay memory across a restart.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            persistent,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(match self.persistent {
                true => ["--appendonly", "yes", "--appendfsync", "always"],
                false => ["--appendonly", "no", "--appendfsync", "everysec"],
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}). The Redis tests need it: \
                     `apt-get install redis-server` (scripts/test.sh installs it)"
                )
            });
        self.child = Some(child);
        wait_for(
            format_args!("redis-server to answer PING on port {}", self.port),
            W,
            || self.ping(),
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for("redis to stop answering after stop()", W, || !self.ping());
    }

    /// Freezes the server (SIGSTOP): connections open, nothing answered,
    /// until the guard is dropped (SIGCONT), on a panic too.
    pub fn pause(&self) -> Paused {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        kill("STOP", pid);
        Paused { pid }
    }

    /// A raw RESP command; returns the reply bytes.
    pub fn command(&self, args: &[&str]) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(300)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        send_command(&mut s, args)
    }

    /// [`Self::command`] on a connection authenticated with `password`.
    pub fn command_as(&self, password: &str, args: &[&str]) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(300)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let auth = send_command(&mut s, &["AUTH", password])?;
        if !auth.starts_with(b"+OK") {
            return None;
        }
        send_command(&mut s, args)
    }

    /// Makes the server ask for `password` (it asked for none).
    pub fn require_password(&self, password: &str) {
        let set = self.command(&["CONFIG", "SET", "requirepass", password]);
        assert!(
            set.is_some_and(|r| r.starts_with(b"+OK")),
            "CONFIG SET requirepass"
        );
    }

    /// Rotates the password from `old` to `new`, then drops every client
    /// connection, so that clients must authenticate again (with `new`).
    pub fn rotate_password(&self, old: &str, new: &str) {
        let set = self.command_as(old, &["CONFIG", "SET", "requirepass", new]);
        assert!(set.is_some_and(|r| r.starts_with(b"+OK")), "the rotation");
        self.command_as(new, &["CLIENT", "KILL", "TYPE", "normal"]);
    }

    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with(b"+PONG"))
    }

    /// How many clients are connected, the one asking included.
    pub fn clients(&self) -> usize {
        let reply = self.command(&["CLIENT", "LIST"]).unwrap_or_default();
        String::from_utf8_lossy(&reply)
            .lines()
            .filter(|l| l.starts_with("id="))
            .count()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes one RESP command and reads its reply (one read: replies here are short).
fn send_command(s: &mut TcpStream, args: &[&str]) -> Option<Vec<u8>> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// A paused `redis-server`; dropping this resumes it (SIGCONT).
#[must_use = "the server resumes when this is dropped"]
pub struct Paused {
    pid: u32,
}

impl Drop for Paused {
    fn drop(&mut self) {
        // Not `kill()`: a failed assert here would abort a panicking test.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
    }
}
