//! The proxy's side of configuration over NATS, on the control thread.
//!
//! Connects (retrying from the first attempt; the proxy serves its file or persisted config
//! meanwhile), reads the whole current state of the config bucket with a
//! `watch_with_history` (the latest value of every key, then every change), and after every
//! reconnect starts over from the current state: core NATS drops what is published while a
//! client is away, so nothing may be assumed to have arrived. Each time a manifest (or a part
//! a manifest waits for) arrives, the scopes are assembled (`layout`); a complete version
//! newer than the running one is offered to the proxy, which validates it whole and applies
//! it or says why not. Older and equal versions are ignored. What the proxy did, and its
//! connection state, is written to the status bucket and kept fresh while the proxy runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Event;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::connect::{self, TlsMaterial};
use super::layout::{AssembleError, KeySpace, Scope, Versions, assemble, escape};

/// How a proxy follows the control plane.
#[derive(Debug, Clone)]
pub struct FollowSetup {
    pub servers: Vec<String>,
    pub material: Arc<dyn TlsMaterial>,
    pub bucket: String,
    pub status_bucket: String,
    /// This proxy's workload and node: which overrides apply, and its status key.
    pub workload: String,
    pub node: Option<String>,
    /// How often the status entry is refreshed (the status bucket's entries expire).
    pub status_interval: Duration,
    /// The versions already running (from a persisted config), if any.
    pub running: Option<Versions>,
}

/// A complete newer version, offered to the proxy.
#[derive(Debug)]
pub struct Offer {
    pub versions: Versions,
    /// The live part of the config, layered.
    pub document: Map<String, Value>,
    /// The proxy's answer: applied, or every reason it was rejected.
    pub reply: oneshot::Sender<Result<(), Vec<String>>>,
}

/// What the follower knows, for metrics, `/ready` detail and `/config`. Written by the
/// control thread only.
#[derive(Debug, Default)]
pub struct NatsState {
    pub connected: AtomicBool,
    /// Connections after the first.
    pub reconnects: AtomicU64,
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    /// Unix seconds of the last applied version.
    pub last_apply: AtomicU64,
    pub running: Mutex<Option<Versions>>,
    pub last_error: Mutex<Option<String>>,
    /// The server connected to now.
    pub server: Mutex<Option<String>>,
}

impl NatsState {
    fn set_error(&self, e: impl Into<String>) {
        let e = e.into();
        tracing::warn!(error = %e, "NATS");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e);
        }
    }

    pub fn running(&self) -> Option<Versions> {
        self.running.lock().ok().and_then(|r| *r)
    }
}

/// A proxy's report, as the status bucket holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub workload: String,
    #[serde(default)]
    pub node: Option<String>,
    /// The versions in force (`None`: nothing from NATS yet).
    pub applied: Option<Versions>,
    #[serde(default)]
    pub applied_at: u64,
    /// The last version refused, and why.
    #[serde(default)]
    pub rejected: Option<Rejected>,
    pub connected_to: Option<String>,
    pub reported_at: u64,
    pub proxy_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub versions: Versions,
    pub errors: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Follows the control plane until the process ends. Connection problems are reported and
