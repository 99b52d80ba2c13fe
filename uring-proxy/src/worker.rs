//! A worker: one pinned thread, one monoio runtime, one SO_REUSEPORT listener per listening
//! address, and every connection those listeners accept. Workers share nothing they write.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use monoio::net::{TcpListener, TcpStream};
use ringmesh_core::metrics::{AcceptError, Direction, Outcome, WorkerShard};

use crate::copy::{self, Pools};
use crate::driver::{self, DriverKind};
use crate::idle::IdleTracker;
use crate::orig_dst::OrigDstSource;
use crate::signal::LocalSignal;
use crate::state::{Phase, Shared};
use crate::{inbound, outbound, sys};

/// What every connection task on this worker reaches through an `Rc`.
pub(crate) struct WorkerCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub orig_dst: Arc<dyn OrigDstSource>,
    pub pools: Pools,
    /// Round-robin turn per service, reset when the config version changes.
    turns: RefCell<(u64, Vec<u64>)>,
    /// Fired when the drain begins: accept loops stop.
    pub draining: LocalSignal,
    /// Fired at the drain deadline: connections are reset.
    pub closing: LocalSignal,
    /// Every connection's activity, swept for idle timeouts.
    pub idle: IdleTracker,
}

impl WorkerCtx {
    pub fn shard(&self) -> &WorkerShard {
        &self.shared.shards[self.id]
    }

    /// The next round-robin turn for service `index` of config `version`.
    pub fn next_turn(&self, version: u64, index: usize) -> u64 {
        let mut turns = self.turns.borrow_mut();
        if turns.0 != version {
            *turns = (version, Vec::new());
        }
        if turns.1.len() <= index {
            // Start each worker at a different place so N workers do not all pick endpoint 0.
            let start = self.id as u64;
            turns.1.resize(index + 1, start);
        }
        let t = turns.1[index];
        turns.1[index] = t.wrapping_add(1);
        t
    }
}

/// Counts a connection as opened, and as closed exactly once: by [`finish`](Self::finish),
/// or, if the task is dropped first, as an internal error.
pub(crate) struct ConnRecord<'a> {
    shard: &'a WorkerShard,
    dir: Direction,
    start: Instant,
    done: bool,
}

impl<'a> ConnRecord<'a> {
    pub fn open(shard: &'a WorkerShard, dir: Direction) -> Self {
        shard.opened(dir);
        Self {
            shard,
            dir,
            start: Instant::now(),
            done: false,
        }
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.shard.closed(self.dir, outcome, self.start.elapsed());
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for ConnRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shard
                .closed(self.dir, Outcome::InternalError, self.start.elapsed());
        }
    }
}

/// A worker's listeners, bound by the main thread.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<(Direction, std::net::TcpListener)>,
}

pub(crate) fn spawn(
    setup: WorkerSetup,
    shared: Arc<Shared>,
    orig_dst: Arc<dyn OrigDstSource>,
) -> io::Result<thread::JoinHandle<io::Result<()>>> {
    thread::Builder::new()
        .name(format!("ringmesh-worker-{}", setup.id))
        .spawn(move || {
            if let Some(cpu) = setup.cpu
                && let Err(e) = sys::pin_current_thread(cpu)
            {
                tracing::warn!(worker = setup.id, cpu, error = %e, "could not pin worker");
            }
            let kind = shared.driver.kind;
            let ctx = Rc::new(WorkerCtx {
                id: setup.id,
                shared,
                orig_dst,
                pools: Pools::default(),
                turns: RefCell::new((0, Vec::new())),
                draining: LocalSignal::default(),
                closing: LocalSignal::default(),
                idle: IdleTracker::default(),
            });
            driver::block_on(kind, || run(ctx, setup.listeners, kind))?
        })
}

