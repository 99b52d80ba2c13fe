//! A worker: one thread, one monoio runtime, one SO_REUSEPORT listener per listening
//! address and workload, and every connection those listeners accept. Workers share nothing
//! they write.
//!
//! A worker proves it is alive with a heartbeat (`/live` and `/ready` read it). A panic in a
//! worker aborts the process (the hook in [`install_panic_hook`]): its connections are gone
//! with it, and an orchestrator restarting the proxy is better than a pod that reports
//! ready behind a dead worker.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use monoio::net::{TcpListener, TcpStream};
use ringmesh_core::metrics::{AcceptError, Direction, Outcome};
use socket2::SockRef;

use crate::connect::set_tcp_options;
use crate::ctx::{ConnRecord, WorkerCtx};
use crate::driver::{self, DriverKind};
use crate::idle::IdleTracker;
use crate::orig_dst::OrigDstSource;
use crate::state::{Phase, Shared};
use crate::sys::{self, fd_ref};
use crate::{copy, inbound, outbound};

/// How often a worker beats; `/live` fails after `--stall-timeout` without one.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);

const THREAD_PREFIX: &str = "ringmesh-worker-";

/// One listener of a worker: its direction and the workload it serves.
#[derive(Debug)]
pub(crate) struct ListenerSetup {
    pub dir: Direction,
    pub workload: usize,
    pub listener: std::net::TcpListener,
}

/// A worker's listeners, bound by the main thread.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<ListenerSetup>,
    /// The UDP relay sockets (none when the relays are off).
    pub udp: Vec<crate::udp::UdpSetup>,
    /// Node mode's commands (workloads added and removed).
    pub cmds: tokio::sync::mpsc::UnboundedReceiver<crate::node::WorkerCmd>,
}

/// Makes a panic on a worker thread abort the process, after saying so on stderr directly
/// (the log writer is asynchronous and would not get the line out before the abort).
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let name = thread::current().name().unwrap_or("").to_string();
            if name.starts_with(THREAD_PREFIX) {
                eprintln!(
                    "uring-proxy: {name} panicked; aborting so that the process is restarted \
                     rather than serve with a dead worker"
                );
                std::process::abort();
            }
        }));
    });
}

pub(crate) fn spawn(
    setup: WorkerSetup,
    shared: Arc<Shared>,
    orig_dst: Arc<dyn OrigDstSource>,
) -> io::Result<thread::JoinHandle<io::Result<()>>> {
    thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", setup.id))
        .spawn(move || {
            if let Some(cpu) = setup.cpu
                && let Err(e) = sys::pin_current_thread(cpu)
            {
                tracing::warn!(worker = setup.id, cpu, error = %e, "could not pin worker");
            }
            let kind = shared.driver.kind;
            let ctx = Rc::new(WorkerCtx::new(setup.id, shared, orig_dst));
            driver::block_on(kind, || {
                run(ctx, setup.listeners, setup.udp, setup.cmds, kind)
            })?
        })
}

