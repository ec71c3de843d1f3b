//! `persona-guard run | check | sign | trigger | echo`: a thin shell over the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use persona_guard::{config, echo, server, signature, tls, trigger};

/// Exit code for an invalid configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "persona-guard",
    version,
    about = "Admits only genuine, fresh, first-time Persona webhook deliveries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given route file (none: the defaults), with the
    /// PERSONA_GUARD_* environment variables laid over it.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration (the route file, if any, and the
    /// PERSONA_GUARD_* variables) and resolve every secret; exit 0 if all is well.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the effective configuration: every key, with where its value
        /// came from (file, environment variable, default); secrets redacted.
        #[arg(long)]
        print: bool,
        /// Do not fetch the JWKS of OAuth routes (checked by default, once).
        #[arg(long)]
        offline: bool,
    },
    /// Print the Persona-Signature value (no header name) for a body.
    Sign {
        /// Environment variable holding the webhook secret.
        #[arg(long)]
        secret_env: String,
        /// Unix seconds to sign with (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// The body file, or `-` for standard input (the default).
        file: Option<PathBuf>,
    },
    /// Send a realistic, signed Persona event (like `stripe trigger`) and
    /// print the answer's status line and body.
    Trigger(TriggerArgs),
    /// One reconciliation run against Persona's Events API (replay.store =
    /// "redis" only): a table of the missing events; exit 0 none missing, 1
    /// some missing, 2 the API could not be read.
    Reconcile {
        #[arg(long, short)]
        config: PathBuf,
        /// Only the route with this path (default: every reconciling route).
        #[arg(long)]
        route: Option<String>,
        /// How far back, instead of the route's `window` (`6h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Deliver the missing events (default: report them).
        #[arg(long)]
        backfill: bool,
    },
    /// Run a tiny upstream that answers 200 and prints what it received (for trying it out).
    Echo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
    },
}

