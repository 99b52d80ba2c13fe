//! Binding the listeners: one SO_REUSEPORT socket per worker per address, bound up front on
//! the main thread so that a port in use is a start-up error, not a worker's.
//!
//! SO_REUSEPORT lets a second process (same uid) bind the same port silently and steal half
//! the connections, so the address is first probed without it.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "{what} address {addr} is already in use by another process; stop that process or \
         choose another address in the config ({what})"
    )]
    InUse {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("{what} address {addr}: permission denied; ports below 1024 need CAP_NET_BIND_SERVICE")]
    Permission {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("{what} address {addr}: {source}")]
    Other {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn classify(
    what: &'static str,
    addr: SocketAddr,
) -> impl FnOnce(io::Error) -> BindError {
    move |e| match e.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse { what, addr },
        io::ErrorKind::PermissionDenied => BindError::Permission { what, addr },
        _ => BindError::Other {
            what,
            addr,
            source: e,
        },
    }
}

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    // Accepted connections inherit it: no setsockopt per connection.
    s.set_nodelay(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 too, so one listener catches both families.
        s.set_only_v6(false)?;
    }
    Ok(s)
}

/// Binds `count` SO_REUSEPORT listeners on `addr` (port 0 picks one port for all of them).
pub fn bind_group(
    what: &'static str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let err = |e| classify(what, addr)(e);
    if addr.port() != 0 {
        // Without SO_REUSEPORT this fails if anyone holds the port, reuseport or not.
        let probe = socket_for(addr).map_err(err)?;
        probe.bind(&addr.into()).map_err(err)?;
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = socket_for(bound).map_err(err)?;
        s.set_reuse_port(true).map_err(err)?;
        s.bind(&bound.into()).map_err(err)?;
        s.listen(BACKLOG).map_err(err)?;
        if bound.port() == 0 {
            bound = s.local_addr().map_err(err)?.as_socket().unwrap_or(bound);
        }
        out.push(s.into());
    }
    Ok(out)
}

fn udp_socket_for(addr: SocketAddr, mark: Option<u32>) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    // The interception programs take the header off the relay's replies only when they
    // carry the proxy's mark, and checksum-free replies leave them nothing to get wrong.
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    crate::sys::set_udp_no_check(std::os::fd::AsFd::as_fd(&s))?;
    Ok(s)
}

/// Binds `count` SO_REUSEPORT UDP sockets on `addr` (non-blocking, with the bypass mark), after
/// the same probe as [`bind_group`].
pub fn bind_udp_group(
    what: &'static str,
    addr: SocketAddr,
    count: usize,
    mark: Option<u32>,
) -> Result<Vec<std::net::UdpSocket>, BindError> {
    let err = |e| classify(what, addr)(e);
    if addr.port() != 0 {
        let probe = udp_socket_for(addr, mark).map_err(err)?;
        probe.bind(&addr.into()).map_err(err)?;
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = udp_socket_for(bound, mark).map_err(err)?;
        s.set_reuse_port(true).map_err(err)?;
        s.bind(&bound.into()).map_err(err)?;
        if bound.port() == 0 {
            bound = s.local_addr().map_err(err)?.as_socket().unwrap_or(bound);
        }
        out.push(s.into());
    }
    Ok(out)
}

/// Makes a group from [`bind_group`] hand each connection to the worker on the CPU that
/// received it (`cpus[i]` is the CPU of the worker holding `group[i]`), so that a client,
/// its proxy worker and the softirq work of its packets share one core's caches.
pub fn steer_by_cpu(
    what: &'static str,
    group: &[std::net::TcpListener],
    cpus: &[usize],
) -> Result<(), BindError> {
    let Some(first) = group.first() else {
        return Ok(());
    };
    let addr = first
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    crate::sys::steer_reuseport_by_cpu(std::os::fd::AsFd::as_fd(first), cpus)
        .map_err(|e| classify(what, addr)(e))
}
