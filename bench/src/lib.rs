//! ringmesh-bench: an open-loop load generator with latency histograms, the backends it
//! loads, and the side-by-side report.
//!
//! The generator is thread-per-core on monoio, like the proxy it measures, so it is not the
//! bottleneck. Fixed-rate runs schedule each request and count latency from when it was due
//! (coordinated omission corrected); maximum-throughput runs are closed loop. Results are
//! full HdrHistogram distributions.
//!
//! It measures and reports; it asserts nothing about speed. Tests in this crate check the
//! arithmetic (schedule, merging, formatting) and that runs complete without errors.
#![forbid(unsafe_code)]

pub mod load;
pub mod report;
pub mod rt;
pub mod schedule;
pub mod serve;
pub mod stats;
