//! State shared by the workers and the control thread.
//!
//! Workers only read it: the config is an immutable snapshot behind an `ArcSwap` (a lock-free
//! load per connection), each worker writes only its own metric shard, and the drain phase
//! comes through a watch channel that each worker subscribes to once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;
use std::sync::Mutex;

use arc_swap::{ArcSwap, ArcSwapOption};
use ringmesh_core::config::{Config, CopyMode, IdentityConfig};
use ringmesh_core::metrics::{self, CopyKind, IdentityInfo, ProcessInfo, WorkerShard};
use tokio::sync::watch;

use crate::driver::Resolved;
use crate::tls::TlsIdentity;

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
    /// The SVID and its TLS configurations; `None` when there is none valid (fail closed).
    pub identity: ArcSwapOption<TlsIdentity>,
    /// Whether an identity source is configured (then no SVID means not ready).
    pub identity_required: bool,
    pub identity_rotations: AtomicU64,
    pub identity_errors: AtomicU64,
    /// The identity source's last error, for `/identity`.
    pub identity_last_error: Mutex<Option<String>>,
    /// Access-policy refusals by source SPIFFE ID. A lock, but only on the refusal path.
    access_denied: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn new(
        config: Config,
        workers: usize,
        driver: Resolved,
        listener_ports: Vec<u16>,
        config_path: Option<PathBuf>,
    ) -> Arc<Self> {
        let identity_required = config.identity != IdentityConfig::None;
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
            identity: ArcSwapOption::empty(),
            identity_required,
            identity_rotations: AtomicU64::new(0),
            identity_errors: AtomicU64::new(0),
            identity_last_error: Mutex::new(None),
            access_denied: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Serving: every worker accepts, no drain has begun, and the SVID is valid if one is
    /// needed.
    pub fn ready(&self) -> bool {
        self.workers_started.load(Relaxed) == self.shards.len()
            && self.phase() == Phase::Running
            && (!self.identity_required || self.identity.load().is_some())
    }

    /// Counts a connection the access policy refused (`None`: a plaintext peer).
    pub fn count_denied(&self, source: Option<&ringmesh_core::SpiffeId>) {
        let key = source.map_or_else(|| "none".to_string(), ToString::to_string);
        if let Ok(mut m) = self.access_denied.lock() {
            *m.entry(key).or_default() += 1;
        }
    }

    /// Connections open now, all workers.
    pub fn active(&self) -> i64 {
        self.shards.iter().map(WorkerShard::active_total).sum()
    }

    /// Publishes a new config to every worker in one step; returns its version. Listener and
    /// admin addresses are bound at start, so a change to them waits for a restart.
    pub fn apply(&self, config: Config) -> u64 {
        let old = self.config.load();
        if config.listeners != old.config.listeners
            || config.admin != old.config.admin
            || config.identity != old.config.identity
        {
            tracing::warn!(
                "listener, admin or identity source changed; that takes a restart, the rest is \
                 applied"
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
            identity: self.identity.load().as_ref().map(|t| IdentityInfo {
                spiffe_id: t.identity.leaf.id.to_string(),
                serial: t.identity.leaf.serial.clone(),
                not_after: t.identity.leaf.not_after,
            }),
            identity_rotations: self.identity_rotations.load(Relaxed),
            identity_source_errors: self.identity_errors.load(Relaxed),
            access_denied: self
                .access_denied
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
        }
    }

    pub fn render_metrics(&self) -> String {
        let shards: Vec<&WorkerShard> = self.shards.iter().collect();
        metrics::render(&shards, &self.process_info())
    }
}
