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

pub(crate) async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
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
    // As in the workers' accept loops, a spare descriptor keeps the admin endpoints reachable
    // (one connection at a time) when the process is out of them: that is when /metrics
    // matters most.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e)
                if e.raw_os_error() == Some(libc::EMFILE)
                    || e.raw_os_error() == Some(libc::ENFILE) =>
            {
                drop(reserve.take());
                if let Ok((s, _)) = listener.accept().await {
                    serve_one(s, shared.clone()).await;
                }
                reserve = std::fs::File::open("/dev/null").ok();
                if reserve.is_none() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_one(stream, shared.clone()));
    }
}

async fn serve_one(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&req, &shared)) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

fn respond(
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

const TEXT: &str = "text/plain; charset=utf-8";

fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
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
        "/ready" => match (shared.ready(), shared.phase()) {
            (true, _) => respond(StatusCode::OK, TEXT, "ready\n"),
            (false, Phase::Running)
                if shared.identity_required && shared.identity.load().is_none() =>
            {
                respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "no valid SVID\n")
            }
            (false, Phase::Running) => respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n"),
            (false, _) => respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n"),
        },
        "/live" => respond(StatusCode::OK, TEXT, "live\n"),
        "/identity" => {
            let body = crate::identity::describe(shared);
            respond(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        _ => {
            let snap = shared.config.load();
            let body = serde_json::json!({ "version": snap.version, "config": snap.config.raw() });
            respond(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
    }
}
