//! State shared by the workers and the control thread.
//!
//! Workers only read it: the config is an immutable snapshot behind an `ArcSwap` (a lock-free
//! load per connection), each worker writes only its own metric shard, and the drain phase
//! comes through a watch channel that each worker subscribes to once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ringmesh_core::config::{Config, CopyMode};
use ringmesh_core::metrics::{self, CopyKind, ProcessInfo, WorkerShard};
use tokio::sync::watch;

use crate::driver::Resolved;

/// The config in force and its version (1 for the one the process started with).
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Config,
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

#[derive(Debug)]
pub struct Shared {
    pub config: ArcSwap<Snapshot>,
    pub phase: watch::Sender<Phase>,
    pub shards: Box<[WorkerShard]>,
    pub driver: Resolved,
    /// Ports of our own listeners: a connection whose original destination has one of these
    /// ports would loop back into the proxy.
    pub listener_ports: Vec<u16>,
    pub config_path: Option<PathBuf>,
    pub workers_started: AtomicUsize,
    reloads_ok: AtomicU64,
    reloads_rejected: AtomicU64,
    start_time: u64,
}

impl Shared {
    pub fn new(
        config: Config,
        workers: usize,
        driver: Resolved,
        listener_ports: Vec<u16>,
        config_path: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config: ArcSwap::from_pointee(Snapshot { version: 1, config }),
            phase: watch::Sender::new(Phase::Running),
            shards: (0..workers).map(|_| WorkerShard::default()).collect(),
            driver,
            listener_ports,
            config_path,
            workers_started: AtomicUsize::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Serving: every worker accepts and no drain has begun.
    pub fn ready(&self) -> bool {
        self.workers_started.load(Relaxed) == self.shards.len() && self.phase() == Phase::Running
    }

    /// Connections open now, all workers.
    pub fn active(&self) -> i64 {
        self.shards.iter().map(WorkerShard::active_total).sum()
    }

    /// Publishes a new config to every worker in one step; returns its version. Listener and
    /// admin addresses are bound at start, so a change to them waits for a restart.
    pub fn apply(&self, config: Config) -> u64 {
        let old = self.config.load();
        if config.listeners != old.config.listeners || config.admin != old.config.admin {
            tracing::warn!(
                "listener or admin address changed; that takes a restart, the rest is applied"
            );
        }
        let version = old.version + 1;
        self.config.store(Arc::new(Snapshot { version, config }));
        self.reloads_ok.fetch_add(1, Relaxed);
        version
    }

    pub fn count_rejected_reload(&self) {
        self.reloads_rejected.fetch_add(1, Relaxed);
    }

    pub fn process_info(&self) -> ProcessInfo {
        let snap = self.config.load();
        ProcessInfo {
            version: env!("CARGO_PKG_VERSION"),
            driver: self.driver.kind.as_str(),
            driver_fallback_reason: self.driver.fallback_reason.clone(),
            copy_mode: copy_kind(snap.config.copy).as_str(),
            workers: self.shards.len(),
            config_version: snap.version,
            config_reloads_ok: self.reloads_ok.load(Relaxed),
            config_reloads_rejected: self.reloads_rejected.load(Relaxed),
            ready: self.ready(),
            draining: self.phase() != Phase::Running,
            start_time_seconds: self.start_time,
        }
    }

    pub fn render_metrics(&self) -> String {
        let shards: Vec<&WorkerShard> = self.shards.iter().collect();
        metrics::render(&shards, &self.process_info())
    }
}
