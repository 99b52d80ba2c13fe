//! Metric shards and their Prometheus text rendering.
//!
//! Each worker owns one [`WorkerShard`] per workload and is its only writer, so an update is
//! a plain load and store, with no lock and no contended atomic read-modify-write on the hot
//! path. The admin server reads every shard (relaxed loads) and sums them when scraped.
//! Labels are closed enums indexed into fixed arrays, and the one label whose values come
//! from traffic (a refused peer's identity) is a bounded table: recording a metric never
//! allocates past a fixed bound, and memory never grows with traffic.

mod http;
mod labels;
mod render;
mod shard;
mod udp;

pub use http::{
    HTTP_SERIES, HttpShard, LATENCY_BUCKETS, ProtocolSeen, RequestLabels, ResponseLabels,
};
pub use labels::{
    AcceptError, CopyKind, CopyMethod, Detection, Direction, HandshakeResult, Outcome, RouteKind,
    Security, Side, UdpDrop,
};
pub use render::{
    ConfigInfo, IdentityInfo, NatsInfo, NodeInfo, ProcessInfo, TelemetryInfo, WorkloadMetrics,
    render,
};
pub use shard::{
    Counter, DURATION_BUCKETS, Gauge, HANDSHAKE_BUCKETS, Histogram, LABEL_SLOTS, LabelTable,
    OVERFLOW_LABEL, WorkerShard, WorkerStats,
};
pub use udp::UdpShard;

#[cfg(test)]
mod tests;
