//! Single-writer metric storage: counters, gauges, histograms, a bounded label table, and the
//! per-worker shards built from them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::labels::{
    AcceptError, CopyKind, CopyMethod, Detection, Direction, HandshakeResult, Outcome, RouteKind,
    Security, Side,
};

/// A counter written by one thread only (its worker) and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store cannot lose an update, and cost no locked op.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge written by one thread only.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the connection duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Upper bounds (seconds) of the TLS handshake histogram's buckets.
pub const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A fixed-bucket histogram of durations, single writer.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    pub(crate) bounds: &'static [f64; N],
    /// Non-cumulative counts per bound.
    pub(crate) buckets: [Counter; N],
    /// Above the last bound (`+Inf`).
    pub(crate) overflow: Counter,
    pub(crate) sum_micros: Counter,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| Counter::default()),
            overflow: Counter::default(),
            sum_micros: Counter::default(),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.buckets.get(self.bounds.partition_point(|&b| b < secs)) {
            Some(b) => b.inc(),
            None => self.overflow.inc(),
        }
        self.sum_micros
            .add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds `other`'s counts (same bounds) into this one; for summing shards when scraped.
    pub fn merge(&self, other: &Self) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            a.add(b.get());
        }
        self.overflow.add(other.overflow.get());
        self.sum_micros.add(other.sum_micros.get());
    }

    /// Writes the `_bucket`, `_sum` and `_count` series under `labels` (already rendered,
    /// `k="v",...`).
    pub fn write(&self, o: &mut String, name: &str, labels: &str) {
        use std::fmt::Write as _;
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            cumulative += c.get();
            let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.overflow.get();
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            o,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.get() as f64 / 1e6
        );
        let _ = writeln!(o, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Distinct label values one [`LabelTable`] keeps per shard; values past it are counted
/// together under [`OVERFLOW_LABEL`].
pub const LABEL_SLOTS: usize = 64;

/// The label value that counts whatever did not fit a [`LabelTable`].
pub const OVERFLOW_LABEL: &str = "_overflow";

/// Counts by a label whose values come from traffic (a peer's SPIFFE ID), bounded: the first
/// [`LABEL_SLOTS`] distinct values get their own series, the rest share one. Single writer,
/// no lock: a slot's name is published before the length that makes it visible.
#[derive(Debug)]
pub struct LabelTable {
    len: AtomicUsize,
    slots: Box<[Slot]>,
    overflow: Counter,
}

#[derive(Debug, Default)]
struct Slot {
    name: OnceLock<Box<str>>,
    count: Counter,
}

impl Default for LabelTable {
    fn default() -> Self {
        Self {
            len: AtomicUsize::new(0),
            slots: (0..LABEL_SLOTS).map(|_| Slot::default()).collect(),
            overflow: Counter::default(),
        }
    }
}

impl LabelTable {
    /// Counts one event for `value`. Writer only; a linear scan, so keep it off paths that
    /// run per byte (it runs per refused connection).
    pub fn inc(&self, value: &str) {
        let n = self.len.load(Ordering::Relaxed);
        for s in &self.slots[..n] {
            if s.name.get().is_some_and(|v| &**v == value) {
                s.count.inc();
                return;
            }
        }
        match self.slots.get(n) {
            Some(slot) => {
                let _ = slot.name.set(value.into());
                slot.count.inc();
                self.len.store(n + 1, Ordering::Release);
            }
            None => self.overflow.inc(),
        }
    }

    /// Every value with its count, then the overflow (when any).
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        let n = self.len.load(Ordering::Acquire);
        self.slots[..n]
            .iter()
            .filter_map(|s| s.name.get().map(|v| (&**v, s.count.get())))
            .chain((self.overflow.get() > 0).then(|| (OVERFLOW_LABEL, self.overflow.get())))
    }
}

type PerDir<T> = [T; Direction::COUNT];

/// One worker's metrics for one workload. Aligned so two shards never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerShard {
    pub(crate) opened: PerDir<Counter>,
    pub(crate) closed: PerDir<[Counter; Outcome::COUNT]>,
    pub(crate) active: PerDir<Gauge>,
    /// Bytes received from each side, by direction.
    pub(crate) bytes: PerDir<[Counter; Side::COUNT]>,
    pub(crate) duration: PerDir<Histogram<{ DURATION_BUCKETS.len() }>>,
    pub(crate) handshakes: PerDir<[Counter; HandshakeResult::COUNT]>,
    pub(crate) handshake_time: PerDir<Histogram<{ HANDSHAKE_BUCKETS.len() }>>,
    pub(crate) security: PerDir<[Counter; Security::COUNT]>,
    pub(crate) detection: [Counter; Detection::COUNT],
    pub(crate) routes: [Counter; RouteKind::COUNT],
    pub(crate) copies: [Counter; CopyKind::COUNT],
    pub(crate) copy_bytes: [Counter; CopyMethod::COUNT],
    pub(crate) copy_switches: Counter,
    pub(crate) ring_handoffs: Counter,
    pub(crate) ring_starved: Counter,
    pub(crate) splice_fallbacks: Counter,
    pub(crate) accept_errors: [Counter; AcceptError::COUNT],
    /// Access-policy refusals by source SPIFFE ID (`none`: a peer without one).
    pub(crate) denied_sources: LabelTable,
    /// The UDP relay's counters.
    pub udp: super::udp::UdpShard,
    /// Per-request HTTP metrics.
    pub http: super::http::HttpShard,
}

