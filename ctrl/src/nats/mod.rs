//! Configuration over NATS: the mesh config in JetStream key-value buckets, followed by each
//! proxy and written by `meshctl`.
//!
//! - `layout`: where each part of a config lives and how a proxy puts a version together
//!   (pure; the only place that knows the key layout).
//! - `connect`: TLS connections to a list of servers, with the workload's SVID or files.
//! - `follow`: the proxy side: read the current state at start and after every reconnect,
//!   follow changes, offer each complete newer version to the proxy, report what it did.
//! - `publish`: the control-plane side (`meshctl push`, `get`, `status`), and the buckets.
//! - `server_config`: a nats-server configuration with least-privilege users.

pub mod connect;
pub mod follow;
pub mod layout;
pub mod publish;
pub mod server_config;

/// The bucket the mesh config lives in, unless configured otherwise.
pub const CONFIG_BUCKET: &str = "ringmesh-config";
/// The bucket proxies report their state in; its entries expire when a proxy stops
/// reporting.
pub const STATUS_BUCKET: &str = "ringmesh-status";
