//! The one duplex copy loop: two directions, each a [`Pump`] between a source and a
//! destination socket, run together until both reach end of stream, one fails, the
//! connection idles out, or the drain deadline passes. Plaintext (`copy`) and TLS
//! (`tls::pump`) only differ in their pumps.
//!
//! A pump is synchronous: it moves what it can with non-blocking syscalls and says what it
//! waits for. The only awaits are the two readiness waits, so the state an idle connection
//! keeps is small (nested async helpers made it kilobytes per connection).

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::task::Poll;

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyMethod, Direction, Side, WorkerShard};
use socket2::SockRef;

use crate::copy::Pools;
use crate::idle::{Expired, IdleHandle};
use crate::sys::fd_ref;

/// What a pump needs before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Nothing to read now: wait until the source is readable.
    Readable,
    /// The destination cannot take more now: wait until it is writable.
    Writable,
    /// The source reached end of stream and everything was passed on.
    Eof,
}

/// Which of its two sockets a pump's error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Src,
    Dst,
}

pub(crate) type PumpError = (End, io::Error);

/// What a pump reports as it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    /// Bytes read from the source, and how they moved.
    Moved(usize, CopyMethod),
    /// An `auto` direction moved bulk and now splices.
    SwitchedToSplice,
    /// A read that would have spliced went through a buffer (no pipe could be had).
    SpliceFallback,
}

/// One direction's synchronous half.
pub(crate) trait Pump {
    /// Moves bytes until one side would block or the source ends.
    fn pump(&mut self, on: &mut impl FnMut(Event)) -> Result<Wait, PumpError>;
}

/// What a copy needs from its worker.
pub(crate) struct CopyCx<'a> {
    pub pools: &'a Pools,
    pub shard: &'a WorkerShard,
    pub dir: Direction,
    /// This connection's idle-timeout registration.
    pub idle: &'a IdleHandle<'a>,
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

/// A direction's failure, on the real side.
pub(crate) struct Failure {
    side: Side,
    error: io::Error,
}

fn other(side: Side) -> Side {
    match side {
        Side::Downstream => Side::Upstream,
        _ => Side::Downstream,
    }
}

/// Runs `pump` from `src` (the `from` side) to `dst` until end of stream, then half-closes
/// `dst`.
pub(crate) async fn direction<P: Pump>(
    mut pump: P,
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    cx: &CopyCx<'_>,
) -> Result<(), Failure> {
    let to = other(from);
    let fail = |side| move |error| Failure { side, error };
    loop {
        let wait = pump.pump(&mut |e| match e {
            Event::Moved(n, method) => {
                cx.idle.touch();
                cx.shard.bytes(cx.dir, from, method, n as u64);
            }
            Event::SwitchedToSplice => cx.shard.copy_switched_to_splice(),
            Event::SpliceFallback => cx.shard.splice_fallback(),
        });
        match wait {
            Ok(Wait::Readable) => src.readable(false).await.map_err(fail(from))?,
            Ok(Wait::Writable) => dst.writable(false).await.map_err(fail(to))?,
            Ok(Wait::Eof) => break,
            Err((End::Src, error)) => return Err(Failure { side: from, error }),
            Err((End::Dst, error)) => return Err(Failure { side: to, error }),
        }
    }
    // Buffers and pipes go back to the pool before the half-close.
    drop(pump);
    shutdown_write(dst).map_err(fail(to))
}

/// Runs both directions until both are done, one fails, the connection is idle for its
/// timeout, or `closing` completes; a direction marked in `done` is not run.
///
/// A hand-written future rather than an `async fn`: an `async fn` would keep its arguments
/// and the pinned copies of them side by side, doubling the state every connection keeps for
/// its whole life; the `select!`/`try_join!` macros would add more copies still.
pub(crate) fn duplex<'a, A, B, C>(
    down: &'a TcpStream,
    up: &'a TcpStream,
    d2u: A,
    u2d: B,
    cx: &'a CopyCx<'a>,
    closing: C,
    done: [bool; 2],
) -> Duplex<'a, A, B, C>
where
    A: Future<Output = Result<(), Failure>>,
    B: Future<Output = Result<(), Failure>>,
    C: Future<Output = ()>,
{
    Duplex {
        d2u,
        u2d,
        idle: cx.idle.expired(),
        closing,
        d2u_done: done[0],
        u2d_done: done[1],
        down,
        up,
    }
}

pin_project_lite::pin_project! {
    /// The future [`duplex`] returns.
    pub(crate) struct Duplex<'a, A, B, C> {
        #[pin]
        d2u: A,
        #[pin]
        u2d: B,
        idle: Expired<'a>,
        #[pin]
        closing: C,
        d2u_done: bool,
        u2d_done: bool,
        down: &'a TcpStream,
        up: &'a TcpStream,
    }
}

impl<A, B, C> Future for Duplex<'_, A, B, C>
where
    A: Future<Output = Result<(), Failure>>,
    B: Future<Output = Result<(), Failure>>,
    C: Future<Output = ()>,
{
    type Output = CopyEnd;

    fn poll(self: std::pin::Pin<&mut Self>, task: &mut std::task::Context<'_>) -> Poll<CopyEnd> {
        let this = self.project();
        let (down, up) = (*this.down, *this.up);
        let failed =
            half(this.d2u, this.d2u_done, task).or_else(|| half(this.u2d, this.u2d_done, task));
        if let Some(Failure { side, error }) = failed {
            reset(if side == Side::Downstream { up } else { down });
            return Poll::Ready(CopyEnd::Failed { side, error });
        }
        if *this.d2u_done && *this.u2d_done {
            return Poll::Ready(CopyEnd::Done);
        }
        if std::pin::Pin::new(this.idle).poll(task).is_ready() {
            return Poll::Ready(CopyEnd::Idle);
        }
        if this.closing.poll(task).is_ready() {
            reset(down);
            reset(up);
            return Poll::Ready(CopyEnd::Closed);
        }
        Poll::Pending
    }
}

/// Polls one direction unless it is done; returns its failure, if it failed.
fn half<F: Future<Output = Result<(), Failure>>>(
    fut: std::pin::Pin<&mut F>,
    done: &mut bool,
    task: &mut std::task::Context<'_>,
) -> Option<Failure> {
    if *done {
        return None;
    }
    match fut.poll(task) {
        Poll::Ready(Ok(())) => {
            *done = true;
            None
        }
        Poll::Ready(Err(f)) => Some(f),
        Poll::Pending => None,
    }
}

/// Makes the coming close send RST instead of FIN.
pub(crate) fn reset(s: &TcpStream) {
    let _ = SockRef::from(&fd_ref(s)).set_linger(Some(std::time::Duration::ZERO));
}

/// Passes a half-close on (a peer that already closed both ways is not a failure).
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    crate::sys::shutdown_write(s.as_raw_fd())
}