/// retried, never returned.
pub async fn follow(setup: FollowSetup, state: Arc<NatsState>, offers: mpsc::Sender<Offer>) {
    let servers = match connect::servers(&setup.servers) {
        Ok(s) => s,
        Err(e) => return state.set_error(e),
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let name = format!("ringmesh {}", setup.workload);
    let client = match connect::options(setup.material.clone(), &name, tx) {
        Ok(o) => match o.connect(servers).await {
            Ok(c) => c,
            Err(e) => return state.set_error(format!("connect: {e}")),
        },
        Err(e) => return state.set_error(e),
    };
    let mut scopes = vec![Scope::Mesh];
    if let Some(n) = &setup.node {
        scopes.push(Scope::Node(n.clone()));
    }
    scopes.push(Scope::Workload(setup.workload.clone()));
    let mut me = Follower {
        setup,
        state,
        offers,
        scopes,
        rejected: None,
        last_rejection: None,
        connections: 0,
    };
    if let Ok(mut r) = me.state.running.lock() {
        *r = me.setup.running;
    }
    let js = jetstream::new(client.clone());
    loop {
        // Wait until connected.
        while client.connection_state() != async_nats::connection::State::Connected {
            match events.recv().await {
                Some(e) => me.on_event(&e, &client),
                None => return,
            }
        }
        me.mark_connected(&client);
        if let Err(e) = me.session(&js, &client, &mut events).await {
            me.state.set_error(e);
            // A bucket that is not there yet, a permission problem: try again shortly.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

struct Follower {
    setup: FollowSetup,
    state: Arc<NatsState>,
    offers: mpsc::Sender<Offer>,
    scopes: Vec<Scope>,
    rejected: Option<Versions>,
    last_rejection: Option<Rejected>,
    connections: u64,
}

impl Follower {
    fn on_event(&mut self, e: &Event, client: &async_nats::Client) {
        match e {
            Event::Connected => self.mark_connected(client),
            Event::Disconnected => {
                self.state.connected.store(false, Relaxed);
                tracing::warn!(
                    "NATS disconnected; reconnecting (the config in force keeps serving)"
                );
            }
            Event::ServerError(err) => self.state.set_error(format!("server: {err}")),
            Event::ClientError(err) => self.state.set_error(format!("client: {err}")),
            other => tracing::debug!(event = %other, "NATS"),
        }
    }

    fn mark_connected(&mut self, client: &async_nats::Client) {
        if self.state.connected.swap(true, Relaxed) {
            return;
        }
        self.connections += 1;
        if self.connections > 1 {
            self.state.reconnects.fetch_add(1, Relaxed);
        }
        let info = client.server_info();
        let server = format!("{} ({}:{})", info.server_name, info.host, info.port);
        tracing::info!(server = %server, "NATS connected");
        if let Ok(mut s) = self.state.server.lock() {
            *s = Some(server);
        }
    }

    /// One connected session: the whole current state, then changes, until the connection
    /// drops (or the watch ends), when the caller starts over.
    async fn session(
        &mut self,
        js: &jetstream::Context,
        client: &async_nats::Client,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), String> {
        let bucket = &self.setup.bucket;
        let kv = js
            .get_key_value(bucket.clone())
            .await
            .map_err(|e| format!("config bucket {bucket:?}: {e}"))?;
        let status = js
            .get_key_value(self.setup.status_bucket.clone())
            .await
            .ok();
        let mut watch = tokio::time::timeout(Duration::from_secs(10), kv.watch_with_history(">"))
            .await
            .map_err(|_| format!("watching {bucket:?}: timed out"))?
            .map_err(|e| format!("watching {bucket:?}: {e}"))?;
        let mut keys = KeySpace::default();
        // The key a manifest waits for, when one does: its arrival is worth a look.
        let mut waiting: Option<String> = None;
        let mut tick = tokio::time::interval(self.setup.status_interval);
        tracing::info!(bucket = %bucket, "following the config bucket");
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => return Err(format!("watch: {e}")),
                        None => return Err("the watch ended".into()),
                    };
                    let look = entry.key.ends_with(".manifest")
                        || waiting.as_deref() == Some(entry.key.as_str());
                    match entry.operation {
                        kv::Operation::Put => keys.put(entry.key, entry.revision, entry.value),
                        kv::Operation::Delete | kv::Operation::Purge => keys.remove(&entry.key),
                    }
                    if look {
                        waiting = self.evaluate(&keys, status.as_ref()).await;
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else { return Ok(()) };
                    let reconnected = matches!(event, Event::Connected);
                    self.on_event(&event, client);
                    if matches!(event, Event::Disconnected) || reconnected {
                        // Start over from the current state once connected again.
                        return Ok(());
                    }
                }
                _ = tick.tick() => self.report(status.as_ref()).await,
            }
        }
    }

    /// Assembles the scopes; offers a complete newer version. Returns the key a manifest
    /// still waits for.
    async fn evaluate(&mut self, keys: &KeySpace, status: Option<&kv::Store>) -> Option<String> {
        let running = self.state.running();
        let newer = |v: Versions| running.is_none_or(|r| v.newer_than(r));
        match assemble(keys, &self.scopes) {
            Ok(None) => None,
            Err(AssembleError::Incomplete {
                scope,
                version,
                key,
                revision,
            }) => {
                tracing::debug!(%scope, version, %key, revision, "a version waits for a part");
                Some(key)
            }
            Err(AssembleError::Invalid { versions, errors }) => {
                if newer(versions) && self.rejected != Some(versions) {
                    self.reject(versions, errors, status).await;
                }
                None
            }
            Ok(Some(layered)) => {
                let v = layered.versions;
                if !newer(v) {
                    if running.is_some_and(|r| v.older_than(r)) {
                        tracing::info!(version = %v, running = ?running.map(|r| r.to_string()), "ignoring an older config version");
                    }
                    return None;
                }
                if self.rejected == Some(v) {
                    return None;
                }
                let (reply, answer) = oneshot::channel();
                let offer = Offer {
                    versions: v,
                    document: layered.document,
                    reply,
                };
                if self.offers.send(offer).await.is_err() {
                    return None;
                }
                match answer.await {
                    Ok(Ok(())) => {
                        self.state.applied.fetch_add(1, Relaxed);
                        self.state.last_apply.store(unix_now(), Relaxed);
                        if let Ok(mut r) = self.state.running.lock() {
                            *r = Some(v);
                        }
                        self.rejected = None;
                        self.report(status).await;
                    }
                    Ok(Err(errors)) => self.reject(v, errors, status).await,
                    Err(_) => {}
                }
                None
            }
        }
    }

    async fn reject(
        &mut self,
        versions: Versions,
        errors: Vec<String>,
        status: Option<&kv::Store>,
    ) {
        tracing::error!(version = %versions, errors = ?errors, "config version rejected; the one in force keeps serving");
        self.state.rejected.fetch_add(1, Relaxed);
        self.rejected = Some(versions);
        self.last_rejection = Some(Rejected { versions, errors });
        self.report(status).await;
    }

    async fn report(&self, status: Option<&kv::Store>) {
        let Some(status) = status else { return };
        let report = StatusReport {
            workload: self.setup.workload.clone(),
            node: self.setup.node.clone(),
            applied: self.state.running(),
            applied_at: self.state.last_apply.load(Relaxed),
            rejected: self.last_rejection.clone(),
            connected_to: self.state.server.lock().ok().and_then(|s| s.clone()),
            reported_at: unix_now(),
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        if let Err(e) = status.put(escape(&self.setup.workload), body.into()).await {
            self.state.set_error(format!("status report: {e}"));
        }
    }
}
