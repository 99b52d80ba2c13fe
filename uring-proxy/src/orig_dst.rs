//! Where a redirected connection was going: the first step of both pipelines, passed in as a
//! parameter so tests can run the real pipeline without NAT rules.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use ringmesh_core::{ClientAddr, OrigDst};

use crate::sys;

/// What a source may look at to find a connection's original destination.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The accepted socket.
    pub fd: RawFd,
    /// The accepted socket's local address (the listener's port).
    pub local: SocketAddr,
    pub client: ClientAddr,
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
        // An IPv4 client of a dual-stack `[::]` socket has a v4-mapped local address; its
        // conntrack entry is IPv4, so it needs SOL_IP.
        let ipv6 = match conn.local {
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
            SocketAddr::V4(_) => false,
        };
        sys::original_dst(sys::fd_ref(&conn.fd), ipv6).map(OrigDst::new)
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
