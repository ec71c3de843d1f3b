//! Secrets and the outside world: [`Secret`] (never in `Debug`), the [`Env`]
//! the loader reads `env:` secrets and name resolution through, and the rule
//! for which `env:` names a message may show.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// A webhook secret. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the loader reads from the outside world: `env:` secrets and name
/// resolution (the process environment and the system resolver, or fakes in
/// tests and fuzzing).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// Every variable (name and value) whose name starts with `prefix`: the
    /// settings laid over the file (see `config::env`). None by default.
    fn settings(&self, _prefix: &str) -> Vec<(String, String)> {
        Vec::new()
    }

    /// `host:port` or `ip:port` to one socket address. The error message is
    /// shown to the operator: it must not repeat `addr` (a secret may have
    /// been written there).
    fn resolve(&self, addr: &str) -> Result<SocketAddr, String> {
        resolve(addr)
    }
}

/// The process environment.
pub struct EnvSource;

impl Env for EnvSource {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn settings(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(n, v)| {
                let n = n.into_string().ok()?;
                n.starts_with(prefix)
                    .then(|| (n, v.to_string_lossy().into_owned()))
            })
            .collect()
    }
}

/// `host:port` or `ip:port` to one socket address (resolved once, at load).
/// The messages never repeat the address.
fn resolve(v: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    let fix =
        "write an address with a port, like \"127.0.0.1:3000\" (the value is not repeated here)";
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(format!("has no port; {fix}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("has no valid port (0 to 65535); {fix}"));
    }
    if host.is_empty() {
        return Err(format!("has no host; {fix}"));
    }
    match v.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("resolves to no address; {fix}")),
        Err(_) => Err(format!(
            "is not an IP address and does not resolve as a host name; {fix}"
        )),
    }
}

/// Whether an `env:` name may be shown in a message: a conventional variable
/// name (`PERSONA_WEBHOOK_SECRET`: upper-case words of at most 12 letters and
/// digits joined by `_`). A secret pasted after `env:` is not one (Persona's
/// are lower-case `wbhsec_…`; random tokens are long runs), so it is not shown.
fn looks_like_env_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.split('_').all(|w| {
            !w.is_empty()
                && w.len() <= 12
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
}

/// Where a secret spec's bytes came from, as read (nothing trimmed).
pub(super) enum Source {
    /// `env:NAME`: the variable's value.
    Env(Vec<u8>),
    /// `file:/path`: the file's bytes.
    File(Vec<u8>),
    /// Neither prefix: the spec itself.
    Literal(Vec<u8>),
}

/// A secret spec's bytes: `env:NAME`, `file:/path` (relative to `base`) or the
/// literal. Messages never repeat the spec (only a conventional env name).
pub(super) fn read_source(spec: &str, base: &Path, env: &dyn Env) -> Result<Source, String> {
    if let Some(name) = spec.strip_prefix("env:") {
        match env.var(name) {
            Some(v) => Ok(Source::Env(v.into_bytes())),
            None if looks_like_env_name(name) => Err(format!(
                "environment variable `{name}` is not set; export it or use `file:/path`"
            )),
            None => Err("the environment variable after `env:` is not set (its name is not repeated here); export it or use `file:/path`".into()),
        }
    } else if let Some(p) = spec.strip_prefix("file:") {
        std::fs::read(base.join(p)).map(Source::File).map_err(|e| {
            format!(
                "cannot read the file after `file:` ({}; the path is not repeated here)",
                io_kind(&e)
            )
        })
    } else {
        Ok(Source::Literal(spec.as_bytes().to_vec()))
    }
}

/// A secret spec read now: `env:NAME`, `file:/path` (relative to `base`, one
/// trailing newline trimmed) or the literal bytes. Never empty.
pub(super) fn resolve_secret(spec: &str, base: &Path, env: &dyn Env) -> Result<Secret, String> {
    let bytes = match read_source(spec, base, env)? {
        Source::Env(b) | Source::Literal(b) => b,
        Source::File(mut b) => {
            while matches!(b.last(), Some(b'\n' | b'\r')) {
                b.pop();
            }
            b
        }
    };
    if bytes.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Secret(bytes))
}

/// The kind of an I/O error, never its text (fixed words: "entity not found").
pub(super) fn io_kind(e: &std::io::Error) -> String {
    e.kind().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{MINIMAL, env, keys};
    use super::*;

    #[test]
    fn secret_file_trailing_newline_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "wbhsec_file\n").unwrap();
        let text = format!(
            "[[route]]\npath = \"/a\"\nsecrets = [\"file:{}\"]\n",
            p.display()
        );
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(c.policy.routes[0].secrets[0].expose(), b"wbhsec_file");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = from_str(MINIMAL, &env()).unwrap();
        assert!(!format!("{c:?}").contains("wbhsec_abc"));
    }

    #[test]
    fn only_conventional_env_names_are_shown() {
        for shown in [
            "SECRET",
            "PERSONA_WEBHOOK_SECRET",
            "NOT_SET_ANYWHERE",
            "PG_E2E_1",
        ] {
            assert!(looks_like_env_name(shown), "{shown}");
        }
        for hidden in [
            "",
            "wbhsec_abc",
            "Secret",
            "AKIAIOSFODNN7EXAMPLE",
            "_LEADING",
            "DOUBLE__UNDERSCORE",
            "HAS-DASH",
            "A_B_C_D_E_F_G_H_I_J_K_L_M_N_O_P_Q_R_S_T_U_V_W_X_Y_Z_A_B_C_D_E_F_G_H",
        ] {
            assert!(!looks_like_env_name(hidden), "{hidden}");
        }
        let p = from_str(
            "[[route]]\npath = \"/a\"\nsecrets = [\"env:wbhsec_pasted\", \"env:UNSET_NAME\"]\n",
            &env(),
        )
        .unwrap_err();
        assert_eq!(keys(&p), vec!["route[0].secrets[0]", "route[0].secrets[1]"]);
        assert!(!p[0].message.contains("wbhsec"), "{p:?}");
        assert!(p[1].message.contains("`UNSET_NAME`"), "{p:?}");
    }
}
