//! HTTP/1.1 upgrades (WebSocket and the like), on the first request of a connection or any
//! later one: the request is checked and routed like any other, then goes upstream on a
//! connection of its own with its `Upgrade` and `Connection: upgrade` kept. A `101` back
//! makes both connections a tunnel: hyper's client hands back the upstream socket (and what
//! the upstream sent after the `101`), hyper's server writes the `101` downstream and ends,
//! and `serve` takes the downstream socket back (`into_parts`) for `tunnel`. Any other answer
//! is an ordinary response, and the downstream connection goes on.
//!
//! `Upgrade: h2c` is not carried: the request goes on as HTTP/1.1 without it (its headers
//! are hop-by-hop), so its requests stay visible to policy, as Envoy does by default.

use std::future::poll_fn;
use std::io;
use std::ops::Deref;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use monoio::net::TcpStream;
use ringmesh_core::config::LiveConfig;
use ringmesh_core::metrics::{Outcome, Side};

use super::{Exchange, Failed, HttpIo, Plan, UpIo};
use crate::ctx::WorkerCtx;
use crate::error::Stop;
use crate::idle::IdleHandle;
use crate::workload::Workload;

/// The upstream half of a tunnel, once the upstream said `101`.
pub(super) struct Switched {
    io: UpIo,
    /// What the upstream sent after its `101`, read by hyper with it.
    early: Bytes,
}

/// What the request asks to switch to: its `Upgrade` value when `Connection` names
/// `upgrade` too (RFC 9110 §7.8), on HTTP/1.1, and not `h2c`.
pub(super) fn asked(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != hyper::Version::HTTP_11 {
        return None;
    }
    let h = req.headers();
    let named = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let value = h.get(header::UPGRADE)?;
    let h2c = value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (named && !h2c).then(|| value.clone())
}

/// Puts back the two headers an upgrade needs, which `strip_hop_by_hop` removed.
fn keep(h: &mut HeaderMap, protocol: HeaderValue) {
    h.insert(header::UPGRADE, protocol);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Sends an upgrade request (already `outgoing`) on a new upstream connection; a `101` back
/// leaves the upstream half in `cx.switched` for `serve`.
pub(super) async fn forward(
    cx: &Exchange,
    live: &LiveConfig,
    plan: &Plan,
    mut req: Request<Incoming>,
    protocol: HeaderValue,
) -> Result<Response<Incoming>, Failed> {
    let ctx = &cx.ctx;
    let io = super::open(cx, live, plan).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_headers(live.http.max_headers)
        .handshake(io)
        .await
        .map_err(|e| super::handshake_failed(ctx, plan, &e))?;
    // Runs the exchange; after a `101` it ends without closing, and hands the socket back.
    let conn = monoio::spawn(conn.without_shutdown());
    ctx.shard(&cx.w).http.pool(false);
    keep(req.headers_mut(), protocol.clone());
    let reset = |e: hyper::Error| {
        tracing::debug!(worker = ctx.id, upstream = %plan.target, error = %e, "upstream upgrade failed");
        (StatusCode::BAD_GATEWAY, "upstream reset")
    };
    let timeout = live.http.response_timeout;
    let mut resp = match monoio::time::timeout(timeout, sender.send_request(req)).await {
        Err(_) => return Err((StatusCode::GATEWAY_TIMEOUT, "response timeout")),
        Ok(r) => r.map_err(reset)?,
    };
    // One exchange on this connection: without a `101`, it closes after the response.
    drop(sender);
    let upgrade = resp.headers().get(header::UPGRADE).cloned();
    super::strip_hop_by_hop(resp.headers_mut());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp);
    }
    let parts = match monoio::time::timeout(timeout, conn).await {
        Err(_) => return Err((StatusCode::GATEWAY_TIMEOUT, "response timeout")),
        Ok(r) => r.map_err(reset)?,
    };
    keep(resp.headers_mut(), upgrade.unwrap_or(protocol));
    *cx.switched.borrow_mut() = Some(Switched {
        io: parts.io,
        early: parts.read_buf,
    });
    Ok(resp)
}

/// One direction of a tunnel.
struct Half {
    buf: Box<[u8]>,
    at: usize,
    len: usize,
    eof: bool,
}

/// Bytes one read of a tunnel takes.
const CHUNK: usize = 16 * 1024;

impl Half {
    /// Starts with `early`: what the other engine had read past the upgrade.
    fn new(early: &[u8]) -> Self {
        let mut buf = vec![0; CHUNK.max(early.len())].into_boxed_slice();
        buf[..early.len()].copy_from_slice(early);
        Self {
            buf,
            at: 0,
            len: early.len(),
            eof: false,
        }
    }

    /// Copies `src` to `dst` until `src` ends, then ends `dst`'s write side. The error comes
    /// with the side that failed: `sides` is (`src`'s, `dst`'s).
    fn poll<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut HttpIo<'_, A>,
        dst: &mut HttpIo<'_, B>,
        sides: (Side, Side),
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        A: Deref<Target = TcpStream> + Clone,
        B: Deref<Target = TcpStream> + Clone,
    {
        loop {
            if self.at < self.len {
                let n = ready!(dst.poll_write_slice(cx, &self.buf[self.at..self.len]))
                    .map_err(|e| (sides.1, e))?;
                if n == 0 {
                    return Poll::Ready(Err((sides.1, io::ErrorKind::WriteZero.into())));
                }
                self.at += n;
                continue;
            }
            // Whatever TLS still holds goes out before waiting on the other side.
            ready!(dst.poll_flush_all(cx)).map_err(|e| (sides.1, e))?;
            if self.eof {
                return dst.poll_close(cx).map_err(|e| (sides.1, e));
            }
            let n = ready!(src.poll_read_slice(cx, &mut self.buf[..CHUNK]))
                .map_err(|e| (sides.0, e))?;
            (self.at, self.len) = (0, n);
            self.eof = n == 0;
        }
    }
}

/// Carries bytes both ways between the downstream (`down`, and what its engine read past
/// the upgrade request) and the switched upstream, each direction ending on its own, until
/// both have ended, the connection idles out or its workload goes away.
pub(super) async fn tunnel<S>(
    ctx: &WorkerCtx,
    w: &Workload,
    idle: &IdleHandle<'_>,
    mut down: HttpIo<'_, S>,
    down_early: Bytes,
    up: Switched,
) -> Stop
where
    S: Deref<Target = TcpStream> + Clone,
{
    let Switched { io: mut up, early } = up;
    let (mut to_up, mut to_down) = (Half::new(&down_early), Half::new(&early));
    let (mut up_done, mut down_done) = (false, false);
    let copy = poll_fn(|cx| {
        if !up_done {
            match to_up.poll(cx, &mut down, &mut up, (Side::Downstream, Side::Upstream)) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !down_done {
            match to_down.poll(cx, &mut up, &mut down, (Side::Upstream, Side::Downstream)) {
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    enum End {
        Copied(Result<(), (Side, io::Error)>),
        Idle,
        Closing,
    }
    let end = monoio::select! {
        biased;
        r = copy => End::Copied(r),
        _ = idle.expired() => End::Idle,
        _ = ctx.closing_for(w.index) => End::Closing,
    };
    match end {
        End::Copied(Ok(())) => Stop::plain(Outcome::Ok),
        End::Copied(Err((side, e))) => Stop::io(side, e),
        End::Idle => Stop::plain(Outcome::IdleTimeout),
        End::Closing => {
            crate::copy::reset(down.socket());
            crate::copy::reset(up.socket());
            Stop::plain(Outcome::Drained)
        }
    }
}
