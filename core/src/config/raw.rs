//! The document as written: structure checked by serde (unknown fields and wrong types are
//! refused, with their path), values kept as strings so that validation can report every bad
//! one at once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ConfigError, CopyMode, EgressPolicy, Format, InboundMode};
use crate::access::DefaultAccess;

/// The whole document. Which fields need a restart and which are applied live is decided by
/// [`super::BootConfig`] and [`super::LiveConfig`], not by the layout of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The config's version as the source numbers it (a control plane, or whoever writes the
    /// file). Without it the version is a digest of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Worker threads; without it (and without `--workers`) one per CPU the process may use,
    /// within its cgroup's CPU quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// `SO_MARK` put on the proxy's upstream sockets so interception lets them pass; 0 turns
    /// marking off (bypass by uid instead).
    #[serde(default = "default_mark")]
    pub bypass_mark: u32,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub tcp: RawTcp,
    #[serde(default)]
    pub udp: RawUdp,
    #[serde(default)]
    pub copy: CopyMode,
    #[serde(default)]
    pub egress: EgressPolicy,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub inbound: RawInbound,
    #[serde(default)]
    pub access: RawAccess,
    /// How each port's traffic is handled: detected, pinned to HTTP/1, HTTP/2 or opaque.
    #[serde(default)]
    pub protocols: RawProtocols,
    /// The HTTP engine's limits and the route groups access rules name.
    #[serde(default)]
    pub http: RawHttp,
    /// Where live config comes from beyond this file (restart-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<RawControlPlane>,
    /// `sidecar` (the default: the proxy serves the pod it runs in) or `node` (one proxy for
    /// the workloads registered on its node socket). Restart-only.
    #[serde(default)]
    pub mode: Mode,
    /// Node mode's registration socket and limits (restart-only).
    #[serde(default)]
    pub node: RawNode,
}

/// How many workloads one proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One workload: the pod (or host) whose network namespace the proxy runs in.
    #[default]
    Sidecar,
    /// The workloads registered at runtime on the node socket, each in its own network
    /// namespace, with its own identity, policy and metrics.
    Node,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sidecar => "sidecar",
            Mode::Node => "node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// The registration API's unix socket (created root-only).
    #[serde(default = "default_node_socket")]
    pub socket: String,
    /// Workloads registered at once.
    #[serde(default = "default_max_workloads")]
    pub max_workloads: u32,
}

impl Default for RawNode {
    fn default() -> Self {
        Self {
            socket: default_node_socket(),
            max_workloads: default_max_workloads(),
        }
    }
}

fn default_node_socket() -> String {
    "/run/ringmesh/node.sock".into()
}
fn default_max_workloads() -> u32 {
    128
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    pub nats: RawNats,
}

/// Configuration over NATS: the live part of the config follows the control plane's buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    /// `tls://HOST:PORT`, tried in turn.
    pub servers: Vec<String>,
    #[serde(default)]
    pub tls: RawNatsTls,
    #[serde(default = "default_config_bucket")]
    pub bucket: String,
    #[serde(default = "default_status_bucket")]
    pub status_bucket: String,
    /// This proxy's node, for node-scoped overrides (default: `$NODE_NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where the last applied config is kept, so a restart without NATS resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist: Option<String>,
    /// How often the proxy refreshes its status report.
    #[serde(default = "default_status_interval")]
    pub status_interval: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNatsTls {
    /// Roots for the server's certificate (default: the workload's trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The client certificate and key (default: the workload's SVID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn default_config_bucket() -> String {
    "ringmesh-config".into()
}
fn default_status_bucket() -> String {
    "ringmesh-status".into()
}
fn default_status_interval() -> String {
    "10s".into()
}

/// Where the proxy's own SVID and trust bundles come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySourceKind {
    /// No identity: meshed (mTLS) connections are refused, plaintext works.
    #[default]
    None,
    /// The SPIFFE Workload API (a SPIRE agent, or `meshctl identity serve`).
    WorkloadApi,
    /// PEM files, re-read when they change.
    Files,
    /// SPIRE's Delegated Identity API (a SPIRE agent's admin socket, or `meshctl identity
    /// serve --admin-socket`): one SVID per registered workload, found by its selectors.
    /// Node mode.
    Delegated,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    pub source: IdentitySourceKind,
    /// `workload_api`: the agent's unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `files`: the SVID chain (leaf first), its key, and the trust bundle, all PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    #[serde(default)]
    pub mode: InboundMode,
    /// Per-port overrides of `mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, InboundMode>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    #[serde(default)]
    pub default: DefaultAccess,
    #[serde(default)]
    pub rules: Vec<RawAccessRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessRule {
    pub destination: RawDestination,
    /// SPIFFE IDs allowed to connect.
    pub sources: Vec<String>,
    /// HTTP routes the sources may use: a route group's name (all its matches) or
    /// `group/match`. Empty: everything on the destination, HTTP or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// Protocol detection and per-port pins (the equivalent of a Kubernetes port's
/// `appProtocol`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtocols {
    /// Read the first bytes of connections to ports not pinned (and not server-first) and
    /// handle HTTP request by request.
    #[serde(default = "default_true")]
    pub detect: bool,
    /// Port pins: `http`, `http2` (`grpc`, `h2c`), `opaque` (`tcp`), or `detect` (also on a
    /// server-first port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, crate::http::Protocol>,
}

