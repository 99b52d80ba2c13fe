//! The workloads this proxy serves, each with its own identity, identity-source state and
//! metric shards. A sidecar has exactly one; a node proxy has the ones registered on its node
//! socket (`node.rs`), each in a slot of `Shared::workloads`. Nothing on the data path
//! assumes one: a listener names its slot, and a connection takes its workload from the slot
//! when it starts and keeps it (an `Arc`) to the end, so a workload removed meanwhile stays
//! whole for the connections it still has, and a new one in the same slot starts afresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::{ArcSwapOption, Guard};
use ringmesh_core::WorkloadKey;
use ringmesh_core::metrics::{IdentityInfo, WorkerShard};

use crate::tls::TlsIdentity;

#[derive(Debug)]
pub struct Workload {
    pub key: WorkloadKey,
    /// Its slot in the proxy's workload list (keys per-worker caches and signals).
    pub index: usize,
    /// Node mode: the workload's network namespace, where its listeners and upstream sockets
    /// are made. `None`: the proxy's own (a sidecar).
    pub netns: Option<crate::node::Netns>,
    /// Node mode: what registered it (SPIFFE ID expected, pod addresses, selectors).
    pub registration: Option<crate::node::Registration>,
    /// Node mode: the listeners and addresses of the workload's namespace, for loop checks
    /// (`None`: the proxy's own, `Shared::own`).
    pub own: Option<ringmesh_core::decide::OwnAddrs>,
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
    /// Node mode: ends this workload's identity stream when it is removed (`notify_one`
    /// keeps the wake-up if the stream is not waiting at that moment).
    pub identity_stop: tokio::sync::Notify,
}

impl Workload {
    pub fn new(key: WorkloadKey, index: usize, workers: usize, identity_required: bool) -> Self {
        Self {
            key,
            index,
            netns: None,
            registration: None,
            own: None,
            identity: ArcSwapOption::empty(),
            identity_required,
            identity_rotations: AtomicU64::new(0),
            identity_errors: AtomicU64::new(0),
            identity_last_error: ArcSwapOption::empty(),
            shards: (0..workers).map(|_| WorkerShard::default()).collect(),
            identity_stop: tokio::sync::Notify::new(),
        }
    }

    /// Whether a connection to `dst` would land on this workload's own listener (its
    /// namespace's, for a node workload).
    pub fn is_own(&self, shared: &crate::state::Shared, dst: ringmesh_core::OrigDst) -> bool {
        match &self.own {
            Some(own) => own.is_own(dst),
            None => shared.own.load().is_own(dst),
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
