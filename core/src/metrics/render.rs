//! The Prometheus text exposition (format 0.0.4) of every shard, summed per workload, and of
//! the process-wide values the control thread owns.
//!
//! Our own encoder rather than `prometheus-client`: the shards are plain single-writer
//! counters that the encoder sums at scrape time, and perf/ANALYSIS.md compares the two on
//! the same series.

use std::fmt::{Display, Write as _};

use super::labels::{
    AcceptError, CopyKind, CopyMethod, Detection, Direction, HandshakeResult, Outcome, RouteKind,
    Security, Side,
};
use super::shard::{Histogram, WorkerShard, WorkerStats};

/// Process-wide values owned by the control thread, rendered beside the shards.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub version: &'static str,
    /// `io_uring` or `epoll`.
    pub driver: &'static str,
    /// Why the driver is not io_uring, when it is not.
    pub driver_fallback_reason: Option<String>,
    /// The configured copy mode.
    pub copy_mode: &'static str,
    pub workers: usize,
    /// Whether each worker is pinned to a CPU of its own.
    pub workers_pinned: bool,
    /// New connections go to the worker on the CPU that received them.
    pub workers_steered: bool,
    /// Workers whose plaintext copy runs on their own io_uring.
    pub workers_owned_ring: usize,
    pub config: ConfigInfo,
    pub config_reloads_ok: u64,
    pub config_reloads_rejected: u64,
    pub ready: bool,
    /// Every worker's heartbeat is recent.
    pub live: bool,
    pub draining: bool,
    /// Seconds since the Unix epoch when the process started.
    pub start_time_seconds: u64,
    /// Milliseconds on the same monotonic clock as the workers' heartbeats, now.
    pub now_ms: u64,
    /// Log lines the non-blocking writer had to drop (its buffer was full).
    pub log_lines_dropped: u64,
    /// Configuration over NATS, when the proxy follows a control plane.
    pub nats: Option<NatsInfo>,
    /// Node mode's registry, when the proxy is a node proxy.
    pub node: Option<NodeInfo>,
    pub telemetry: TelemetryInfo,
}

/// The access log's and the span exporter's counters.
#[derive(Debug, Clone, Default)]
pub struct TelemetryInfo {
    pub access_log_lines: u64,
    /// Lines dropped because the writer's queue was full.
    pub access_log_dropped: u64,
    /// Lines that could not be written (the file could not be opened or written).
    pub access_log_errors: u64,
    pub spans_exported: u64,
    /// Sampled spans not exported: the queue was full, no collector was named, or the
    /// export failed.
    pub spans_dropped: u64,
    pub span_export_failures: u64,
}

/// A node proxy's registry, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub workloads: usize,
    pub capacity: usize,
    pub added: u64,
    /// Removed by request.
    pub removed: u64,
    /// Removed because their network namespace went away.
    pub netns_gone: u64,
    pub refused: u64,
}

/// The NATS follower's state, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct NatsInfo {
    pub connected: bool,
    pub reconnects: u64,
    pub applied: u64,
    pub rejected: u64,
}

/// The config in force, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct ConfigInfo {
    /// As displayed: `42` or `sha256:...`.
    pub version: String,
    /// The version's number, when the source numbers its versions.
    pub number: Option<u64>,
    /// Where it came from: `embedded`, `file`, `api`.
    pub source: &'static str,
    /// Unix seconds when it was applied.
    pub applied_at: u64,
    /// Restart-only fields that a later config changed and that wait for a restart.
    pub restart_required: Vec<&'static str>,
}

/// The proxy's own SVID for one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityInfo {
    pub spiffe_id: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// One workload's shards (one per worker) and identity state.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadMetrics<'a> {
    pub key: &'a str,
    pub shards: &'a [WorkerShard],
    pub identity: Option<&'a IdentityInfo>,
    pub identity_rotations: u64,
    pub identity_source_errors: u64,
}

