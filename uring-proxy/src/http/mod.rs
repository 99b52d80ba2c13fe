//! HTTP/1.x and HTTP/2 (gRPC included), request by request: hyper's server on the downstream
//! connection (plaintext from the app, or the mTLS session from another proxy), and for each
//! request the named steps below, in order, ending on an upstream connection of the same
//! version from the worker's pool. Each request also carries its trace context upstream and
//! may leave an access log line and a span (`trail`).
//!
//! 1. `check`: request smuggling (Content-Length with Transfer-Encoding, which hyper would
//!    frame by the chunks, so `io::Watch` finds it in the bytes; more than one
//!    Content-Length) and the path (`core::http::normalize_path`) answer 400 and close.
//! 2. `route`: where it goes. Inbound: the app on loopback, after the access policy's
//!    per-request decision (403). Outbound: `core::decide::outbound_plan` per request (each
//!    request is balanced on its own), egress policy included.
//! 3. `forward`: a pooled connection (or a new one, with mTLS to a meshed endpoint), the
//!    request with its hop-by-hop headers removed, the response head within
//!    `http.response_timeout`. Failures answer 503 (unreachable), 502 (reset, TLS), 504
//!    (timeouts), each with `ringmesh-proxy-error`.
//! 4. The response streams back; its end (last byte, trailers, or a cut) is recorded.
//!
//! Later traffic policies (splits, retries, rate limits) are steps between 2 and 3.

mod body;
mod io;
mod pool;
mod trail;
mod upgrade;

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use monoio::net::TcpStream;
use ringmesh_core::access::Destination;
use ringmesh_core::config::LiveConfig;
use ringmesh_core::decide;
use ringmesh_core::http::{Headers, MethodClass, ORIG_PROTO, RequestView, normalize_path};
use ringmesh_core::metrics::{Direction, Outcome, RequestLabels, ResponseLabels, Side};
use ringmesh_core::{OrigDst, SpiffeId};

pub(crate) use body::ProxyBody;
pub(crate) use io::HttpIo;
use io::{Refused, Watch};
pub(crate) use pool::{Pool, PoolKey, Sender};

use crate::ctx::WorkerCtx;
use crate::error::{Cause, Stop};
use crate::pipeline::{self, Conn};
use crate::workload::Workload;
use trail::Trail;

/// The header on every response the proxy makes itself, naming why.
pub(crate) const PROXY_ERROR: &str = "ringmesh-proxy-error";

/// Which HTTP a connection speaks; its requests go upstream in the same (gRPC needs HTTP/2
/// end to end, and an HTTP/1 app gets HTTP/1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Wire {
    H1,
    H2,
}

/// A downstream connection as the pipeline hands it to the engine.
pub(crate) struct Start {
    /// Where it was going.
    pub dst: OrigDst,
    /// The peer proxy's identity (inbound over mTLS).
    pub peer: Option<SpiffeId>,
    /// The terminated mTLS session, if any.
    pub tls: Option<Box<rustls::Connection>>,
    /// What detection read.
    pub prefix: Vec<u8>,
    pub wire: Wire,
}

/// One downstream connection's facts, for each of its requests (HTTP/2 streams run as tasks
/// of their own, so this is shared, not borrowed).
struct Exchange {
    ctx: Rc<WorkerCtx>,
    w: Arc<Workload>,
    dir: Direction,
    dst: OrigDst,
    peer: Option<SpiffeId>,
    wire: Wire,
    /// The downstream's address, for the access log.
    client: Option<std::net::SocketAddr>,
    /// HTTP/1: the request the connection's `Watch` found to refuse, and the number of the
    /// next request the engine hands on (they come one at a time, in order).
    refused: Refused,
    next_h1: std::cell::Cell<u64>,
    /// HTTP/1: a request hyper took to ask for an upgrade (it then ends the connection
    /// without closing it), and the upstream half once an upstream said `101`.
    asked_upgrade: std::cell::Cell<bool>,
    switched: std::cell::RefCell<Option<upgrade::Switched>>,
}

