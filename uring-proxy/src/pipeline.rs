//! The steps a connection goes through, one function each. `outbound` and `inbound` chain
//! them, in order, so one connection can be read top to bottom in one file.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyKind, Direction, Outcome, Side};
use ringmesh_core::{ClientAddr, OrigDst};
use socket2::SockRef;

use crate::connect::{self, ConnectError};
use crate::copy::{self, CopyCx, CopyEnd};
use crate::orig_dst::ConnInfo;
use crate::state::Snapshot;
use crate::sys::fd_ref;
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
}

/// Everything logged about one connection.
pub(crate) struct Conn {
    pub dir: Direction,
    pub client: ClientAddr,
    pub dst: Option<OrigDst>,
    pub upstream: Option<SocketAddr>,
}

impl Conn {
    pub fn new(dir: Direction, client: ClientAddr) -> Self {
        Self {
            dir,
            client,
            dst: None,
            upstream: None,
        }
    }

    /// Records the end of the connection: one line at most, and only for failures.
    pub fn end(&self, ctx: &WorkerCtx, record: ConnRecord<'_>, stop: Stop) {
        let dst = self.dst.map(|d| d.to_string()).unwrap_or_default();
        let up = self.upstream.map(|u| u.to_string()).unwrap_or_default();
        match &stop.error {
            Some(error) => tracing::warn!(
                worker = ctx.id, direction = %self.dir, side = %stop.side, outcome = %stop.outcome,
                client = %self.client, orig_dst = %dst, upstream = %up, error = %error,
                "connection failed"
            ),
            None => tracing::debug!(
                worker = ctx.id, direction = %self.dir, outcome = %stop.outcome,
                client = %self.client, orig_dst = %dst, upstream = %up,
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
pub(crate) fn original_dst(
    ctx: &WorkerCtx,
    down: &TcpStream,
    client: ClientAddr,
) -> Result<OrigDst, Stop> {
    let local = down
        .local_addr()
        .map_err(|e| Stop::failed(Outcome::InternalError, Side::Internal, e))?;
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

/// Copies until both sides close; maps how it ended to an outcome.
pub(crate) async fn relay(
    ctx: &Rc<WorkerCtx>,
    dir: Direction,
    down: &TcpStream,
    up: &TcpStream,
    kind: CopyKind,
    idle: Duration,
) -> Stop {
    ctx.shard().copy(kind);
    let idle = ctx.idle.register(idle);
    let cx = CopyCx {
        pools: &ctx.pools,
        shard: ctx.shard(),
        dir,
        idle: &idle,
    };
    match copy::bidirectional(down, up, kind, &cx, ctx.closing.wait()).await {
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
