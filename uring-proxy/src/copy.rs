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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyKind, Direction, Side, WorkerShard};
use socket2::SockRef;

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
    fn pipe(&self) -> io::Result<PooledPipe<'_>> {
        let (pipe, capacity) = match self.pipes.borrow_mut().pop() {
            Some(p) => p,
            None => {
                let p = Pipe::new(PIPE_SIZE)?;
                let cap = p.capacity();
                (p, cap)
            }
        };
        Ok(PooledPipe {
            pools: self,
            pipe: Some(pipe),
            capacity,
            pending: 0,
        })
    }

    fn buf(&self) -> PooledBuf<'_> {
        let buf = self
            .bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; BUF_SIZE].into());
        PooledBuf {
            pools: self,
            buf: Some(buf),
        }
    }
}

/// A pipe on loan; it goes back to the pool on drop only when empty, else it is closed.
struct PooledPipe<'a> {
    pools: &'a Pools,
    pipe: Option<Pipe>,
    capacity: usize,
    pending: usize,
}

impl Drop for PooledPipe<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            let mut pipes = self.pools.pipes.borrow_mut();
            if self.pending == 0 && pipes.len() < POOL_MAX {
                pipes.push((p, self.capacity));
            }
        }
    }
}

struct PooledBuf<'a> {
    pools: &'a Pools,
    buf: Option<Box<[u8]>>,
}

impl PooledBuf<'_> {
    fn get(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut bufs = self.pools.bufs.borrow_mut();
            if bufs.len() < POOL_MAX {
                bufs.push(b);
            }
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
    pub idle: Duration,
}

struct Failure {
    side: Side,
    error: io::Error,
}

fn fail(side: Side) -> impl FnOnce(io::Error) -> Failure {
    move |error| Failure { side, error }
}

/// Copies both ways until both sides close, one fails, `idle` passes without a byte, or
/// `closing` completes.
pub(crate) async fn bidirectional(
    down: &TcpStream,
    up: &TcpStream,
    kind: CopyKind,
    cx: &CopyCx<'_>,
    closing: impl Future<Output = ()>,
) -> CopyEnd {
    let activity = Cell::new(Instant::now());
    let d2u = one_way(down, up, Side::Downstream, kind, cx, &activity);
    let u2d = one_way(up, down, Side::Upstream, kind, cx, &activity);
    let end = monoio::select! {
        biased;
        r = async { monoio::try_join!(d2u, u2d) } => match r {
            Ok(_) => CopyEnd::Done,
            Err(Failure { side, error }) => {
                let other = if side == Side::Downstream { up } else { down };
                reset(other);
                CopyEnd::Failed { side, error }
            }
        },
        _ = idle_expired(&activity, cx.idle) => CopyEnd::Idle,
        _ = closing => {
            reset(down);
            reset(up);
            CopyEnd::Closed
        }
    };
    end
}

/// Makes the coming close send RST instead of FIN.
pub(crate) fn reset(s: &TcpStream) {
    let _ = SockRef::from(&fd_ref(s)).set_linger(Some(Duration::ZERO));
}

async fn idle_expired(activity: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = activity.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)).await;
    }
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    kind: CopyKind,
    cx: &CopyCx<'_>,
    activity: &Cell<Instant>,
) -> Result<(), Failure> {
    let to = if from == Side::Downstream {
        Side::Upstream
    } else {
        Side::Downstream
    };
    let moved = |n: usize| {
        activity.set(Instant::now());
        cx.shard.bytes(cx.dir, from, n as u64);
    };
    match kind {
        CopyKind::Splice => splice_loop(src, dst, from, to, cx.pools, moved).await?,
        CopyKind::Buffered => buffered_loop(src, dst, from, to, cx.pools, moved).await?,
    }
    // End of stream from `src`: pass the half-close on.
    SockRef::from(&fd_ref(dst))
        .shutdown(Shutdown::Write)
        .or_else(ignore_not_connected)
        .map_err(fail(to))
}

/// A peer that already closed both ways cannot be half-closed; that is not a failure.
fn ignore_not_connected(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

async fn splice_loop(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    to: Side,
    pools: &Pools,
    moved: impl Fn(usize),
) -> Result<(), Failure> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable(false).await.map_err(fail(from))?;
        let mut pipe = match pools.pipe() {
            Ok(p) => p,
            // Out of descriptors (or pipe memory): move this burst through a buffer, which
            // needs none, so open connections keep flowing while the process is at its limit.
            Err(_) => match buffered_burst(src_fd, dst, dst_fd, from, to, pools, &moved).await? {
                Burst::Eof => return Ok(()),
                Burst::Drained => continue,
            },
        };
        let (pipe_w, pipe_r) = match &pipe.pipe {
            Some(p) => (p.write.as_raw_fd(), p.read.as_raw_fd()),
            None => return Err(fail(Side::Internal)(io::ErrorKind::Other.into())),
        };
        loop {
            match sys::splice(src_fd, pipe_w, pipe.capacity) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    pipe.pending = n;
                    moved(n);
                    drain_pipe(pipe_r, dst, dst_fd, &mut pipe.pending)
                        .await
                        .map_err(fail(to))?;
                    if n < pipe.capacity {
                        // Most likely all there was; wait for readiness rather than pay for
                        // a splice that would only say EAGAIN.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(from)(e)),
            }
        }
    }
}

async fn drain_pipe(
    pipe_r: RawFd,
    dst: &TcpStream,
    dst_fd: RawFd,
    pending: &mut usize,
) -> io::Result<()> {
    while *pending > 0 {
        match sys::splice(pipe_r, dst_fd, *pending) {
            Ok(n) => *pending -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn buffered_loop(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    to: Side,
    pools: &Pools,
    moved: impl Fn(usize),
) -> Result<(), Failure> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable(false).await.map_err(fail(from))?;
        if let Burst::Eof = buffered_burst(src_fd, dst, dst_fd, from, to, pools, &moved).await? {
            return Ok(());
        }
    }
}

enum Burst {
    /// The source has nothing more for now.
    Drained,
    /// The source reached end of stream.
    Eof,
}

/// Moves what a readable source has through one pooled buffer.
async fn buffered_burst(
    src_fd: RawFd,
    dst: &TcpStream,
    dst_fd: RawFd,
    from: Side,
    to: Side,
    pools: &Pools,
    moved: &impl Fn(usize),
) -> Result<Burst, Failure> {
    let mut buf = pools.buf();
    loop {
        match sys::recv(src_fd, buf.get()) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => {
                moved(n);
                write_all(dst, dst_fd, &buf.get()[..n])
                    .await
                    .map_err(fail(to))?;
                if n < BUF_SIZE {
                    return Ok(Burst::Drained);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(from)(e)),
        }
    }
}

async fn write_all(dst: &TcpStream, dst_fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match sys::send(dst_fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
