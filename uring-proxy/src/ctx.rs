//! What every connection task on a worker reaches through an `Rc`: the shared state, the
//! worker's pools, signals and timers, and the per-connection record that counts each
//! connection exactly once. Both pipelines depend on this module; it depends on neither.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_core::metrics::{Direction, Outcome, WorkerShard, WorkerStats};

use crate::copy::Pools;
use crate::driver::DriverKind;
use crate::idle::IdleTracker;
use crate::orig_dst::OrigDstSource;
use crate::ring_copy::RingCopy;
use crate::signal::LocalSignal;
use crate::state::Shared;
use crate::tls::ClientConfigs;
use crate::workload::Workload;

pub(crate) struct WorkerCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub orig_dst: Arc<dyn OrigDstSource>,
    pub pools: Pools,
    /// Round-robin turn per service, reset when the config changes.
    turns: RefCell<(u64, Vec<u64>)>,
    /// Fired when the drain begins: accept loops stop.
    pub draining: LocalSignal,
    /// Fired at the drain deadline: connections are reset.
    pub closing: LocalSignal,
    /// Every connection's activity, swept for idle timeouts.
    pub idle: IdleTracker,
    /// mTLS client configurations by (workload, expected peer).
    pub tls: ClientConfigs,
    /// Failure log lines, rate-limited per reason.
    pub log: LogLimiter,
    /// Per workload slot (node mode): fired when it stops accepting, and when its remaining
    /// connections are to be reset. A sidecar's one slot never fires them.
    slots: RefCell<Vec<Rc<SlotSignals>>>,
    /// Node mode: this worker's own network namespace, to come back to after making a socket
    /// in a workload's.
    pub home_netns: Option<std::fs::File>,
    /// The worker's own io_uring for the plaintext copy, when it runs on io_uring and the
    /// kernel gave it one.
    pub ring: Option<Rc<RingCopy>>,
    /// Idle upstream HTTP connections, per endpoint.
    pub http_pool: crate::http::Pool,
}

/// A workload slot's signals on one worker.
#[derive(Debug, Default)]
pub(crate) struct SlotSignals {
    pub stop: LocalSignal,
    pub closing: LocalSignal,
    /// Accept loops of this slot still running on the worker.
    pub accepting: Cell<usize>,
    /// Fired when the last of them exits after `stop`.
    pub stopped: LocalSignal,
}

impl WorkerCtx {
    pub fn new(id: usize, shared: Arc<Shared>, orig_dst: Arc<dyn OrigDstSource>) -> Self {
        let wanted = shared.owned_ring && shared.driver.kind == DriverKind::IoUring;
        let ring = match wanted.then(RingCopy::new) {
            Some(Ok(r)) => {
                shared
                    .workers_owned_ring
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(Rc::new(r))
            }
            Some(Err(e)) => {
                tracing::warn!(
                    worker = id, error = %e,
                    "no io_uring of the worker's own (provided buffers); copying through monoio's"
                );
                None
            }
            None => None,
        };
        Self {
            ring,
            http_pool: Default::default(),
            id,
            shared,
            orig_dst,
            pools: Pools::default(),
            turns: RefCell::new((0, Vec::new())),
            draining: LocalSignal::default(),
            closing: LocalSignal::default(),
            idle: IdleTracker::default(),
            tls: ClientConfigs::default(),
            log: LogLimiter::new(),
            slots: RefCell::default(),
            home_netns: std::fs::File::open("/proc/thread-self/ns/net").ok(),
        }
    }

    /// The signals of workload `slot` on this worker.
    pub fn slot(&self, slot: usize) -> Rc<SlotSignals> {
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= slot {
            slots.resize_with(slot + 1, Rc::default);
        }
        slots[slot].clone()
    }

    /// A new generation of `slot`'s signals (a workload registered there afresh).
    pub fn reset_slot(&self, slot: usize) {
        self.slot(slot);
        self.slots.borrow_mut()[slot] = Rc::default();
    }

    /// Completes when the worker closes, or when workload `slot`'s connections are to be
    /// reset.
    pub fn closing_for(&self, slot: usize) -> impl std::future::Future<Output = ()> + '_ {
        let s = self.slot(slot);
        async move {
            monoio::select! {
                _ = self.closing.wait() => {},
                _ = s.closing.wait() => {},
            }
        }
    }

    /// This worker's shard of `workload`'s metrics.
    pub fn shard<'a>(&self, workload: &'a Workload) -> &'a WorkerShard {
        &workload.shards[self.id]
    }

    /// This worker's own stats (heartbeat, log limiter tally).
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.workers[self.id]
    }

    /// The next round-robin turn for service `index` of config `generation`.
    pub fn next_turn(&self, generation: u64, index: usize) -> u64 {
        let mut turns = self.turns.borrow_mut();
        if turns.0 != generation {
            *turns = (generation, Vec::new());
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

/// Failure lines one worker writes per reason per second; the rest are counted, and the
/// next line written says how many were left out. A port scan or a dead upstream then costs
/// a few lines a second, not one per connection.
pub(crate) const LOG_LINES_PER_SECOND: u32 = 10;

/// A per-worker, per-outcome token window. No lock: it never leaves its worker.
pub(crate) struct LogLimiter {
    epoch: Instant,
    /// Per outcome: (window start in seconds since `epoch`, lines written in it, lines
    /// suppressed since the last one written).
    slots: [Cell<(u64, u32, u64)>; Outcome::COUNT],
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| Cell::new((0, 0, 0))),
        }
    }

    /// Whether a line for `outcome` may be written now: `Some(n)` with the lines suppressed
    /// since the last one, or `None` (counted in `stats`) when over the rate.
    pub fn admit(&self, outcome: Outcome, stats: &WorkerStats) -> Option<u64> {
        let slot = &self.slots[Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0)];
        let now = self.epoch.elapsed().as_secs();
        let (window, written, suppressed) = slot.get();
        let (window, written) = if window == now {
            (window, written)
        } else {
            (now, 0)
        };
        if written < LOG_LINES_PER_SECOND {
            slot.set((window, written + 1, 0));
            Some(suppressed)
        } else {
            slot.set((window, written, suppressed + 1));
            stats.log_suppressed(outcome, 1);
            None
        }
    }
}
