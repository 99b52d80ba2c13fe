//! UDP relay metrics: datagrams and bytes each way, flows, and drops by reason. One
//! [`UdpShard`] per worker and workload, inside its [`WorkerShard`](super::WorkerShard).

use std::fmt::Write as _;

use super::labels::{Direction, Side, UdpDrop};
use super::render::WorkloadMetrics;
use super::shard::{Counter, Gauge};
use crate::proxy_v2::Malformed;

/// One worker's UDP metrics for one workload.
#[derive(Debug, Default)]
pub struct UdpShard {
    /// Datagrams received from each side, by direction.
    pub(crate) datagrams: [[Counter; Side::COUNT]; Direction::COUNT],
    /// Payload bytes received from each side, by direction (headers not counted).
    pub(crate) bytes: [[Counter; Side::COUNT]; Direction::COUNT],
    pub(crate) flows_active: [Gauge; Direction::COUNT],
    pub(crate) flows_created: [Counter; Direction::COUNT],
    pub(crate) flows_expired: [Counter; Direction::COUNT],
    pub(crate) flows_evicted: [Counter; Direction::COUNT],
    pub(crate) drops: [[Counter; UdpDrop::COUNT]; Direction::COUNT],
    pub(crate) malformed: [Counter; Malformed::ALL.len()],
}

impl UdpShard {
    /// A datagram of `len` payload bytes came in from `from`.
    pub fn datagram(&self, dir: Direction, from: Side, len: usize) {
        self.datagrams[dir.idx()][from.idx()].inc();
        self.bytes[dir.idx()][from.idx()].add(len as u64);
    }
    pub fn flow_created(&self, dir: Direction) {
        self.flows_created[dir.idx()].inc();
        self.flows_active[dir.idx()].add(1);
    }
    /// A flow ended: idle for the timeout (`evicted` false) or pushed out of a full table.
    pub fn flow_ended(&self, dir: Direction, evicted: bool) {
        if evicted {
            self.flows_evicted[dir.idx()].inc();
        } else {
            self.flows_expired[dir.idx()].inc();
        }
        self.flows_active[dir.idx()].add(-1);
    }
    pub fn drop(&self, dir: Direction, why: UdpDrop) {
        self.drops[dir.idx()][why.idx()].inc();
    }
    pub fn malformed(&self, dir: Direction, why: Malformed) {
        self.drop(dir, UdpDrop::Malformed);
        if let Some(i) = Malformed::ALL.iter().position(|m| *m == why) {
            self.malformed[i].inc();
        }
    }

    pub fn datagram_count(&self, dir: Direction, from: Side) -> u64 {
        self.datagrams[dir.idx()][from.idx()].get()
    }
    pub fn flows_active_count(&self, dir: Direction) -> i64 {
        self.flows_active[dir.idx()].get()
    }
    pub fn flows_created_count(&self, dir: Direction) -> u64 {
        self.flows_created[dir.idx()].get()
    }
    pub fn flows_expired_count(&self, dir: Direction) -> u64 {
        self.flows_expired[dir.idx()].get()
    }
    pub fn flows_evicted_count(&self, dir: Direction) -> u64 {
        self.flows_evicted[dir.idx()].get()
    }
    pub fn drop_count(&self, dir: Direction, why: UdpDrop) -> u64 {
        self.drops[dir.idx()][why.idx()].get()
    }
}

fn sum(w: &WorkloadMetrics<'_>, f: impl Fn(&UdpShard) -> u64) -> u64 {
    w.shards.iter().map(|s| f(&s.udp)).sum()
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the UDP families. Label values here are all closed enums and workload keys
/// (already escaped-safe: the caller passes keys it renders elsewhere the same way).
pub(crate) fn render(
    o: &mut String,
    workloads: &[WorkloadMetrics<'_>],
    esc: impl Fn(&str) -> String,
) {
    family(
        o,
        "ringmesh_udp_datagrams_total",
        "counter",
        "UDP datagrams received by the relay, by direction and the side they came from.",
    );
    for w in workloads {
        let k = esc(w.key);
        for d in Direction::ALL {
            for s in [Side::Downstream, Side::Upstream] {
                let v = sum(w, |u| u.datagrams[d.idx()][s.idx()].get());
                let _ = writeln!(
                    o,
                    "ringmesh_udp_datagrams_total{{workload=\"{k}\",direction=\"{d}\",from=\"{s}\"}} {v}"
                );
            }
        }
    }
    family(
        o,
        "ringmesh_udp_bytes_total",
        "counter",
        "UDP payload bytes received by the relay (PROXY headers not counted), by direction and side.",
    );
    for w in workloads {
        let k = esc(w.key);
        for d in Direction::ALL {
            for s in [Side::Downstream, Side::Upstream] {
                let v = sum(w, |u| u.bytes[d.idx()][s.idx()].get());
                let _ = writeln!(
                    o,
                    "ringmesh_udp_bytes_total{{workload=\"{k}\",direction=\"{d}\",from=\"{s}\"}} {v}"
                );
            }
        }
    }
    family(
        o,
        "ringmesh_udp_flows_active",
        "gauge",
        "UDP flows (source, original destination) in the relay's tables.",
    );
    for w in workloads {
        let k = esc(w.key);
        for d in Direction::ALL {
            let v: i64 = w
                .shards
                .iter()
                .map(|s| s.udp.flows_active[d.idx()].get())
                .sum();
            let _ = writeln!(
                o,
                "ringmesh_udp_flows_active{{workload=\"{k}\",direction=\"{d}\"}} {v}"
            );
        }
    }
    for (name, help, pick) in [
        ("ringmesh_udp_flows_created_total", "UDP flows created.", 0),
        (
            "ringmesh_udp_flows_expired_total",
            "UDP flows ended by the idle timeout.",
            1,
        ),
        (
            "ringmesh_udp_flows_evicted_total",
            "UDP flows pushed out of a full flow table (the least recently used first).",
            2,
        ),
    ] {
        family(o, name, "counter", help);
        for w in workloads {
            let k = esc(w.key);
            for d in Direction::ALL {
                let v = sum(w, |u| match pick {
                    0 => u.flows_created[d.idx()].get(),
                    1 => u.flows_expired[d.idx()].get(),
                    _ => u.flows_evicted[d.idx()].get(),
                });
                let _ = writeln!(o, "{name}{{workload=\"{k}\",direction=\"{d}\"}} {v}");
            }
        }
    }
    family(
        o,
        "ringmesh_udp_dropped_total",
        "counter",
        "UDP datagrams the relay dropped, by reason.",
    );
    for w in workloads {
        let k = esc(w.key);
        for d in Direction::ALL {
            for r in UdpDrop::ALL {
                let v = sum(w, |u| u.drops[d.idx()][r.idx()].get());
                let _ = writeln!(
                    o,
                    "ringmesh_udp_dropped_total{{workload=\"{k}\",direction=\"{d}\",reason=\"{r}\"}} {v}"
                );
            }
        }
    }
    family(
        o,
        "ringmesh_udp_malformed_headers_total",
        "counter",
        "PROXY v2 headers refused (each dropped its datagram only), by reason.",
    );
    for w in workloads {
        let k = esc(w.key);
        for (i, m) in Malformed::ALL.iter().enumerate() {
            let v = sum(w, |u| u.malformed[i].get());
            let _ = writeln!(
                o,
                "ringmesh_udp_malformed_headers_total{{workload=\"{k}\",reason=\"{}\"}} {v}",
                m.as_str()
            );
        }
    }
}
