//! The two directions of a connection with TLS on one side, as pumps for the duplex copy:
//! [`Seal`] takes plaintext from the plain socket and writes TLS records to the TLS socket,
//! [`Open`] reads records from the TLS socket and writes their plaintext to the plain one.
//! They share the rustls session through a `RefCell` (one worker, one task).
//!
//! End of stream maps both ways: the plain side's FIN becomes `close_notify` (then FIN), and
//! the peer's `close_notify` becomes a FIN on the plain side. A TLS stream that ends without
//! `close_notify` is an error, so the plain side is reset rather than closed: a FIN injected
//! on the wire must not pass for a complete response.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use ringmesh_core::metrics::CopyMethod;

use super::{Fd, flush};
use crate::copy::{BUF_SIZE, Pools};
use crate::duplex::{End, Event, Pump, PumpError, Wait};
use crate::sys;

/// Plaintext side to TLS side.
pub(crate) struct Seal<'a> {
    pub conn: &'a RefCell<rustls::Connection>,
    /// The source.
    pub plain: RawFd,
    /// The destination.
    pub tls: RawFd,
    pub pools: &'a Pools,
    /// close_notify is queued (the plain side ended); what is left is flushing it.
    closing: bool,
}

impl<'a> Seal<'a> {
    pub fn new(
        conn: &'a RefCell<rustls::Connection>,
        plain: RawFd,
        tls: RawFd,
        pools: &'a Pools,
    ) -> Self {
        Self {
            conn,
            plain,
            tls,
            pools,
            closing: false,
        }
    }
}

impl Pump for Seal<'_> {
    fn pump(&mut self, on: &mut impl FnMut(Event)) -> Result<Wait, PumpError> {
        loop {
            // Whatever rustls holds goes out first; read no more until it has.
            if !flush(&mut self.conn.borrow_mut(), self.tls).map_err(|e| (End::Dst, e))? {
                return Ok(Wait::Writable);
            }
            if self.closing {
                return Ok(Wait::Eof);
            }
            let mut buf = self.pools.take_buf();
            let short = match sys::recv(self.plain, &mut buf) {
                Ok(0) => {
                    self.pools.put_buf(buf);
                    self.conn.borrow_mut().send_close_notify();
                    // The next pass flushes it, then ends.
                    self.closing = true;
                    continue;
                }
                Ok(n) => {
                    on(Event::Moved(n, CopyMethod::Tls));
                    let written = self.conn.borrow_mut().writer().write_all(&buf[..n]);
                    self.pools.put_buf(buf);
                    written.map_err(|e| (End::Dst, e))?;
                    n < BUF_SIZE
                }
                Err(e) => {
                    self.pools.put_buf(buf);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(Wait::Readable),
                        io::ErrorKind::Interrupted => false,
                        _ => return Err((End::Src, e)),
                    }
                }
            };
            if short {
                // A short read: flush what was sealed, then wait for more plaintext.
                let flushed =
                    flush(&mut self.conn.borrow_mut(), self.tls).map_err(|e| (End::Dst, e))?;
                return Ok(if flushed {
                    Wait::Readable
                } else {
                    Wait::Writable
                });
            }
        }
    }
}

/// TLS side to plaintext side.
pub(crate) struct Open<'a> {
    pub conn: &'a RefCell<rustls::Connection>,
    /// The source.
    pub tls: RawFd,
    /// The destination.
    pub plain: RawFd,
    pub pools: &'a Pools,
    /// Plaintext out of rustls not yet written to the plain side: `[start, end)` of a buffer.
    pending: Option<(Box<[u8]>, usize, usize)>,
}

impl<'a> Open<'a> {
    pub fn new(
        conn: &'a RefCell<rustls::Connection>,
        tls: RawFd,
        plain: RawFd,
        pools: &'a Pools,
    ) -> Self {
        Self {
            conn,
            tls,
            plain,
            pools,
            pending: None,
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if let Some((buf, ..)) = self.pending.take() {
            self.pools.put_buf(buf);
        }
    }
}

/// The error for a TLS stream that ended without `close_notify`.
pub(crate) fn no_close_notify() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "TLS stream ended without close_notify",
    )
}

impl Pump for Open<'_> {
    fn pump(&mut self, on: &mut impl FnMut(Event)) -> Result<Wait, PumpError> {
        loop {
            // Plaintext already out of rustls goes to the plain side first.
            if let Some((buf, start, end)) = &mut self.pending {
                while start < end {
                    match sys::send(self.plain, &buf[*start..*end]) {
                        Ok(n) => *start += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Wait::Writable);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err((End::Dst, e)),
                    }
                }
                if let Some((buf, ..)) = self.pending.take() {
                    self.pools.put_buf(buf);
                }
            }
            let mut conn = self.conn.borrow_mut();
            let mut buf = self.pools.take_buf();
            match conn.reader().read(&mut buf) {
                Ok(0) => {
                    // close_notify: the peer's half-close.
                    self.pools.put_buf(buf);
                    return Ok(Wait::Eof);
                }
                Ok(n) => {
                    on(Event::Moved(n, CopyMethod::Tls));
                    self.pending = Some((buf, 0, n));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pools.put_buf(buf),
                // The TCP stream ended without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.pools.put_buf(buf);
                    return Err((End::Src, no_close_notify()));
                }
                Err(e) => {
                    self.pools.put_buf(buf);
                    return Err((End::Src, e));
                }
            }
            // rustls needs more records.
            match conn.read_tls(&mut Fd(self.tls)) {
                // End of the TCP stream: rustls's reader now says whether close_notify came
                // first (a clean end) or not (an error), on the next pass.
                Ok(0) => {
                    if let Err(e) = conn.process_new_packets() {
                        return Err((End::Src, io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        let _ = flush(&mut conn, self.tls);
                        return Err((End::Src, io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // Post-handshake messages may want a reply; send it if the socket takes it.
                    let _ = flush(&mut conn, self.tls);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Wait::Readable),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((End::Src, e)),
            }
        }
    }
}

/// Which of the two sockets speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsOn {
    Downstream,
    Upstream,
}

/// Copies both ways between a plaintext socket and a TLS one, until both sides close, one
/// fails, the connection idles out, or `closing` completes.
pub(crate) async fn bidirectional(
    down: &monoio::net::TcpStream,
    up: &monoio::net::TcpStream,
    on: TlsOn,
    conn: rustls::Connection,
    cx: &crate::duplex::CopyCx<'_>,
    closing: impl std::future::Future<Output = ()>,
) -> crate::duplex::CopyEnd {
    // An async fn (unlike the plaintext copy): the session lives in this frame, borrowed by
    // both directions. The caller boxes it, so its size costs only TLS connections.
    use std::os::fd::AsRawFd;

    use ringmesh_core::metrics::Side;

    let (tls, plain, tls_side, plain_side) = match on {
        TlsOn::Downstream => (down, up, Side::Downstream, Side::Upstream),
        TlsOn::Upstream => (up, down, Side::Upstream, Side::Downstream),
    };
    let conn = RefCell::new(conn);
    let (tls_fd, plain_fd) = (tls.as_raw_fd(), plain.as_raw_fd());
    let seal = crate::duplex::direction(
        Seal::new(&conn, plain_fd, tls_fd, cx.pools),
        plain,
        tls,
        plain_side,
        cx,
    );
    let open = crate::duplex::direction(
        Open::new(&conn, tls_fd, plain_fd, cx.pools),
        tls,
        plain,
        tls_side,
        cx,
    );
    crate::duplex::duplex(down, up, seal, open, cx, closing, [false; 2]).await
}
