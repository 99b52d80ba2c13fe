//! The plaintext pump: bytes from one socket to the other with non-blocking `splice(2)`
//! through a pipe (zero-copy) or `recv`/`send` through a buffer, and the per-worker pools
//! both come from. Neither a pipe nor a buffer is held while a connection is idle: both are
//! taken once the source is readable and go back once the bytes are written. An idle
//! connection costs its two sockets and nothing else.
//!
//! `copy: auto` starts buffered, which costs fewer cycles for small messages, and switches a
//! direction to splice once one read fills a whole buffer (bulk). When no pipe can be had
//! (out of file descriptors), that burst goes through a buffer instead, and is counted.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyKind, CopyMethod, Side};

pub(crate) use crate::duplex::reset;
use crate::duplex::{self, CopyCx, CopyEnd, End, Event, Pump, PumpError, Wait};
use crate::sys::{self, FdRef, Pipe, fd_ref};

/// Size of a buffered-copy buffer (monoio's own copy helpers use 4 KiB, which caps a stream
/// at about 1.3 Gbit/s here).
pub(crate) const BUF_SIZE: usize = 64 * 1024;
/// Pipe capacity asked for; the kernel may grant less.
const PIPE_SIZE: usize = 1024 * 1024;
/// Pipes and buffers kept for reuse per worker; more in flight are freed after use. Small:
/// a resting pipe costs two file descriptors that new connections may need.
const POOL_MAX: usize = 16;

/// Per-worker pools of pipes and buffers, lent only while bytes are in flight.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    pipes: RefCell<Vec<(Pipe, usize)>>,
    bufs: RefCell<Vec<Box<[u8]>>>,
}

impl Pools {
    /// A pipe and its granted capacity.
    fn take_pipe(&self) -> io::Result<(Pipe, usize)> {
        match self.pipes.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => {
                let p = Pipe::new(PIPE_SIZE)?;
                let cap = p.capacity();
                Ok((p, cap))
            }
        }
    }

    /// Takes back an empty pipe (one with bytes still in it must be dropped instead).
    fn put_pipe(&self, pipe: Pipe, capacity: usize) {
        let mut pipes = self.pipes.borrow_mut();
        if pipes.len() < POOL_MAX {
            pipes.push((pipe, capacity));
        }
    }

    pub(crate) fn take_buf(&self) -> Box<[u8]> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; BUF_SIZE].into())
    }

    /// Takes back a buffer; one of another size (the owned ring's leftovers) is freed.
    pub(crate) fn put_buf(&self, buf: Box<[u8]>) {
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < POOL_MAX && buf.len() == BUF_SIZE {
            bufs.push(buf);
        }
    }
}

/// Where the owned ring left a connection it handed over: per direction (down to up, up to
/// down), whether it already reached end of stream and passed it on, and the bytes it had
/// received and not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    pub done: [bool; 2],
    pub pending: [Vec<u8>; 2],
}

/// Copies both ways between two plaintext sockets until both sides close, one fails, the
/// connection idles out, or `closing` completes, starting from `resume`.
pub(crate) fn bidirectional<'a>(
    down: &'a TcpStream,
    up: &'a TcpStream,
    kind: CopyKind,
    cx: &'a CopyCx<'a>,
    closing: impl Future<Output = ()> + 'a,
    resume: Resume,
) -> impl Future<Output = CopyEnd> + 'a {
    let Resume {
        done,
        pending: [d2u_pending, u2d_pending],
    } = resume;
    let d2u = duplex::direction(
        Flow::new(down, up, kind, cx.pools).with_pending(d2u_pending),
        down,
        up,
        Side::Downstream,
        cx,
    );
    let u2d = duplex::direction(
        Flow::new(up, down, kind, cx.pools).with_pending(u2d_pending),
        up,
        down,
        Side::Upstream,
        cx,
    );
    duplex::duplex(down, up, d2u, u2d, cx, closing, done)
}

/// The synchronous half of a direction: what is in flight, and the syscalls that move it.
struct Flow<'a> {
    src: FdRef<'a>,
    dst: FdRef<'a>,
    pools: &'a Pools,
    /// Reading into a pipe (else into a buffer).
    splice: bool,
    /// `auto`: switch to splice once a read fills a whole buffer.
    adaptive: bool,
    in_flight: InFlight,
}

/// Bytes read from the source and not yet written to the destination. Kept compact: it is
/// part of every connection's state for the connection's whole life.
enum InFlight {
    Nothing,
    /// `pending` bytes in a pipe of `capacity`.
    Pipe {
        pipe: Pipe,
        capacity: u32,
        pending: u32,
    },
    /// The range `[start, end)` of a buffer.
    Buf {
        buf: Box<[u8]>,
        start: u32,
        end: u32,
    },
}

impl Drop for Flow<'_> {
    /// A direction stopped early (failure, idle, drain): buffers go back to the pool; a pipe
    /// with bytes still in it is closed rather than reused.
    fn drop(&mut self) {
        match std::mem::replace(&mut self.in_flight, InFlight::Nothing) {
            InFlight::Nothing => {}
            InFlight::Pipe {
                pipe,
                capacity,
                pending,
            } => {
                if pending == 0 {
                    self.pools.put_pipe(pipe, capacity as usize);
                }
            }
            InFlight::Buf { buf, .. } => self.pools.put_buf(buf),
        }
    }
}