async fn run(
    ctx: Rc<WorkerCtx>,
    listeners: Vec<ListenerSetup>,
    udp: Vec<crate::udp::UdpSetup>,
    cmds: tokio::sync::mpsc::UnboundedReceiver<crate::node::WorkerCmd>,
    kind: DriverKind,
) -> io::Result<()> {
    let mut phase = ctx.shared.phase.subscribe();
    for l in listeners {
        serve_listener(&ctx, l, kind)?;
    }
    monoio::spawn(commands(ctx.clone(), cmds, kind));
    for u in udp {
        crate::udp::spawn(ctx.clone(), u)?;
    }
    if let Some(ring) = &ctx.ring {
        monoio::spawn(ring.clone().run());
    }
    monoio::spawn(sweep_idle(ctx.clone()));
    monoio::spawn(heartbeat(ctx.clone()));
    ctx.shared.heartbeat(ctx.id);
    ctx.shared.workers_started.fetch_add(1, Relaxed);
    tracing::debug!(worker = ctx.id, driver = kind.as_str(), "worker started");

    let _ = phase.wait_for(|p| *p != Phase::Running).await;
    ctx.draining.fire();
    let _ = phase.wait_for(|p| *p == Phase::Closing).await;
    ctx.closing.fire();
    // Reset connections unwind within a tick or two.
    while ctx.shared.active_on(ctx.id) > 0 {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Starts accepting on one listener.
fn serve_listener(ctx: &Rc<WorkerCtx>, l: ListenerSetup, kind: DriverKind) -> io::Result<()> {
    // io_uring waits in the kernel; epoll needs a non-blocking socket.
    l.listener.set_nonblocking(kind == DriverKind::Epoll)?;
    let listener = TcpListener::from_std(l.listener)?;
    monoio::spawn(accept_loop(ctx.clone(), l.dir, l.workload, listener));
    Ok(())
}

/// Node mode: workloads added and removed by the control thread.
async fn commands(
    ctx: Rc<WorkerCtx>,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<crate::node::WorkerCmd>,
    kind: DriverKind,
) {
    use crate::node::WorkerCmd;
    loop {
        let cmd = monoio::select! {
            biased;
            _ = ctx.closing.wait() => return,
            c = cmds.recv() => c,
        };
        match cmd {
            None => return,
            Some(WorkerCmd::Serve { slot, listeners }) => {
                ctx.reset_slot(slot);
                for l in listeners {
                    if let Err(e) = serve_listener(&ctx, l, kind) {
                        tracing::warn!(worker = ctx.id, slot, error = %e, "cannot serve a workload's listener");
                    }
                }
            }
            Some(WorkerCmd::StopAccepting { slot, done }) => {
                let s = ctx.slot(slot);
                s.stop.fire();
                monoio::spawn(async move {
                    if s.accepting.get() > 0 {
                        s.stopped.wait().await;
                    }
                    let _ = done.send(());
                });
            }
            Some(WorkerCmd::Close { slot }) => ctx.slot(slot).closing.fire(),
        }
    }
}

/// Shows the control thread that this worker's event loop turns.
async fn heartbeat(ctx: Rc<WorkerCtx>) {
    loop {
        monoio::select! {
            biased;
            _ = ctx.closing.wait() => return,
            _ = monoio::time::sleep(HEARTBEAT) => {
                ctx.shared.heartbeat(ctx.id);
                // Idle pooled HTTP connections: aged out, and all closed once draining.
                if ctx.draining.is_fired() {
                    ctx.http_pool.clear();
                } else {
                    let max_idle = ctx.shared.config.load().config.live.http.pool_idle_timeout;
                    ctx.http_pool.sweep(max_idle);
                }
            }
        }
    }
}

/// Closes idle connections: one timer per worker instead of one per connection.
async fn sweep_idle(ctx: Rc<WorkerCtx>) {
    loop {
        let idle = ctx.shared.config.load().config.live.timeouts.idle;
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

async fn accept_loop(ctx: Rc<WorkerCtx>, dir: Direction, workload: usize, listener: TcpListener) {
    let shared = ctx.shared.clone();
    let Some(w) = shared.workload(workload) else {
        return;
    };
    let w = &*w;
    // This workload's generation of the slot's signals: a removal stops this loop.
    let slot = ctx.slot(workload);
    slot.accepting.set(slot.accepting.get() + 1);
    let running = AcceptGuard(slot.clone());
    let mut backoff = Duration::ZERO;
    // The config whose TCP options the listener carries (accepted sockets inherit them).
    let mut tcp_generation = 0;
    loop {
        let snap = shared.config.load();
        if snap.generation != tcp_generation {
            tcp_generation = snap.generation;
            if let Err(e) =
                set_tcp_options(SockRef::from(&fd_ref(&listener)), &snap.config.live.tcp)
            {
                tracing::warn!(worker = ctx.id, %dir, error = %e, "cannot set TCP options on the listener");
            }
        }
        let limit = snap.config.live.limits.max_connections_per_worker;
        drop(snap);
        let accepted = monoio::select! {
            biased;
            _ = ctx.draining.wait() => break,
            _ = slot.stop.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                ctx.stats().accepted.inc();
                let held = shared.active_on(ctx.id);
                if held >= i64::from(limit.get()) {
                    refuse(&ctx, w, dir, stream, Outcome::ConnectionLimit);
                    continue;
                }
                match dir {
                    Direction::Outbound => {
                        monoio::spawn(outbound::serve(ctx.clone(), workload, stream))
                    }
                    Direction::Inbound => {
                        monoio::spawn(inbound::serve(ctx.clone(), workload, stream))
                    }
                };
            }
            Err(e) if is_fd_exhaustion(&e) => {
                ctx.shard(w).accept_error(AcceptError::FdExhausted);
                if backoff.is_zero() {
                    tracing::warn!(
                        worker = ctx.id, %dir, side = "internal", error = %e,
                        "out of file descriptors; refusing new connections and backing off"
                    );
                }
                // The process's spare descriptor, given up so that one pending connection can
                // be accepted and closed: the client hears at once instead of waiting in the
                // backlog.
                if let Some(lent) = shared.spare_fd.lend() {
                    if let Ok(Ok((stream, _))) =
                        monoio::time::timeout(Duration::from_millis(1), listener.accept()).await
                    {
                        copy::reset(&stream);
                    }
                    drop(lent);
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                monoio::select! {
                    biased;
                    _ = monoio::time::sleep(backoff) => {},
                    _ = ctx.draining.wait() => break,
                }
            }
            Err(e) => {
                // ECONNABORTED and friends: the client gave up before we got to it.
                ctx.shard(w).accept_error(AcceptError::Other);
                tracing::debug!(worker = ctx.id, %dir, error = %e, "accept failed");
            }
        }
    }
    // The listener closes first, then the slot hears that this loop is gone.
    drop(listener);
    drop(running);
    tracing::debug!(worker = ctx.id, %dir, "listener closed");
}

/// Counts a slot's accept loop while it runs; the last to exit after a stop says so.
struct AcceptGuard(Rc<crate::ctx::SlotSignals>);

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        let n = self.0.accepting.get().saturating_sub(1);
        self.0.accepting.set(n);
        if n == 0 && self.0.stop.is_fired() {
            self.0.stopped.fire();
        }
    }
}

/// Accepts-and-resets a connection the worker will not serve.
fn refuse(
    ctx: &WorkerCtx,
    w: &crate::workload::Workload,
    dir: Direction,
    stream: TcpStream,
    outcome: Outcome,
) {
    copy::reset(&stream);
    ConnRecord::open(ctx.shard(w), dir).finish(outcome);
    tracing::debug!(worker = ctx.id, %dir, %outcome, "connection refused");
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::driver::Resolved;
    use crate::state::{ConfigSource, SharedSetup};
    use ringmesh_core::WorkloadKey;
    use ringmesh_core::config::Config;

    /// An idle connection costs its task's state for its whole life, so that state has a
    /// budget (it was 7.5 KB before the copy was flattened and the idle timers shared, and
    /// 1,280 B before the readiness copy was boxed: a connection on the owned ring never needs
    /// that copy, and one that does pays for it on the heap).
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
            let shared = Shared::new(SharedSetup {
                config: Config::embedded_default(),
                source: ConfigSource::Embedded,
                workload: WorkloadKey::sidecar(),
                workers: 1,
                workers_pinned: false,
                steer_cpus: None,
                owned_ring: false,
                driver: Resolved {
                    kind: DriverKind::Epoll,
                    fallback_reason: None,
                },
                listeners: vec![],
                config_path: None,
                stall_timeout: Duration::from_secs(5),
                dropped_lines: None,
                worker_cmds: Vec::new(),
            });
            let ctx = Rc::new(WorkerCtx::new(
                0,
                shared,
                Arc::new(crate::orig_dst::SoOriginalDst),
            ));
            let outbound = std::mem::size_of_val(&outbound::serve(ctx.clone(), 0, a));
            eprintln!("outbound connection state: {outbound} bytes");
            assert!(
                outbound <= 1000,
                "outbound connection state is {outbound} bytes"
            );
        });
    }
}
