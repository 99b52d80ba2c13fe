//! Running a mesh handshake on a socket under a deadline, and what its failure means.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use ringmesh_core::metrics::Outcome;

use super::verify::IdentityMismatch;
use super::{Fd, flush};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the handshake")]
    Eof,
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

impl HandshakeError {
    /// The outcome to count: a valid SVID with the wrong SPIFFE ID is `identity_mismatch`,
    /// anything else `tls_error`.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            HandshakeError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(other),
            )) if other.0.downcast_ref::<IdentityMismatch>().is_some() => Outcome::IdentityMismatch,
            _ => Outcome::TlsError,
        }
    }
}

/// Runs the handshake on `sock` within `timeout`; returns how long it took.
pub(crate) async fn handshake(
    conn: &mut rustls::Connection,
    sock: &TcpStream,
    timeout: Duration,
) -> Result<Duration, HandshakeError> {
    let start = Instant::now();
    match monoio::time::timeout(timeout, drive(conn, sock)).await {
        Ok(r) => r.map(|()| start.elapsed()),
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}

async fn drive(conn: &mut rustls::Connection, sock: &TcpStream) -> Result<(), HandshakeError> {
    let fd = sock.as_raw_fd();
    loop {
        if !flush(conn, fd)? {
            sock.writable(false).await?;
            continue;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        match conn.read_tls(&mut Fd(fd)) {
            Ok(0) => return Err(HandshakeError::Eof),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (the alert rustls queued), then give up.
                    let _ = flush(conn, fd);
                    return Err(e.into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
