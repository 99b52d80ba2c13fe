//! Starting, steering and stopping a proxy: what `main` does with flags and signals, and what
//! tests do in-process with the same code.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringmesh_core::config::{Mode, VersionId};
use ringmesh_core::metrics::{Direction, WorkerShard, WorkerStats};
use ringmesh_core::{Config, WorkloadKey};
use tokio::sync::{mpsc, oneshot};

use crate::control::{self, Command, ControlSetup};
use crate::driver::{self, DriverChoice, DriverKind};
use crate::listen::{self, BindError};
use crate::orig_dst::{OrigDstSource, SoOriginalDst};
use crate::state::{ConfigSource, DroppedLines, Phase, Shared, SharedSetup};
use crate::worker::{self, ListenerSetup, WorkerSetup};
use crate::{cpus, sys};

/// How to run a proxy, beyond its config.
pub struct ProxyOptions {
    /// Worker threads; `None`: the config's `workers`, else one per CPU this process may
    /// use within its CPU quota.
    pub workers: Option<usize>,
    pub driver: DriverChoice,
    /// Where original destinations come from (`SO_ORIGINAL_DST` in production).
    pub orig_dst: Arc<dyn OrigDstSource>,
    /// Serve the admin endpoints on the config's admin address.
    pub admin: bool,
    /// React to SIGHUP, SIGTERM and SIGINT (the binary does; in-process tests do not).
    pub signals: bool,
    pub drain_timeout: Duration,
    /// Pin each worker to a CPU when each can have one of its own.
    pub pin: bool,
    /// Steer each new connection to the worker on the CPU that received it (pinned only).
    pub steer_by_cpu: bool,
    /// Copy plaintext on each worker's own io_uring (io_uring driver, `copy: auto`).
    pub owned_ring: bool,
    /// The file SIGHUP re-reads.
    pub config_path: Option<PathBuf>,
    /// Where the starting config came from.
    pub config_source: ConfigSource,
    /// The workload a sidecar serves.
    pub workload: WorkloadKey,
    /// A worker without a heartbeat for this long makes the proxy not live (and not ready).
    pub stall_timeout: Duration,
    /// Log lines the log writer dropped, for the metrics.
    pub dropped_lines: Option<DroppedLines>,
    /// The health port (`/ready`, `/live`, `/metrics`, app probes) on this address.
    pub health: Option<SocketAddr>,
    /// The app probes the health port answers for.
    pub app_probes: Arc<crate::health::AppProbes>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            workers: None,
            driver: DriverChoice::Auto,
            orig_dst: Arc::new(SoOriginalDst),
            admin: true,
            signals: false,
            drain_timeout: Duration::from_secs(30),
            pin: true,
            steer_by_cpu: false,
            owned_ring: true,
            config_path: None,
            config_source: ConfigSource::Api,
            workload: WorkloadKey::sidecar(),
            stall_timeout: Duration::from_secs(5),
            dropped_lines: None,
            health: None,
            app_probes: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("workers", &self.workers)
            .field("driver", &self.driver)
            .field("admin", &self.admin)
            .field("signals", &self.signals)
            .field("drain_timeout", &self.drain_timeout)
            .field("workload", &self.workload)
            .field("health", &self.health)
            .field("app_probes", &self.app_probes.len())
            .finish_non_exhaustive()
    }
}

/// Why the proxy did not start. Each message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{0}")]
    Driver(String),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(
        "cannot set the bypass mark {mark:#x} on upstream sockets ({source}): SO_MARK needs \
         CAP_NET_ADMIN (running as uid {uid}); grant it (e.g. `setcap cap_net_admin+ep`, or \
         the container's securityContext), or set `bypass_mark: 0` and exempt the proxy's uid \
         instead (`mesh-redirect install --proxy-uid UID`)"
    )]
    MarkPermission {
        mark: u32,
        uid: u32,
        source: io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Spawn(io::Error),
    #[error(
        "node registration socket {path}: {source}; it takes root (or write access to its \
         directory), and no other node proxy may hold it"
    )]
    NodeSocket { path: String, source: io::Error },
}

/// A running proxy: its worker threads and its control thread.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    control: Option<JoinHandle<()>>,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: Option<SocketAddr>,
    health: Option<SocketAddr>,
}

/// Fails at start, not at the first connection, when the mark cannot be set.
fn check_mark(mark: Option<NonZeroU32>) -> Result<(), StartError> {
    let Some(mark) = mark else { return Ok(()) };
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(StartError::Spawn)?;
    probe
        .set_mark(mark.get())
        .map_err(|source| StartError::MarkPermission {
            mark: mark.get(),
            uid: sys::euid(),
            source,
        })
}

/// A workload's metric shards, holding the workload.
#[derive(Debug)]
pub struct Shards(Option<Arc<crate::workload::Workload>>);

impl std::ops::Deref for Shards {
    type Target = [WorkerShard];
    fn deref(&self) -> &[WorkerShard] {
        self.0.as_ref().map_or(&[], |w| &w.shards)
    }
}

