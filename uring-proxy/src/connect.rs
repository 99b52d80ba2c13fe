//! The upstream socket factory: monoio has no pre-connect hook, so the socket is built with
//! socket2 (bypass mark, no-delay, non-blocking connect) and then handed to monoio.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use monoio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

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

/// Connects to `addr` with the bypass mark, within `timeout`.
pub(crate) async fn connect(
    addr: SocketAddr,
    mark: Option<NonZeroU32>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(ConnectError::Local)?;
    if let Some(mark) = mark {
        sock.set_mark(mark.get()).map_err(ConnectError::Local)?;
    }
    sock.set_nodelay(true).map_err(ConnectError::Local)?;
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
