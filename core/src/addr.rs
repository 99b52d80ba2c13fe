//! Newtypes for the addresses that cross module boundaries, so a client address can never be
//! passed where an original destination is expected.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Unmaps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which a dual-stack `[::]` socket
/// reports for IPv4 peers, so that lookups compare like with like.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Where a redirected connection was really going, before NAT sent it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst(SocketAddr);

impl OrigDst {
    pub fn new(addr: SocketAddr) -> Self {
        Self(canonical(addr))
    }
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The downstream peer of an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(SocketAddr);

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self(canonical(addr))
    }
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v4_is_unmapped() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(OrigDst::new(mapped).addr(), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(ClientAddr::new(v6).addr(), v6);
    }
}
