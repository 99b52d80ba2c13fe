//! uring-proxy: ringmesh's data plane.
//!
//! One worker thread per core, each a monoio runtime on io_uring (epoll when io_uring is
//! denied) with its own SO_REUSEPORT listeners, takes redirected connections, recovers where
//! they were going, applies the mesh's routing, connects upstream with the bypass mark and
//! copies bytes both ways (zero-copy splice for plaintext). A control thread (tokio) serves
//! the admin endpoints, re-reads the config, and conducts the drain.
//!
//! The path of one connection reads top to bottom in the `outbound` and `inbound` modules;
//! they chain the steps in `pipeline`, over the worker context in `ctx`, and copy with the
//! one duplex loop in `duplex` (plaintext pumps in `copy`, TLS pumps in `tls`). Config,
//! detection, routing, policy and metrics are decided in `ringmesh-core`; this crate does
//! the I/O. It does not install interception rules (`mesh-redirect` does).
#![deny(unsafe_code)]

mod admin;
mod connect;
mod control;
mod copy;
pub mod cpus;
mod ctx;
mod detect;
pub mod driver;
mod duplex;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
pub mod health;
mod http;
mod identity;
mod idle;
mod inbound;
pub mod listen;
mod nats;
pub mod node;
pub mod orig_dst;
mod outbound;
mod pipeline;
mod proxy;
mod ring_copy;
mod signal;
pub mod state;
#[allow(unsafe_code)]
mod sys;
mod telemetry;
pub mod tls;
mod udp;
mod worker;
pub mod workload;

use std::path::Path;

pub use driver::{DriverChoice, DriverKind};
pub use orig_dst::{ConnInfo, OrigDstSource, SoOriginalDst};
pub use proxy::{Proxy, ProxyOptions, StartError};
use ringmesh_core::config::{Config, Format};
pub use state::ConfigSource;

/// Reads, parses and validates a config file; every problem is one string with its path.
pub fn load_config_file(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read config file {}: {e}", path.display())])?;
    Config::from_str(&text, Format::from_path(path))
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

/// Raises the open-files soft limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    sys::raise_nofile_limit()
}