// The arguments of `trigger` (no doc comment here: the subcommand's help is
// the variant's).
#[derive(clap::Args)]
struct TriggerArgs {
    /// The event type: `inquiry.approved`, `verification.passed`,
    /// `report.run.completed`, `case.created`, ...
    event_type: String,
    /// Where to send it (plain HTTP only).
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/persona")]
    url: String,
    /// Environment variable holding the webhook secret.
    #[arg(long)]
    secret_env: String,
    /// Send the same event again (re-signed now): shows `duplicate`.
    #[arg(long)]
    again: bool,
    /// `Persona-Webhook-Attempts-Made`.
    #[arg(long, default_value_t = 1)]
    attempts_made: u32,
    /// `Persona-Webhook-Attempts-Left` (0: Persona's last attempt).
    #[arg(long, default_value_t = 7)]
    attempts_left: u32,
    /// How the attribute keys are spelled.
    #[arg(long, value_enum, default_value = "kebab")]
    inflection: InflectionArg,
    /// The event id (default: a fresh random `evt_...`).
    #[arg(long)]
    id: Option<String>,
    /// Send `Authorization: Bearer TOKEN` (a route with `[route.oauth]`).
    #[arg(long)]
    bearer: Option<String>,
    /// Send this header too, `NAME:VALUE` (a route's `require_headers`);
    /// repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InflectionArg {
    Kebab,
    Camel,
    Snake,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => cmd_run(config.as_deref()),
        Command::Check {
            config,
            print,
            offline,
        } => cmd_check(config.as_deref(), print, offline),
        Command::Trigger(args) => cmd_trigger(args),
        Command::Reconcile {
            config,
            route,
            since,
            backfill,
        } => match load(Some(&config)) {
            Ok((cfg, _)) => ExitCode::from(persona_guard::reconciler::cli::run(
                cfg.config,
                route.as_deref(),
                since,
                backfill,
            )),
            Err(e) => {
                eprintln!("persona-guard: invalid configuration\n{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Echo { listen } => {
            server::init_logging(config::LogFormat::Text);
            echo::run(&listen);
            ExitCode::SUCCESS
        }
        Command::Sign {
            secret_env,
            timestamp,
            file,
        } => cmd_sign(&secret_env, timestamp, file.as_deref()),
    }
}

/// `run`: load the configuration, then serve until told to stop.
fn cmd_run(config: Option<&Path>) -> ExitCode {
    match load(config) {
        // The warnings are logged by `server::run`.
        Ok((effective, _warnings)) => {
            server::init_logging(effective.config.process.log_format);
            for w in effective.warnings() {
                tracing::warn!(key = %w.key, "{}", w.message);
            }
            match server::run(config, effective.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("persona-guard: invalid configuration\n{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `check`: load the configuration, print its warnings (and with `print` the
/// effective configuration) and a one-line verdict.
fn cmd_check(config: Option<&Path>, print: bool, offline: bool) -> ExitCode {
    match load(config) {
        Ok((cfg, warnings)) => {
            if print {
                print!("{}", cfg.printed);
            }
            for w in &warnings {
                eprintln!("warning: listen.tls: {w}");
            }
            for w in cfg.warnings() {
                eprintln!("warning: {}: {}", w.key, w.message);
            }
            let cfg = cfg.config;
            if !offline && !jwks_fetched(&cfg) {
                return ExitCode::from(EXIT_CONFIG);
            }
            let shown = config.map_or_else(|| config::NO_FILE.into(), |p| p.display().to_string());
            println!(
                "{shown}: ok ({} route{}, every secret resolved)",
                cfg.policy.routes.len(),
                if cfg.policy.routes.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `trigger`: send a signed event (twice with `--again`) and print each answer.
fn cmd_trigger(args: TriggerArgs) -> ExitCode {
    let TriggerArgs {
        event_type,
        url,
        secret_env,
        again,
        attempts_made,
        attempts_left,
        inflection,
        id,
        bearer,
        headers,
    } = args;
    let extra = match extra_headers(bearer.as_deref(), &headers) {
        Ok(extra) => extra,
        Err(e) => {
            eprintln!("persona-guard trigger: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(secret) = std::env::var_os(&secret_env).filter(|s| !s.is_empty()) else {
        eprintln!("persona-guard trigger: environment variable `{secret_env}` is not set");
        return ExitCode::from(EXIT_CONFIG);
    };
    let target = match trigger::parse_url(&url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("persona-guard trigger: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let inflection = match inflection {
        InflectionArg::Kebab => trigger::Inflection::Kebab,
        InflectionArg::Camel => trigger::Inflection::Camel,
        InflectionArg::Snake => trigger::Inflection::Snake,
    };
    let id = id.unwrap_or_else(|| trigger::random_id("evt_"));
    let body = trigger::event_body(&event_type, &id, inflection, SystemTime::now());
    for n in 0..if again { 2 } else { 1 } {
        if n == 1 {
            println!();
        }
        println!("POST {url} ({event_type}, {id})");
        match trigger::send(
            &target,
            secret.as_encoded_bytes(),
            &body,
            attempts_made,
            attempts_left,
            &extra,
        ) {
            Ok(answer) => {
                println!("{}", answer.status_line);
                println!("{}", String::from_utf8_lossy(&answer.body));
            }
            Err(e) => {
                eprintln!("persona-guard trigger: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `--bearer` and `--header NAME:VALUE` as headers. Messages name the flag,
/// never the value (a token).
fn extra_headers(
    bearer: Option<&str>,
    headers: &[String],
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut out = Vec::new();
    if let Some(token) = bearer {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "--bearer: the token has characters a header cannot carry")?;
        out.push((http::header::AUTHORIZATION, value));
    }
    for (i, h) in headers.iter().enumerate() {
        let n = i + 1;
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header #{n}: expected NAME:VALUE"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header #{n}: not a valid header name"))?;
        let value = http::HeaderValue::from_str(value.trim()).map_err(|_| {
            format!("--header #{n}: the value has characters a header cannot carry")
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// `check` without `--offline`: fetches every OAuth route's JWKS once and
/// says so; `false` (after printing why) when one cannot be fetched or holds
/// no usable key.
fn jwks_fetched(cfg: &config::Config) -> bool {
    let client = persona_guard::outbound::Client::new(
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(10),
    );
    let mut ok = true;
    for (i, r) in cfg.policy.routes.iter().enumerate() {
        let Some(rule) = &r.oauth else { continue };
        let key = format!("route[{i}].oauth.jwks_url");
        match persona_guard::outbound::get(&client, &rule.jwks_url)
            .and_then(|body| persona_guard::auth::jwt::keys_of(&body).map_err(str::to_string))
        {
            Ok((keys, _)) if !keys.is_empty() => {
                println!(
                    "{key}: JWKS fetched ({} usable key{})",
                    keys.len(),
                    if keys.len() == 1 { "" } else { "s" }
                );
            }
            Ok(_) => {
                eprintln!(
                    "{key}: the JWKS holds no usable key (RSA, P-256 or Ed25519 signing keys); `check --offline` skips this fetch"
                );
                ok = false;
            }
            Err(why) => {
                eprintln!(
                    "{key}: cannot fetch the JWKS ({why}); `check --offline` skips this fetch"
                );
                ok = false;
            }
        }
    }
    ok
}

/// `sign`: print the `Persona-Signature` value for the body in `file` (or
/// standard input).
fn cmd_sign(secret_env: &str, timestamp: Option<i64>, file: Option<&Path>) -> ExitCode {
    let Some(secret) = std::env::var_os(secret_env).filter(|s| !s.is_empty()) else {
        eprintln!("persona-guard sign: environment variable `{secret_env}` is not set");
        return ExitCode::from(EXIT_CONFIG);
    };
    let body = match file {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => std::fs::read(p),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("persona-guard sign: cannot read the body: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let t = timestamp.unwrap_or_else(|| persona_guard::clock::unix_now().as_secs() as i64);
    println!("{}", signature::sign(secret.as_encoded_bytes(), t, &body));
    ExitCode::SUCCESS
}

/// [`config::load`], plus the checks of the listener's certificate chain
/// ([`tls::check_chain`]: a leaf outside its validity period is refused like any
/// other problem of the file; an odd chain gives warnings). The messages are
/// fixed words: no path, no certificate field.
fn load(path: Option<&Path>) -> Result<(config::Effective, Vec<String>), config::ConfigError> {
    let cfg = config::load_with(path, &config::EnvSource)?;
    let Some(loaded) = &cfg.config.process.listen_cert else {
        return Ok((cfg, Vec::new()));
    };
    let checked = tls::check_chain(&loaded.key().cert, SystemTime::now());
    match checked {
        Ok(warnings) => Ok((cfg, warnings)),
        Err(message) => Err(config::ConfigError {
            file: path.map_or_else(|| config::NO_FILE.into(), Path::to_path_buf),
            problems: vec![config::Problem {
                key: "listen.tls".to_string(),
                message,
            }],
        }),
    }
}

fn read_stdin() -> std::io::Result<Vec<u8>> {
    let mut b = Vec::new();
    std::io::stdin().read_to_end(&mut b)?;
    Ok(b)
}
