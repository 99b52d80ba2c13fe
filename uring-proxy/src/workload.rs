//! The workloads this proxy serves, each with its own identity, identity-source state and
//! metric shards. A sidecar has exactly one; nothing on the data path assumes so: a listener
//! names its workload, and a connection finds its SVID, policy and metrics through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::{ArcSwapOption, Guard};
use ringmesh_core::WorkloadKey;
use ringmesh_core::metrics::{IdentityInfo, WorkerShard};

use crate::tls::TlsIdentity;

#[derive(Debug)]
pub struct Workload {
    pub key: WorkloadKey,
    /// Its position in the proxy's workload list (keys per-worker caches).
    pub index: usize,
    /// The SVID and its TLS configurations; `None` when there is none valid (fail closed).
    pub identity: ArcSwapOption<TlsIdentity>,
    /// Whether an identity source is configured (then no SVID means not ready).
    pub identity_required: bool,
    pub identity_rotations: AtomicU64,
    pub identity_errors: AtomicU64,
    /// The identity source's last error, for `/identity`.
    pub identity_last_error: ArcSwapOption<String>,
    /// One shard per worker.
    pub shards: Box<[WorkerShard]>,
}

impl Workload {
    pub fn new(key: WorkloadKey, index: usize, workers: usize, identity_required: bool) -> Self {
        Self {
            key,
            index,
            identity: ArcSwapOption::empty(),
            identity_required,
            identity_rotations: AtomicU64::new(0),
            identity_errors: AtomicU64::new(0),
            identity_last_error: ArcSwapOption::empty(),
            shards: (0..workers).map(|_| WorkerShard::default()).collect(),
        }
    }

    /// The SVID in force, if any (a lock-free load).
    pub fn identity(&self) -> Guard<Option<Arc<TlsIdentity>>> {
        self.identity.load()
    }

    /// Whether this workload can serve: it has an SVID, or needs none.
    pub fn ready(&self) -> bool {
        !self.identity_required || self.identity.load().is_some()
    }

    pub fn identity_info(&self) -> Option<IdentityInfo> {
        self.identity.load().as_ref().map(|t| IdentityInfo {
            spiffe_id: t.identity.leaf.id.to_string(),
            serial: t.identity.leaf.serial.clone(),
            not_after: t.identity.leaf.not_after,
        })
    }

    pub fn rotations(&self) -> u64 {
        self.identity_rotations.load(Relaxed)
    }

    pub fn source_errors(&self) -> u64 {
        self.identity_errors.load(Relaxed)
    }

    /// Connections this workload holds now, every worker.
    pub fn active(&self) -> i64 {
        self.shards.iter().map(WorkerShard::active_total).sum()
    }
}
