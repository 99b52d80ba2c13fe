//! ringmesh-ctrl: the control side of the proxy.
//!
//! Identity sources for the proxy's control thread (the SPIFFE Workload API, as served by a
//! SPIRE agent, and PEM files), a development Workload API server with its own CA
//! (`meshctl identity serve`) for single-machine use and tests, and configuration over NATS
//! (`nats`: the proxy's follower and the control plane's publisher), and the Kubernetes
//! sidecar injector (`inject`). Everything here runs on a
//! tokio runtime; none of it touches the data plane, which only ever sees the immutable
//! identity snapshots the control thread publishes.
#![forbid(unsafe_code)]

pub mod ca;
pub mod devserver;
pub mod inject;
pub mod nats;
pub mod pem;
pub mod source;

/// The Workload API messages and service, generated from `proto/workload.proto`.
#[allow(
    clippy::all,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("_");
}

/// SPIRE's Delegated Identity API (server and client), from `proto/delegatedidentity.proto`.
#[allow(
    clippy::all,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
pub mod delegated_pb {
    tonic::include_proto!("spire.api.agent.delegatedidentity.v1");
}