/// A count that fits a pipe or buffer (both far below 4 GiB).
fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'a> Flow<'a> {
    fn new(src: &'a TcpStream, dst: &'a TcpStream, kind: CopyKind, pools: &'a Pools) -> Self {
        Self {
            src: fd_ref(src),
            dst: fd_ref(dst),
            pools,
            splice: kind == CopyKind::Splice,
            adaptive: kind == CopyKind::Auto,
            in_flight: InFlight::Nothing,
        }
    }

    /// Starts with `bytes` to write before anything is read (the owned ring's leftovers).
    fn with_pending(mut self, bytes: Vec<u8>) -> Self {
        if !bytes.is_empty() {
            let end = small(bytes.len());
            self.in_flight = InFlight::Buf {
                buf: bytes.into_boxed_slice(),
                start: 0,
                end,
            };
        }
        self
    }
}

impl Pump for Flow<'_> {
    /// Moves bytes until one side would block or the source ends. Errors name the end.
    fn pump(&mut self, on: &mut impl FnMut(Event)) -> Result<Wait, PumpError> {
        let mut drained = false;
        loop {
            // First write out what is in flight.
            if self.flush()? {
                return Ok(Wait::Writable);
            }
            // A short read took all there was: wait for readiness rather than pay for a read
            // that would only say EAGAIN.
            if drained {
                return Ok(Wait::Readable);
            }
            // Then read more.
            let piped = if self.splice {
                let r = self.read_into_pipe()?;
                if r.is_none() {
                    on(Event::SpliceFallback);
                }
                r
            } else {
                None
            };
            let outcome = match piped {
                Some(o) => o,
                None => self.read_into_buf()?,
            };
            match outcome {
                ReadOutcome::Moved { n, short, method } => {
                    on(Event::Moved(n, method));
                    drained = short;
                    // A full buffer in one read: this direction is moving bulk.
                    if self.adaptive && !self.splice && !short {
                        self.splice = true;
                        on(Event::SwitchedToSplice);
                    }
                }
                ReadOutcome::WouldBlock => return Ok(Wait::Readable),
                ReadOutcome::Eof => return Ok(Wait::Eof),
            }
        }
    }
}

impl Flow<'_> {
    /// Writes out what is in flight; `true` if the destination is full. An emptied pipe or
    /// buffer goes back to the pool.
    fn flush(&mut self) -> Result<bool, PumpError> {
        loop {
            let r = match &mut self.in_flight {
                InFlight::Nothing => return Ok(false),
                InFlight::Pipe { pipe, pending, .. } if *pending > 0 => {
                    sys::splice(&pipe.read, self.dst, *pending as usize)
                        .map(|n| *pending -= small(n))
                }
                InFlight::Buf { buf, start, end } if *start < *end => {
                    sys::send(self.dst.as_raw_fd(), &buf[*start as usize..*end as usize])
                        .map(|n| *start += small(n))
                }
                _ => {
                    match std::mem::replace(&mut self.in_flight, InFlight::Nothing) {
                        InFlight::Pipe { pipe, capacity, .. } => {
                            self.pools.put_pipe(pipe, capacity as usize)
                        }
                        InFlight::Buf { buf, .. } => self.pools.put_buf(buf),
                        InFlight::Nothing => {}
                    }
                    return Ok(false);
                }
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((End::Dst, e)),
            }
        }
    }

    /// Splices from the source into a pooled pipe; `None` when no pipe can be had (out of
    /// file descriptors), so the caller reads through a buffer instead, which needs none.
    fn read_into_pipe(&mut self) -> Result<Option<ReadOutcome>, PumpError> {
        let Ok((pipe, capacity)) = self.pools.take_pipe() else {
            return Ok(None);
        };
        loop {
            return match sys::splice(self.src, &pipe.write, capacity) {
                Ok(0) => {
                    self.pools.put_pipe(pipe, capacity);
                    Ok(Some(ReadOutcome::Eof))
                }
                Ok(n) => {
                    let (capacity32, pending) = (small(capacity), small(n));
                    self.in_flight = InFlight::Pipe {
                        pipe,
                        capacity: capacity32,
                        pending,
                    };
                    Ok(Some(ReadOutcome::Moved {
                        n,
                        method: CopyMethod::Splice,
                        short: n < capacity,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pools.put_pipe(pipe, capacity);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(Some(ReadOutcome::WouldBlock))
                    } else {
                        Err((End::Src, e))
                    }
                }
            };
        }
    }

    fn read_into_buf(&mut self) -> Result<ReadOutcome, PumpError> {
        let mut buf = self.pools.take_buf();
        loop {
            return match sys::recv(self.src.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    self.pools.put_buf(buf);
                    Ok(ReadOutcome::Eof)
                }
                Ok(n) => {
                    self.in_flight = InFlight::Buf {
                        buf,
                        start: 0,
                        end: small(n),
                    };
                    Ok(ReadOutcome::Moved {
                        n,
                        method: CopyMethod::Buffer,
                        short: n < BUF_SIZE,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pools.put_buf(buf);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(ReadOutcome::WouldBlock)
                    } else {
                        Err((End::Src, e))
                    }
                }
            };
        }
    }
}

enum ReadOutcome {
    /// `n` bytes read; `short` when fewer than asked for (the source is likely drained).
    Moved {
        n: usize,
        method: CopyMethod,
        short: bool,
    },
    WouldBlock,
    Eof,
}
