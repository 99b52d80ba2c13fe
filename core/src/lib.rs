//! The sans-IO heart of ringmesh.
//!
//! This crate holds everything about the mesh that can be decided without touching the
//! outside world: the configuration schema and its validation, destination lookup, load
//! balancing, SPIFFE ID parsing, the TLS ClientHello reader that protocol detection uses, the
//! PROXY protocol v2 codec the UDP relay strips and builds headers with, the inbound and
//! outbound decisions (`decide`), workload keys, and the per-worker metric shards
//! with their Prometheus rendering. Every function here is deterministic: time is passed in as a value, nothing
//! opens a socket, spawns a thread or reads a clock.
//!
//! It deliberately contains no runtime, no syscalls and no I/O; `uring-proxy` owns those.
#![forbid(unsafe_code)]

pub mod access;
pub mod addr;
pub mod client_hello;
pub mod config;
pub mod decide;
pub mod http;
pub mod lb;
pub mod metrics;
pub mod proxy_v2;
pub mod spiffe;
pub mod svid;
pub mod workload;

pub use addr::{ClientAddr, OrigDst, canonical};
pub use config::{Config, ConfigError, Format, Route};
pub use spiffe::SpiffeId;
pub use workload::WorkloadKey;