async fn run(
    ctx: Rc<WorkerCtx>,
    listeners: Vec<(Direction, std::net::TcpListener)>,
    kind: DriverKind,
) -> io::Result<()> {
    let mut phase = ctx.shared.phase.subscribe();
    for (dir, l) in listeners {
        // io_uring waits in the kernel; epoll needs a non-blocking socket.
        l.set_nonblocking(kind == DriverKind::Epoll)?;
        let l = TcpListener::from_std(l)?;
        monoio::spawn(accept_loop(ctx.clone(), dir, l));
    }
    monoio::spawn(sweep_idle(ctx.clone()));
    ctx.shared.workers_started.fetch_add(1, Relaxed);
    tracing::debug!(worker = ctx.id, driver = kind.as_str(), "worker started");

    let _ = phase.wait_for(|p| *p != Phase::Running).await;
    ctx.draining.fire();
    let _ = phase.wait_for(|p| *p == Phase::Closing).await;
    ctx.closing.fire();
    // Reset connections unwind within a tick or two.
    while ctx.shard().active_total() > 0 {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Closes idle connections: one timer per worker instead of one per connection.
async fn sweep_idle(ctx: Rc<WorkerCtx>) {
    loop {
        let idle = ctx.shared.config.load().config.timeouts.idle;
        monoio::select! {
            biased;
            _ = ctx.closing.wait() => return,
            _ = monoio::time::sleep(IdleTracker::tick(idle)) => ctx.idle.sweep(Instant::now()),
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn accept_loop(ctx: Rc<WorkerCtx>, dir: Direction, listener: TcpListener) {
    // A spare descriptor, given up when the process runs out so that one pending connection
    // can be accepted and closed: the client hears at once instead of waiting in the backlog.
    let mut reserve = File::open("/dev/null").ok();
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = monoio::select! {
            biased;
            _ = ctx.draining.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                let limit = ctx
                    .shared
                    .config
                    .load()
                    .config
                    .limits
                    .max_connections_per_worker;
                if ctx.shard().active_total() >= i64::from(limit.get()) {
                    refuse(&ctx, dir, stream, Outcome::ConnectionLimit);
                    continue;
                }
                match dir {
                    Direction::Outbound => monoio::spawn(outbound::serve(ctx.clone(), stream)),
                    Direction::Inbound => monoio::spawn(inbound::serve(ctx.clone(), stream)),
                };
            }
            Err(e) if is_fd_exhaustion(&e) => {
                ctx.shard().accept_error(AcceptError::FdExhausted);
                if backoff.is_zero() {
                    tracing::warn!(
                        worker = ctx.id, %dir, side = "internal", error = %e,
                        "out of file descriptors; refusing new connections and backing off"
                    );
                }
                drop(reserve.take());
                if let Ok(Ok((stream, _))) =
                    monoio::time::timeout(Duration::from_millis(1), listener.accept()).await
                {
                    copy::reset(&stream);
                }
                reserve = File::open("/dev/null").ok();
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                monoio::select! {
                    biased;
                    _ = monoio::time::sleep(backoff) => {},
                    _ = ctx.draining.wait() => break,
                }
            }
            Err(e) => {
                // ECONNABORTED and friends: the client gave up before we got to it.
                ctx.shard().accept_error(AcceptError::Other);
                tracing::debug!(worker = ctx.id, %dir, error = %e, "accept failed");
            }
        }
    }
    tracing::debug!(worker = ctx.id, %dir, "listener closed");
}

/// Accepts-and-resets a connection the worker will not serve.
fn refuse(ctx: &WorkerCtx, dir: Direction, stream: TcpStream, outcome: Outcome) {
    copy::reset(&stream);
    ConnRecord::open(ctx.shard(), dir).finish(outcome);
    tracing::debug!(worker = ctx.id, %dir, %outcome, "connection refused");
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::driver::Resolved;
    use ringmesh_core::config::Config;

    /// An idle connection costs its task's state for its whole life, so that state has a
    /// budget (it was 7.5 KB before the copy was flattened and the idle timers shared).
    #[test]
    fn connection_state_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            a.set_nonblocking(true).unwrap();
            let a = TcpStream::from_std(a).unwrap();
            let resolved = Resolved {
                kind: DriverKind::Epoll,
                fallback_reason: None,
            };
            let shared = Shared::new(Config::embedded_default(), 1, resolved, vec![], None);
            let ctx = Rc::new(WorkerCtx {
                id: 0,
                shared,
                orig_dst: Arc::new(crate::orig_dst::SoOriginalDst),
                pools: Pools::default(),
                turns: RefCell::new((0, Vec::new())),
                draining: LocalSignal::default(),
                closing: LocalSignal::default(),
                idle: IdleTracker::default(),
            });
            let outbound = std::mem::size_of_val(&outbound::serve(ctx.clone(), a));
            assert!(
                outbound <= 1400,
                "outbound connection state is {outbound} bytes"
            );
        });
    }
}
