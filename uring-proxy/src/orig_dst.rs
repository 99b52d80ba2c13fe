//! Where a redirected connection was going: the first step of both pipelines, passed in as a
//! parameter so tests can run the real pipeline without NAT rules.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use ringmesh_core::OrigDst;

use crate::sys;

/// What a source may look at to find a connection's original destination. The local address
/// is read from the socket on demand: `SO_ORIGINAL_DST` does not need it, and it is a syscall.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The accepted socket.
    pub fd: RawFd,
}

impl ConnInfo {
    /// The accepted socket's local address (the listener's port): `getsockname`.
    pub fn local(&self) -> io::Result<SocketAddr> {
        sys::local_addr(sys::fd_ref(&self.fd))
    }
}

/// Recovers the original destination of an accepted connection.
pub trait OrigDstSource: Send + Sync + 'static {
    fn original_dst(&self, conn: &ConnInfo) -> io::Result<OrigDst>;
}

/// The kernel's answer after a NAT REDIRECT: `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoOriginalDst;

impl OrigDstSource for SoOriginalDst {
    fn original_dst(&self, conn: &ConnInfo) -> io::Result<OrigDst> {
        // IPv4 first, without asking the socket its family (a syscall): it answers for IPv4
        // sockets and for IPv4 clients of a dual-stack `[::]` one, whose conntrack entries
        // are IPv4. Only an IPv6 client, which has no IPv4 entry, costs the second call (the
        // kernel looks its IPv4 tuple up as 127.0.0.6 on the listener's port, which no IPv4
        // connection can hold while the listener has that port).
        let fd = sys::fd_ref(&conn.fd);
        match sys::original_dst(fd, false) {
            Ok(a) => Ok(OrigDst::new(a)),
            Err(v4) => sys::original_dst(fd, true)
                .map(OrigDst::new)
                // An IPv4 socket cannot answer for IPv6 at all: its IPv4 error is the one.
                .map_err(|v6| {
                    if v6.raw_os_error() == Some(libc::ENOENT) {
                        v6
                    } else {
                        v4
                    }
                }),
        }
    }
}

impl<F> OrigDstSource for F
where
    F: Fn(&ConnInfo) -> io::Result<OrigDst> + Send + Sync + 'static,
{
    fn original_dst(&self, conn: &ConnInfo) -> io::Result<OrigDst> {
        self(conn)
    }
}