impl Default for RawProtocols {
    fn default() -> Self {
        Self {
            detect: true,
            ports: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Request head (request line and headers) limit in bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// Headers in one request; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    /// From a request sent upstream to its response's head; past it the client gets 504.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: String,
    /// Idle upstream connections one worker keeps per endpoint (0: no pooling).
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: u32,
    /// An idle pooled connection is closed after this.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: String,
    /// HTTP/2 streams open at once on one downstream connection (more are refused with
    /// `REFUSED_STREAM`, which clients retry).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/1.1 requests to another ringmesh proxy (a meshed endpoint) travel as streams of
    /// one HTTP/2 connection per endpoint and worker (linkerd's idea), and leave the peer as
    /// HTTP/1.1 again.
    #[serde(default = "default_true")]
    pub h2_between_proxies: bool,
    /// One line per request, written off the workers.
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// W3C trace context, sampling and OTLP export.
    #[serde(default)]
    pub tracing: RawTracing,
    /// SMI `HTTPRouteGroup`s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_groups: Vec<RawRouteGroup>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            response_timeout: default_response_timeout(),
            pool_max_idle: default_pool_max_idle(),
            pool_idle_timeout: default_pool_idle_timeout(),
            max_concurrent_streams: default_max_concurrent_streams(),
            h2_between_proxies: true,
            access_log: RawAccessLog::default(),
            tracing: RawTracing::default(),
            route_groups: Vec::new(),
        }
    }
}

fn default_max_header_bytes() -> u32 {
    64 * 1024
}
fn default_max_headers() -> u32 {
    100
}
fn default_response_timeout() -> String {
    "15s".into()
}
fn default_pool_max_idle() -> u32 {
    256
}
fn default_pool_idle_timeout() -> String {
    "90s".into()
}
fn default_max_concurrent_streams() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub format: crate::http::access_log::LogFormat,
    /// `stdout`, `stderr` or an absolute path.
    #[serde(default = "default_access_log_path")]
    pub path: String,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            enabled: false,
            format: crate::http::access_log::LogFormat::Text,
            path: default_access_log_path(),
        }
    }
}

fn default_access_log_path() -> String {
    "stdout".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// New traces sampled, 0 to 1 (a request's own `traceparent` decides for its trace).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The OTLP/gRPC collector, `host:port` with an IP host; absent: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<String>,
    /// `service.name` of the exported spans' resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            sample_ratio: default_sample_ratio(),
            otlp: None,
            service_name: default_service_name(),
        }
    }
}

fn default_sample_ratio() -> f64 {
    0.01
}
fn default_service_name() -> String {
    "ringmesh".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteGroup {
    pub name: String,
    pub matches: Vec<RawRouteMatch>,
}

/// One match: every part given must hold. Patterns are anchored regular expressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteMatch {
    pub name: String,
    #[serde(
        default,
        rename = "pathRegex",
        alias = "path",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_regex: Option<String>,
    /// Method names; `*` or none: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name (any case) to the pattern one of its values must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListeners {
    #[serde(default = "default_outbound")]
    pub outbound: String,
    #[serde(default = "default_inbound")]
    pub inbound: String,
    /// The outbound UDP relay, IPv4 (the eBPF interception carries IPv4 datagrams), or `off`.
    /// Unset: the outbound TCP listener's port, on `0.0.0.0` when that listener is on `[::]`
    /// or `0.0.0.0`, on its own address when it is an IPv4 one (off for other IPv6 ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_outbound: Option<String>,
    /// The inbound UDP relay, or `off`; unset follows the inbound TCP listener the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_inbound: Option<String>,
}

impl Default for RawListeners {
    fn default() -> Self {
        Self {
            outbound: default_outbound(),
            inbound: default_inbound(),
            udp_outbound: None,
            udp_inbound: None,
        }
    }
}

