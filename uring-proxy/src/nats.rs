//! The proxy's end of configuration over NATS, on the control thread: starts the follower
//! (`ringmesh_ctrl::nats::follow`), turns each version it offers into a whole config (the
//! restart-only part in force, plus the offered live part), validates it, applies it in one
//! step or says every reason it cannot, and keeps the last one applied on disk so that a
//! restart without NATS resumes from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringmesh_core::Config;
use ringmesh_core::config::{NatsConfig, RawConfig};
use ringmesh_ctrl::nats::connect::{FileMaterial, TlsMaterial};
use ringmesh_ctrl::nats::follow::{self, FollowSetup, NatsState, Offer};
use ringmesh_ctrl::nats::layout::Versions;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::state::{ConfigSource, Shared};

/// TLS for NATS: files when configured, else the workload's SVID and trust bundle, read at
/// each handshake (a rotation needs no reconnect).
#[derive(Debug)]
struct ProxyMaterial {
    shared: Arc<Shared>,
    client: Option<FileMaterial>,
    roots: Option<Vec<CertificateDer<'static>>>,
}

impl TlsMaterial for ProxyMaterial {
    fn client_cert(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        if let Some(f) = &self.client {
            return f.client_cert();
        }
        let id = self.shared.workload(0)?.identity.load_full()?;
        Some((id.identity.chain.clone(), id.identity.key.clone_key()))
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        if let Some(r) = &self.roots {
            return r.clone();
        }
        let Some(id) = self.shared.workload(0).and_then(|w| w.identity.load_full()) else {
            return Vec::new();
        };
        let b = &id.identity.bundles;
        b.trust_domains()
            .filter_map(|td| b.get(td))
            .flat_map(|roots| roots.iter().cloned())
            .collect()
    }
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let roots: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if roots.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// Starts following the control plane (on the current, control, runtime).
pub(crate) fn start(shared: &Arc<Shared>, nats: &NatsConfig, state: Arc<NatsState>) {
    let material = (|| -> Result<ProxyMaterial, String> {
        let client = match (&nats.client, &nats.ca) {
            (Some((cert, key)), Some(ca)) => Some(FileMaterial::load(ca, cert, key)?),
            // Files for the client, the trust bundle for the server.
            (Some((cert, key)), None) => Some(FileMaterial::client_only(cert, key)?),
            (None, _) => None,
        };
        let roots = nats.ca.as_deref().map(read_roots).transpose()?;
        Ok(ProxyMaterial {
            shared: shared.clone(),
            client,
            roots,
        })
    })();
    let material = match material {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "configuration over NATS cannot start; the config in force keeps serving");
            if let Ok(mut l) = state.last_error.lock() {
                *l = Some(e);
            }
            return;
        }
    };
    let snap = shared.config.load();
    let running = match &snap.source {
        ConfigSource::Nats(v) | ConfigSource::Persisted(_, v) => Some(*v),
        _ => None,
    };
    drop(snap);
    let setup = FollowSetup {
        servers: nats.servers.clone(),
        material: Arc::new(material),
        bucket: nats.bucket.clone(),
        status_bucket: nats.status_bucket.clone(),
        workload: shared
            .workload(0)
            .map(|w| w.key.to_string())
            .unwrap_or_default(),
        node: nats
            .node
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok()),
        status_interval: nats.status_interval,
        running,
    };
    let (tx, mut offers) = mpsc::channel::<Offer>(1);
    tracing::info!(servers = ?nats.servers, bucket = %nats.bucket, "following the control plane over NATS");
    tokio::spawn(follow::follow(setup, state, tx));
    let shared = shared.clone();
    let persist = nats.persist.clone();
    tokio::spawn(async move {
        while let Some(offer) = offers.recv().await {
            let result = apply(&shared, offer.versions, offer.document, persist.as_deref());
            let _ = offer.reply.send(result);
        }
    });
}

/// Builds, validates and applies an offered version.
fn apply(
    shared: &Shared,
    versions: Versions,
    live: Map<String, Value>,
    persist: Option<&Path>,
) -> Result<(), Vec<String>> {
    let t0 = std::time::Instant::now();
    let config = whole(shared, versions, live)?;
    let raw = config.raw().clone();
    let snap = shared.apply(config, ConfigSource::Nats(versions));
    tracing::info!(
        version = %versions, services = snap.config.live.services.len(),
        took_ms = t0.elapsed().as_millis() as u64, "config from NATS applied"
    );
    if let Some(path) = persist
        && let Err(e) = save(path, versions, &raw)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot persist the applied config");
    }
    Ok(())
}

/// The restart-only part in force plus an offered live part, validated as one config.
fn whole(
    shared: &Shared,
    versions: Versions,
    live: Map<String, Value>,
) -> Result<Config, Vec<String>> {
    let mut doc = match &shared.boot_raw {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    doc.extend(live);
    doc.insert("version".into(), versions.mesh.into());
    let raw: RawConfig = serde_path_to_error::deserialize(Value::Object(doc)).map_err(|e| {
        let path = e.path().to_string();
        vec![format!("{path}: {}", e.into_inner())]
    })?;
    raw.validate()
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

/// The file a proxy keeps its last applied config in.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    versions: Versions,
    config: RawConfig,
}

fn save(path: &Path, versions: Versions, raw: &RawConfig) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&Persisted {
        versions,
        config: raw.clone(),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// At start: the persisted live part over `config`'s restart-only part, when the config
/// follows NATS and a persisted version exists and is valid.
pub(crate) fn resume(config: &Config) -> Option<(Config, PathBuf, Versions)> {
    let path = config.boot.nats.as_ref()?.persist.clone()?;
    let text = std::fs::read(&path).ok()?;
    let p: Persisted = match serde_json::from_slice(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring the persisted config");
            return None;
        }
    };
    let mut live = match serde_json::to_value(&p.config) {
        Ok(Value::Object(m)) => m,
        _ => return None,
    };
    let boot = config.raw_boot();
    if let Value::Object(b) = boot {
        live.extend(b);
    }
    let raw: RawConfig = serde_json::from_value(Value::Object(live)).ok()?;
    match raw.validate() {
        Ok(c) => {
            tracing::info!(path = %path.display(), version = %p.versions, "resuming from the persisted config");
            Some((c, path, p.versions))
        }
        Err(errs) => {
            tracing::warn!(path = %path.display(), errors = ?errs.iter().map(ToString::to_string).collect::<Vec<_>>(), "ignoring an invalid persisted config");
            None
        }
    }
}
