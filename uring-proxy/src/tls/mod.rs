//! Mutual TLS between proxies, with X509-SVIDs.
//!
//! rustls (ring provider, TLS 1.3 only, no session resumption or tickets: every connection
//! proves its identity afresh) is driven by the same readiness loop as the plaintext copy:
//! readiness from the runtime, then non-blocking `recv`/`send` on the raw socket through
//! `read_tls`/`write_tls`.
//!
//! - `identity`: an SVID turned into rustls configurations, per workload.
//! - `verify`: peers checked as X509-SVIDs against the trust bundles; outbound, the SPIFFE
//!   ID the endpoint must have is checked inside the verifier, so a wrong identity fails the
//!   handshake itself and the far side never reaches its app.
//! - `handshake`: running a handshake under a deadline, and what its failure means.
//! - `pump`: the two directions of a TLS connection for the duplex copy.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use crate::sys;

mod handshake;
mod identity;
mod pump;
mod verify;

pub(crate) use handshake::{HandshakeError, handshake};
pub(crate) use identity::ClientConfigs;
pub use identity::TlsIdentity;
pub(crate) use pump::{TlsOn, bidirectional, no_close_notify};
pub(crate) use verify::peer_id;

/// The raw socket as rustls's transport: non-blocking reads and writes.
pub(crate) struct Fd(pub RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, buf)
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes out what rustls has queued; `Ok(false)` if the socket is full.
pub(crate) fn flush(conn: &mut rustls::Connection, fd: RawFd) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut Fd(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
