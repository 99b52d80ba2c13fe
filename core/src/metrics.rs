//! Metric shards and their Prometheus text rendering.
//!
//! Each worker owns one [`WorkerShard`] and is its only writer, so an update is a plain load
//! and store, with no lock and no contended atomic read-modify-write on the hot path. The
//! admin server reads every shard (relaxed loads) and sums them when scraped. Labels are
//! closed enums indexed into fixed arrays: recording a metric never allocates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A counter written by one thread only (its worker) and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store cannot lose an update, and cost no locked op.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge written by one thread only.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
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
    bounds: &'static [f64; N],
    /// Non-cumulative counts per bound.
    buckets: [Counter; N],
    /// Above the last bound (`+Inf`).
    overflow: Counter,
    sum_micros: Counter,
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
}

/// Writes the series of histograms (one per shard, summed) under `name{labels,le=..}`.
fn render_histogram<const N: usize>(
    o: &mut String,
    name: &str,
    labels: &str,
    parts: &[&Histogram<N>],
) {
    let mut cumulative = 0;
    let bounds = parts.first().map_or(&[0.0; N], |h| h.bounds);
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += parts.iter().map(|h| h.buckets[i].get()).sum::<u64>();
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    cumulative += parts.iter().map(|h| h.overflow.get()).sum::<u64>();
    let micros: u64 = parts.iter().map(|h| h.sum_micros.get()).sum();
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", micros as f64 / 1e6);
    let _ = writeln!(o, "{name}_count{{{labels}}} {cumulative}");
}

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub const COUNT: usize = Self::ALL.len();
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            fn idx(self) -> usize { self as usize }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// Which listener accepted the connection.
    Direction { Inbound => "inbound", Outbound => "outbound" }
);

label_enum!(
    /// Which side of a proxied connection something happened on; also the log field `side`.
    Side {
        /// The peer that connected to the proxy.
        Downstream => "downstream",
        /// The peer the proxy connected to.
        Upstream => "upstream",
        /// The proxy itself (resources, bugs).
        Internal => "internal",
    }
);

label_enum!(
    /// How a connection ended. Every opened connection ends in exactly one outcome.
    Outcome {
        /// Both sides closed cleanly.
        Ok => "ok",
        /// No byte moved for the idle timeout.
        IdleTimeout => "idle_timeout",
        /// Still open when the drain deadline passed.
        Drained => "drained",
        /// The downstream peer reset or failed.
        DownstreamError => "downstream_error",
        /// The upstream refused, reset or failed.
        UpstreamError => "upstream_error",
        /// The upstream did not answer the connect in time.
        ConnectTimeout => "connect_timeout",
        /// The proxy could not serve it (e.g. out of file descriptors).
        InternalError => "internal_error",
        /// Refused: its original destination was the proxy itself.
        RedirectLoop => "redirect_loop",
        /// Refused: unknown destination and egress is denied.
        EgressDenied => "egress_denied",
        /// Refused: the worker was at its connection limit.
        ConnectionLimit => "connection_limit",
        /// Refused: the kernel had no original destination for it.
        NoOriginalDst => "no_original_dst",
        /// The TLS handshake failed (bad or untrusted certificate, protocol error).
        TlsError => "tls_error",
        /// The upstream's certificate is valid but names another SPIFFE ID than the
        /// endpoint should have.
        IdentityMismatch => "identity_mismatch",
        /// Refused by the access policy (after the handshake, before a byte reached the app).
        AccessDenied => "access_denied",
        /// Refused: plaintext to a port in strict mode.
        PlaintextRefused => "plaintext_refused",
        /// Refused: mTLS is needed and the proxy holds no valid SVID (fail closed).
        NoIdentity => "no_identity",
    }
);

impl Outcome {
    /// Refused before any upstream was dialled.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Outcome::RedirectLoop
                | Outcome::EgressDenied
                | Outcome::ConnectionLimit
                | Outcome::NoOriginalDst
                | Outcome::AccessDenied
                | Outcome::PlaintextRefused
                | Outcome::NoIdentity
        )
    }
}

label_enum!(
    /// How an outbound destination was resolved.
    RouteKind { Service => "service", Endpoint => "endpoint", Egress => "egress" }
);

label_enum!(
    /// How a connection's bytes are copied.
    CopyKind {
        /// Buffered until a direction moves bulk, then splice for that direction.
        Auto => "auto",
        Splice => "splice",
        Buffered => "buffered",
    }
);

