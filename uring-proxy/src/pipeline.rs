//! The steps a connection goes through, one function each. `outbound` and `inbound` chain
//! them, in order, so one connection can be read top to bottom in one file.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_core::access::Destination;
use ringmesh_core::metrics::{CopyKind, Direction, HandshakeResult, Outcome, Security, Side};
use ringmesh_core::{ClientAddr, OrigDst, SpiffeId};
use socket2::SockRef;

use crate::connect::{self, ConnectError};
use crate::copy::{self, CopyCx, CopyEnd};
use crate::orig_dst::ConnInfo;
use crate::state::Snapshot;
use crate::sys::fd_ref;
use crate::tls::{self, TlsIdentity, TlsOn};
use crate::worker::{ConnRecord, WorkerCtx};

/// How a pipeline step stopped the connection: the outcome to count and, when it is a
/// failure, one log line naming the side.
pub(crate) struct Stop {
    pub outcome: Outcome,
    pub side: Side,
    pub error: Option<String>,
}

impl Stop {
    pub fn refused(outcome: Outcome) -> Self {
        Self {
            outcome,
            side: Side::Downstream,
            error: None,
        }
    }
    pub fn failed(outcome: Outcome, side: Side, error: impl ToString) -> Self {
        Self {
            outcome,
            side,
            error: Some(error.to_string()),
        }
    }
}

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
pub(crate) struct Conn {
    pub dir: Direction,
    pub dst: Option<OrigDst>,
    pub upstream: Option<SocketAddr>,
    /// The peer proxy's SPIFFE ID, once its handshake is done.
    pub peer: Option<Box<SpiffeId>>,
}

impl Conn {
    pub fn new(dir: Direction) -> Self {
        Self {
            dir,
            dst: None,
            upstream: None,
            peer: None,
        }
    }

    /// Records the end of the connection: one line at most, and only for failures.
    pub fn end(&self, ctx: &WorkerCtx, record: ConnRecord<'_>, stop: Stop, down: &TcpStream) {
        let client = || {
            down.peer_addr()
                .map(|a| ClientAddr::new(a).to_string())
                .unwrap_or_default()
        };
        let dst = self.dst.map(|d| d.to_string()).unwrap_or_default();
        let up = self.upstream.map(|u| u.to_string()).unwrap_or_default();
        let peer = self
            .peer
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        match &stop.error {
            Some(error) => tracing::warn!(
                worker = ctx.id, direction = %self.dir, side = %stop.side, outcome = %stop.outcome,
                client = %client(), orig_dst = %dst, upstream = %up, peer_id = %peer,
                error = %error, "connection failed"
            ),
            None => tracing::debug!(
                worker = ctx.id, direction = %self.dir, outcome = %stop.outcome,
                client = %client(), orig_dst = %dst, upstream = %up, peer_id = %peer,
                duration_ms = record.elapsed().as_millis() as u64, "connection closed"
            ),
        }
        record.finish(stop.outcome);
    }
}

/// The accepted socket: non-blocking for our own syscalls, no Nagle delay.
pub(crate) fn prepare(down: &TcpStream) -> Result<(), Stop> {
    let fd = fd_ref(down);
    let sock = SockRef::from(&fd);
    sock.set_nonblocking(true)
        .and_then(|()| sock.set_nodelay(true))
        .map_err(|e| Stop::failed(Outcome::InternalError, Side::Internal, e))
}

/// Recovers the original destination and refuses one that would loop back into the proxy.
pub(crate) fn original_dst(ctx: &WorkerCtx, down: &TcpStream) -> Result<OrigDst, Stop> {
    let local = down
        .local_addr()
        .map_err(|e| Stop::failed(Outcome::InternalError, Side::Internal, e))?;
    let client = down
        .peer_addr()
        .map(ClientAddr::new)
        .map_err(|e| Stop::failed(Outcome::DownstreamError, Side::Downstream, e))?;
    let info = ConnInfo {
        fd: down.as_raw_fd(),
        local,
        client,
    };
    let dst = ctx.orig_dst.original_dst(&info).map_err(|e| {
        Stop::failed(
            Outcome::NoOriginalDst,
            Side::Downstream,
            format!("no original destination: {e}"),
        )
    })?;
    if ctx.shared.listener_ports.contains(&dst.addr().port()) {
        return Err(Stop::failed(
            Outcome::RedirectLoop,
            Side::Downstream,
            format!(
                "original destination {dst} is a proxy port (redirect loop or direct connection)"
            ),
        ));
    }
    Ok(dst)
}

/// Connects to the upstream with the bypass mark, under the connect timeout.
pub(crate) async fn dial(snap: &Snapshot, target: SocketAddr) -> Result<TcpStream, Stop> {
    let cfg = &snap.config;
    connect::connect(target, cfg.bypass_mark, cfg.timeouts.connect)
        .await
        .map_err(|e| match e {
            ConnectError::Timeout(_) => Stop::failed(Outcome::ConnectTimeout, Side::Upstream, e),
            ConnectError::Remote(_) => Stop::failed(Outcome::UpstreamError, Side::Upstream, e),
            ConnectError::Local(_) => Stop::failed(Outcome::InternalError, Side::Internal, e),
        })
}

/// The proxy's identity, or the fail-closed refusal when it holds no valid SVID.
fn our_identity(ctx: &WorkerCtx) -> Result<Arc<TlsIdentity>, Stop> {
    ctx.shared.identity.load_full().ok_or_else(|| {
        Stop::failed(
            Outcome::NoIdentity,
            Side::Internal,
            "no valid SVID: meshed connections are refused until the identity source delivers one",
        )
    })
}

