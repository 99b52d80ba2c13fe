//! The steps a connection goes through, one function each. `outbound` and `inbound` chain
//! them, in order, so one connection can be read top to bottom in one file; the decisions
//! between the steps are `ringmesh_core::decide`'s.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_core::config::LiveConfig;
use ringmesh_core::metrics::{CopyKind, Direction, HandshakeResult, Outcome, Security, Side};
use ringmesh_core::{ClientAddr, OrigDst, SpiffeId};

use crate::connect::{self, ConnectError};
use crate::copy;
use crate::ctx::{ConnRecord, WorkerCtx};
use crate::duplex::{CopyCx, CopyEnd};
use crate::error::{Cause, Stop};
use crate::idle::IdleHandle;
use crate::orig_dst::ConnInfo;
use crate::ring_copy::{self, RingEnd};
use crate::sys::fd_ref;
use crate::tls::{self, HandshakeError, TlsIdentity, TlsOn};
use crate::workload::Workload;

/// A connected upstream and how to copy to it.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub copy: CopyKind,
    pub idle: Duration,
    /// The mTLS session, when one side is another proxy. Boxed: most connections have none.
    pub tls: Option<Box<TlsLink>>,
}

/// A finished handshake and which socket it runs on.
pub(crate) struct TlsLink {
    pub conn: rustls::Connection,
    pub on: TlsOn,
}

/// What is logged about one connection beyond its sockets. Kept small: it lives as long as
/// the connection (the client's address is read from the socket when a line is written).
pub(crate) struct Conn<'w> {
    pub dir: Direction,
    pub workload: &'w Workload,
    pub dst: Option<OrigDst>,
    pub upstream: Option<SocketAddr>,
    /// The peer proxy's SPIFFE ID, once its handshake is done.
    pub peer: Option<Box<SpiffeId>>,
}

impl<'w> Conn<'w> {
    pub fn new(dir: Direction, workload: &'w Workload) -> Self {
        Self {
            dir,
            workload,
            dst: None,
            upstream: None,
            peer: None,
        }
    }

    /// Records the end of the connection: counted always, logged (at most one line) for a
    /// failure, within the worker's per-reason rate.
    pub fn end(&self, ctx: &WorkerCtx, record: ConnRecord<'_>, stop: Stop, down: &TcpStream) {
        let outcome = stop.outcome;
        if outcome.is_failure() {
            if let Some(suppressed) = ctx.log.admit(outcome, ctx.stats()) {
                self.log_failure(ctx, &stop, down, suppressed);
            }
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                worker = ctx.id, workload = %self.workload.key, direction = %self.dir,
                outcome = %outcome, client = %client(down), orig_dst = %opt(&self.dst),
                upstream = %opt(&self.upstream), peer_id = %opt(&self.peer),
                duration_ms = record.elapsed().as_millis() as u64, "connection closed"
            );
        }
        record.finish(outcome);
    }

    fn log_failure(&self, ctx: &WorkerCtx, stop: &Stop, down: &TcpStream, suppressed: u64) {
        tracing::warn!(
            worker = ctx.id, workload = %self.workload.key, direction = %self.dir,
            side = %stop.side, outcome = %stop.outcome, client = %client(down),
            orig_dst = %opt(&self.dst), upstream = %opt(&self.upstream),
            peer_id = %opt(&self.peer), error = %stop.cause,
            suppressed_since_last = suppressed, "connection failed"
        );
    }
}

