//! What a run measured: per-thread counters and latency histograms, merged into one
//! [`RunResult`] that prints as a table and serialises as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in nanoseconds, 3 significant digits, up to a minute.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Connect,
    ConnectTimeout,
    Reset,
    /// The peer closed before the response was complete.
    Eof,
    /// No response within the request timeout.
    Timeout,
    /// The response was not what the protocol expects.
    Protocol,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Eof => "eof",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
        }
    }

    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ErrorKind::Reset,
            K::UnexpectedEof => ErrorKind::Eof,
            K::TimedOut | K::WouldBlock => ErrorKind::Timeout,
            K::ConnectionRefused | K::AddrNotAvailable | K::NotConnected => ErrorKind::Connect,
            K::InvalidData => ErrorKind::Protocol,
            _ => ErrorKind::Other,
        }
    }
}

/// One thread's tally; merged after the run.
#[derive(Debug)]
pub struct Tally {
    pub latency: Histogram<u64>,
    pub requests: u64,
    pub bytes: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            requests: 0,
            bytes: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Tally {
    pub fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn record(&mut self, latency_ns: u64) {
        self.requests += 1;
        self.latency.saturating_record(latency_ns.max(1));
    }

    /// Adds another thread's tally into this one.
    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    /// (percentile, microseconds) pairs for plotting the distribution.
    pub distribution: Vec<(f64, f64)>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub workload: String,
    pub target: String,
    /// `rate` (open loop at `rate` req/s) or `max` (closed loop).
    pub mode: String,
    pub rate: u64,
    pub connections: u64,
    pub threads: u64,
    pub duration_s: f64,
    pub requests: u64,
    pub bytes: u64,
    /// Requests (or connections, for one-request-per-connection) per second.
    pub throughput: f64,
    /// Payload bits per second, for streaming.
    pub bits_per_second: f64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Latency,
    /// CPU seconds the watched processes (`--watch-pid`) used in the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_cpu_seconds: Option<f64>,
    /// Peak resident set of the watched processes in the measured window, KiB (summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_rss_peak_kb: Option<u64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl RunResult {
    pub fn from_tally(mut self, t: &Tally, measured_s: f64) -> Self {
        let h = &t.latency;
        let q = |p: f64| us(h.value_at_quantile(p));
        self.duration_s = measured_s;
        self.requests = t.requests;
        self.bytes = t.bytes;
        self.throughput = if measured_s > 0.0 {
            t.requests as f64 / measured_s
        } else {
            0.0
        };
        self.bits_per_second = if measured_s > 0.0 {
            t.bytes as f64 * 8.0 / measured_s
        } else {
            0.0
        };
        self.errors = t
            .errors
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect();
        self.latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                p9999: q(0.9999),
                max: us(h.max()),
                mean: h.mean() / 1000.0,
                distribution: h
                    .iter_quantiles(2)
                    .map(|v| (v.quantile_iterated_to() * 100.0, us(v.value_iterated_to())))
                    .collect(),
            }
        };
        self
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} -> {}  ({} {}, {} connections, {} threads, {:.1} s)",
            self.workload,
            self.target,
            self.mode,
            if self.mode == "rate" {
                format!("{} req/s", self.rate)
            } else {
                String::new()
            },
            self.connections,
            self.threads,
            self.duration_s
        );
        let _ = writeln!(
            o,
            "  requests    {:>12}   {:>12.0} /s",
            self.requests, self.throughput
        );
        if self.bytes > 0 {
            let _ = writeln!(
                o,
                "  payload     {:>12} B  {:>10.2} Gbit/s",
                self.bytes,
                self.bits_per_second / 1e9
            );
        }
        let errs = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(o, "  errors      {errs}");
        let l = &self.latency;
        let _ = writeln!(
            o,
            "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  mean {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean
        );
        o
    }

    /// HdrHistogram's percentile-distribution text (`.hgrm`), for plotting tools.
    pub fn hgrm(&self) -> String {
        let mut o = String::from("       Value     Percentile     1/(1-Percentile)\n\n");
        for (p, v) in &self.latency.distribution {
            let frac = p / 100.0;
            let inv = if frac < 1.0 {
                1.0 / (1.0 - frac)
            } else {
                f64::INFINITY
            };
            let _ = writeln!(o, "{v:>12.3} {frac:>14.12} {inv:>20.2}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_threads_keeps_every_sample() {
        let (mut a, mut b) = (Tally::default(), Tally::default());
        for v in 1..=1000u64 {
            a.record(v * 1000);
        }
        for v in 1001..=2000u64 {
            b.record(v * 1000);
        }
        a.error(ErrorKind::Reset);
        b.error(ErrorKind::Reset);
        b.error(ErrorKind::Timeout);
        b.bytes = 10;
        a.merge(&b);
        assert_eq!(a.requests, 2000);
        assert_eq!(a.latency.len(), 2000);
        assert_eq!(a.errors[&ErrorKind::Reset], 2);
        assert_eq!(a.errors[&ErrorKind::Timeout], 1);
        let r = RunResult::default().from_tally(&a, 2.0);
        assert!((r.latency.p50 - 1000.0).abs() < 2.0, "{}", r.latency.p50);
        assert!((r.latency.max - 2000.0).abs() < 3.0, "{}", r.latency.max);
        assert!((r.throughput - 1000.0).abs() < 1e-9);
        assert_eq!(r.errors_total(), 3);
    }

    #[test]
    fn table_and_json_carry_the_numbers() {
        let mut t = Tally::default();
        t.record(250_000);
        t.bytes = 125_000_000;
        let r = RunResult {
            workload: "stream".into(),
            target: "127.0.0.1:9".into(),
            mode: "max".into(),
            connections: 1,
            threads: 1,
            ..Default::default()
        }
        .from_tally(&t, 1.0);
        let table = r.table();
        assert!(table.contains("stream -> 127.0.0.1:9"), "{table}");
        assert!(table.contains("1.00 Gbit/s"), "{table}");
        assert!(table.contains("errors      none"), "{table}");
        assert!(table.contains("p50 250."), "{table}");
        let json = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(r.hgrm().lines().count() > 2);
    }

    #[test]
    fn empty_run_has_zero_latency_not_a_panic() {
        let r = RunResult::default().from_tally(&Tally::default(), 0.0);
        assert_eq!(r.latency, Latency::default());
        assert_eq!(r.throughput, 0.0);
    }

    #[test]
    fn io_errors_map_to_kinds() {
        use std::io::{Error, ErrorKind as K};
        assert_eq!(
            ErrorKind::of(&Error::from(K::ConnectionReset)),
            ErrorKind::Reset
        );
        assert_eq!(
            ErrorKind::of(&Error::from(K::UnexpectedEof)),
            ErrorKind::Eof
        );
        assert_eq!(
            ErrorKind::of(&Error::from(K::ConnectionRefused)),
            ErrorKind::Connect
        );
    }
}