/// Runs hyper's HTTP/2 tasks (one per stream, one per upstream connection) on the worker.
#[derive(Clone, Copy)]
pub(crate) struct Local;

impl<F> hyper::rt::Executor<F> for Local
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        monoio::spawn(fut);
    }
}

/// A server connection of either version, as `serve` drives it.
trait Served: std::future::Future<Output = hyper::Result<()>> {
    /// Finish the exchanges in flight and take no more (`Connection: close`, or `GOAWAY`).
    fn shut(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Served for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Served for hyper::server::conn::http2::Connection<I, S, Local>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Local: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shut(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves HTTP on `down` until the client closes, the connection idles out or the drain ends
/// it.
pub(crate) async fn serve(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    dir: Direction,
    down: &TcpStream,
    start: Start,
) -> Stop {
    // The workload as an owned handle, for response bodies that outlive this borrow; a node
    // workload replaced meanwhile is served as the connection began.
    let Some(owned) = ctx
        .shared
        .workload(w.index)
        .filter(|a| std::ptr::eq(&**a, w))
    else {
        crate::copy::reset(down);
        return Stop::plain(Outcome::Drained);
    };
    let snap = ctx.shared.config.load();
    // The limits alone: the policy (route groups and all) is not copied per connection.
    let (max_headers, max_header_bytes, max_streams) = {
        let h = &snap.config.live.http;
        (h.max_headers, h.max_header_bytes, h.max_concurrent_streams)
    };
    let idle = ctx.idle.register(snap.config.live.timeouts.idle);
    drop(snap);
    let mut io = HttpIo::new(down, start.tls, start.prefix, Some(idle.toucher()));
    let refused = Refused::default();
    if start.wire == Wire::H1 {
        let framing = ringmesh_core::http::framing::Framing::new(h1_buf(max_header_bytes));
        io = io.watched(Watch::new(framing, refused.clone()));
    }
    let cx = Rc::new(Exchange {
        ctx: ctx.clone(),
        w: owned,
        dir,
        dst: start.dst,
        peer: start.peer,
        wire: start.wire,
        client: down.peer_addr().ok(),
        refused,
        next_h1: std::cell::Cell::new(0),
        asked_upgrade: std::cell::Cell::new(false),
        switched: std::cell::RefCell::new(None),
    });
    let exchange = cx.clone();
    let service = hyper::service::service_fn(move |req| handle(cx.clone(), req));
    match start.wire {
        Wire::H1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .max_headers(max_headers)
                .max_buf_size(h1_buf(max_header_bytes))
                .keep_alive(true)
                .writev(true);
            let mut conn = builder.serve_connection(io, service);
            let stop = drive(ctx, w, down, &idle, std::pin::Pin::new(&mut conn)).await;
            let switched = exchange.switched.borrow_mut().take();
            if stop.outcome != Outcome::Ok || !exchange.asked_upgrade.get() {
                return stop;
            }
            // hyper ends a connection that saw an upgrade without closing it: the socket is
            // taken back, for the tunnel after a `101`, or to close it.
            let parts = conn.into_parts();
            let mut io = parts.io;
            match switched {
                Some(up) => upgrade::tunnel(ctx, w, &idle, io, parts.read_buf, up).await,
                None => {
                    let _ = std::future::poll_fn(|c| io.poll_close(c)).await;
                    stop
                }
            }
        }
        Wire::H2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(Local);
            builder
                .max_concurrent_streams(max_streams)
                .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
                // h2's defences against reset floods (CVE-2023-44487 and the like), explicit.
                .max_pending_accept_reset_streams(H2_PENDING_RESETS)
                .max_local_error_reset_streams(H2_LOCAL_RESETS);
            let conn = std::pin::pin!(builder.serve_connection(io, service));
            drive(ctx, w, down, &idle, conn).await
        }
    }
}

/// hyper's HTTP/1 read buffer, which bounds a request head: the configured header bytes, and
/// never less than hyper's minimum.
fn h1_buf(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192)
}

/// Streams a client may open and reset before the server accepts them.
const H2_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before it closes the connection.
const H2_LOCAL_RESETS: usize = 1024;

