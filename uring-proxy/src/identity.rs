//! The proxy's own identity, on the control thread: follows the configured source (the
//! SPIFFE Workload API or files), turns each SVID into rustls configurations off to the side,
//! and publishes them to the workers in one step. A rotation never touches open connections;
//! new handshakes use the new SVID at once.
//!
//! If the source goes away, the current SVID serves until it expires while the source is
//! retried with backoff; from expiry on the proxy fails closed: not ready, and meshed
//! connections refused. It never falls back to plaintext.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringmesh_core::config::IdentityConfig;
use ringmesh_ctrl::source::{self, SourceEvent};

use crate::state::Shared;
use crate::tls::TlsIdentity;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Starts following the configured identity source on the current (control) runtime.
pub(crate) fn start(shared: &Arc<Shared>) {
    let config = shared.config.load().config.identity.clone();
    let s = shared.clone();
    let on = move |event| on_event(&s, event);
    match config {
        IdentityConfig::None => return,
        IdentityConfig::WorkloadApi { socket } => {
            tracing::info!(socket = %socket.display(), "identity from the SPIFFE Workload API");
            tokio::spawn(source::workload_api(socket, on));
        }
        IdentityConfig::Files { cert, key, bundle } => {
            tracing::info!(cert = %cert.display(), "identity from files");
            tokio::spawn(source::files(cert, key, bundle, Duration::from_secs(1), on));
        }
    }
    tokio::spawn(expire(shared.clone()));
}

fn on_event(shared: &Shared, event: SourceEvent) {
    match event {
        SourceEvent::Update(identity) => match TlsIdentity::new(*identity) {
            Ok(tls) => {
                let leaf = &tls.identity.leaf;
                tracing::info!(
                    spiffe_id = %leaf.id, serial = %leaf.serial, not_after = leaf.not_after,
                    "SVID in force"
                );
                if shared.identity.swap(Some(Arc::new(tls))).is_some() {
                    shared.identity_rotations.fetch_add(1, Relaxed);
                }
                if let Ok(mut e) = shared.identity_last_error.lock() {
                    *e = None;
                }
            }
            Err(e) => report(shared, format!("the SVID cannot be used for TLS: {e}")),
        },
        SourceEvent::Error(e) => report(shared, e),
    }
}

fn report(shared: &Shared, error: String) {
    shared.identity_errors.fetch_add(1, Relaxed);
    let holding = shared
        .identity
        .load()
        .as_ref()
        .map(|t| t.identity.leaf.not_after);
    match holding {
        Some(not_after) => tracing::warn!(
            error = %error, valid_for_s = not_after - unix_now(),
            "identity source failed; the current SVID serves until it expires"
        ),
        None => tracing::warn!(error = %error, "identity source failed; no SVID yet (fail closed)"),
    }
    if let Ok(mut e) = shared.identity_last_error.lock() {
        *e = Some(error);
    }
}

/// Drops the SVID the moment it expires (checked every 250 ms).
async fn expire(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let expired = shared
            .identity
            .load()
            .as_ref()
            .is_some_and(|t| !t.identity.valid_at(unix_now()));
        if expired {
            shared.identity.store(None);
            tracing::error!(
                "the SVID expired and no new one came: not ready, meshed connections refused \
                 (fail closed) until the identity source delivers one"
            );
        }
    }
}

/// `/identity`: the SVID in force and the source's state, as JSON.
pub(crate) fn describe(shared: &Shared) -> serde_json::Value {
    let source = match &shared.config.load().config.identity {
        IdentityConfig::None => "none".to_string(),
        IdentityConfig::WorkloadApi { socket } => format!("workload_api {}", socket.display()),
        IdentityConfig::Files { cert, .. } => format!("files {}", cert.display()),
    };
    let last_error = shared
        .identity_last_error
        .lock()
        .ok()
        .and_then(|e| e.clone());
    let base = serde_json::json!({
        "source": source,
        "rotations": shared.identity_rotations.load(Relaxed),
        "source_errors": shared.identity_errors.load(Relaxed),
        "last_error": last_error,
    });
    let mut v = base;
    if let Some(t) = shared.identity.load().as_ref() {
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
}
