//! Workload identities, on the control thread: follows the configured source (the SPIFFE
//! Workload API or files), turns each SVID into rustls configurations off to the side, and
//! publishes them to the workers in one step. A rotation never touches open connections;
//! new handshakes use the new SVID at once.
//!
//! If the source goes away, the current SVID serves until it expires while the source is
//! retried with backoff; from expiry on the workload fails closed: not ready, and meshed
//! connections refused. It never falls back to plaintext. Each workload has its own SVID
//! and its own state; one workload's expiry refuses only that workload's connections.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringmesh_core::config::{IdentityConfig, Mode};
use ringmesh_ctrl::source::{self, SourceEvent};

use crate::state::Shared;
use crate::tls::TlsIdentity;
use crate::workload::Workload;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Starts following the configured identity source on the current (control) runtime, for
/// the sidecar's workload (a node proxy's workloads start theirs as they are registered,
/// [`start_for`]).
pub(crate) fn start(shared: &Arc<Shared>) {
    let config = shared.boot.identity.clone();
    if config == IdentityConfig::None {
        return;
    }
    tokio::spawn(expire(shared.clone()));
    let Some(w) = (shared.boot.mode == Mode::Sidecar)
        .then(|| shared.workload(0))
        .flatten()
    else {
        return;
    };
    let on = move |event| on_event(&w, event);
    match config {
        IdentityConfig::None | IdentityConfig::Delegated { .. } => {}
        IdentityConfig::WorkloadApi { socket } => {
            tracing::info!(socket = %socket.display(), "identity from the SPIFFE Workload API");
            tokio::spawn(source::workload_api(socket, on));
        }
        IdentityConfig::Files { cert, key, bundle } => {
            tracing::info!(cert = %cert.display(), "identity from files");
            tokio::spawn(source::files(cert, key, bundle, Duration::from_secs(1), on));
        }
    }
}

/// Node mode: follows the Delegated Identity API for one registered workload, by its
/// selectors, until the workload is removed. An SVID for another SPIFFE ID than the
/// registration names is refused.
pub(crate) fn start_for(shared: &Arc<Shared>, w: &Arc<Workload>) {
    let IdentityConfig::Delegated { socket } = shared.boot.identity.clone() else {
        return;
    };
    let Some(reg) = w.registration.clone() else {
        return;
    };
    let expected = reg.spiffe_id.clone();
    let target = w.clone();
    let on = move |event| match (event, &expected) {
        (SourceEvent::Update(id), Some(want)) if id.leaf.id.to_string() != *want => report(
            &target,
            format!(
                "the Delegated Identity API issued {} where {want} was registered",
                id.leaf.id
            ),
        ),
        (event, _) => on_event(&target, event),
    };
    let stopper = w.clone();
    let stop = async move { stopper.identity_stop.notified().await };
    tracing::info!(workload = %w.key, socket = %socket.display(), selectors = ?reg.selectors(), "identity from the Delegated Identity API");
    tokio::spawn(source::delegated(socket, reg.selectors(), on, stop));
}

fn on_event(w: &Workload, event: SourceEvent) {
    match event {
        SourceEvent::Update(identity) => match TlsIdentity::new(*identity) {
            Ok(tls) => {
                let leaf = &tls.identity.leaf;
                tracing::info!(
                    workload = %w.key, spiffe_id = %leaf.id, serial = %leaf.serial,
                    not_after = leaf.not_after, "SVID in force"
                );
                if w.identity.swap(Some(Arc::new(tls))).is_some() {
                    w.identity_rotations.fetch_add(1, Relaxed);
                }
                w.identity_last_error.store(None);
            }
            Err(e) => report(w, format!("the SVID cannot be used for TLS: {e}")),
        },
        SourceEvent::Error(e) => report(w, e),
    }
}

fn report(w: &Workload, error: String) {
    w.identity_errors.fetch_add(1, Relaxed);
    let holding = w
        .identity
        .load()
        .as_ref()
        .map(|t| t.identity.leaf.not_after);
    match holding {
        Some(not_after) => tracing::warn!(
            workload = %w.key, error = %error, valid_for_s = not_after - unix_now(),
            "identity source failed; the current SVID serves until it expires"
        ),
        None => tracing::warn!(
            workload = %w.key, error = %error,
            "identity source failed; no SVID yet (fail closed)"
        ),
    }
    w.identity_last_error.store(Some(Arc::new(error)));
}

/// Drops each workload's SVID the moment it expires (checked every 250 ms).
async fn expire(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for w in shared.registered() {
            let expired = w
                .identity
                .load()
                .as_ref()
                .is_some_and(|t| !t.identity.valid_at(unix_now()));
            if expired {
                w.identity.store(None);
                tracing::error!(
                    workload = %w.key,
                    "the SVID expired and no new one came: not ready, meshed connections \
                     refused (fail closed) until the identity source delivers one"
                );
            }
        }
    }
}

/// `/identity`: every workload's SVID in force and its source's state, as JSON.
pub(crate) fn describe(shared: &Shared) -> serde_json::Value {
    let source = shared.boot.identity.to_string();
    let workloads: Vec<_> = shared
        .registered()
        .iter()
        .map(|w| {
            let mut v = serde_json::json!({
                "workload": w.key.to_string(),
                "source": source,
                "rotations": w.rotations(),
                "source_errors": w.source_errors(),
                "last_error": w.identity_last_error.load().as_deref().map(|s| s.as_str()),
            });
            if let Some(t) = w.identity.load().as_ref() {
                let leaf = &t.identity.leaf;
                v["valid"] = true.into();
                v["spiffe_id"] = leaf.id.to_string().into();
                v["serial"] = leaf.serial.clone().into();
                v["not_before"] = leaf.not_before.into();
                v["not_after"] = leaf.not_after.into();
                v["trust_domains"] = t
                    .identity
                    .bundles
                    .trust_domains()
                    .collect::<Vec<_>>()
                    .into();
            } else {
                v["valid"] = false.into();
            }
            v
        })
        .collect();
    // A sidecar's one workload is also shown at the top level, as before node mode.
    let mut top = workloads.first().cloned().unwrap_or_default();
    top["workloads"] = workloads.into();
    top
}