async fn drive<C: Served + ?Sized>(
    ctx: &WorkerCtx,
    w: &Workload,
    down: &TcpStream,
    idle: &crate::idle::IdleHandle<'_>,
    mut conn: std::pin::Pin<&mut C>,
) -> Stop {
    let mut draining = false;
    loop {
        monoio::select! {
            biased;
            r = conn.as_mut() => return match r {
                Ok(()) => Stop::plain(Outcome::Ok),
                Err(e) => served_error(e),
            },
            _ = idle.expired() => return Stop::plain(Outcome::IdleTimeout),
            _ = ctx.closing_for(w.index) => {
                crate::copy::reset(down);
                return Stop::plain(Outcome::Drained);
            }
            _ = ctx.draining.wait(), if !draining => {
                draining = true;
                conn.as_mut().shut();
            }
        }
    }
}

/// How a hyper server connection failed, as a connection outcome.
fn served_error(e: hyper::Error) -> Stop {
    // A client that went away between requests, or mid-request: the client's doing.
    let side = Side::Downstream;
    if e.is_parse() || e.is_parse_too_large() {
        return Stop::new(Outcome::BadRequest, side, Cause::Http(e.to_string()));
    }
    Stop::io(side, std::io::Error::other(e.to_string()))
}

async fn handle(
    cx: Rc<Exchange>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let cx = &*cx;
    let start = Instant::now();
    let ctx = &cx.ctx;
    let snap = ctx.shared.config.load();
    let live = &snap.config.live;
    let shard = ctx.shard(&cx.w);
    let method = MethodClass::of(req.method().as_str());
    let mut labels = RequestLabels {
        dir: cx.dir,
        service: "".into(),
        route: "".into(),
        method,
    };
    // A gRPC client gets the proxy's own answers as gRPC statuses.
    let grpc = cx.wire == Wire::H2
        && ringmesh_core::http::is_grpc(
            req.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
    // Its trace context, and what its log line and span will say.
    let span = trail::span_for(req.headers(), &live.http.tracing);
    let mut trail = new_trail(cx, live, &req, span);

    if cx.wire == Wire::H1
        && (req.headers().contains_key(header::UPGRADE) || req.method() == hyper::Method::CONNECT)
    {
        cx.asked_upgrade.set(true);
    }

    // 1. Check.
    let checked = match refused_h1(cx) {
        Some(reason) => Err((StatusCode::BAD_REQUEST, reason)),
        None => check(&req),
    };
    let target = match checked {
        Ok(t) => t,
        Err(failed) => {
            shard.http.request(&labels);
            return Ok(local(cx, &labels, start, failed, (true, grpc), trail));
        }
    };

    // 2. Route.
    let plan = match route(cx, live, &req, &target) {
        Ok(p) => p,
        Err((status, reason, service, route)) => {
            labels.service = service;
            labels.route = route;
            shard.http.request(&labels);
            if status == StatusCode::FORBIDDEN {
                shard.http.denied();
            }
            return Ok(local(
                cx,
                &labels,
                start,
                (status, reason),
                (false, grpc),
                trail,
            ));
        }
    };
    labels.service = plan.service.clone();
    labels.route = plan.route.clone();
    shard.http.request(&labels);
    if let Some(t) = trail.as_mut() {
        t.upstream = Some(plan.target);
    }

    // 3. Forward (an upgrade on a connection of its own).
    let upgrade = match cx.wire {
        Wire::H1 => upgrade::asked(&req),
        Wire::H2 => None,
    };
    let up_wire = upstream_wire(cx, live, &plan, &req, upgrade.is_some());
    let mut req = outgoing(req, &target, up_wire);
    let h = req.headers_mut();
    match (cx.wire, up_wire) {
        (Wire::H1, Wire::H2) => {
            h.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        }
        _ => {
            h.remove(ORIG_PROTO);
        }
    }
    trail::propagate(h, &span);
    let result = match upgrade {
        Some(protocol) => upgrade::forward(cx, live, &plan, req, protocol)
            .await
            .map(|resp| (resp, None)),
        None => forward(cx, live, &plan, req, up_wire).await,
    };
    drop(snap);
    match result {
        Ok((resp, back)) => {
            shard
                .http
                .first_byte(cx.dir, &labels.service, start.elapsed());
            Ok(body::record(
                body::Recorded {
                    ctx: cx.ctx.clone(),
                    w: cx.w.clone(),
                    labels,
                    start,
                    trail,
                    back,
                },
                resp,
            ))
        }
        Err(failed) => Ok(local(cx, &labels, start, failed, (false, grpc), trail)),
    }
}

/// A request's trail, when the access log is on or its span is exported.
fn new_trail(
    cx: &Exchange,
    live: &LiveConfig,
    req: &Request<Incoming>,
    span: ringmesh_core::http::trace::SpanContext,
) -> Option<Box<Trail>> {
    let http = &live.http;
    let export = span.sampled && http.tracing.otlp.is_some();
    let log = http
        .access_log
        .enabled
        .then(|| (http.access_log.format, http.access_log.path.clone()));
    if log.is_none() && !export {
        return None;
    }
    let h = req.headers();
    let text = |name: header::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    Some(Box::new(Trail {
        time: std::time::SystemTime::now(),
        direction: cx.dir,
        workload: cx.w.key.to_string(),
        client: cx.client,
        peer: cx.peer.as_ref().map(ToString::to_string),
        method: req.method().as_str().to_owned(),
        authority: req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| text(header::HOST)),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        protocol: match req.version() {
            // As the app sent it and gets it.
            hyper::Version::HTTP_2 if carried_h1(cx, req) => "HTTP/1.1",
            hyper::Version::HTTP_2 => "HTTP/2.0",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        user_agent: text(header::USER_AGENT),
        upstream: None,
        span,
        log,
        export,
    }))
}

/// The request target as policy sees it and as it is forwarded.
struct Target {
    /// Normalized path and the query as sent (`*` for `OPTIONS *`).
    path_and_query: String,
    path_len: usize,
}

impl Target {
    fn path(&self) -> &str {
        &self.path_and_query[..self.path_len]
    }
}

/// The HTTP a request goes upstream in: the downstream's, but for the two ends of
/// `http.h2_between_proxies`: an HTTP/1.1 request (not an upgrade) to a meshed endpoint goes
/// as HTTP/2, and one that came that way from a peer proxy (mTLS, marked with
/// [`ORIG_PROTO`]) goes to the app as HTTP/1.1 again.
fn upstream_wire(
    cx: &Exchange,
    live: &LiveConfig,
    plan: &Plan,
    req: &Request<Incoming>,
    upgrade: bool,
) -> Wire {
    match (cx.wire, cx.dir) {
        (Wire::H1, Direction::Outbound)
            if live.http.h2_between_proxies && plan.identity.is_some() && !upgrade =>
        {
            Wire::H2
        }
        _ if carried_h1(cx, req) => Wire::H1,
        (wire, _) => wire,
    }
}

/// Whether an inbound HTTP/2 request is an HTTP/1.1 one a peer proxy carried
/// (`h2_between_proxies`): marked with [`ORIG_PROTO`], and over mTLS.
fn carried_h1(cx: &Exchange, req: &Request<Incoming>) -> bool {
    cx.wire == Wire::H2
        && cx.dir == Direction::Inbound
        && cx.peer.is_some()
        && req
            .headers()
            .get(ORIG_PROTO)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"HTTP/1.1"))
}

