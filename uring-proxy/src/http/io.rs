//! One socket, plaintext or TLS, as hyper's `Read` and `Write`: non-blocking `recv`/`send`
//! (through rustls's `read_tls`/`write_tls` for TLS) and, when the socket has nothing, the
//! runtime's readiness, the same loop the L4 copy uses. Bytes detection already read come
//! first. A downstream HTTP/1 connection's bytes are also read a second time, for framing
//! the engine forgives (`Watch`).

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use hyper::rt::ReadBufCursor;
use monoio::net::TcpStream;
use ringmesh_core::http::framing::{Framing, Refusal};

use crate::idle::Toucher;
use crate::sys;
use crate::tls::{self, Fd};

type Ready<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

/// The first request on a connection to refuse (its number from 0, and why), as the
/// connection's `Watch` found it.
pub(crate) type Refused = Rc<Cell<Option<(u64, Refusal)>>>;

/// A downstream HTTP/1 request stream read a second time (`core::http::framing`), every byte
/// as the engine gets it, so that a request is known to be refused before the engine hands
/// it on. It stops reading after the first refusal (the connection closes with it) or once
/// it cannot follow the stream.
pub(crate) struct Watch {
    framing: Framing,
    refused: Refused,
}

impl Watch {
    pub fn new(framing: Framing, refused: Refused) -> Self {
        Self { framing, refused }
    }
}

/// Shows `watch` the bytes just read; drops it when it has nothing more to say.
fn feed(watch: &mut Option<Watch>, bytes: &[u8]) {
    let Some(w) = watch.as_mut() else { return };
    w.framing.feed(bytes);
    if let Some(first) = w.framing.first_refused() {
        w.refused.set(Some(first));
        *watch = None;
    } else if !w.framing.following() {
        *watch = None;
    }
}

/// `S` is how the socket is held: borrowed (`&TcpStream`, a downstream connection the
/// pipeline owns) or shared (`Rc<TcpStream>`, a pooled upstream that outlives any one
/// downstream).
pub(crate) struct HttpIo<'a, S: Deref<Target = TcpStream> + Clone + 'a> {
    sock: S,
    tls: Option<Box<rustls::Connection>>,
    /// Read before the HTTP engine started (detection), handed out first.
    prefix: Vec<u8>,
    prefix_at: usize,
    readable: Option<Ready<'a>>,
    writable: Option<Ready<'a>>,
    idle: Option<Toucher>,
    /// The TLS stream ended with `close_notify`.
    tls_eof: bool,
    watch: Option<Watch>,
}

