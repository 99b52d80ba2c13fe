//! The control thread: a tokio current-thread runtime that runs the admin server, reacts to
//! signals (SIGHUP re-reads the config, SIGTERM/SIGINT drain) and to commands from the
//! `Proxy` handle, and conducts the drain. Workers never wait on it.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_core::Config;
use ringmesh_core::config::VersionId;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::state::{ConfigSource, Phase, Shared};

/// How often the namespace's addresses are re-read for loop detection.
const OWN_ADDRS_REFRESH: Duration = Duration::from_secs(5);

pub(crate) enum Command {
    Apply(Box<Config>, oneshot::Sender<VersionId>),
    ReloadFile(oneshot::Sender<Result<VersionId, Vec<String>>>),
    Drain(Duration),
}

pub(crate) struct ControlSetup {
    pub admin: Option<std::net::TcpListener>,
    /// The health port and the app probes it answers for.
    pub health: Option<(std::net::TcpListener, Arc<crate::health::AppProbes>)>,
    pub signals: bool,
    pub drain_timeout: Duration,
    /// Node mode: the registration socket, bound by the main thread.
    pub node_socket: Option<std::os::unix::net::UnixListener>,
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    setup: ControlSetup,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> io::Result<thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new().name("ringmesh-control".into()).spawn(move || {
        rt.block_on(async move {
            if let Some(l) = setup.admin {
                tokio::spawn(crate::admin::serve(l, shared.clone(), crate::admin::Surface::Admin));
            }
            if let Some((l, probes)) = setup.health {
                tokio::spawn(crate::admin::serve(l, shared.clone(), crate::admin::Surface::Health(probes)));
            }
            crate::identity::start(&shared);
            tokio::spawn(crate::telemetry::export(shared.clone()));
            if let Some(l) = setup.node_socket {
                match tokio::net::UnixListener::from_std(l) {
                    Ok(l) => {
                        let registry = crate::node::Registry::new(shared.clone(), setup.drain_timeout);
                        tokio::spawn(crate::node::serve(registry, l));
                    }
                    Err(e) => tracing::error!(error = %e, "node registration socket unusable"),
                }
            }
            if let (Some(nats), Some(state)) = (&shared.boot.nats, &shared.nats) {
                crate::nats::start(&shared, nats, state.clone());
            }
            let mut signals = if setup.signals { Some(Signals::new()) } else { None };
            let mut refresh = tokio::time::interval(OWN_ADDRS_REFRESH);
            loop {
                tokio::select! {
                    _ = refresh.tick() => shared.refresh_own_addrs(),
                    cmd = commands.recv() => match cmd {
                        Some(Command::Apply(config, done)) => {
                            let snap = shared.apply(*config, ConfigSource::Api);
                            let v = snap.config.version;
                            tracing::info!(version = %v, "config applied");
                            let _ = done.send(v);
                        }
                        Some(Command::ReloadFile(done)) => {
                            let _ = done.send(reload_file(&shared));
                        }
                        Some(Command::Drain(timeout)) => {
                            drain(&shared, timeout).await;
                            break;
                        }
                        // The handle is gone: stop now.
                        None => {
                            drain(&shared, Duration::ZERO).await;
                            break;
                        }
                    },
                    sig = next_signal(&mut signals) => match sig {
                        Sig::Hup => {
                            tracing::info!("SIGHUP: re-reading the config");
                            let _ = reload_file(&shared);
                        }
                        Sig::Term(name) => {
                            tracing::info!(signal = name, timeout = ?setup.drain_timeout, "draining");
                            drain(&shared, setup.drain_timeout).await;
                            break;
                        }
                    },
                }
            }
        });
    })
}

struct Signals {
    hup: Option<Signal>,
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Signals {
    fn new() -> Self {
        let reg = |k| {
            signal(k)
                .map_err(|e| tracing::error!(error = %e, "cannot handle signal {k:?}"))
                .ok()
        };
        Self {
            hup: reg(SignalKind::hangup()),
            term: reg(SignalKind::terminate()),
            int: reg(SignalKind::interrupt()),
        }
    }
}

enum Sig {
    Hup,
    Term(&'static str),
}

async fn recv(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_signal(signals: &mut Option<Signals>) -> Sig {
    let Some(s) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = recv(&mut s.hup) => Sig::Hup,
        _ = recv(&mut s.term) => Sig::Term("SIGTERM"),
        _ = recv(&mut s.int) => Sig::Term("SIGINT"),
    }
}

/// Re-reads the config file; a bad file is rejected whole and the old config keeps serving.
fn reload_file(shared: &Shared) -> Result<VersionId, Vec<String>> {
    let Some(path) = &shared.config_path else {
        let msg = "no --config file to re-read; the embedded default keeps serving".to_string();
        tracing::warn!("{msg}");
        return Err(vec![msg]);
    };
    match crate::load_config_file(path) {
        Ok(config) => {
            let current = shared.config.load();
            if config.raw() == current.config.raw() {
                let v = current.config.version;
                tracing::info!(version = %v, path = %path.display(), "config unchanged");
                return Ok(v);
            }
            drop(current);
            let snap = shared.apply(config, ConfigSource::File(path.clone()));
            let v = snap.config.version;
            tracing::info!(version = %v, path = %path.display(), "config reloaded");
            Ok(v)
        }
        Err(errors) => {
            shared.count_rejected_reload();
            for e in &errors {
                tracing::error!(path = %path.display(), "config error: {e}");
            }
            tracing::error!(
                path = %path.display(), errors = errors.len(),
                "config rejected; version {} keeps serving", shared.config.load().config.version
            );
            Err(errors)
        }
    }
}

/// Stops accepting, lets in-flight connections finish until `timeout`, then resets the rest.
async fn drain(shared: &Shared, timeout: Duration) {
    shared.phase.send_replace(Phase::Draining);
    let deadline = Instant::now() + timeout;
    tracing::info!(
        active = shared.active(),
        ?timeout,
        "drain started: not ready, listeners closed"
    );
    while shared.active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = shared.active();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline passed; resetting the rest"
        );
    }
    shared.phase.send_replace(Phase::Closing);
}
