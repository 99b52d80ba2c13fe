//! Moving bytes both ways between the downstream and upstream sockets until both sides close.
//!
//! Readiness is awaited through the runtime (an io_uring poll, or epoll), then bytes move with
//! non-blocking syscalls: `splice(2)` through a pipe (zero-copy) or `recv`/`send` through a
//! buffer. Neither a pipe nor a buffer is held while a connection is idle: both come from a
//! small per-worker pool only once the source is readable, and go back once the bytes are
//! written. An idle connection costs its two sockets and nothing else.
//!
//! End of stream on one side is passed on as a half-close (`shutdown(SHUT_WR)`) to the other;
//! a reset or error on one side resets the other (`SO_LINGER` 0, then close).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyKind, Direction, Side, WorkerShard};
use socket2::SockRef;

use crate::idle::IdleHandle;
use crate::sys::{self, Pipe, fd_ref};

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

    pub(crate) fn put_buf(&self, buf: Box<[u8]>) {
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < POOL_MAX {
            bufs.push(buf);
        }
    }
}

/// Why a copy stopped.
#[derive(Debug)]
pub(crate) enum CopyEnd {
    /// Both directions reached end of stream and were passed on.
    Done,
    /// Nothing moved either way for the idle timeout; both sides were closed.
    Idle,
    /// The close signal fired (drain deadline); both sides were reset.
    Closed,
    /// One side failed; the other was reset.
    Failed { side: Side, error: io::Error },
}

/// What one copy needs from its worker.
pub(crate) struct CopyCx<'a> {
    pub pools: &'a Pools,
    pub shard: &'a WorkerShard,
    pub dir: Direction,
    /// This connection's idle-timeout registration.
    pub idle: &'a IdleHandle<'a>,
}

struct Failure {
    side: Side,
    error: io::Error,
}

fn fail(side: Side) -> impl FnOnce(io::Error) -> Failure {
    move |error| Failure { side, error }
}

/// Copies both ways until both sides close, one fails, the connection is idle for its
/// timeout, or `closing` completes.
///
/// The four futures are pinned in place and polled by hand: the `select!`/`try_join!` macros
/// would each keep another copy of the direction futures, and this state lives as long as
/// the connection.
pub(crate) async fn bidirectional(
    down: &TcpStream,
    up: &TcpStream,
    kind: CopyKind,
    cx: &CopyCx<'_>,
    closing: impl Future<Output = ()>,
) -> CopyEnd {
    let mut d2u = pin!(one_way(down, up, Side::Downstream, kind, cx));
    let mut u2d = pin!(one_way(up, down, Side::Upstream, kind, cx));
    let mut idle = pin!(cx.idle.expired());
    let mut closing = pin!(closing);
    let (mut d2u_done, mut u2d_done) = (false, false);
    poll_fn(|task| {
        for (fut, done) in [(d2u.as_mut(), &mut d2u_done), (u2d.as_mut(), &mut u2d_done)] {
            if !*done && let Poll::Ready(r) = fut.poll(task) {
                match r {
                    Ok(()) => *done = true,
                    Err(Failure { side, error }) => {
                        reset(if side == Side::Downstream { up } else { down });
                        return Poll::Ready(CopyEnd::Failed { side, error });
                    }
                }
            }
        }
        if d2u_done && u2d_done {
            return Poll::Ready(CopyEnd::Done);
        }
        if idle.as_mut().poll(task).is_ready() {
            return Poll::Ready(CopyEnd::Idle);
        }
        if closing.as_mut().poll(task).is_ready() {
            reset(down);
            reset(up);
            return Poll::Ready(CopyEnd::Closed);
        }
        Poll::Pending
    })
    .await
}

/// Makes the coming close send RST instead of FIN.
pub(crate) fn reset(s: &TcpStream) {
    let _ = SockRef::from(&fd_ref(s)).set_linger(Some(Duration::ZERO));
}

/// What a direction needs before it can go on.
enum Wait {
    /// Nothing to read now: wait until the source is readable.
    Readable,
    /// The destination's send buffer is full: wait until it is writable.
    Writable,
    /// The source reached end of stream and everything read was written.
    Eof,
}