label_enum!(
    /// Whether a connection's peer link is mutual TLS.
    Security { Mtls => "mtls", Plaintext => "plaintext" }
);

label_enum!(
    /// How a TLS handshake ended.
    HandshakeResult { Ok => "ok", Failed => "failed" }
);

label_enum!(
    /// Why accept failed.
    AcceptError { FdExhausted => "fd_exhausted", Other => "other" }
);

type PerDir<T> = [T; Direction::COUNT];

/// One worker's metrics. Aligned so two workers' shards never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerShard {
    opened: PerDir<Counter>,
    closed: PerDir<[Counter; Outcome::COUNT]>,
    active: PerDir<Gauge>,
    /// Bytes received from each side, by direction.
    bytes: PerDir<[Counter; Side::COUNT]>,
    duration: PerDir<Histogram<{ DURATION_BUCKETS.len() }>>,
    handshakes: PerDir<[Counter; HandshakeResult::COUNT]>,
    handshake_time: PerDir<Histogram<{ HANDSHAKE_BUCKETS.len() }>>,
    security: PerDir<[Counter; Security::COUNT]>,
    routes: [Counter; RouteKind::COUNT],
    copies: [Counter; CopyKind::COUNT],
    copy_switches: Counter,
    accept_errors: [Counter; AcceptError::COUNT],
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
            routes: Default::default(),
            copies: Default::default(),
            copy_switches: Counter::default(),
            accept_errors: Default::default(),
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

    /// A connection's peer link is (or is not) mutual TLS.
    pub fn security(&self, dir: Direction, security: Security) {
        self.security[dir.idx()][security.idx()].inc();
    }

    pub fn handshake_count(&self, dir: Direction, result: HandshakeResult) -> u64 {
        self.handshakes[dir.idx()][result.idx()].get()
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

    /// Bytes read from `from` (downstream or upstream) on a `dir` connection.
    #[inline]
    pub fn bytes(&self, dir: Direction, from: Side, n: u64) {
        self.bytes[dir.idx()][from.idx()].add(n);
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

    pub fn accept_error(&self, kind: AcceptError) {
        self.accept_errors[kind.idx()].inc();
    }

    /// Connections this worker holds now, both directions.
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
}

/// Process-wide values owned by the control thread, rendered beside the shards.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub version: &'static str,
    /// `io_uring` or `epoll`.
    pub driver: &'static str,
    /// Why the driver is not io_uring, when it is not.
    pub driver_fallback_reason: Option<String>,
    /// The copy `auto` resolves to, per the config.
    pub copy_mode: &'static str,
    pub workers: usize,
    pub config_version: u64,
    pub config_reloads_ok: u64,
    pub config_reloads_rejected: u64,
    pub ready: bool,
    pub draining: bool,
    /// Seconds since the Unix epoch when the process started.
    pub start_time_seconds: u64,
    /// The SVID in force, if any.
    pub identity: Option<IdentityInfo>,
    /// SVIDs received after the first.
    pub identity_rotations: u64,
    pub identity_source_errors: u64,
    /// Connections refused by the access policy, by source SPIFFE ID (`none`: plaintext).
    pub access_denied: Vec<(String, u64)>,
}

/// The proxy's own SVID, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityInfo {
    pub spiffe_id: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Sums the shards and writes the Prometheus text exposition (format 0.0.4).