/// Whether the `Watch` refused this HTTP/1 request (the engine no longer shows what it
/// forgave).
fn refused_h1(cx: &Exchange) -> Option<&'static str> {
    if cx.wire != Wire::H1 {
        return None;
    }
    let n = cx.next_h1.get();
    cx.next_h1.set(n + 1);
    match cx.refused.get() {
        Some((at, why)) if at == n => Some(why.reason()),
        _ => None,
    }
}

fn check(req: &Request<Incoming>) -> Result<Target, Failed> {
    let h = req.headers();
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err((StatusCode::BAD_REQUEST, "more than one Content-Length"));
    }
    // A proxy tunnel inside the app's traffic is not carried: its connections are already
    // intercepted on their way to where they were sent.
    if req.method() == hyper::Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported"));
    }
    let raw = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if raw == "*" && req.method() == hyper::Method::OPTIONS {
        return Ok(Target {
            path_and_query: "*".into(),
            path_len: 1,
        });
    }
    let (path, query) = normalize_path(raw).map_err(|e| {
        let reason = match e {
            ringmesh_core::http::PathError::NotAbsolute => "the request target is not a path",
            ringmesh_core::http::PathError::BadPercent => "bad percent-encoding in the path",
            ringmesh_core::http::PathError::EncodedSeparator => {
                "an encoded '/', '\\' or NUL in the path"
            }
            ringmesh_core::http::PathError::AboveRoot => "the path climbs above the root",
        };
        (StatusCode::BAD_REQUEST, reason)
    })?;
    let path_len = path.len();
    Ok(Target {
        path_and_query: path + query,
        path_len,
    })
}