/// The text being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram's series (its parts summed), under `labels`.
    fn histogram<const N: usize>(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        parts: &[&Histogram<N>],
    ) {
        let Some(first) = parts.first() else { return };
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        let les = first
            .bounds
            .iter()
            .map(ToString::to_string)
            .chain(std::iter::once("+Inf".to_string()));
        for (i, le) in les.enumerate() {
            cumulative += match first.bounds.get(i) {
                Some(_) => parts.iter().map(|h| h.buckets[i].get()).sum::<u64>(),
                None => parts.iter().map(|h| h.overflow.get()).sum::<u64>(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        let micros: u64 = parts.iter().map(|h| h.sum_micros.get()).sum();
        self.sample(&format!("{name}_sum"), labels, micros as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

fn escape_into(o: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
}

/// Sums every workload's shards and writes the exposition.
pub fn render(
    workloads: &[WorkloadMetrics<'_>],
    workers: &[WorkerStats],
    info: &ProcessInfo,
) -> String {
    let mut o = Out(String::with_capacity(
        16 * 1024 + workloads.len() * 8 * 1024,
    ));
    process(&mut o, workers, info);
    identity(&mut o, workloads);
    connections(&mut o, workloads);
    super::udp::render(&mut o.0, workloads, |s| {
        let mut t = String::new();
        escape_into(&mut t, s);
        t
    });
    super::http::render(
        &mut o.0,
        workloads
            .iter()
            .map(|w| (w.key, w.shards.iter().map(|s| &s.http).collect())),
        |s| {
            let mut t = String::new();
            escape_into(&mut t, s);
            t
        },
    );
    o.0
}

fn process(o: &mut Out, workers: &[WorkerStats], info: &ProcessInfo) {
    o.family(
        "ringmesh_build_info",
        "gauge",
        "Build and runtime facts, value 1.",
    );
    o.sample(
        "ringmesh_build_info",
        &[
            ("version", info.version),
            ("driver", info.driver),
            ("copy_mode", info.copy_mode),
        ],
        1,
    );
    o.family(
        "ringmesh_driver",
        "gauge",
        "I/O driver in use (1 for the active one).",
    );
    for d in ["io_uring", "epoll"] {
        o.sample(
            "ringmesh_driver",
            &[("driver", d)],
            u8::from(info.driver == d),
        );
    }
    o.family(
        "ringmesh_driver_fallback",
        "gauge",
        "Why io_uring is not in use (value 1), when it is not.",
    );
    if let Some(reason) = &info.driver_fallback_reason {
        o.sample("ringmesh_driver_fallback", &[("reason", reason)], 1);
    }
    o.family("ringmesh_workers", "gauge", "Worker threads.");
    o.sample("ringmesh_workers", &[], info.workers);
    o.family(
        "ringmesh_workers_pinned",
        "gauge",
        "1 when each worker is pinned to a CPU of its own.",
    );
    o.sample(
        "ringmesh_workers_pinned",
        &[],
        u8::from(info.workers_pinned),
    );
    o.family(
        "ringmesh_workers_steered",
        "gauge",
        "1 when each new connection goes to the worker on the CPU that received it (--steer-by-cpu), 0 when the kernel's hash spreads them.",
    );
    o.sample(
        "ringmesh_workers_steered",
        &[],
        u8::from(info.workers_steered),
    );
    o.family(
        "ringmesh_workers_owned_ring",
        "gauge",
        "Workers whose plaintext copy runs on an io_uring of their own (multishot receives into provided buffers); 0 on the epoll driver or with --no-owned-ring.",
    );
    o.sample("ringmesh_workers_owned_ring", &[], info.workers_owned_ring);
    o.family(
        "ringmesh_worker_connections_accepted_total",
        "counter",
        "TCP connections each worker accepted, every listener and workload.",
    );
    for (i, w) in workers.iter().enumerate() {
        o.sample(
            "ringmesh_worker_connections_accepted_total",
            &[("worker", &i.to_string())],
            w.accepted.get(),
        );
    }
    o.family(
        "ringmesh_worker_heartbeat_age_seconds",
        "gauge",
        "Time since each worker last showed it is running its event loop.",
    );
    for (i, w) in workers.iter().enumerate() {
        let beat = w.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed);
        let age = info.now_ms.saturating_sub(beat) as f64 / 1e3;
        o.sample(
            "ringmesh_worker_heartbeat_age_seconds",
            &[("worker", &i.to_string())],
            age,
        );
    }
    o.family(
        "ringmesh_live",
        "gauge",
        "1 while every worker's heartbeat is recent.",
    );
    o.sample("ringmesh_live", &[], u8::from(info.live));
    o.family(
        "ringmesh_ready",
        "gauge",
        "1 when serving, 0 when starting, draining or without a needed SVID.",
    );
    o.sample("ringmesh_ready", &[], u8::from(info.ready));
    o.family("ringmesh_draining", "gauge", "1 once a drain has begun.");
    o.sample("ringmesh_draining", &[], u8::from(info.draining));
    o.family(
        "ringmesh_process_start_time_seconds",
        "gauge",
        "Start time, Unix seconds.",
    );
    o.sample(
        "ringmesh_process_start_time_seconds",
        &[],
        info.start_time_seconds,
    );
    o.family(
        "ringmesh_log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log writer's buffer was full.",
    );
    o.sample(
        "ringmesh_log_lines_dropped_total",
        &[],
        info.log_lines_dropped,
    );
    let t = &info.telemetry;
    for (name, help, v) in [
        (
            "ringmesh_http_access_log_lines_total",
            "Access log lines written.",
            t.access_log_lines,
        ),
        (
            "ringmesh_http_access_log_dropped_total",
            "Access log lines dropped because the writer's queue was full.",
            t.access_log_dropped,
        ),
        (
            "ringmesh_http_access_log_errors_total",
            "Access log lines that could not be written.",
            t.access_log_errors,
        ),
        (
            "ringmesh_trace_spans_exported_total",
            "Sampled spans exported over OTLP.",
            t.spans_exported,
        ),
        (
            "ringmesh_trace_spans_dropped_total",
            "Sampled spans not exported (queue full, no collector, or a failed export).",
            t.spans_dropped,
        ),
        (
            "ringmesh_trace_export_failures_total",
            "OTLP export requests that failed or timed out.",
            t.span_export_failures,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v);
    }
    o.family(
        "ringmesh_log_lines_suppressed_total",
        "counter",
        "Connection failure lines left out by the per-reason rate limit (the connection counters count them all).",
    );
    for oc in Outcome::ALL.iter().filter(|o| o.is_failure()) {
        let n: u64 = workers.iter().map(|w| w.log_suppressed_count(*oc)).sum();
        o.sample(
            "ringmesh_log_lines_suppressed_total",
            &[("reason", oc.as_str())],
            n,
        );
    }

    let c = &info.config;
    o.family(
        "ringmesh_config_info",
        "gauge",
        "The config in force (value 1): its version and where it came from.",
    );
    o.sample(
        "ringmesh_config_info",
        &[("version", &c.version), ("source", c.source)],
        1,
    );
    o.family(
        "ringmesh_config_version",
        "gauge",
        "Number of the config in force, when its source numbers versions.",
    );
    if let Some(n) = c.number {
        o.sample("ringmesh_config_version", &[], n);
    }
    o.family(
        "ringmesh_config_last_applied_timestamp_seconds",
        "gauge",
        "When the config in force was applied, Unix seconds.",
    );
    o.sample(
        "ringmesh_config_last_applied_timestamp_seconds",
        &[],
        c.applied_at,
    );
    o.family(
        "ringmesh_config_restart_required",
        "gauge",
        "Restart-only fields a later config changed (value 1): in force only after a restart.",
    );
    for f in &c.restart_required {
        o.sample("ringmesh_config_restart_required", &[("field", f)], 1);
    }
    if let Some(n) = &info.node {
        o.family(
            "ringmesh_node_workloads",
            "gauge",
            "Workloads registered with this node proxy.",
        );
        o.sample("ringmesh_node_workloads", &[], n.workloads);
        o.family(
            "ringmesh_node_workload_slots",
            "gauge",
            "Workloads this node proxy can hold (node.max_workloads).",
        );
        o.sample("ringmesh_node_workload_slots", &[], n.capacity);
        o.family(
            "ringmesh_node_registrations_total",
            "counter",
            "Registration requests by result: added, removed (by request), netns_gone (removed because the network namespace went away), refused.",
        );
        let name = "ringmesh_node_registrations_total";
        o.sample(name, &[("result", "added")], n.added);
        o.sample(name, &[("result", "removed")], n.removed);
        o.sample(name, &[("result", "netns_gone")], n.netns_gone);
        o.sample(name, &[("result", "refused")], n.refused);
    }
    if let Some(n) = &info.nats {
        o.family(
            "ringmesh_nats_connected",
            "gauge",
            "1 while connected to a NATS server of the control plane.",
        );
        o.sample("ringmesh_nats_connected", &[], u8::from(n.connected));
        o.family(
            "ringmesh_nats_reconnects_total",
            "counter",
            "Connections to NATS after the first.",
        );
        o.sample("ringmesh_nats_reconnects_total", &[], n.reconnects);
        o.family(
            "ringmesh_nats_config_versions_total",
            "counter",
            "Config versions from NATS, by what became of them.",
        );
        let name = "ringmesh_nats_config_versions_total";
        o.sample(name, &[("result", "applied")], n.applied);
        o.sample(name, &[("result", "rejected")], n.rejected);
    }
    o.family(
        "ringmesh_config_reloads_total",
        "counter",
        "Config updates by result.",
    );
    o.sample(
        "ringmesh_config_reloads_total",
        &[("result", "applied")],
        info.config_reloads_ok,
    );
    o.sample(
        "ringmesh_config_reloads_total",
        &[("result", "rejected")],
        info.config_reloads_rejected,
    );
}

fn identity(o: &mut Out, workloads: &[WorkloadMetrics<'_>]) {
    o.family(
        "ringmesh_identity_valid",
        "gauge",
        "1 while the workload holds a valid SVID.",
    );
    for w in workloads {
        o.sample(
            "ringmesh_identity_valid",
            &[("workload", w.key)],
            u8::from(w.identity.is_some()),
        );
    }
    o.family(
        "ringmesh_identity_info",
        "gauge",
        "The SVID in force, value 1.",
    );
    for w in workloads {
        if let Some(id) = w.identity {
            o.sample(
                "ringmesh_identity_info",
                &[
                    ("workload", w.key),
                    ("spiffe_id", &id.spiffe_id),
                    ("serial", &id.serial),
                ],
                1,
            );
        }
    }
    o.family(
        "ringmesh_identity_expiry_timestamp_seconds",
        "gauge",
        "When the SVID in force expires, Unix seconds.",
    );
    for w in workloads {
        if let Some(id) = w.identity {
            o.sample(
                "ringmesh_identity_expiry_timestamp_seconds",
                &[("workload", w.key)],
                id.not_after,
            );
        }
    }
    o.family(
        "ringmesh_identity_rotations_total",
        "counter",
        "SVIDs received after the first.",
    );
    for w in workloads {
        o.sample(
            "ringmesh_identity_rotations_total",
            &[("workload", w.key)],
            w.identity_rotations,
        );
    }
    o.family(
        "ringmesh_identity_source_errors_total",
        "counter",
        "Failures of the identity source (retried with backoff).",
    );
    for w in workloads {
        o.sample(
            "ringmesh_identity_source_errors_total",
            &[("workload", w.key)],
            w.identity_source_errors,
        );
    }
}

/// Sums `f` over a workload's shards.
fn sum(w: &WorkloadMetrics<'_>, f: impl Fn(&WorkerShard) -> u64) -> u64 {
    w.shards.iter().map(f).sum()
}

fn connections(o: &mut Out, workloads: &[WorkloadMetrics<'_>]) {
    o.family("ringmesh_access_denied_total", "counter", "Connections refused by the access policy, by source identity (none: no identity; _overflow: sources past the per-worker label limit).");
    for w in workloads {
        let mut by_source = std::collections::BTreeMap::<&str, u64>::new();
        for s in w.shards {
            for (name, n) in s.denied_sources.entries() {
                *by_source.entry(name).or_default() += n;
            }
        }
        for (source, n) in by_source {
            o.sample(
                "ringmesh_access_denied_total",
                &[("workload", w.key), ("source", source)],
                n,
            );
        }
    }
    o.family(
        "ringmesh_connections_opened_total",
        "counter",
        "Connections accepted.",
    );
    for w in workloads {
        for d in Direction::ALL {
            let v = sum(w, |s| s.opened[d.idx()].get());
            o.sample(
                "ringmesh_connections_opened_total",
                &[("workload", w.key), ("direction", d.as_str())],
                v,
            );
        }
    }
    o.family(
        "ringmesh_connections_closed_total",
        "counter",
        "Connections ended, by outcome.",
    );
    for w in workloads {
        for d in Direction::ALL {
            for oc in Outcome::ALL {
                let v = sum(w, |s| s.closed[d.idx()][oc.idx()].get());
                o.sample(
                    "ringmesh_connections_closed_total",
                    &[
                        ("workload", w.key),
                        ("direction", d.as_str()),
                        ("outcome", oc.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    o.family(
        "ringmesh_connections_refused_total",
        "counter",
        "Connections refused before an upstream was dialled, by reason.",
    );
    for w in workloads {
        for d in Direction::ALL {
            for oc in Outcome::ALL.iter().filter(|o| o.is_refusal()) {
                let v = sum(w, |s| s.closed[d.idx()][oc.idx()].get());
                o.sample(
                    "ringmesh_connections_refused_total",
                    &[
                        ("workload", w.key),
                        ("direction", d.as_str()),
                        ("reason", oc.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    o.family(
        "ringmesh_connections_active",
        "gauge",
        "Connections open now.",
    );
    for w in workloads {
        for d in Direction::ALL {
            let v: i64 = w.shards.iter().map(|s| s.active[d.idx()].get()).sum();
            o.sample(
                "ringmesh_connections_active",
                &[("workload", w.key), ("direction", d.as_str())],
                v,
            );
        }
    }
    o.family(
        "ringmesh_bytes_total",
        "counter",
        "Bytes received from each side.",
    );
    for w in workloads {
        for d in Direction::ALL {
            for side in [Side::Downstream, Side::Upstream] {
                let v = sum(w, |s| s.bytes[d.idx()][side.idx()].get());
                o.sample(
                    "ringmesh_bytes_total",
                    &[
                        ("workload", w.key),
                        ("direction", d.as_str()),
                        ("from", side.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    o.family(
        "ringmesh_connection_duration_seconds",
        "histogram",
        "Connection lifetime, accept to close.",
    );
    for w in workloads {
        for d in Direction::ALL {
            let parts: Vec<_> = w.shards.iter().map(|s| &s.duration[d.idx()]).collect();
            o.histogram(
                "ringmesh_connection_duration_seconds",
                &[("workload", w.key), ("direction", d.as_str())],
                &parts,
            );
        }
    }
    o.family("ringmesh_connections_security_total", "counter", "Connections by peer link: mesh mutual TLS, plaintext, or the app's own TLS passed through.");
    for w in workloads {
        for d in Direction::ALL {
            for sec in Security::ALL {
                let v = sum(w, |s| s.security[d.idx()][sec.idx()].get());
                o.sample(
                    "ringmesh_connections_security_total",
                    &[
                        ("workload", w.key),
                        ("direction", d.as_str()),
                        ("security", sec.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    o.family(
        "ringmesh_inbound_detected_total",
        "counter",
        "What protocol detection saw at the start of inbound connections.",
    );
    for w in workloads {
        for det in Detection::ALL {
            let v = sum(w, |s| s.detection[det.idx()].get());
            o.sample(
                "ringmesh_inbound_detected_total",
                &[("workload", w.key), ("protocol", det.as_str())],
                v,
            );
        }
    }
    o.family(
        "ringmesh_tls_handshakes_total",
        "counter",
        "Mesh TLS handshakes by result.",
    );
    for w in workloads {
        for d in Direction::ALL {
            for r in HandshakeResult::ALL {
                let v = sum(w, |s| s.handshakes[d.idx()][r.idx()].get());
                o.sample(
                    "ringmesh_tls_handshakes_total",
                    &[
                        ("workload", w.key),
                        ("direction", d.as_str()),
                        ("result", r.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    o.family(
        "ringmesh_tls_handshake_duration_seconds",
        "histogram",
        "Successful mesh TLS handshakes, first byte to last.",
    );
    for w in workloads {
        for d in Direction::ALL {
            let parts: Vec<_> = w
                .shards
                .iter()
                .map(|s| &s.handshake_time[d.idx()])
                .collect();
            o.histogram(
                "ringmesh_tls_handshake_duration_seconds",
                &[("workload", w.key), ("direction", d.as_str())],
                &parts,
            );
        }
    }
    o.family(
        "ringmesh_outbound_routes_total",
        "counter",
        "Outbound destinations by kind.",
    );
    for w in workloads {
        for r in RouteKind::ALL {
            let v = sum(w, |s| s.routes[r.idx()].get());
            o.sample(
                "ringmesh_outbound_routes_total",
                &[("workload", w.key), ("route", r.as_str())],
                v,
            );
        }
    }
    o.family(
        "ringmesh_copy_connections_total",
        "counter",
        "Connections by configured copy mode.",
    );
    for w in workloads {
        for c in CopyKind::ALL {
            let v = sum(w, |s| s.copies[c.idx()].get());
            o.sample(
                "ringmesh_copy_connections_total",
                &[("workload", w.key), ("mode", c.as_str())],
                v,
            );
        }
    }
    o.family(
        "ringmesh_copy_bytes_total",
        "counter",
        "Bytes moved, by how they moved: spliced (zero-copy), through a buffer, through the worker's own io_uring's buffers, or through TLS.",
    );
    for w in workloads {
        for m in CopyMethod::ALL {
            let v = sum(w, |s| s.copy_bytes[m.idx()].get());
            o.sample(
                "ringmesh_copy_bytes_total",
                &[("workload", w.key), ("method", m.as_str())],
                v,
            );
        }
    }
    for (name, help, field) in [
        (
            "ringmesh_copy_splice_switches_total",
            "Directions of auto-copy connections that moved bulk and switched to splice.",
            (|s| s.copy_switches.get()) as fn(&WorkerShard) -> u64,
        ),
        (
            "ringmesh_copy_ring_handoffs_total",
            "Auto-copy connections on the worker's own io_uring that moved bulk or met a slow reader and went on with the readiness-driven copy.",
            |s| s.ring_handoffs.get(),
        ),
        (
            "ringmesh_copy_ring_starved_total",
            "Receives on the worker's own io_uring that found every provided buffer in use and waited for one.",
            |s| s.ring_starved.get(),
        ),
        (
            "ringmesh_copy_splice_fallbacks_total",
            "Reads that would have spliced but went through a buffer because no pipe could be had.",
            |s| s.splice_fallbacks.get(),
        ),
    ] {
        o.family(name, "counter", help);
        for w in workloads {
            o.sample(name, &[("workload", w.key)], sum(w, field));
        }
    }
    o.family(
        "ringmesh_accept_errors_total",
        "counter",
        "Failed accepts, by cause.",
    );
    for w in workloads {
        for a in AcceptError::ALL {
            let v = sum(w, |s| s.accept_errors[a.idx()].get());
            o.sample(
                "ringmesh_accept_errors_total",
                &[("workload", w.key), ("reason", a.as_str())],
                v,
            );
        }
    }
}
