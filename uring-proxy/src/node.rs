//! Node mode: one proxy for the workloads registered on its node, as ztunnel's in-pod mode.
//!
//! A workload is registered at runtime over a root-only unix socket (`node.socket`; the
//! `meshctl node add|remove|list` client, or a CNI plugin or node agent speaking the same
//! JSON lines). Registration names the workload's network namespace (`/run/netns/X` or
//! `/proc/PID/ns/net`), its SPIFFE ID and its addresses. The proxy then:
//!
//! - opens every worker's outbound and inbound listeners inside that namespace (a short-lived
//!   helper thread enters it, binds, and leaves; a socket keeps the namespace it was made
//!   in), so the pod's own interception rules, installed by `mesh-redirect` in the pod with
//!   the node proxy's mark or uid as the bypass, send the pod's traffic to the node proxy;
//! - makes that workload's upstream sockets in its namespace too (the worker enters it for
//!   the `socket(2)` call only, and comes back), so peers see the pod's address;
//! - presents the workload's own SVID and applies its policy; metrics carry its key.
//!
//! Removing a workload closes its listeners, gives its connections the drain timeout, then
//! resets what is left, and forgets it. A workload whose namespace is gone (the path no
//! longer names the namespace it named) is removed the same way and counted.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ringmesh_core::metrics::Direction;
use ringmesh_core::{SpiffeId, WorkloadKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::listen;
use crate::state::Shared;
use crate::worker::ListenerSetup;
use crate::workload::Workload;

/// How often registered namespaces are checked for having gone away.
const NETNS_CHECK: Duration = Duration::from_secs(1);

/// A workload's network namespace: an open handle (so it cannot be swapped under us) and
/// what it was registered as.
#[derive(Debug, Clone)]
pub struct Netns {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// (device, inode) of the namespace at registration.
    pub id: (u64, u64),
}

impl Netns {
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        Ok(Self {
            path,
            file: Arc::new(file),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Whether the registered path still names the namespace it named at registration.
    pub fn present(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }
}

/// What registered a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub netns: PathBuf,
    /// The SPIFFE ID the workload's SVID must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The pod's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<IpAddr>,
    /// Selectors for the Delegated Identity API (`type:value`); default
    /// `ringmesh:workload:<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
}

impl Registration {
    pub fn selectors(&self) -> Vec<String> {
        if self.selectors.is_empty() {
            vec![format!("ringmesh:workload:{}", self.name)]
        } else {
            self.selectors.clone()
        }
    }
}

/// What the registration socket takes: one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add(Registration),
    Remove { name: String },
    List,
}

/// A command to one worker.
#[derive(Debug)]
pub(crate) enum WorkerCmd {
    /// Serve a workload: accept on these listeners (made in its namespace).
    Serve {
        slot: usize,
        listeners: Vec<ListenerSetup>,
    },
    /// Stop accepting for a workload; `done` is sent once every accept loop of it on this
    /// worker has exited (so its listeners are closed).
    StopAccepting {
        slot: usize,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Reset a workload's remaining connections (its drain is over).
    Close { slot: usize },
}

/// Node-mode counters, for the metrics.
#[derive(Debug, Default)]
pub struct NodeStats {
    pub added: AtomicU64,
    /// Removed by request.
    pub removed: AtomicU64,
    /// Removed because their network namespace went away.
    pub netns_gone: AtomicU64,
    pub refused: AtomicU64,
}

/// Runs `f` on a new thread that has entered `netns` (the caller's threads never leave
/// their own namespace).
fn in_netns<T: Send + 'static>(
    netns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = netns.file.clone();
    std::thread::Builder::new()
        .name("ringmesh-netns".into())
        .spawn(move || {
            nix::sched::setns(&*file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace helper thread panicked"))?
}

/// The registry, on the control thread.
pub(crate) struct Registry {
    shared: Arc<Shared>,
    drain_timeout: Duration,
}

impl Registry {
    pub fn new(shared: Arc<Shared>, drain_timeout: Duration) -> Self {
        Self {
            shared,
            drain_timeout,
        }
    }

    fn stats(&self) -> &NodeStats {
        &self.shared.node_stats
    }

    /// Registers a workload: its slot, its listeners on every worker, then its identity.
    async fn add(&self, reg: Registration) -> Result<serde_json::Value, String> {
        let key = WorkloadKey::parse(&reg.name).map_err(|e| format!("name {:?}: {e}", reg.name))?;
        if let Some(id) = &reg.spiffe_id {
            SpiffeId::parse(id).map_err(|e| format!("spiffe_id {id:?}: {e}"))?;
        }
        if self.shared.registered().iter().any(|w| w.key == key) {
            return Err(format!("{key} is already registered"));
        }
        let slot = self
            .shared
            .workloads
            .iter()
            .position(|s| s.load().is_none())
            .ok_or_else(|| {
                format!(
                    "all {} workload slots are in use (node.max_workloads)",
                    self.shared.workloads.len()
                )
            })?;
        let netns = Netns::open(reg.netns.clone())
            .map_err(|e| format!("network namespace {}: {e}", reg.netns.display()))?;
        let workers = self.shared.workers.len();
        let listeners = self.shared.boot.listeners;
        let steer = self.shared.steer_cpus.clone();
        let bound = in_netns(&netns, move || -> Result<_, String> {
            let out = listen::bind_group("outbound listener", listeners.outbound, workers)
                .map_err(|e| e.to_string())?;
            let inb = listen::bind_group("inbound listener", listeners.inbound, workers)
                .map_err(|e| e.to_string())?;
            if let Some(cpus) = &steer {
                listen::steer_by_cpu("outbound listener", &out, cpus).map_err(|e| e.to_string())?;
                listen::steer_by_cpu("inbound listener", &inb, cpus).map_err(|e| e.to_string())?;
            }
            let ips = crate::sys::local_ips().map_err(|e| e.to_string())?;
            Ok((out, inb, ips))
        })
        .map_err(|e| format!("entering {}: {e}", reg.netns.display()))??;
        let identity_required =
            self.shared.boot.identity != ringmesh_core::config::IdentityConfig::None;
        let mut w = Workload::new(key.clone(), slot, workers, identity_required);
        w.netns = Some(netns);
        w.registration = Some(reg.clone());
        w.own = Some(ringmesh_core::decide::OwnAddrs::new(
            [listeners.outbound, listeners.inbound],
            bound.2,
        ));
        let w = Arc::new(w);
        self.shared.workloads[slot].store(Some(w.clone()));
        for (i, (o, inb)) in bound.0.into_iter().zip(bound.1).enumerate() {
            let cmd = WorkerCmd::Serve {
                slot,
                listeners: vec![
                    ListenerSetup {
                        dir: Direction::Outbound,
                        workload: slot,
                        listener: o,
                    },
                    ListenerSetup {
                        dir: Direction::Inbound,
                        workload: slot,
                        listener: inb,
                    },
                ],
            };
            if let Some(tx) = self.shared.worker_cmds.get(i) {
                let _ = tx.send(cmd);
            }
        }
        crate::identity::start_for(&self.shared, &w);
        self.stats().added.fetch_add(1, Relaxed);
        tracing::info!(workload = %key, slot, netns = %reg.netns.display(), "workload added");
        Ok(serde_json::json!({ "ok": true, "workload": key.as_str(), "slot": slot }))
    }

    /// Removes a workload: listeners closed at once, connections drained, then reset.
    async fn remove(&self, name: &str, why: &'static str) -> Result<serde_json::Value, String> {
        let Some(w) = self
            .shared
            .registered()
            .into_iter()
            .find(|w| w.key.as_str() == name)
        else {
            return Err(format!("{name} is not registered"));
        };
        let slot = w.index;
        // New connections to the slot find nothing from here on.
        self.shared.workloads[slot].store(None);
        // Every worker's listeners are closed before the drain is timed (a connection still in
        // one worker's backlog would otherwise make it look drained).
        let mut stopped = Vec::new();
        for tx in self.shared.worker_cmds.iter() {
            let (done, rx) = tokio::sync::oneshot::channel();
            if tx.send(WorkerCmd::StopAccepting { slot, done }).is_ok() {
                stopped.push(rx);
            }
        }
        for rx in stopped {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        let deadline = Instant::now() + self.drain_timeout;
        while w.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained = w.active();
        for tx in self.shared.worker_cmds.iter() {
            let _ = tx.send(WorkerCmd::Close { slot });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.identity.store(None);
        w.identity_stop.notify_one();
        match why {
            "netns_gone" => self.stats().netns_gone.fetch_add(1, Relaxed),
            _ => self.stats().removed.fetch_add(1, Relaxed),
        };
        tracing::info!(workload = %name, slot, reason = why, reset = drained, "workload removed");
        Ok(serde_json::json!({ "ok": true, "workload": name, "reset_connections": drained }))
    }

    fn list(&self) -> serde_json::Value {
        let workloads: Vec<_> = self
            .shared
            .registered()
            .iter()
            .map(|w| {
                serde_json::json!({
                    "workload": w.key.as_str(),
                    "slot": w.index,
                    "registration": w.registration,
                    "active_connections": w.active(),
                    "identity": w.identity_info().map(|i| i.spiffe_id),
                })
            })
            .collect();
        serde_json::json!({ "ok": true, "workloads": workloads })
    }

    async fn handle(&self, line: &str) -> serde_json::Value {
        let result = match serde_json::from_str::<Request>(line) {
            Err(e) => Err(format!("bad request: {e}")),
            Ok(Request::Add(reg)) => self.add(reg).await,
            Ok(Request::Remove { name }) => self.remove(&name, "removed").await,
            Ok(Request::List) => Ok(self.list()),
        };
        result.unwrap_or_else(|e| {
            self.stats().refused.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "node registration refused");
            serde_json::json!({ "ok": false, "error": e })
        })
    }

    /// Removes workloads whose namespace went away.
    async fn sweep_gone(&self) {
        for w in self.shared.registered() {
            if w.netns.as_ref().is_some_and(|n| !n.present()) {
                let name = w.key.to_string();
                tracing::warn!(workload = %name, "its network namespace is gone; removing it");
                let _ = self.remove(&name, "netns_gone").await;
            }
        }
    }
}

type Pending = (String, tokio::sync::oneshot::Sender<serde_json::Value>);

/// Serves the registration socket and watches namespaces, until the process stops.
/// Requests are handled one at a time, in order.
pub(crate) async fn serve(registry: Registry, listener: UnixListener) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NETNS_CHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => registry.sweep_gone().await,
                req = rx.recv() => match req {
                    Some((line, done)) => { let _ = done.send(registry.handle(&line).await); }
                    None => return,
                },
            }
        }
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                if tx.send((line, done_tx)).await.is_err() {
                    return;
                }
                let Ok(reply) = done_rx.await else { return };
                let mut out = reply.to_string();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