/// Where one request goes.
struct Plan {
    target: std::net::SocketAddr,
    identity: Option<SpiffeId>,
    service: Box<str>,
    route: Box<str>,
}

type Refusal = (StatusCode, &'static str, Box<str>, Box<str>);

struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn any(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(f)
    }
}

fn route(
    cx: &Exchange,
    live: &LiveConfig,
    req: &Request<Incoming>,
    target: &Target,
) -> Result<Plan, Refusal> {
    match cx.dir {
        Direction::Inbound => {
            let service = live
                .service_of_endpoint(cx.dst.addr())
                .map(|s| s.name.as_str());
            let headers = HeaderView(req.headers());
            let view = RequestView {
                method: req.method().as_str(),
                path: target.path(),
                headers: &headers,
            };
            let policy = decide::policy_for(live, &cx.w.key);
            let (decision, route) = policy.access.decide_request(
                &live.http,
                Destination {
                    service,
                    port: cx.dst.addr().port(),
                },
                cx.peer.as_ref(),
                &view,
            );
            let service: Box<str> = service.unwrap_or("").into();
            let route: Box<str> = route.map(|r| r.to_string()).unwrap_or_default().into();
            if !decision.allowed() {
                return Err((StatusCode::FORBIDDEN, "access denied", service, route));
            }
            Ok(Plan {
                target: pipeline::loopback(cx.dst),
                identity: None,
                service,
                route,
            })
        }
        Direction::Outbound => {
            let ctx = &cx.ctx;
            let snap_gen = ctx.shared.config.load().generation;
            let shared_own = ctx.shared.own.load();
            let own = cx.w.own.as_ref().unwrap_or(&shared_own);
            let plan = decide::outbound_plan(live, own, cx.dst, |i| ctx.next_turn(snap_gen, i))
                .map_err(|outcome| {
                    let reason = match outcome {
                        Outcome::RedirectLoop => "redirect loop",
                        _ => "egress denied",
                    };
                    (StatusCode::FORBIDDEN, reason, "".into(), "".into())
                })?;
            ctx.shard(&cx.w).route(plan.route);
            Ok(Plan {
                target: plan.target,
                identity: plan.identity.cloned(),
                service: plan.service.unwrap_or("").into(),
                route: "".into(),
            })
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), which end at this proxy.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "proxy-authenticate",
];

/// The request as it goes upstream: the normalized target, the hop-by-hop headers gone
/// (with those `Connection` names), `TE: trailers` kept (gRPC needs it). HTTP/1 carries the
/// path alone (the `Host` header names the authority); HTTP/2 the scheme and authority too,
/// as its pseudo-headers must.
fn outgoing(mut req: Request<Incoming>, target: &Target, wire: Wire) -> Request<Incoming> {
    let uri = match wire {
        Wire::H1 => {
            // From HTTP/2 (a peer's `h2_between_proxies`), the authority was `:authority`.
            if !req.headers().contains_key(header::HOST)
                && let Some(a) = req.uri().authority()
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            target.path_and_query.parse::<hyper::Uri>().ok()
        }
        Wire::H2 => {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                });
            let path = if target.path_and_query == "*" {
                "/"
            } else {
                &target.path_and_query
            };
            hyper::Uri::builder()
                .scheme("http")
                .authority(authority.as_deref().unwrap_or("localhost"))
                .path_and_query(path)
                .build()
                .ok()
        }
    };
    if let Some(uri) = uri {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = match wire {
        Wire::H1 => hyper::Version::HTTP_11,
        Wire::H2 => hyper::Version::HTTP_2,
    };
    strip_hop_by_hop(req.headers_mut());
    req
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

type Failed = (StatusCode, &'static str);

async fn forward(
    cx: &Exchange,
    live: &LiveConfig,
    plan: &Plan,
    req: Request<Incoming>,
    wire: Wire,
) -> Result<(Response<Incoming>, Option<body::Return>), Failed> {
    let ctx = &cx.ctx;
    let key = PoolKey {
        workload: cx.w.index,
        target: plan.target,
        identity: plan.identity.clone(),
        wire,
    };
    let http = &live.http;
    let shard = ctx.shard(&cx.w);
    let mut req = req;
    // A pooled connection the server has closed meanwhile gives the request back unsent:
    // then once more on a new one.
    let mut pooled = ctx.http_pool.take(&key, http.pool_idle_timeout);
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(s) => s,
            None => {
                let new = connect(cx, live, plan, wire).await?;
                // An HTTP/2 connection is shared from the start: requests that come while
                // this one is in flight multiplex on it.
                if let Sender::H2(s) = &new {
                    ctx.http_pool
                        .put(key.clone(), Sender::H2(s.clone()), http.pool_max_idle);
                }
                new
            }
        };
        shard.http.pool(reused);
        let result = monoio::time::timeout(http.response_timeout, sender.send(req)).await;
        match result {
            Err(_) => return Err((StatusCode::GATEWAY_TIMEOUT, "response timeout")),
            Ok(Ok(mut resp)) => {
                // An HTTP/1 connection goes back once the response has ended (the body
                // records it), unless its server said `close`; an HTTP/2 one never left (its
                // `GOAWAY` closes it there).
                let back = (matches!(sender, Sender::H1(_)) && !connection_close(resp.headers()))
                    .then(|| body::Return {
                        key,
                        sender,
                        max: http.pool_max_idle,
                    });
                strip_hop_by_hop(resp.headers_mut());
                return Ok((resp, back));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if reused => req = back,
                _ => {
                    let err = e.into_error();
                    tracing::debug!(worker = ctx.id, upstream = %plan.target, error = %err, "upstream exchange failed");
                    return Err((StatusCode::BAD_GATEWAY, "upstream reset"));
                }
            },
        }
    }
}