fn client(down: &TcpStream) -> String {
    down.peer_addr()
        .map(|a| ClientAddr::new(a).to_string())
        .unwrap_or_default()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The accepted socket: non-blocking for our own syscalls. TCP_NODELAY and the keepalive
/// options come with it from the listener.
pub(crate) fn prepare(down: &TcpStream) -> Result<(), Stop> {
    crate::sys::set_nonblocking_accepted(fd_ref(down)).map_err(|e| Stop::io(Side::Internal, e))
}

/// Recovers the original destination, and refuses one that is the proxy itself.
pub(crate) fn original_dst(
    ctx: &WorkerCtx,
    w: &Workload,
    down: &TcpStream,
) -> Result<OrigDst, Stop> {
    let info = ConnInfo {
        fd: down.as_raw_fd(),
    };
    let dst = ctx.orig_dst.original_dst(&info).map_err(|e| {
        Stop::new(
            Outcome::NoOriginalDst,
            Side::Downstream,
            Cause::NoOriginalDst(e),
        )
    })?;
    if w.is_own(&ctx.shared, dst) {
        return Err(Stop::new(
            Outcome::RedirectLoop,
            Side::Downstream,
            Cause::RedirectLoop(dst),
        ));
    }
    Ok(dst)
}

/// Connects to the upstream with the bypass mark and keepalive, under the connect timeout;
/// for a node workload, from a socket made in its network namespace.
pub(crate) async fn dial(
    ctx: &WorkerCtx,
    w: &Workload,
    live: &LiveConfig,
    target: SocketAddr,
) -> Result<TcpStream, Stop> {
    let mark = ctx.shared.boot.bypass_mark;
    let netns = match (&w.netns, &ctx.home_netns) {
        (Some(n), Some(home)) => Some((&*n.file, home)),
        _ => None,
    };
    connect::connect(target, mark, &live.tcp, live.timeouts.connect, netns)
        .await
        .map_err(|e| match e {
            ConnectError::Timeout(d) => Stop::new(
                Outcome::ConnectTimeout,
                Side::Upstream,
                Cause::ConnectTimeout(d),
            ),
            ConnectError::Remote(e) => Stop::io(Side::Upstream, e),
            ConnectError::Local(e) => Stop::io(Side::Internal, e),
        })
}

/// The workload's identity, or the fail-closed refusal when it holds no valid SVID.
fn identity_of(workload: &Workload) -> Result<Arc<TlsIdentity>, Stop> {
    workload
        .identity
        .load_full()
        .ok_or_else(|| Stop::new(Outcome::NoIdentity, Side::Internal, Cause::NoIdentity))
}

fn handshake_failed(
    ctx: &WorkerCtx,
    w: &Workload,
    dir: Direction,
    side: Side,
    e: HandshakeError,
) -> Stop {
    ctx.shard(w)
        .handshake(dir, HandshakeResult::Failed, Duration::ZERO);
    Stop::new(e.outcome(), side, Cause::Handshake(e))
}

/// Outbound mTLS to another proxy, which must prove it is `want`: checked inside the
/// handshake, so a wrong identity never completes one.
pub(crate) async fn mtls_client(
    ctx: &WorkerCtx,
    w: &Workload,
    up: &TcpStream,
    want: &SpiffeId,
    timeout: Duration,
    conn_log: &mut Conn<'_>,
) -> Result<Box<TlsLink>, Stop> {
    let identity = identity_of(w)?;
    let mut conn = ctx.tls.connect(w.index, &identity, want).map_err(|e| {
        Stop::new(
            Outcome::InternalError,
            Side::Internal,
            Cause::Handshake(e.into()),
        )
    })?;
    drop(identity);
    match tls::handshake(&mut conn, up, timeout).await {
        Ok(took) => ctx
            .shard(w)
            .handshake(Direction::Outbound, HandshakeResult::Ok, took),
        Err(e) => {
            copy::reset(up);
            return Err(handshake_failed(
                ctx,
                w,
                Direction::Outbound,
                Side::Upstream,
                e,
            ));
        }
    }
    conn_log.peer = Some(Box::new(want.clone()));
    ctx.shard(w).security(Direction::Outbound, Security::Mtls);
    Ok(Box::new(TlsLink {
        conn,
        on: TlsOn::Upstream,
    }))
}

/// Inbound mTLS from another proxy, starting from the bytes detection already read;
/// returns the session and the peer's SPIFFE ID.
pub(crate) async fn mtls_server(
    ctx: &WorkerCtx,
    w: &Workload,
    down: &TcpStream,
    prefix: &[u8],
    timeout: Duration,
) -> Result<(Box<TlsLink>, Option<SpiffeId>), Stop> {
    let identity = identity_of(w)?;
    let mut conn = identity.server_connection().map_err(|e| {
        Stop::new(
            Outcome::InternalError,
            Side::Internal,
            Cause::Handshake(e.into()),
        )
    })?;
    drop(identity);
    let fed = feed(&mut conn, prefix);
    let result = match fed {
        Ok(()) => tls::handshake(&mut conn, down, timeout).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(took) => ctx
            .shard(w)
            .handshake(Direction::Inbound, HandshakeResult::Ok, took),
        Err(e) => {
            copy::reset(down);
            return Err(handshake_failed(
                ctx,
                w,
                Direction::Inbound,
                Side::Downstream,
                e,
            ));
        }
    }
    let peer = tls::peer_id(&conn);
    ctx.shard(w).security(Direction::Inbound, Security::Mtls);
    Ok((
        Box::new(TlsLink {
            conn,
            on: TlsOn::Downstream,
        }),
        peer,
    ))
}

/// Gives rustls the records detection read off the socket.
fn feed(conn: &mut rustls::Connection, mut prefix: &[u8]) -> Result<(), HandshakeError> {
    while !prefix.is_empty() {
        conn.read_tls(&mut prefix)?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Copies until both sides close; maps how it ended to an outcome.
pub(crate) async fn relay(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    dir: Direction,
    down: &TcpStream,
    up: Upstream,
) -> Stop {
    let Upstream {
        stream,
        copy: kind,
        idle,
        tls,
    } = up;
    let up = &stream;
    // TLS records are sealed and opened in user space: its bytes always go through a buffer.
    let kind = if tls.is_some() {
        CopyKind::Buffered
    } else {
        kind
    };
    let shard = ctx.shard(w);
    shard.copy(kind);
    let idle = ctx.idle.register(idle);
    let cx = CopyCx {
        pools: &ctx.pools,
        shard,
        dir,
        idle: &idle,
    };
    let had_tls = tls.is_some();
    let end = match tls {
        // Boxed: the TLS session and its copy are large, and inline they would enlarge every
        // plaintext connection's state too.
        Some(link) => {
            let TlsLink { conn, on } = *link;
            Box::pin(tls::bidirectional(
                down,
                up,
                on,
                conn,
                &cx,
                ctx.closing_for(w.index),
            ))
            .await
        }
        None => {
            // `auto` on io_uring: small messages go through the worker's own ring, until a
            // direction moves bulk and the splice copy takes over from where it stopped.
            // One drain signal for both phases (each would otherwise keep its own future).
            let mut closing = std::pin::pin!(ctx.closing_for(w.index));
            let resume = match on_ring(ctx, w, dir, down, up, kind, &idle, closing.as_mut()) {
                Some(relay) => match relay.await {
                    RingEnd::Ended(end) => Err(end),
                    RingEnd::Handoff(resume) => Ok(resume),
                },
                None => Ok(copy::Resume::default()),
            };
            match resume {
                Err(end) => end,
                // Boxed: a connection on the ring never needs this copy's state, and inline it
                // would be part of every connection's state for its whole life.
                Ok(resume) => {
                    Box::pin(copy::bidirectional(down, up, kind, &cx, closing, resume)).await
                }
            }
        }
    };
    match end {
        CopyEnd::Done => Stop::plain(Outcome::Ok),
        CopyEnd::Idle => Stop::plain(Outcome::IdleTimeout),
        CopyEnd::Closed => Stop::plain(Outcome::Drained),
        CopyEnd::Failed { side, error }
            if had_tls && error.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            let mut stop = Stop::io(side, error);
            stop.cause = Cause::NoCloseNotify;
            stop
        }
        CopyEnd::Failed { side, error } => Stop::io(side, error),
    }
}

/// The copy on the worker's own ring, when it has one, the copy is `auto`, and the ring takes
/// the connection. A node workload replaced since the connection began copies the other way
/// (its metrics shard is reached through the slot, which now holds the new one).
#[allow(clippy::too_many_arguments)] // the connection's parts, each borrowed from `relay`
fn on_ring<'a, C: std::future::Future<Output = ()>>(
    ctx: &'a WorkerCtx,
    w: &Workload,
    dir: Direction,
    down: &'a TcpStream,
    up: &'a TcpStream,
    kind: CopyKind,
    idle: &'a IdleHandle<'a>,
    closing: C,
) -> Option<ring_copy::RingRelay<'a, C>> {
    let ring = ctx.ring.as_deref().filter(|_| kind == CopyKind::Auto)?;
    let workload = ctx
        .shared
        .workload(w.index)
        .filter(|a| std::ptr::eq(&**a, w))?;
    let account = ring_copy::Account {
        workload,
        worker: ctx.id,
        dir,
        idle: idle.toucher(),
    };
    ring_copy::bidirectional(ring, down, up, account, idle.expired(), closing)
}

