//! Start and stop: the readiness latch and the SIGTERM drain.
//!
//! pingora drives both. Its SIGTERM path closes the listeners, lets in-flight
//! requests run, then sleeps out the whole `grace_period` before stopping its
//! runtimes, even when nothing is in flight (pingora 0.9.1, `Server::run`).
//! [`spawn_watcher`] follows pingora's execution phases on a thread of its
//! own and shortens only that last wait: once the listeners are closed, no
//! request is in flight and the spool's redelivery worker has drained (its
//! sends in the app's hands settled, see `crate::redelivery`), it closes the
//! replay store and exits with status 0.
//! When `grace_period` runs out first, pingora stops the runtimes (cutting
//! what is still in flight) and `run` closes the store on its way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::server::{ExecutionPhase, Server, ShutdownSignal, ShutdownSignalWatch};

use crate::state::Shared;

/// How long the public listener may take to accept its first connection
/// once pingora runs, before readiness gives up (and says so in the log).
const LISTEN_CONFIRM: Duration = Duration::from_secs(10);

/// After pingora broadcasts the shutdown, the time its accept loops take to
/// stop: a connection accepted just before must have its request counted.
const LISTENERS_SETTLE: Duration = Duration::from_millis(100);

/// SIGTERM: readiness turns 503 and pingora's graceful path starts. SIGINT:
/// pingora stops at once.
pub struct Drain {
    pub shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: no new connections; draining in-flight requests");
                self.shared.draining.store(true, Ordering::SeqCst);
                if let Some(spool) = self.shared.spool.get() {
                    spool.stop();
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Follows pingora's execution phases: on `Running`, confirms once that the
/// public listener accepts and latches readiness; on `GracefulTerminate`,
/// waits until nothing is in flight, closes the store and exits.
pub fn spawn_watcher(server: &Server, shared: Arc<Shared>, listen: SocketAddr) {
    let mut phases = server.watch_execution_phase();
    let Some(runtime) = super::side_runtime("readiness and drain (/readyz stays 503)") else {
        return;
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let phase = match phases.recv().await {
                    Ok(phase) => phase,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                match phase {
                    // In a task of its own: a SIGTERM that arrives while the
                    // confirmation still dials must not wait behind it.
                    ExecutionPhase::Running => {
                        tokio::spawn(latch_ready(shared.clone(), listen));
                    }
                    ExecutionPhase::GracefulTerminate => {
                        tokio::time::sleep(LISTENERS_SETTLE).await;
                        let left = shared.inflight.load(Ordering::SeqCst);
                        if left > 0 {
                            tracing::info!(
                                in_flight = left,
                                "draining: waiting for requests in flight"
                            );
                        }
                        shared.wait_idle().await;
                        if let Some(spool) = shared.spool.get()
                            && !spool.is_drained()
                        {
                            tracing::info!("draining: waiting for the spool's redeliveries");
                            spool.drained().await;
                        }
                        tracing::info!("drained: exiting");
                        shared.store().close().await;
                        if let Some(spool) = shared.spool.get() {
                            spool.store.close().await;
                        }
                        // The batched spans go out before the process does.
                        super::flush_traces(&shared);
                        std::process::exit(0);
                    }
                    _ => {}
                }
            }
        })
    });
}

/// Readiness becomes true once, when the public listener first accepts a
/// connection; probes then read the latch and never dial the port.
async fn latch_ready(shared: Arc<Shared>, mut listen: SocketAddr) {
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let deadline = tokio::time::Instant::now() + LISTEN_CONFIRM;
    while tokio::time::Instant::now() < deadline {
        if shared.draining.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(listen),
        )
        .await
        {
            shared.started.store(true, Ordering::SeqCst);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::error!(listen = %listen, "the public listener does not accept connections; /readyz stays 503");
}
