//! State shared by the workers and the control thread.
//!
//! Workers only read it: the live config is an immutable snapshot behind an `ArcSwap` (a
//! lock-free load per connection), each worker writes only its own metric shards and stats,
//! and the drain phase comes through a watch channel that each worker subscribes to once.
//! The restart-only part of the config is fixed at start and kept apart, so what `/config`
//! shows is what is in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use ringmesh_core::WorkloadKey;
use ringmesh_core::config::{BootConfig, Config, CopyMode, IdentityConfig, Mode};
use ringmesh_core::decide::OwnAddrs;
use ringmesh_core::metrics::{
    self, ConfigInfo, CopyKind, NatsInfo, NodeInfo, ProcessInfo, WorkerStats, WorkloadMetrics,
};
use tokio::sync::watch;

use ringmesh_ctrl::nats::follow::NatsState;
use ringmesh_ctrl::nats::layout::Versions;

use crate::driver::Resolved;
use crate::workload::Workload;

/// One descriptor held back for the moment the process runs out of them. An accept loop that
/// meets `EMFILE` closes it to accept one pending connection and refuse it at once, then opens
/// it again. The workers share one, taken by one loop at a time: with a spare per loop, two
/// loops juggling at once would take each other's. The admin keeps its own (`admin::serve`).
pub(crate) struct SpareFd(std::sync::Mutex<Spare>);

struct Spare {
    file: Option<std::fs::File>,
    lent: bool,
}

/// The spare given up for one accept; dropping it takes the descriptor back.
pub(crate) struct SpareLent<'a>(&'a SpareFd);

impl SpareFd {
    fn new() -> Self {
        Self(std::sync::Mutex::new(Spare {
            file: std::fs::File::open("/dev/null").ok(),
            lent: false,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the spare for one accept, or `None` while another loop has it.
    pub(crate) fn lend(&self) -> Option<SpareLent<'_>> {
        let mut spare = self.lock();
        if spare.lent {
            return None;
        }
        spare.lent = true;
        drop(spare.file.take());
        Some(SpareLent(self))
    }
}

impl Drop for SpareLent<'_> {
    fn drop(&mut self) {
        let mut spare = self.0.lock();
        // When the descriptor went elsewhere meanwhile there is none to take back; the next
        // loop to lend tries again (by then connections may have closed).
        spare.file = std::fs::File::open("/dev/null").ok();
        spare.lent = false;
    }
}

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The default compiled into the binary.
    Embedded,
    /// A file (`--config`), re-read on SIGHUP.
    File(PathBuf),
    /// Handed over in-process (`Proxy::apply`).
    Api,
    /// The control plane, over NATS.
    Nats(Versions),
    /// The last config from NATS, kept on disk, resumed at start.
    Persisted(PathBuf, Versions),
}

impl ConfigSource {
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigSource::Embedded => "embedded",
            ConfigSource::File(_) => "file",
            ConfigSource::Api => "api",
            ConfigSource::Nats(_) => "nats",
            ConfigSource::Persisted(..) => "persisted",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => format!("file {}", p.display()),
            ConfigSource::Nats(v) => format!("nats version {v}"),
            ConfigSource::Persisted(p, v) => {
                format!("persisted nats version {v} ({})", p.display())
            }
            other => other.kind().to_string(),
        }
    }
}

/// The live config in force.
#[derive(Debug)]
pub struct Snapshot {
    /// The config last accepted; its live part is in force, its restart-only part is in
    /// force only where it equals [`Shared::boot`].
    pub config: Config,
    pub source: ConfigSource,
    /// A local count of applied configs, for per-worker state keyed by config (round-robin
    /// turns); the version the world sees is `config.version`.
    pub generation: u64,
    /// Unix seconds when it was applied.
    pub applied_at: u64,
    /// Restart-only fields that differ from what is in force.
    pub restart_required: Vec<&'static str>,
}

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Listeners closed, not ready, in-flight connections finishing.
    Draining,
    /// The drain deadline passed: remaining connections are being reset.
    Closing,
}