pub fn render(shards: &[&WorkerShard], info: &ProcessInfo) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let sum = |f: &dyn Fn(&WorkerShard) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();

    header(
        &mut o,
        "ringmesh_build_info",
        "gauge",
        "Build and runtime facts, value 1.",
    );
    let _ = writeln!(
        o,
        "ringmesh_build_info{{version=\"{}\",driver=\"{}\",copy_mode=\"{}\"}} 1",
        info.version, info.driver, info.copy_mode
    );
    header(
        &mut o,
        "ringmesh_driver",
        "gauge",
        "I/O driver in use (1 for the active one).",
    );
    for d in ["io_uring", "epoll"] {
        let _ = writeln!(
            o,
            "ringmesh_driver{{driver=\"{d}\"}} {}",
            u8::from(info.driver == d)
        );
    }
    if let Some(reason) = &info.driver_fallback_reason {
        header(
            &mut o,
            "ringmesh_driver_fallback",
            "gauge",
            "Why io_uring is not in use.",
        );
        let _ = writeln!(
            o,
            "ringmesh_driver_fallback{{reason=\"{}\"}} 1",
            escape(reason)
        );
    }
    header(
        &mut o,
        "ringmesh_workers",
        "gauge",
        "Worker threads (one per core).",
    );
    let _ = writeln!(o, "ringmesh_workers {}", info.workers);
    header(
        &mut o,
        "ringmesh_ready",
        "gauge",
        "1 when serving, 0 when starting or draining.",
    );
    let _ = writeln!(o, "ringmesh_ready {}", u8::from(info.ready));
    header(
        &mut o,
        "ringmesh_draining",
        "gauge",
        "1 once a drain has begun.",
    );
    let _ = writeln!(o, "ringmesh_draining {}", u8::from(info.draining));
    header(
        &mut o,
        "ringmesh_process_start_time_seconds",
        "gauge",
        "Start time, Unix seconds.",
    );
    let _ = writeln!(
        o,
        "ringmesh_process_start_time_seconds {}",
        info.start_time_seconds
    );
    header(
        &mut o,
        "ringmesh_config_version",
        "gauge",
        "Version of the active config.",
    );
    let _ = writeln!(o, "ringmesh_config_version {}", info.config_version);
    header(
        &mut o,
        "ringmesh_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    let _ = writeln!(
        o,
        "ringmesh_config_reloads_total{{result=\"applied\"}} {}",
        info.config_reloads_ok
    );
    let _ = writeln!(
        o,
        "ringmesh_config_reloads_total{{result=\"rejected\"}} {}",
        info.config_reloads_rejected
    );

    header(
        &mut o,
        "ringmesh_identity_valid",
        "gauge",
        "1 while the proxy holds a valid SVID.",
    );
    let _ = writeln!(
        o,
        "ringmesh_identity_valid {}",
        u8::from(info.identity.is_some())
    );
    if let Some(id) = &info.identity {
        header(
            &mut o,
            "ringmesh_identity_info",
            "gauge",
            "The SVID in force, value 1.",
        );
        let _ = writeln!(
            o,
            "ringmesh_identity_info{{spiffe_id=\"{}\",serial=\"{}\"}} 1",
            escape(&id.spiffe_id),
            escape(&id.serial)
        );
        header(
            &mut o,
            "ringmesh_identity_expiry_timestamp_seconds",
            "gauge",
            "When the SVID in force expires, Unix seconds.",
        );
        let _ = writeln!(
            o,
            "ringmesh_identity_expiry_timestamp_seconds {}",
            id.not_after
        );
    }
    header(
        &mut o,
        "ringmesh_identity_rotations_total",
        "counter",
        "SVIDs received after the first.",
    );
    let _ = writeln!(
        o,
        "ringmesh_identity_rotations_total {}",
        info.identity_rotations
    );
    header(
        &mut o,
        "ringmesh_identity_source_errors_total",
        "counter",
        "Failures of the identity source (retried with backoff).",
    );
    let _ = writeln!(
        o,
        "ringmesh_identity_source_errors_total {}",
        info.identity_source_errors
    );
    header(
        &mut o,
        "ringmesh_access_denied_total",
        "counter",
        "Connections refused by the access policy, by source identity.",
    );
    for (source, n) in &info.access_denied {
        let _ = writeln!(
            o,
            "ringmesh_access_denied_total{{source=\"{}\"}} {n}",
            escape(source)
        );
    }
    header(
        &mut o,
        "ringmesh_connections_opened_total",
        "counter",
        "Connections accepted.",
    );
    for d in Direction::ALL {
        let v = sum(&|s| s.opened[d.idx()].get());
        let _ = writeln!(
            o,
            "ringmesh_connections_opened_total{{direction=\"{d}\"}} {v}"
        );
    }
    header(
        &mut o,
        "ringmesh_connections_closed_total",
        "counter",
        "Connections ended, by outcome.",
    );
    for d in Direction::ALL {
        for oc in Outcome::ALL {
            let v = sum(&|s| s.closed[d.idx()][oc.idx()].get());
            let _ = writeln!(
                o,
                "ringmesh_connections_closed_total{{direction=\"{d}\",outcome=\"{oc}\"}} {v}"
            );
        }
    }
    header(
        &mut o,
        "ringmesh_connections_refused_total",
        "counter",
        "Connections refused before an upstream was dialled, by reason.",
    );
    for d in Direction::ALL {
        for oc in Outcome::ALL.iter().filter(|o| o.is_refusal()) {
            let v = sum(&|s| s.closed[d.idx()][oc.idx()].get());
            let _ = writeln!(
                o,
                "ringmesh_connections_refused_total{{direction=\"{d}\",reason=\"{oc}\"}} {v}"
            );
        }
    }
    header(
        &mut o,
        "ringmesh_connections_active",
        "gauge",
        "Connections open now.",
    );
    for d in Direction::ALL {
        let v: i64 = shards.iter().map(|s| s.active[d.idx()].get()).sum();
        let _ = writeln!(o, "ringmesh_connections_active{{direction=\"{d}\"}} {v}");
    }
    header(
        &mut o,
        "ringmesh_bytes_total",
        "counter",
        "Bytes received from each side.",
    );
    for d in Direction::ALL {
        for side in [Side::Downstream, Side::Upstream] {
            let v = sum(&|s| s.bytes[d.idx()][side.idx()].get());
            let _ = writeln!(
                o,
                "ringmesh_bytes_total{{direction=\"{d}\",from=\"{side}\"}} {v}"
            );
        }
    }
    header(
        &mut o,
        "ringmesh_connection_duration_seconds",
        "histogram",
        "Connection lifetime, accept to close.",
    );
    for d in Direction::ALL {
        let parts: Vec<_> = shards.iter().map(|s| &s.duration[d.idx()]).collect();
        let labels = format!("direction=\"{d}\"");
        render_histogram(
            &mut o,
            "ringmesh_connection_duration_seconds",
            &labels,
            &parts,
        );
    }
    header(
        &mut o,
        "ringmesh_connections_security_total",
        "counter",
        "Connections by peer link: mutual TLS or plaintext.",
    );
    for d in Direction::ALL {
        for sec in Security::ALL {
            let v = sum(&|s| s.security[d.idx()][sec.idx()].get());
            let _ = writeln!(
                o,
                "ringmesh_connections_security_total{{direction=\"{d}\",security=\"{sec}\"}} {v}"
            );
        }
    }
    header(
        &mut o,
        "ringmesh_tls_handshakes_total",
        "counter",
        "TLS handshakes by result.",
    );
    for d in Direction::ALL {
        for r in HandshakeResult::ALL {
            let v = sum(&|s| s.handshakes[d.idx()][r.idx()].get());
            let _ = writeln!(
                o,
                "ringmesh_tls_handshakes_total{{direction=\"{d}\",result=\"{r}\"}} {v}"
            );
        }
    }
    header(
        &mut o,
        "ringmesh_tls_handshake_duration_seconds",
        "histogram",
        "Successful TLS handshakes, first byte to last.",
    );
    for d in Direction::ALL {
        let parts: Vec<_> = shards.iter().map(|s| &s.handshake_time[d.idx()]).collect();
        let labels = format!("direction=\"{d}\"");
        render_histogram(
            &mut o,
            "ringmesh_tls_handshake_duration_seconds",
            &labels,
            &parts,
        );
    }
    header(
        &mut o,
        "ringmesh_outbound_routes_total",
        "counter",
        "Outbound destinations by kind.",
    );
    for r in RouteKind::ALL {
        let v = sum(&|s| s.routes[r.idx()].get());
        let _ = writeln!(o, "ringmesh_outbound_routes_total{{route=\"{r}\"}} {v}");
    }
    header(
        &mut o,
        "ringmesh_copy_connections_total",
        "counter",
        "Connections by copy method.",
    );
    for c in CopyKind::ALL {
        let v = sum(&|s| s.copies[c.idx()].get());
        let _ = writeln!(o, "ringmesh_copy_connections_total{{mode=\"{c}\"}} {v}");
    }
    header(
        &mut o,
        "ringmesh_copy_splice_switches_total",
        "counter",
        "Directions of auto-copy connections that moved bulk and switched to splice.",
    );
    let switches = sum(&|s| s.copy_switches.get());
    let _ = writeln!(o, "ringmesh_copy_splice_switches_total {switches}");
    header(
        &mut o,
        "ringmesh_accept_errors_total",
        "counter",
        "Failed accepts, by cause.",
    );
    for a in AcceptError::ALL {
        let v = sum(&|s| s.accept_errors[a.idx()].get());
        let _ = writeln!(o, "ringmesh_accept_errors_total{{reason=\"{a}\"}} {v}");
    }
    o
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