/// One direction: bytes from `src` to `dst` until end of stream, then a half-close.
///
/// Deliberately flat: the only awaits are the two readiness waits, and everything else is
/// synchronous, so the state kept for an idle connection is small (nested async helpers made
/// it kilobytes per connection). A pipe or buffer is held only while bytes are in flight.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    kind: CopyKind,
    cx: &CopyCx<'_>,
) -> Result<(), Failure> {
    let to = if from == Side::Downstream {
        Side::Upstream
    } else {
        Side::Downstream
    };
    let mut flow = Flow {
        src: src.as_raw_fd(),
        dst: dst.as_raw_fd(),
        pools: cx.pools,
        splice: kind == CopyKind::Splice,
        adaptive: kind == CopyKind::Auto,
        in_flight: InFlight::Nothing,
    };
    loop {
        match flow.pump(&mut |event| match event {
            Event::Moved(n) => {
                cx.idle.touch();
                cx.shard.bytes(cx.dir, from, n as u64);
            }
            Event::SwitchedToSplice => cx.shard.copy_switched_to_splice(),
        }) {
            Ok(Wait::Readable) => src.readable(false).await.map_err(fail(from))?,
            Ok(Wait::Writable) => dst.writable(false).await.map_err(fail(to))?,
            Ok(Wait::Eof) => break,
            Err((side, e)) => {
                return Err(fail(if side == Side::Downstream { from } else { to })(e));
            }
        }
    }
    // End of stream from `src`: pass the half-close on.
    SockRef::from(&fd_ref(dst))
        .shutdown(Shutdown::Write)
        .or_else(ignore_not_connected)
        .map_err(fail(to))
}

/// The synchronous half of a direction: what is in flight, and the syscalls that move it.
struct Flow<'a> {
    src: RawFd,
    dst: RawFd,
    pools: &'a Pools,
    /// Reading into a pipe (else into a buffer).
    splice: bool,
    /// `auto`: switch to splice once a read fills a whole buffer.
    adaptive: bool,
    in_flight: InFlight,
}

/// What a pump reports as it goes.
enum Event {
    Moved(usize),
    SwitchedToSplice,
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

/// Which end a syscall failed on: `Downstream` here means the source, `Upstream` the
/// destination (mapped to real sides by the caller).
type PumpError = (Side, io::Error);

/// A count that fits a pipe or buffer (both far below 4 GiB).
fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Flow<'_> {
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
            let outcome = match self
                .splice
                .then(|| self.read_into_pipe())
                .transpose()?
                .flatten()
            {
                Some(o) => o,
                None => self.read_into_buf()?,
            };
            match outcome {
                ReadOutcome::Moved { n, short } => {
                    on(Event::Moved(n));
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

    /// Writes out what is in flight; `true` if the destination is full. An emptied pipe or
    /// buffer goes back to the pool.
    fn flush(&mut self) -> Result<bool, PumpError> {
        loop {
            let r = match &mut self.in_flight {
                InFlight::Nothing => return Ok(false),
                InFlight::Pipe { pipe, pending, .. } if *pending > 0 => {
                    sys::splice(pipe.read.as_raw_fd(), self.dst, *pending as usize)
                        .map(|n| *pending -= small(n))
                }
                InFlight::Buf { buf, start, end } if *start < *end => {
                    sys::send(self.dst, &buf[*start as usize..*end as usize])
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
                Err(e) => return Err((Side::Upstream, e)),
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
            return match sys::splice(self.src, pipe.write.as_raw_fd(), capacity) {
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
                        short: n < capacity,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pools.put_pipe(pipe, capacity);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(Some(ReadOutcome::WouldBlock))
                    } else {
                        Err((Side::Downstream, e))
                    }
                }
            };
        }
    }

    fn read_into_buf(&mut self) -> Result<ReadOutcome, PumpError> {
        let mut buf = self.pools.take_buf();
        loop {
            return match sys::recv(self.src, &mut buf) {
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
                        short: n < BUF_SIZE,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pools.put_buf(buf);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(ReadOutcome::WouldBlock)
                    } else {
                        Err((Side::Downstream, e))
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
        short: bool,
    },
    WouldBlock,
    Eof,
}

/// A peer that already closed both ways cannot be half-closed; that is not a failure.
pub(crate) fn ignore_not_connected(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}