/// The UDP relay's flow table (live).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUdp {
    /// A flow (source, original destination) with no datagram either way for this long is
    /// closed.
    #[serde(default = "default_udp_idle")]
    pub idle_timeout: String,
    /// Flows one worker holds per direction; a new flow in a full table evicts the least
    /// recently used one. Each flow holds one socket.
    #[serde(default = "default_udp_flows")]
    pub max_flows_per_worker: u32,
    /// Datagrams a relay socket takes per `recvmmsg(2)` (1 to 32); 1 is one per call.
    #[serde(default = "default_udp_batch")]
    pub recv_batch: u32,
}

impl Default for RawUdp {
    fn default() -> Self {
        Self {
            idle_timeout: default_udp_idle(),
            max_flows_per_worker: default_udp_flows(),
            recv_batch: default_udp_batch(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Upstream connect timeout, e.g. `1s`, `250ms`.
    #[serde(default = "default_connect_timeout")]
    pub connect: String,
    /// A connection that moves no byte either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle: String,
    /// A TLS handshake between proxies must finish within this.
    #[serde(default = "default_handshake_timeout")]
    pub handshake: String,
    /// Protocol detection on inbound connections: how long a peer may take to send its first
    /// byte (a silent peer is taken to speak a server-first protocol) and, once it has begun
    /// a TLS ClientHello, to finish it.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            idle: default_idle_timeout(),
            handshake: default_handshake_timeout(),
            first_byte: default_first_byte_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Connections one worker holds at once; more are refused with a reset.
    #[serde(default = "default_max_conns")]
    pub max_connections_per_worker: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections_per_worker: default_max_conns(),
        }
    }
}

/// TCP options on both sides of every proxied connection, so a peer that vanished (a pod
/// deleted, a node gone) does not hold a connection until the idle timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcp {
    /// Send keepalive probes on idle connections.
    #[serde(default = "default_true")]
    pub keepalive: bool,
    /// Idle time before the first probe (whole seconds).
    #[serde(default = "default_keepalive_time")]
    pub keepalive_time: String,
    /// Time between probes (whole seconds).
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: String,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "default_keepalive_probes")]
    pub keepalive_probes: u32,
    /// `TCP_USER_TIMEOUT`: sent data unacknowledged for this long drops the connection;
    /// `off` leaves the kernel's default (about 15 minutes of retransmissions).
    #[serde(default = "default_user_timeout")]
    pub user_timeout: String,
}

impl Default for RawTcp {
    fn default() -> Self {
        Self {
            keepalive: true,
            keepalive_time: default_keepalive_time(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_probes: default_keepalive_probes(),
            user_timeout: default_user_timeout(),
        }
    }
}

/// A mesh service: virtual addresses clients dial, and the endpoints behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    /// Virtual `IP:port` addresses (a cluster IP and port).
    pub addrs: Vec<String>,
    pub endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub addr: String,
    /// The SPIFFE ID the endpoint's proxy must present; with one, the endpoint is reached
    /// over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_admin() -> String {
    "127.0.0.1:15000".into()
}
fn default_mark() -> u32 {
    1337
}
fn default_outbound() -> String {
    "[::]:15001".into()
}
fn default_inbound() -> String {
    "[::]:15006".into()
}
fn default_udp_idle() -> String {
    "30s".into()
}
fn default_udp_flows() -> u32 {
    4096
}
fn default_udp_batch() -> u32 {
    16
}
fn default_connect_timeout() -> String {
    "1s".into()
}
fn default_idle_timeout() -> String {
    "1h".into()
}
fn default_handshake_timeout() -> String {
    "5s".into()
}
fn default_first_byte_timeout() -> String {
    "1s".into()
}
fn default_max_conns() -> u32 {
    8192
}
fn default_weight() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_keepalive_time() -> String {
    "30s".into()
}
fn default_keepalive_interval() -> String {
    "10s".into()
}
fn default_keepalive_probes() -> u32 {
    3
}
fn default_user_timeout() -> String {
    "60s".into()
}

impl RawConfig {
    /// Parses a document; structural errors (syntax, unknown fields, wrong types) come back
    /// with the path where they were found.
    pub fn parse(text: &str, format: Format) -> Result<Self, ConfigError> {
        fn path_err<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> ConfigError {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::new(path, e.into_inner().to_string())
        }
        match format {
            Format::Json => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(path_err)
            }
            Format::Yaml => {
                if text.trim().is_empty() {
                    return Err(ConfigError::new("", "the document is empty"));
                }
                let de = serde_yaml::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(path_err)
            }
        }
    }
}