impl Default for WorkerShard {
    fn default() -> Self {
        Self {
            opened: Default::default(),
            closed: Default::default(),
            active: Default::default(),
            bytes: Default::default(),
            duration: std::array::from_fn(|_| Histogram::new(&DURATION_BUCKETS)),
            handshakes: Default::default(),
            handshake_time: std::array::from_fn(|_| Histogram::new(&HANDSHAKE_BUCKETS)),
            security: Default::default(),
            detection: Default::default(),
            routes: Default::default(),
            copies: Default::default(),
            copy_bytes: Default::default(),
            copy_switches: Counter::default(),
            ring_handoffs: Counter::default(),
            ring_starved: Counter::default(),
            splice_fallbacks: Counter::default(),
            accept_errors: Default::default(),
            denied_sources: LabelTable::default(),
            udp: Default::default(),
            http: Default::default(),
        }
    }
}

impl WorkerShard {
    /// A TLS handshake ended; `took` is from its first byte to its last.
    pub fn handshake(&self, dir: Direction, result: HandshakeResult, took: Duration) {
        self.handshakes[dir.idx()][result.idx()].inc();
        if result == HandshakeResult::Ok {
            self.handshake_time[dir.idx()].observe(took);
        }
    }

    /// A connection's peer link is mutual TLS, plaintext, or the app's own TLS.
    pub fn security(&self, dir: Direction, security: Security) {
        self.security[dir.idx()][security.idx()].inc();
    }

    /// What inbound protocol detection saw.
    pub fn detected(&self, d: Detection) {
        self.detection[d.idx()].inc();
    }

    pub fn opened(&self, dir: Direction) {
        self.opened[dir.idx()].inc();
        self.active[dir.idx()].add(1);
    }

    /// Ends a connection opened with [`opened`](Self::opened).
    pub fn closed(&self, dir: Direction, outcome: Outcome, lifetime: Duration) {
        self.closed[dir.idx()][outcome.idx()].inc();
        self.active[dir.idx()].add(-1);
        self.duration[dir.idx()].observe(lifetime);
    }

    /// Bytes read from `from` (downstream or upstream) on a `dir` connection, moved by
    /// `method`.
    #[inline]
    pub fn bytes(&self, dir: Direction, from: Side, method: CopyMethod, n: u64) {
        self.bytes[dir.idx()][from.idx()].add(n);
        self.copy_bytes[method.idx()].add(n);
    }

    pub fn route(&self, kind: RouteKind) {
        self.routes[kind.idx()].inc();
    }

    pub fn copy(&self, kind: CopyKind) {
        self.copies[kind.idx()].inc();
    }

    /// A direction of an `auto` connection moved bulk and switched to splice.
    pub fn copy_switched_to_splice(&self) {
        self.copy_switches.inc();
    }

    /// A connection on the worker's own ring moved bulk and went on with the splice copy.
    pub fn ring_handoff(&self) {
        self.ring_handoffs.inc();
    }

    /// A receive on the worker's own ring found no free buffer and waited for one.
    pub fn ring_starved(&self) {
        self.ring_starved.inc();
    }

    /// A read that would have spliced went through a buffer: no pipe could be had.
    pub fn splice_fallback(&self) {
        self.splice_fallbacks.inc();
    }

    pub fn accept_error(&self, kind: AcceptError) {
        self.accept_errors[kind.idx()].inc();
    }

    /// A connection the access policy refused, by its source (`None`: no identity).
    pub fn access_denied(&self, source: Option<&str>) {
        self.denied_sources.inc(source.unwrap_or("none"));
    }

    /// Connections this shard holds now, both directions.
    pub fn active_total(&self) -> i64 {
        self.active.iter().map(Gauge::get).sum()
    }

    pub fn active(&self, dir: Direction) -> i64 {
        self.active[dir.idx()].get()
    }

    pub fn opened_count(&self, dir: Direction) -> u64 {
        self.opened[dir.idx()].get()
    }

    pub fn closed_count(&self, dir: Direction, outcome: Outcome) -> u64 {
        self.closed[dir.idx()][outcome.idx()].get()
    }

    pub fn bytes_count(&self, dir: Direction, from: Side) -> u64 {
        self.bytes[dir.idx()][from.idx()].get()
    }

    pub fn handshake_count(&self, dir: Direction, result: HandshakeResult) -> u64 {
        self.handshakes[dir.idx()][result.idx()].get()
    }

    pub fn copy_bytes_count(&self, method: CopyMethod) -> u64 {
        self.copy_bytes[method.idx()].get()
    }

    pub fn splice_fallback_count(&self) -> u64 {
        self.splice_fallbacks.get()
    }

    pub fn detected_count(&self, d: Detection) -> u64 {
        self.detection[d.idx()].get()
    }
}

/// What belongs to a worker rather than to a workload: its liveness and its log limiter's
/// tally. Single writer (the worker).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Milliseconds on the process's monotonic clock at the worker's last heartbeat.
    pub heartbeat_ms: AtomicU64,
    /// TCP connections this worker accepted (only the worker writes it).
    pub accepted: Counter,
    /// Failure log lines left out by the rate limit, by outcome (the counters above count
    /// every connection regardless).
    pub(crate) log_suppressed: [Counter; Outcome::COUNT],
}

impl WorkerStats {
    pub fn log_suppressed(&self, outcome: Outcome, n: u64) {
        self.log_suppressed[outcome.idx()].add(n);
    }

    pub fn log_suppressed_count(&self, outcome: Outcome) -> u64 {
        self.log_suppressed[outcome.idx()].get()
    }
}