/// Runs the set-up steps unless the drain deadline passes first, which resets the connection
/// (once copying, the copy itself watches the deadline).
pub(crate) async fn unless_closing<T>(
    ctx: &WorkerCtx,
    w: &Workload,
    down: &TcpStream,
    setup: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    monoio::select! {
        biased;
        up = setup => up,
        _ = ctx.closing_for(w.index) => {
            copy::reset(down);
            Err(Stop::plain(Outcome::Drained))
        }
    }
}

/// How a connection is handled once detection has read its start.
pub(crate) enum Handling {
    /// HTTP, request by request; the bytes detection read come first.
    Http(Vec<u8>, crate::http::Wire),
    /// Bytes as they come; those detection read are written upstream first.
    Opaque(Vec<u8>),
}

/// HTTP detection on a connection's plaintext start (`tls`: the session it arrives in),
/// as the port's protocol says; counted.
pub(crate) async fn classify(
    ctx: &WorkerCtx,
    w: &Workload,
    dir: Direction,
    down: &TcpStream,
    tls: Option<&mut rustls::Connection>,
    port: u16,
    prefix: Vec<u8>,
) -> Result<Handling, Stop> {
    use crate::http::Wire;
    use ringmesh_core::http::{Protocol, Sniff};
    use ringmesh_core::metrics::ProtocolSeen;
    let snap = ctx.shared.config.load();
    let live = &snap.config.live;
    let protocol = live.http.protocol_for(port);
    let timeout = live.timeouts.first_byte;
    drop(snap);
    let shard = ctx.shard(w);
    let (seen, handling) = match protocol {
        Protocol::Opaque => (ProtocolSeen::Skipped, Handling::Opaque(prefix)),
        Protocol::Http2 => (ProtocolSeen::Pinned, Handling::Http(prefix, Wire::H2)),
        Protocol::Http => (ProtocolSeen::Pinned, Handling::Http(prefix, Wire::H1)),
        Protocol::Detect => {
            let found = crate::detect::sniff_http(down, tls, prefix, timeout)
                .await
                .map_err(|e| Stop::io(Side::Downstream, e))?;
            match found.found {
                // A WebSocket (or other upgrade) is checked and routed as a request, then
                // carried as a tunnel (`http::upgrade`); counted apart.
                Some(Sniff::Http1) if found.upgrade => (
                    ProtocolSeen::Upgrade,
                    Handling::Http(found.prefix, Wire::H1),
                ),
                Some(Sniff::Http1) => (ProtocolSeen::Http1, Handling::Http(found.prefix, Wire::H1)),
                Some(Sniff::Http2) => (ProtocolSeen::Http2, Handling::Http(found.prefix, Wire::H2)),
                Some(_) => (ProtocolSeen::Opaque, Handling::Opaque(found.prefix)),
                None => (ProtocolSeen::Timeout, Handling::Opaque(found.prefix)),
            }
        }
    };
    shard.http.detected(dir, seen);
    Ok(handling)
}

/// Writes what detection read to the upstream before the copy starts: to the socket, or into
/// the TLS session on it and out.
pub(crate) async fn replay(up: &mut Upstream, prefix: &[u8]) -> Result<(), Stop> {
    if prefix.is_empty() {
        return Ok(());
    }
    let fail = |e| Stop::io(Side::Upstream, e);
    match &mut up.tls {
        None => crate::detect::replay(&up.stream, prefix)
            .await
            .map_err(fail),
        Some(link) => {
            std::io::Write::write_all(&mut link.conn.writer(), prefix).map_err(fail)?;
            let fd = up.stream.as_raw_fd();
            while !tls::flush(&mut link.conn, fd).map_err(fail)? {
                up.stream.writable(false).await.map_err(fail)?;
            }
            Ok(())
        }
    }
}

/// Loopback address of the same family, where the inbound app listens.
pub(crate) fn loopback(dst: OrigDst) -> SocketAddr {
    let ip: std::net::IpAddr = if dst.addr().is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    SocketAddr::new(ip, dst.addr().port())
}
