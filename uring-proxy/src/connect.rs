//! The upstream socket factory: monoio has no pre-connect hook, so the socket is built with
//! socket2 (bypass mark, no-delay, keepalive, user timeout, non-blocking connect) and then
//! handed to monoio.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_core::config::TcpOptions;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::sys::fd_ref;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Setting up the socket failed: the proxy's problem, not the upstream's.
    #[error("socket setup: {0}")]
    Local(io::Error),
    /// The upstream refused or was unreachable.
    #[error("{0}")]
    Remote(io::Error),
}

/// Sets keepalive and `TCP_USER_TIMEOUT` on `sock`, as configured: a peer that vanished
/// then costs at most `time + interval * probes` of an idle connection, or `user_timeout`
/// of unacknowledged data, instead of the idle timeout. Listeners get the same options, and
/// the connections they accept inherit them.
pub(crate) fn set_tcp_options(sock: SockRef<'_>, tcp: &TcpOptions) -> io::Result<()> {
    match tcp.keepalive {
        Some(k) => sock.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(k.time)
                .with_interval(k.interval)
                .with_retries(k.probes),
        )?,
        None => sock.set_keepalive(false)?,
    }
    // Validation bounds the value far below `int` milliseconds; `None` restores the default.
    sock.set_tcp_user_timeout(tcp.user_timeout)
}

/// Connects to `addr` with the bypass mark and TCP options, within `timeout`. With `netns`
/// (a workload's namespace, and the worker's own), the socket is made in the workload's
/// namespace, and the thread is back in its own before anything else happens.
pub(crate) async fn connect(
    addr: SocketAddr,
    mark: Option<NonZeroU32>,
    tcp: &TcpOptions,
    timeout: Duration,
    netns: Option<(&std::fs::File, &std::fs::File)>,
) -> Result<TcpStream, ConnectError> {
    let make = || {
        Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )
    };
    let sock = match netns {
        Some((target, home)) => crate::sys::in_netns(target, home, make),
        None => make(),
    }
    .map_err(ConnectError::Local)?;
    if let Some(mark) = mark {
        sock.set_mark(mark.get()).map_err(ConnectError::Local)?;
    }
    sock.set_nodelay(true).map_err(ConnectError::Local)?;
    set_tcp_options(SockRef::from(&sock), tcp).map_err(ConnectError::Local)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(ConnectError::Remote(e)),
    }
    let stream =
        TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(ConnectError::Local)?;
    match monoio::time::timeout(timeout, stream.writable(false)).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) => Err(ConnectError::Remote(e)),
        Ok(Ok(())) => match SockRef::from(&fd_ref(&stream)).take_error() {
            Ok(None) => Ok(stream),
            Ok(Some(e)) | Err(e) => Err(ConnectError::Remote(e)),
        },
    }
}
