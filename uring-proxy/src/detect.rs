//! Inbound protocol detection: read the first bytes of a connection (at most one ClientHello,
//! under the detection deadline) and let `ringmesh_core::client_hello` and
//! `ringmesh_core::decide` say what they are.
//!
//! The bytes are consumed, not peeked: a peek leaves the socket readable, so waiting for the
//! rest of a fragmented ClientHello would spin. What was read is handed back as the prefix,
//! to be fed to the TLS session (mesh) or written to the app first (passthrough).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use ringmesh_core::client_hello::{self, HelloError, MAX_INPUT, Parsed};
use ringmesh_core::decide::Detected;

use crate::copy::Pools;
use crate::sys;

/// What detection found, and the bytes it read to find it.
#[derive(Debug)]
pub(crate) struct Detection {
    pub detected: Detected,
    /// Bytes read from the peer, to be replayed (empty for a silent or closed peer).
    pub prefix: Box<[u8]>,
    /// Why bytes that began like TLS could not be read as a ClientHello.
    pub hello_error: Option<HelloError>,
}

/// Reads until the start of `sock` is classified or `timeout` passes.
pub(crate) async fn detect(
    sock: &TcpStream,
    timeout: Duration,
    pools: &Pools,
) -> io::Result<Detection> {
    let fd = sock.as_raw_fd();
    let deadline = Instant::now().checked_add(timeout);
    let mut buf = pools.take_buf();
    let mut len = 0;
    let mut scratch = Vec::new();
    let result = loop {
        match sys::recv(fd, &mut buf[len..MAX_INPUT]) {
            Ok(0) => {
                let detected = if len == 0 {
                    Detected::Closed
                } else {
                    // The peer closed in the middle of a ClientHello.
                    Detected::Truncated
                };
                break Ok((detected, None));
            }
            Ok(n) => {
                len += n;
                let parsed = client_hello::parse(&buf[..len], &mut scratch);
                let hello_error = match &parsed {
                    Parsed::Invalid(e) => Some(*e),
                    _ => None,
                };
                if let Some(d) = Detected::from_parse(&parsed) {
                    break Ok((d, hello_error));
                }
                // More of the ClientHello is needed; `len < MAX_INPUT` here, since a full
                // buffer always classifies.
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => break Err(e),
        }
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero()
            || monoio::time::timeout(left, sock.readable(false))
                .await
                .is_err()
        {
            break Ok((Detected::on_timeout(len), None));
        }
    };
    let prefix: Box<[u8]> = buf[..len].into();
    pools.put_buf(buf);
    let (detected, hello_error) = result?;
    Ok(Detection {
        detected,
        prefix,
        hello_error,
    })
}

/// Writes `prefix` to `sock` before anything else moves (the bytes detection consumed).
pub(crate) async fn replay(sock: &TcpStream, prefix: &[u8]) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut at = 0;
    while at < prefix.len() {
        match sys::send(fd, &prefix[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What HTTP detection found in the (plaintext) stream, and what it read.
#[derive(Debug)]
pub(crate) struct HttpSniff {
    /// `None`: nothing conclusive before the deadline (or the peer closed).
    pub found: Option<ringmesh_core::http::Sniff>,
    pub prefix: Vec<u8>,
    /// The first request asks for an upgrade (as far as its head was seen).
    pub upgrade: bool,
}

/// Reads the start of a plaintext stream (the socket, or the TLS session on it) until
/// `core::http::sniff` decides or `timeout` passes. `prefix` is what earlier detection read.
/// A TLS session's buffered plaintext is all taken, so the copy that follows never waits on
/// the socket for bytes rustls already holds.
pub(crate) async fn sniff_http(
    sock: &TcpStream,
    mut tls: Option<&mut rustls::Connection>,
    prefix: Vec<u8>,
    timeout: Duration,
) -> io::Result<HttpSniff> {
    use ringmesh_core::http::{MAX_SNIFF, Sniff, sniff};
    let fd = sock.as_raw_fd();
    let deadline = Instant::now().checked_add(timeout);
    let mut buf = prefix;
    let mut chunk = [0u8; 4096];
    loop {
        match sniff(&buf) {
            Sniff::NeedMore => {}
            found => {
                return Ok(HttpSniff {
                    found: Some(found),
                    upgrade: ringmesh_core::http::asks_upgrade(&buf),
                    prefix: buf,
                });
            }
        }
        // Take what is there without waiting.
        let mut eof = false;
        let mut got = false;
        match tls.as_deref_mut() {
            Some(conn) => loop {
                match std::io::Read::read(&mut conn.reader(), &mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        got = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if got {
                            break;
                        }
                        match conn.read_tls(&mut crate::tls::Fd(fd)) {
                            Ok(0) => return Err(crate::tls::no_close_notify()),
                            Ok(_) => {
                                conn.process_new_packets().map_err(|e| {
                                    let _ = crate::tls::flush(conn, fd);
                                    io::Error::new(io::ErrorKind::InvalidData, e)
                                })?;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            },
            None => {
                let room = MAX_SNIFF.saturating_sub(buf.len()).clamp(1, chunk.len());
                match sys::recv(fd, &mut chunk[..room]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        got = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => got = true,
                    Err(e) => return Err(e),
                }
            }
        }
        if eof {
            return Ok(HttpSniff {
                found: None,
                prefix: buf,
                upgrade: false,
            });
        }
        if got {
            continue;
        }
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero()
            || monoio::time::timeout(left, sock.readable(false))
                .await
                .is_err()
        {
            return Ok(HttpSniff {
                found: None,
                prefix: buf,
                upgrade: false,
            });
        }
    }
}