impl Proxy {
    /// Binds every listener, then starts the workers and the control thread.
    pub fn start(config: Config, opts: ProxyOptions) -> Result<Self, StartError> {
        worker::install_panic_hook();
        // A proxy that follows NATS resumes from the last version it applied, if it kept one.
        let (config, config_source) = match crate::nats::resume(&config) {
            Some((c, path, versions)) => (c, ConfigSource::Persisted(path, versions)),
            None => (config, opts.config_source),
        };
        let driver = driver::resolve(opts.driver).map_err(StartError::Driver)?;
        check_mark(config.boot.bypass_mark)?;
        let requested = opts
            .workers
            .or(config.boot.workers.map(|n| n.get() as usize));
        let plan = cpus::plan(requested, opts.pin);
        let n = plan.workers;
        let steer_cpus = match (&plan.pin, opts.steer_by_cpu) {
            (Some(cpus), true) => Some(cpus.clone()),
            (None, true) => {
                tracing::warn!(
                    "--steer-by-cpu needs pinned workers (one per CPU, no lower quota); \
                     connections are spread by the kernel's hash"
                );
                None
            }
            _ => None,
        };

        let listeners = config.boot.listeners;
        // A node proxy listens inside each workload's namespace, once it is registered.
        let sidecar = config.boot.mode == Mode::Sidecar;
        let (outbound, inbound) = if sidecar {
            (
                listen::bind_group("outbound listener", listeners.outbound, n)?,
                listen::bind_group("inbound listener", listeners.inbound, n)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let addr_of = |l: &[std::net::TcpListener], fallback| {
            l.first()
                .and_then(|l| l.local_addr().ok())
                .unwrap_or(fallback)
        };
        if let Some(cpus) = &steer_cpus {
            listen::steer_by_cpu("outbound listener", &outbound, cpus)?;
            listen::steer_by_cpu("inbound listener", &inbound, cpus)?;
        }
        let outbound_addr = addr_of(&outbound, listeners.outbound);
        let inbound_addr = addr_of(&inbound, listeners.inbound);
        let mark = config.boot.bypass_mark.map(|m| m.get());
        let bind_udp = |what, addr: Option<std::net::SocketAddr>| match addr {
            Some(a) if sidecar => listen::bind_udp_group(what, a, n, mark).map(Some),
            _ => Ok(None),
        };
        let udp_outbound = bind_udp("outbound UDP relay", listeners.udp_outbound)?;
        let udp_inbound = bind_udp("inbound UDP relay", listeners.udp_inbound)?;
        let udp_addr = |s: &Option<Vec<std::net::UdpSocket>>| {
            s.as_ref()
                .and_then(|v| v.first())
                .and_then(|s| s.local_addr().ok())
        };
        let udp_outbound_addr = udp_addr(&udp_outbound);
        let udp_inbound_addr = udp_addr(&udp_inbound);
        let mut udp_outbound = udp_outbound.map(Vec::into_iter);
        let mut udp_inbound = udp_inbound.map(Vec::into_iter);
        let admin = if opts.admin {
            let a = config.boot.admin;
            Some(std::net::TcpListener::bind(a).map_err(crate::listen::classify("admin", a))?)
        } else {
            None
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let health = match opts.health {
            Some(a) => {
                Some(std::net::TcpListener::bind(a).map_err(crate::listen::classify("health", a))?)
            }
            None => None,
        };
        let health_addr = health.as_ref().and_then(|l| l.local_addr().ok());
        let node_socket = match config.boot.mode {
            Mode::Node => {
                let path = config.boot.node.socket.clone();
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let l = std::os::unix::net::UnixListener::bind(&path)
                    .or_else(|e| {
                        if e.kind() != io::ErrorKind::AddrInUse {
                            return Err(e);
                        }
                        // A stale socket from an earlier run: replace it, unless someone
                        // answers on it.
                        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                            return Err(e);
                        }
                        std::fs::remove_file(&path)?;
                        std::os::unix::net::UnixListener::bind(&path)
                    })
                    .and_then(|l| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                    .map_err(|source| StartError::NodeSocket {
                        path: path.display().to_string(),
                        source,
                    })?;
                Some(l)
            }
            Mode::Sidecar => None,
        };
        let (cmd_txs, mut cmd_rxs): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let mut cmd_rxs = cmd_rxs.drain(..);

        let mut own = vec![outbound_addr, inbound_addr];
        own.extend(admin_addr);
        own.extend(health_addr);
        own.extend(udp_outbound_addr);
        own.extend(udp_inbound_addr);
        let shared = Shared::new(SharedSetup {
            config,
            source: config_source,
            workload: opts.workload,
            workers: n,
            workers_pinned: plan.pin.is_some(),
            steer_cpus,
            owned_ring: opts.owned_ring,
            driver,
            listeners: own,
            config_path: opts.config_path,
            stall_timeout: opts.stall_timeout,
            dropped_lines: opts.dropped_lines,
            worker_cmds: cmd_txs,
        });
        let mut workers = Vec::with_capacity(n);
        let mut outbound = outbound.into_iter();
        let mut inbound = inbound.into_iter();
        for id in 0..n {
            let mut listeners = Vec::new();
            if let (Some(o), Some(i)) = (outbound.next(), inbound.next()) {
                listeners.push(ListenerSetup {
                    dir: Direction::Outbound,
                    workload: 0,
                    listener: o,
                });
                listeners.push(ListenerSetup {
                    dir: Direction::Inbound,
                    workload: 0,
                    listener: i,
                });
            }
            let setup = WorkerSetup {
                id,
                cpu: plan.pin.as_ref().and_then(|cpus| cpus.get(id).copied()),
                listeners,
                cmds: cmd_rxs.next().ok_or_else(|| {
                    StartError::Spawn(io::Error::other("fewer command channels than workers"))
                })?,
                udp: [
                    (
                        Direction::Outbound,
                        udp_outbound.as_mut().and_then(Iterator::next),
                    ),
                    (
                        Direction::Inbound,
                        udp_inbound.as_mut().and_then(Iterator::next),
                    ),
                ]
                .into_iter()
                .filter_map(|(dir, s)| {
                    s.map(|socket| crate::udp::UdpSetup {
                        dir,
                        workload: 0,
                        socket,
                    })
                })
                .collect(),
            };
            workers.push(
                worker::spawn(setup, shared.clone(), opts.orig_dst.clone())
                    .map_err(StartError::Spawn)?,
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let control = control::spawn(
            shared.clone(),
            ControlSetup {
                admin,
                health: health.map(|l| (l, opts.app_probes.clone())),
                signals: opts.signals,
                drain_timeout: opts.drain_timeout,
                node_socket,
            },
            rx,
        )
        .map_err(StartError::Spawn)?;
        let snap = shared.config.load();
        tracing::info!(
            workers = n,
            pinned = plan.pin.is_some(),
            cpus_allowed = plan.allowed.len(),
            cpu_quota = ?plan.quota,
            driver = shared.driver.kind.as_str(),
            outbound = %outbound_addr,
            inbound = %inbound_addr,
            udp_outbound = ?udp_outbound_addr,
            udp_inbound = ?udp_inbound_addr,
            admin = ?admin_addr,
            mode = shared.boot.mode.as_str(),
            config_version = %snap.config.version,
            config_source = %snap.source.describe(),
            "uring-proxy started"
        );
        drop(snap);
        Ok(Self {
            shared,
            commands: tx,
            workers,
            control: Some(control),
            outbound: outbound_addr,
            inbound: inbound_addr,
            admin: admin_addr,
            health: health_addr,
        })
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health
    }

    pub fn driver(&self) -> DriverKind {
        self.shared.driver.kind
    }

    /// Waits until every worker accepts (or `timeout`); returns whether they do.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.shared.ready() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready()
    }

    /// The sidecar workload's metric shards, one per worker (none in node mode).
    pub fn shards(&self) -> Shards {
        Shards(self.shared.workload(0))
    }

    /// Per-worker stats (heartbeats, suppressed log lines).
    pub fn worker_stats(&self) -> &[WorkerStats] {
        &self.shared.workers
    }

    /// Whether every worker's heartbeat is recent.
    pub fn is_live(&self) -> bool {
        self.shared.live()
    }

    /// The Prometheus text `/metrics` serves.
    pub fn metrics(&self) -> String {
        self.shared.render_metrics()
    }

    /// Version of the config in force.
    pub fn config_version(&self) -> VersionId {
        self.shared.config.load().config.version
    }

    /// Restart-only fields a later config changed, waiting for a restart.
    pub fn restart_required(&self) -> Vec<&'static str> {
        self.shared.config.load().restart_required.clone()
    }

    /// Publishes a new config's live part to every worker (as SIGHUP does with a file);
    /// returns its version.
    pub fn apply(&self, config: Config) -> Option<VersionId> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Apply(Box::new(config), tx))
            .ok()?;
        rx.blocking_recv().ok()
    }

    /// Re-reads the config file, exactly as SIGHUP does.
    pub fn reload_file(&self) -> Result<VersionId, Vec<String>> {
        let (tx, rx) = oneshot::channel();
        let gone = || vec!["the control thread has stopped".to_string()];
        self.commands
            .send(Command::ReloadFile(tx))
            .map_err(|_| gone())?;
        rx.blocking_recv().map_err(|_| gone())?
    }

    /// Begins a drain, as SIGTERM does: not ready, listeners closed, in-flight connections
    /// given until `timeout`, then reset.
    pub fn drain(&self, timeout: Duration) {
        let _ = self.commands.send(Command::Drain(timeout));
    }

    /// Whether a drain has begun.
    pub fn draining(&self) -> bool {
        self.shared.phase() != Phase::Running
    }

    /// Waits for the control thread and every worker to stop (after a drain or a signal).
    pub fn wait(mut self) -> Result<(), String> {
        self.join()
    }

    fn join(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(c) = self.control.take()
            && c.join().is_err()
        {
            errors.push("control thread panicked".to_string());
        }
        for (id, w) in self.workers.drain(..).enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("worker {id}: {e}")),
                Err(_) => errors.push(format!("worker {id} panicked")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.control.is_some() {
            self.drain(Duration::ZERO);
            let _ = self.join();
        }
    }
}