impl<'a, S: Deref<Target = TcpStream> + Clone + 'a> HttpIo<'a, S> {
    pub fn new(
        sock: S,
        tls: Option<Box<rustls::Connection>>,
        prefix: Vec<u8>,
        idle: Option<Toucher>,
    ) -> Self {
        Self {
            sock,
            tls,
            prefix,
            prefix_at: 0,
            readable: None,
            writable: None,
            idle,
            tls_eof: false,
            watch: None,
        }
    }

    /// Reads the request stream a second time as it arrives (a downstream HTTP/1 server).
    pub fn watched(mut self, watch: Watch) -> Self {
        self.watch = Some(watch);
        self
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }

    fn touch(&self) {
        if let Some(t) = &self.idle {
            t.touch();
        }
    }

    /// Waits for the socket to be readable; `Ready` means try again.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sock = self.sock.clone();
        let fut = self
            .readable
            .get_or_insert_with(|| Box::pin(async move { sock.readable(false).await }));
        let r = ready!(fut.as_mut().poll(cx));
        self.readable = None;
        Poll::Ready(r)
    }

    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sock = self.sock.clone();
        let fut = self
            .writable
            .get_or_insert_with(|| Box::pin(async move { sock.writable(false).await }));
        let r = ready!(fut.as_mut().poll(cx));
        self.writable = None;
        Poll::Ready(r)
    }

    /// Writes out every TLS record rustls holds, waiting for room.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.writable.is_some() {
                ready!(self.poll_writable(cx))?;
            }
            let fd = self.fd();
            let Some(conn) = self.tls.as_deref_mut() else {
                return Poll::Ready(Ok(()));
            };
            if tls::flush(conn, fd)? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_writable(cx))?;
        }
    }

    fn poll_read_plain(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_recv(cx, |fd| sys::recv(fd, buf))
    }

    /// `recv` (as `read` does it) until it has bytes or an error, waiting for readiness
    /// between tries.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(std::os::fd::RawFd) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            // While a readiness wait is in progress, no system call: hyper polls the read
            // side on every wake-up of its task (a write done, a body frame), and a `recv`
            // each time would mostly say EAGAIN.
            if self.readable.is_some() {
                ready!(self.poll_readable(cx))?;
            }
            match read(self.fd()) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_read_tls(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.tls_eof {
                return Poll::Ready(Ok(0));
            }
            let Some(conn) = self.tls.as_deref_mut() else {
                return Poll::Ready(Ok(0));
            };
            match conn.reader().read(buf) {
                Ok(0) => {
                    self.tls_eof = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: a truncation, not an end.
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.readable.is_some() {
                ready!(self.poll_readable(cx))?;
                continue;
            }
            let fd = self.fd();
            let Some(conn) = self.tls.as_deref_mut() else {
                return Poll::Ready(Ok(0));
            };
            match conn.read_tls(&mut Fd(fd)) {
                Ok(0) => return Poll::Ready(Err(tls::no_close_notify())),
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Send the alert rustls queued, then fail.
                        let _ = tls::flush(conn, fd);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // Key updates and alerts it may want to answer.
                    if conn.wants_write() {
                        let _ = tls::flush(conn, fd)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads into `buf`: the prefix, then the socket.
    pub fn poll_read_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        // Nothing to read into: not the end of the stream (rustls would say 0 for both).
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.prefix_at < self.prefix.len() {
            let rest = &self.prefix[self.prefix_at..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.prefix_at += n;
            if self.prefix_at == self.prefix.len() {
                self.prefix = Vec::new();
                self.prefix_at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let n = if self.tls.is_some() {
            ready!(self.poll_read_tls(cx, buf))?
        } else {
            ready!(self.poll_read_plain(cx, buf))?
        };
        self.touch();
        Poll::Ready(Ok(n))
    }

    pub fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.tls.is_some() {
            // Room first: rustls buffers what it is given, so bound it by the socket.
            ready!(self.poll_flush_tls(cx))?;
            let fd = self.fd();
            let conn = self.tls.as_deref_mut().expect("checked above");
            let n = conn.writer().write(buf)?;
            let _ = tls::flush(conn, fd)?;
            self.touch();
            return Poll::Ready(Ok(n));
        }
        loop {
            if self.writable.is_some() {
                ready!(self.poll_writable(cx))?;
            }
            match sys::send(self.fd(), buf) {
                Ok(n) => {
                    self.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_writable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_tls(cx)
    }

    /// Ends the write side: `close_notify` for TLS, then a FIN.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(conn) = self.tls.as_deref_mut() {
            conn.send_close_notify();
        }
        ready!(self.poll_flush_tls(cx))?;
        Poll::Ready(sys::shutdown_write(self.fd()))
    }
}

impl<'a, S: Deref<Target = TcpStream> + Clone + 'a> hyper::rt::Read for HttpIo<'a, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Out of `this` while the read borrows it.
        let mut watch = this.watch.take();
        // Plaintext with nothing left from detection: the kernel writes into hyper's buffer.
        let r = if this.tls.is_none() && this.prefix.is_empty() {
            this.poll_recv(cx, |fd| {
                sys::recv_cursor(fd, &mut buf, |b| feed(&mut watch, b))
            })
            .map_ok(|_| this.touch())
        } else {
            sys::fill_cursor(
                &mut buf,
                |slice| this.poll_read_slice(cx, slice),
                |b| feed(&mut watch, b),
            )
        };
        this.watch = watch;
        r
    }
}

impl<'a, S: Deref<Target = TcpStream> + Clone + 'a> hyper::rt::Write for HttpIo<'a, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slice(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx)
    }
}

impl<'a, S: Deref<Target = TcpStream> + Clone + 'a> Unpin for HttpIo<'a, S> {}