/// Outbound mTLS to another proxy, which must prove it is `want`.
pub(crate) async fn mtls_client(
    ctx: &WorkerCtx,
    up: &TcpStream,
    want: &SpiffeId,
    timeout: Duration,
    conn_log: &mut Conn,
) -> Result<Box<TlsLink>, Stop> {
    let identity = our_identity(ctx)?;
    let mut conn = identity
        .client_connection()
        .map_err(|e| Stop::failed(Outcome::InternalError, Side::Internal, e))?;
    drop(identity);
    handshake(
        ctx,
        Direction::Outbound,
        &mut conn,
        up,
        timeout,
        Side::Upstream,
    )
    .await?;
    let peer = tls::peer_id(&conn);
    if peer.as_ref() != Some(want) {
        let shown = peer.map_or_else(|| "no SPIFFE ID".to_string(), |p| p.to_string());
        return Err(Stop::failed(
            Outcome::IdentityMismatch,
            Side::Upstream,
            format!("the upstream presented {shown}; this endpoint must be {want}"),
        ));
    }
    conn_log.peer = Some(Box::new(want.clone()));
    ctx.shard().security(Direction::Outbound, Security::Mtls);
    Ok(Box::new(TlsLink {
        conn,
        on: TlsOn::Upstream,
    }))
}

/// Inbound mTLS from another proxy; returns the session and the peer's SPIFFE ID.
pub(crate) async fn mtls_server(
    ctx: &WorkerCtx,
    down: &TcpStream,
    timeout: Duration,
) -> Result<(Box<TlsLink>, Option<SpiffeId>), Stop> {
    let identity = our_identity(ctx)?;
    let mut conn = identity
        .server_connection()
        .map_err(|e| Stop::failed(Outcome::InternalError, Side::Internal, e))?;
    drop(identity);
    handshake(
        ctx,
        Direction::Inbound,
        &mut conn,
        down,
        timeout,
        Side::Downstream,
    )
    .await?;
    let peer = tls::peer_id(&conn);
    ctx.shard().security(Direction::Inbound, Security::Mtls);
    Ok((
        Box::new(TlsLink {
            conn,
            on: TlsOn::Downstream,
        }),
        peer,
    ))
}

async fn handshake(
    ctx: &WorkerCtx,
    dir: Direction,
    conn: &mut rustls::Connection,
    sock: &TcpStream,
    timeout: Duration,
    side: Side,
) -> Result<(), Stop> {
    match tls::handshake(conn, sock, timeout).await {
        Ok(took) => {
            ctx.shard().handshake(dir, HandshakeResult::Ok, took);
            Ok(())
        }
        Err(e) => {
            ctx.shard()
                .handshake(dir, HandshakeResult::Failed, Duration::ZERO);
            copy::reset(sock);
            Err(Stop::failed(Outcome::TlsError, side, e))
        }
    }
}

/// The access decision for an inbound connection to `dst` from `peer` (`None`: plaintext).
pub(crate) fn check_access(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    dst: OrigDst,
    peer: Option<&SpiffeId>,
    down: &TcpStream,
) -> Result<(), Stop> {
    let cfg = &snap.config;
    let service = cfg.service_of_endpoint(dst.addr()).map(|s| s.name.as_str());
    let port = dst.addr().port();
    let decision = cfg.access.decide(Destination { service, port }, peer);
    if decision.allowed() {
        return Ok(());
    }
    ctx.shared.count_denied(peer);
    copy::reset(down);
    let who = peer.map_or_else(|| "a plaintext peer".to_string(), ToString::to_string);
    Err(Stop::failed(
        Outcome::AccessDenied,
        Side::Downstream,
        format!("access denied: {who} may not reach port {port} ({decision:?})"),
    ))
}

/// Copies until both sides close; maps how it ended to an outcome.
pub(crate) async fn relay(
    ctx: &Rc<WorkerCtx>,
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
    ctx.shard().copy(kind);
    let idle = ctx.idle.register(idle);
    let cx = CopyCx {
        pools: &ctx.pools,
        shard: ctx.shard(),
        dir,
        idle: &idle,
    };
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
                ctx.closing.wait(),
            ))
            .await
        }
        None => copy::bidirectional(down, up, kind, &cx, ctx.closing.wait()).await,
    };
    match end {
        CopyEnd::Done => Stop::refused(Outcome::Ok),
        CopyEnd::Idle => Stop::refused(Outcome::IdleTimeout),
        CopyEnd::Closed => Stop::refused(Outcome::Drained),
        CopyEnd::Failed { side, error } => {
            let outcome = match side {
                Side::Downstream => Outcome::DownstreamError,
                Side::Upstream => Outcome::UpstreamError,
                Side::Internal => Outcome::InternalError,
            };
            Stop::failed(outcome, side, error)
        }
    }
}

/// Runs the set-up steps unless the drain deadline passes first, which resets the connection
/// (once copying, the copy itself watches the deadline).
pub(crate) async fn unless_closing(
    ctx: &WorkerCtx,
    down: &TcpStream,
    setup: impl std::future::Future<Output = Result<Upstream, Stop>>,
) -> Result<Upstream, Stop> {
    monoio::select! {
        biased;
        up = setup => up,
        _ = ctx.closing.wait() => {
            copy::reset(down);
            Err(Stop::refused(Outcome::Drained))
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
