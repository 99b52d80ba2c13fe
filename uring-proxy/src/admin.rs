//! The admin HTTP server, on the control thread: `/metrics` (Prometheus text), `/ready`,
//! `/live`, `/config` (the active config as JSON, with its version).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::state::{Phase, Shared};

/// What a listener serves: the admin endpoints (loopback), or the health port (the pod's
/// address: `/ready`, `/live`, `/metrics` and the app probes).
#[derive(Clone)]
pub(crate) enum Surface {
    Admin,
    Health(Arc<crate::health::AppProbes>),
}

/// How long the admin may hold its spare descriptor for one connection.
const SPARE_HOLD: std::time::Duration = std::time::Duration::from_secs(5);
/// How often an admin out of descriptors tries its accept again.
const SPARE_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

pub(crate) async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, surface: Surface) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin server could not start");
            return;
        }
    };
    // This listener's own spare descriptor, apart from the workers' (`Shared::spare_fd`): the
    // admin must answer /metrics when the process is out of descriptors, which is when it
    // matters most, whatever the workers are doing with theirs.
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) if is_fd_exhaustion(&e) => {
                drop(spare.take());
                if let Some(s) = accept_exhausted(&listener).await {
                    // One connection at a time, bounded, so a slow client cannot hold the
                    // descriptor the admin needs for the next.
                    let one = serve_one(s, shared.clone(), surface.clone());
                    let _ = tokio::time::timeout(SPARE_HOLD, one).await;
                }
                // Taken back for the next time. When another thread got it first there is
                // none to take; the next exhaustion accepts into whatever frees up.
                spare = std::fs::File::open("/dev/null").ok();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_one(stream, shared.clone(), surface.clone()));
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts one connection while the process is out of descriptors: the one just freed may go
/// to another thread's accept or socket first, and those give theirs back within moments (a
/// worker that cannot open the upstream closes the downstream), so the accept is retried for
/// up to `SPARE_HOLD` instead of once.
async fn accept_exhausted(listener: &tokio::net::TcpListener) -> Option<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + SPARE_HOLD;
    loop {
        match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(Ok((s, _))) => return Some(s),
            Ok(Err(e)) if is_fd_exhaustion(&e) => {
                if tokio::time::Instant::now() + SPARE_RETRY >= deadline {
                    return None;
                }
                tokio::time::sleep(SPARE_RETRY).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "admin accept failed");
                return None;
            }
            Err(_) => return None,
        }
    }
}

async fn serve_one(stream: tokio::net::TcpStream, shared: Arc<Shared>, surface: Surface) {
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let surface = surface.clone();
        async move {
            Ok::<_, Infallible>(match &surface {
                Surface::Admin => handle(&req, &shared),
                Surface::Health(probes) => crate::health::handle(&req, &shared, probes).await,
            })
        }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/metrics" | "/ready" | "/live" | "/config" | "/identity"
    ) {
        return respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics /ready /live /config /identity\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.render_metrics(),
        ),
        "/ready" => ready(shared),
        "/live" => {
            if shared.live() {
                respond(StatusCode::OK, TEXT, "live\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, stalled(shared))
            }
        }
        "/identity" => {
            let body = crate::identity::describe(shared);
            respond(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        _ => {
            let body = describe_config(shared);
            respond(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
    }
}

/// Why the process is not ready, in words.
fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.ready() {
        return respond(
            StatusCode::OK,
            TEXT,
            format!("ready{}\n", nats_detail(shared)),
        );
    }
    let why = if shared.phase() != Phase::Running {
        "draining\n".to_string()
    } else if !shared.live() {
        stalled(shared)
    } else if let Some(w) = shared.registered().into_iter().find(|w| !w.ready()) {
        format!("no valid SVID for workload {}\n", w.key)
    } else {
        "starting\n".to_string()
    };
    respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, why)
}

/// What `/ready` adds when the config follows NATS and NATS is not there: the proxy serves
/// on what it has, and says so.
fn nats_detail(shared: &Shared) -> String {
    let Some(n) = &shared.nats else {
        return String::new();
    };
    if n.connected.load(std::sync::atomic::Ordering::Relaxed) {
        return String::new();
    }
    let err = n
        .last_error
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .unwrap_or_else(|| "connecting".into());
    format!(
        " (NATS not connected: {err}; serving the config from {})",
        shared.config.load().source.describe()
    )
}

/// Which workers missed their heartbeat.
fn stalled(shared: &Shared) -> String {
    let now = shared.clock_ms();
    let limit = shared.stall_timeout.as_millis() as u64;
    let started = shared
        .workers_started
        .load(std::sync::atomic::Ordering::Relaxed);
    if started < shared.workers.len() {
        return format!(
            "starting: {started} of {} workers running\n",
            shared.workers.len()
        );
    }
    let stuck: Vec<String> = shared
        .workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let age = now.saturating_sub(w.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed));
            (age > limit).then(|| format!("worker {i} ({age} ms)"))
        })
        .collect();
    format!("not live: no heartbeat from {}\n", stuck.join(", "))
}

/// `/config`: what is in force. The restart-only part is the one the process started with;
/// the live part is the newest accepted; fields a later config changed but that wait for a
/// restart are listed.
fn describe_config(shared: &Shared) -> serde_json::Value {
    let snap = shared.config.load();
    let nats = shared.nats.as_ref().map(|n| {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "connected": n.connected.load(Relaxed),
            "server": n.server.lock().ok().and_then(|s| s.clone()),
            "running": n.running().map(|v| v.to_string()),
            "applied": n.applied.load(Relaxed),
            "rejected": n.rejected.load(Relaxed),
            "last_error": n.last_error.lock().ok().and_then(|e| e.clone()),
        })
    });
    serde_json::json!({
        "nats": nats,
        "version": snap.config.version.to_string(),
        "source": snap.source.describe(),
        "applied_at": snap.applied_at,
        "restart_required": snap.restart_required,
        "mode": shared.boot.mode.as_str(),
        "workloads": shared.registered().iter().map(|w| w.key.to_string()).collect::<Vec<_>>(),
        "registrations": shared.registered().iter().filter_map(|w| w.registration.clone()).collect::<Vec<_>>(),
        "in_force": {
            "restart_only": shared.boot_raw,
            "live": snap.config.raw_live(),
        },
    })
}
