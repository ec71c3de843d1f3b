//! A load generator that plays Persona: every request is a new event, signed on
//! the fly with a fresh timestamp (no kept tool can sign per request), or a plain
//! request for passthrough paths. Raw HTTP/1.1 over keep-alive connections.
//!
//! Closed loop (`--rate 0`, default): each connection sends its next request as
//! soon as the previous answer arrived. Fixed rate (`--rate N`): requests are
//! scheduled at N/s in total, and latency is measured from the scheduled time
//! (so a stall is not hidden by the generator waiting: no coordinated omission).
//!
//! Loopback only by design: the target must be a 127.0.0.0/8 address.
//!
//! ```text
//! PERSONA_WEBHOOK_SECRET=... cargo run --release --example loadgen -- \
//!     --target 127.0.0.1:8080 --mode signed --connections 64 --duration 10s
//! ```
//! Prints one JSON object: requests, errors, rps, p50/p99/max in microseconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// A signed Persona delivery with a new event id each time.
    Signed,
    /// A plain POST of the same size (passthrough).
    Plain,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    #[arg(long, default_value = "/webhooks/persona")]
    path: String,
    #[arg(long, value_enum, default_value = "signed")]
    mode: Mode,
    #[arg(long, default_value = "PERSONA_WEBHOOK_SECRET")]
    secret_env: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Total requests per second; 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Approximate body size in bytes.
    #[arg(long, default_value_t = 4096)]
    body_size: usize,
    /// Stop after this many requests in total (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
}

struct Shared {
    secret: Vec<u8>,
    mode: Mode,
    path: String,
    padding: String,
    seq: AtomicU64,
    run: String,
}

fn event(shared: &Shared) -> Vec<u8> {
    let n = shared.seq.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"{{"data":{{"type":"event","id":"evt_{}_{n}","attributes":{{"name":"inquiry.approved","created-at":"2026-11-26T10:00:00.000Z","payload":{{"data":{{"type":"inquiry","id":"inq_{n}","attributes":{{"status":"approved","reference-id":"user-4242","notes":"{}"}}}}}}}}}}}}"#,
        shared.run, shared.padding
    )
    .into_bytes()
}

fn request(shared: &Shared) -> Vec<u8> {
    let body = event(shared);
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: loadgen\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        shared.path,
        body.len()
    );
    if let Mode::Signed = shared.mode {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut mac = Hmac::<Sha256>::new_from_slice(&shared.secret).expect("any key length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        head.push_str(&format!("Persona-Signature: t={t},v1={sig}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads one response; returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) {
            let status = resp.code.unwrap_or(0);
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
            while buf.len() < head_len + len {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    non_2xx: u64,
    errors: u64,
}

async fn connection(
    args: Arc<Args>,
    shared: Arc<Shared>,
    id: usize,
    end: Instant,
    budget: Arc<AtomicU64>,
) -> (Histogram<u64>, Tally) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(8192);
    let mut stream: Option<TcpStream> = None;
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let start = Instant::now()
        + interval
            .map(|i| i.mul_f64(id as f64 / args.connections as f64))
            .unwrap_or_default();
    let mut k: u32 = 0;
    loop {
        let scheduled = match interval {
            Some(i) => start + i * k,
            None => Instant::now(),
        };
        k += 1;
        if scheduled >= end {
            break;
        }
        if args.max_requests > 0 && budget.fetch_add(1, Ordering::Relaxed) >= args.max_requests {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let req = request(&shared);
        if stream.is_none() {
            match TcpStream::connect(args.target).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let result = async {
            s.write_all(&req).await?;
            read_response(s, &mut buf).await
        }
        .await;
        match result {
            Ok(status) => {
                let micros = scheduled.elapsed().as_micros().max(1) as u64;
                let _ = hist.record(micros.min(60_000_000));
                if (200..300).contains(&status) {
                    tally.ok += 1;
                } else {
                    tally.non_2xx += 1;
                }
                let closes = buf
                    .windows(17)
                    .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                if closes {
                    stream = None;
                }
            }
            Err(_) => {
                tally.errors += 1;
                stream = None;
            }
        }
    }
    (hist, tally)
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    assert!(
        args.target.ip().is_loopback(),
        "loadgen only targets loopback addresses"
    );
    let secret = std::env::var(&args.secret_env)
        .unwrap_or_default()
        .into_bytes();
    if matches!(args.mode, Mode::Signed) && secret.is_empty() {
        eprintln!("loadgen: set {} to the webhook secret", args.secret_env);
        std::process::exit(2);
    }
    let run = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let base_len = {
        let probe = Shared {
            secret: Vec::new(),
            mode: Mode::Plain,
            path: String::new(),
            padding: String::new(),
            seq: AtomicU64::new(0),
            run: run.clone(),
        };
        event(&probe).len()
    };
    let shared = Arc::new(Shared {
        secret,
        mode: args.mode,
        path: args.path.clone(),
        padding: "x".repeat(args.body_size.saturating_sub(base_len)),
        seq: AtomicU64::new(0),
        run,
    });
    let started = Instant::now();
    let end = started + args.duration;
    let budget = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            tokio::spawn(connection(
                args.clone(),
                shared.clone(),
                i,
                end,
                budget.clone(),
            ))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tally = Tally::default();
    for t in tasks {
        let (h, c) = t.await.expect("connection task");
        hist.add(h).expect("same bounds");
        tally.ok += c.ok;
        tally.non_2xx += c.non_2xx;
        tally.errors += c.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = tally.ok + tally.non_2xx;
    println!(
        "{}",
        serde_json::json!({
            "requests": done,
            "ok": tally.ok,
            "non_2xx": tally.non_2xx,
            "errors": tally.errors,
            "seconds": secs,
            "rps": done as f64 / secs,
            "p50_us": hist.value_at_quantile(0.50),
            "p99_us": hist.value_at_quantile(0.99),
            "max_us": hist.max(),
        })
    );
}