fn connection_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// An upstream socket for requests: dialed, with mTLS to a meshed endpoint.
type UpIo = HttpIo<'static, Rc<TcpStream>>;

/// Dials `plan`'s endpoint, with mTLS when it is meshed; failures as the answer they give.
async fn open(cx: &Exchange, live: &LiveConfig, plan: &Plan) -> Result<UpIo, Failed> {
    let ctx = &cx.ctx;
    let w = &*cx.w;
    let failed = |stop: &Stop| -> Failed {
        match stop.outcome {
            Outcome::ConnectTimeout => (StatusCode::GATEWAY_TIMEOUT, "connect timeout"),
            Outcome::NoIdentity => (StatusCode::SERVICE_UNAVAILABLE, "no identity"),
            Outcome::IdentityMismatch | Outcome::TlsError => {
                (StatusCode::BAD_GATEWAY, "upstream TLS handshake failed")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable"),
        }
    };
    let stream = pipeline::dial(ctx, w, live, plan.target)
        .await
        .map_err(|s| log_failed(ctx, plan, &s, failed(&s)))?;
    let tls = match &plan.identity {
        Some(want) => {
            let mut log = Conn::new(Direction::Outbound, w);
            let link =
                pipeline::mtls_client(ctx, w, &stream, want, live.timeouts.handshake, &mut log)
                    .await
                    .map_err(|s| log_failed(ctx, plan, &s, failed(&s)))?;
            Some(Box::new(link.conn))
        }
        None => None,
    };
    Ok(HttpIo::new(Rc::new(stream), tls, Vec::new(), None))
}

/// An upstream's HTTP handshake failed: it reset.
fn handshake_failed(ctx: &WorkerCtx, plan: &Plan, e: &hyper::Error) -> Failed {
    tracing::debug!(worker = ctx.id, upstream = %plan.target, error = %e, "upstream HTTP handshake failed");
    (StatusCode::BAD_GATEWAY, "upstream reset")
}

/// A new upstream connection: `open`, then the HTTP handshake of `wire`, its connection task
/// spawned on the worker.
async fn connect(
    cx: &Exchange,
    live: &LiveConfig,
    plan: &Plan,
    wire: Wire,
) -> Result<Sender, Failed> {
    let ctx = &cx.ctx;
    let io = open(cx, live, plan).await?;
    let reset = |e: hyper::Error| handshake_failed(ctx, plan, &e);
    match wire {
        Wire::H1 => {
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .writev(true)
                .max_headers(live.http.max_headers)
                .handshake(io)
                .await
                .map_err(reset)?;
            monoio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
        Wire::H2 => {
            let (sender, conn) = hyper::client::conn::http2::Builder::new(Local)
                .max_header_list_size(u32::try_from(live.http.max_header_bytes).unwrap_or(u32::MAX))
                .max_pending_accept_reset_streams(H2_PENDING_RESETS)
                .max_local_error_reset_streams(H2_LOCAL_RESETS)
                .handshake(io)
                .await
                .map_err(reset)?;
            monoio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        }
    }
}

fn log_failed(ctx: &WorkerCtx, plan: &Plan, stop: &Stop, f: Failed) -> Failed {
    tracing::debug!(worker = ctx.id, upstream = %plan.target, outcome = %stop.outcome, error = %stop.cause, "upstream connection for a request failed");
    f
}

/// A response the proxy makes itself, counted like any other: `status` with a short body, or,
/// to a gRPC request, a trailers-only gRPC error (HTTP 200, `grpc-status` mapped from
/// `status`, the reason as `grpc-message`), which gRPC clients read as the call's status.
/// `close`: the connection ends after it (HTTP/1).
fn local(
    cx: &Exchange,
    labels: &RequestLabels,
    start: Instant,
    (status, reason): Failed,
    (close, grpc): (bool, bool),
    trail: Option<Box<Trail>>,
) -> Response<ProxyBody> {
    let shard = cx.ctx.shard(&cx.w);
    let took = start.elapsed();
    let grpc_status = grpc.then(|| ringmesh_core::http::grpc_status_for(status.as_u16()));
    let code = if grpc { StatusCode::OK } else { status };
    shard.http.first_byte(cx.dir, &labels.service, took);
    shard.http.response(
        labels,
        ResponseLabels {
            status: code.as_u16(),
            class: ringmesh_core::http::Classification::of(code.as_u16(), grpc_status),
            grpc: grpc_status,
            by_proxy: true,
        },
        took,
    );
    let body = if grpc {
        String::new()
    } else {
        format!("{} {reason}\n", status.as_u16())
    };
    if let Some(t) = trail {
        t.finish(
            &cx.ctx.shared,
            trail::End {
                labels,
                status: code.as_u16(),
                grpc: grpc_status,
                bytes: body.len() as u64,
                cut: false,
                proxy_error: Some(reason),
            },
        );
    }
    let mut resp = Response::new(if body.is_empty() {
        ProxyBody::Local(None)
    } else {
        ProxyBody::local(Bytes::from(body))
    });
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(PROXY_ERROR, HeaderValue::from_static(reason));
    match grpc_status {
        Some(g) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(g));
            h.insert("grpc-message", HeaderValue::from_static(reason));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