/// The copy for a plaintext connection under `mode`.
pub fn copy_kind(mode: CopyMode) -> CopyKind {
    match mode {
        CopyMode::Auto => CopyKind::Auto,
        CopyMode::Splice => CopyKind::Splice,
        CopyMode::Buffered => CopyKind::Buffered,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A count of log lines the writer dropped (the non-blocking writer's error counter).
pub type DroppedLines = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Shared {
    /// The restart-only config the process was started with: what is in force.
    pub boot: BootConfig,
    /// Its document form, for `/config`.
    pub boot_raw: serde_json::Value,
    pub config: ArcSwap<Snapshot>,
    pub phase: watch::Sender<Phase>,
    /// Workload slots: one (filled) for a sidecar, `node.max_workloads` for a node proxy.
    pub workloads: Box<[ArcSwapOption<Workload>]>,
    /// One command inbox per worker (node mode adds and removes workloads through them).
    pub(crate) worker_cmds: Box<[tokio::sync::mpsc::UnboundedSender<crate::node::WorkerCmd>]>,
    /// The descriptor held back for when the process runs out of them.
    pub(crate) spare_fd: SpareFd,
    /// The access log's and the span exporter's queues.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// Per worker: heartbeat and log tally.
    pub workers: Box<[WorkerStats]>,
    pub workers_pinned: bool,
    /// The CPU of each worker when new connections are steered to the worker on the CPU
    /// that received them (`--steer-by-cpu`).
    pub steer_cpus: Option<Vec<usize>>,
    /// Workers copy plaintext on their own io_uring when they can (`--no-owned-ring` off).
    pub owned_ring: bool,
    /// Workers that do.
    pub workers_owned_ring: AtomicUsize,
    pub driver: Resolved,
    /// The proxy's own listener addresses and the namespace's IPs, refreshed by the
    /// control thread: a destination among them is a loop.
    pub own: ArcSwap<OwnAddrs>,
    pub listeners: Vec<std::net::SocketAddr>,
    pub config_path: Option<PathBuf>,
    pub workers_started: AtomicUsize,
    reloads_ok: AtomicU64,
    reloads_rejected: AtomicU64,
    start_time: u64,
    /// The zero of the heartbeat clock.
    epoch: Instant,
    /// A worker whose heartbeat is older than this makes the process not live.
    pub stall_timeout: Duration,
    dropped_lines: Option<DroppedLines>,
    /// The NATS follower's state, when the config follows a control plane.
    pub nats: Option<Arc<NatsState>>,
    /// Node mode's registrations and removals.
    pub node_stats: crate::node::NodeStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("boot", &self.boot)
            .field("workloads", &self.workloads)
            .finish_non_exhaustive()
    }
}

/// What a new `Shared` is built from.
#[allow(missing_debug_implementations)] // a bag of arguments; `Shared` shows them
pub struct SharedSetup {
    pub config: Config,
    pub source: ConfigSource,
    pub workload: WorkloadKey,
    pub workers: usize,
    pub workers_pinned: bool,
    pub steer_cpus: Option<Vec<usize>>,
    pub owned_ring: bool,
    pub driver: Resolved,
    pub listeners: Vec<std::net::SocketAddr>,
    pub config_path: Option<PathBuf>,
    pub stall_timeout: Duration,
    pub dropped_lines: Option<DroppedLines>,
    pub(crate) worker_cmds: Vec<tokio::sync::mpsc::UnboundedSender<crate::node::WorkerCmd>>,
}

impl Shared {
    pub fn new(s: SharedSetup) -> Arc<Self> {
        let identity_required = s.config.boot.identity != IdentityConfig::None;
        let nats = s.config.boot.nats.is_some();
        let local_ips = crate::sys::local_ips().unwrap_or_default();
        let own = OwnAddrs::new(s.listeners.iter().copied(), local_ips);
        Arc::new(Self {
            boot: s.config.boot.clone(),
            boot_raw: s.config.raw_boot(),
            workloads: match s.config.boot.mode {
                Mode::Sidecar => vec![ArcSwapOption::from_pointee(Workload::new(
                    s.workload,
                    0,
                    s.workers,
                    identity_required,
                ))]
                .into(),
                Mode::Node => (0..s.config.boot.node.max_workloads)
                    .map(|_| ArcSwapOption::empty())
                    .collect(),
            },
            worker_cmds: s.worker_cmds.into(),
            spare_fd: SpareFd::new(),
            telemetry: crate::telemetry::Telemetry::default(),
            config: ArcSwap::from_pointee(Snapshot {
                config: s.config,
                source: s.source,
                generation: 1,
                applied_at: unix_now(),
                restart_required: Vec::new(),
            }),
            phase: watch::Sender::new(Phase::Running),
            workers: (0..s.workers).map(|_| WorkerStats::default()).collect(),
            workers_pinned: s.workers_pinned,
            steer_cpus: s.steer_cpus,
            owned_ring: s.owned_ring,
            workers_owned_ring: AtomicUsize::new(0),
            driver: s.driver,
            own: ArcSwap::from_pointee(own),
            listeners: s.listeners,
            config_path: s.config_path,
            workers_started: AtomicUsize::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            start_time: unix_now(),
            epoch: Instant::now(),
            stall_timeout: s.stall_timeout,
            dropped_lines: s.dropped_lines,
            nats: nats.then(|| Arc::new(NatsState::default())),
            node_stats: crate::node::NodeStats::default(),
        })
    }

    /// The workload in `slot`, if one is registered there.
    pub fn workload(&self, slot: usize) -> Option<Arc<Workload>> {
        self.workloads.get(slot)?.load_full()
    }

    /// Connections worker `worker` holds now, every workload (no allocation: the accept
    /// loop asks per connection).
    pub fn active_on(&self, worker: usize) -> i64 {
        self.workloads
            .iter()
            .map(|s| {
                s.load()
                    .as_ref()
                    .map_or(0, |w| w.shards[worker].active_total())
            })
            .sum()
    }

    /// Every registered workload, in slot order.
    pub fn registered(&self) -> Vec<Arc<Workload>> {
        self.workloads
            .iter()
            .filter_map(|s| s.load_full())
            .collect()
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Milliseconds on the heartbeat clock.
    pub fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that worker `id` is running its event loop.
    pub fn heartbeat(&self, id: usize) {
        self.workers[id]
            .heartbeat_ms
            .store(self.clock_ms(), Relaxed);
    }

    /// Every worker has started and none has missed its heartbeat for the stall timeout.
    pub fn live(&self) -> bool {
        let now = self.clock_ms();
        let limit = u64::try_from(self.stall_timeout.as_millis()).unwrap_or(u64::MAX);
        self.workers_started.load(Relaxed) == self.workers.len()
            && self
                .workers
                .iter()
                .all(|w| now.saturating_sub(w.heartbeat_ms.load(Relaxed)) <= limit)
    }

    /// Serving: every worker accepts and is live, no drain has begun, and (a sidecar) its
    /// workload has the SVID it needs. A node proxy's readiness does not hang on any one
    /// workload's identity: a workload without a valid SVID fails closed on its own.
    pub fn ready(&self) -> bool {
        self.live()
            && self.phase() == Phase::Running
            && (self.boot.mode == Mode::Node || self.registered().iter().all(|w| w.ready()))
    }

    /// Connections open now, all workers and workloads.
    pub fn active(&self) -> i64 {
        self.registered().iter().map(|w| w.active()).sum()
    }

    /// Publishes a new config's live part to every worker in one step. Restart-only fields
    /// that differ from those in force are named in the result (and stay as they are).
    pub fn apply(&self, config: Config, source: ConfigSource) -> Arc<Snapshot> {
        let old = self.config.load();
        let restart_required = self.boot.restart_fields(&config.boot);
        if !restart_required.is_empty() {
            tracing::warn!(
                fields = ?restart_required,
                "these fields take a restart; they keep their values until then, the rest is applied"
            );
        }
        let snap = Arc::new(Snapshot {
            config,
            source,
            generation: old.generation + 1,
            applied_at: unix_now(),
            restart_required,
        });
        self.config.store(snap.clone());
        self.reloads_ok.fetch_add(1, Relaxed);
        snap
    }

    pub fn count_rejected_reload(&self) {
        self.reloads_rejected.fetch_add(1, Relaxed);
    }

    /// Re-reads the namespace's addresses (interfaces come and go).
    pub fn refresh_own_addrs(&self) {
        if let Ok(ips) = crate::sys::local_ips() {
            let own = OwnAddrs::new(self.listeners.iter().copied(), ips);
            if **self.own.load() != own {
                self.own.store(Arc::new(own));
            }
        }
    }

    pub fn process_info(&self) -> ProcessInfo {
        let snap = self.config.load();
        let version = snap.config.version;
        ProcessInfo {
            version: env!("CARGO_PKG_VERSION"),
            driver: self.driver.kind.as_str(),
            driver_fallback_reason: self.driver.fallback_reason.clone(),
            copy_mode: copy_kind(snap.config.live.copy).as_str(),
            workers: self.workers.len(),
            workers_pinned: self.workers_pinned,
            workers_steered: self.steer_cpus.is_some(),
            workers_owned_ring: self.workers_owned_ring.load(Relaxed),
            config: ConfigInfo {
                version: version.to_string(),
                number: version.number(),
                source: snap.source.kind(),
                applied_at: snap.applied_at,
                restart_required: snap.restart_required.clone(),
            },
            config_reloads_ok: self.reloads_ok.load(Relaxed),
            config_reloads_rejected: self.reloads_rejected.load(Relaxed),
            ready: self.ready(),
            live: self.live(),
            draining: self.phase() != Phase::Running,
            start_time_seconds: self.start_time,
            now_ms: self.clock_ms(),
            log_lines_dropped: self.dropped_lines.as_ref().map_or(0, |f| f()),
            nats: self.nats.as_ref().map(|n| NatsInfo {
                connected: n.connected.load(Relaxed),
                reconnects: n.reconnects.load(Relaxed),
                applied: n.applied.load(Relaxed),
                rejected: n.rejected.load(Relaxed),
            }),
            node: (self.boot.mode == Mode::Node).then(|| NodeInfo {
                workloads: self.registered().len(),
                capacity: self.workloads.len(),
                added: self.node_stats.added.load(Relaxed),
                removed: self.node_stats.removed.load(Relaxed),
                netns_gone: self.node_stats.netns_gone.load(Relaxed),
                refused: self.node_stats.refused.load(Relaxed),
            }),
            telemetry: self.telemetry.info(),
        }
    }

    pub fn render_metrics(&self) -> String {
        let registered = self.registered();
        let infos: Vec<_> = registered.iter().map(|w| w.identity_info()).collect();
        let workloads: Vec<_> = registered
            .iter()
            .zip(&infos)
            .map(|(w, id)| WorkloadMetrics {
                key: w.key.as_str(),
                shards: &w.shards,
                identity: id.as_ref(),
                identity_rotations: w.rotations(),
                identity_source_errors: w.source_errors(),
            })
            .collect();
        metrics::render(&workloads, &self.workers, &self.process_info())
    }
}
