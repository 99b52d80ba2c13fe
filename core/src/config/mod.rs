//! The configuration schema, parsed once and validated once.
//!
//! Parsing ([`RawConfig`]) only checks structure: unknown fields and wrong types are refused
//! by serde. Values that need checking (addresses, durations, weights, identities) stay
//! strings in the raw form so that [`RawConfig::validate`] can report every bad value at
//! once, each with its path (`services[2].endpoints[0].addr: invalid socket address ...`).
//! A validated [`Config`] is immutable; a new one replaces it whole.
//!
//! A config has two parts. [`BootConfig`] is what the process is built around: listener and
//! admin addresses, the identity source, the worker count. Changing it takes a restart, and
//! [`BootConfig::restart_fields`] names what differs. [`LiveConfig`] is everything else
//! (services, endpoints, policies, timeouts, limits) and is applied to running workers.
//! Every duration and size is bounded here, so that no value that validates can overflow a
//! deadline or a socket option further down.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::AccessPolicy;
use crate::addr::{OrigDst, canonical};
use crate::lb::WeightedRoundRobin;
use crate::spiffe::SpiffeId;

mod raw;
mod validate;
mod version;

pub use raw::{
    IdentitySourceKind, Mode, RawAccess, RawAccessRule, RawConfig, RawControlPlane, RawDestination,
    RawEndpoint, RawIdentity, RawInbound, RawLimits, RawListeners, RawNats, RawNatsTls, RawNode,
    RawService, RawTcp, RawTimeouts, RawUdp,
};
pub use validate::bounds;
pub use version::VersionId;

/// The configuration that serves when no file is given: a sidecar with egress allowed.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// One thing wrong with a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path in the document, e.g. `services[2].endpoints[0].addr`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The document's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON for `*.json`, YAML for everything else.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// How bytes move between the two sockets of a plaintext connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// The measured default (see `perf/RESULTS.md`): through a buffer for small exchanges,
    /// where it costs fewer cycles than splice; a direction that fills a whole buffer in one
    /// read is moving bulk and switches to zero-copy splice.
    #[default]
    Auto,
    /// Zero-copy `splice(2)` through a pipe.
    Splice,
    /// Through a user-space buffer.
    Buffered,
}

/// What happens to a connection whose destination the mesh does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressPolicy {
    /// Forward it, unchanged, to where it was going.
    #[default]
    Allow,
    /// Close it and count it.
    Deny,
}

/// What inbound plaintext meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Mesh mTLS, plaintext and the app's own TLS are all accepted (the latter two counted).
    #[default]
    Permissive,
    /// Only mTLS from a trusted peer.
    Strict,
}

/// Where the proxy's identity comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityConfig {
    None,
    WorkloadApi {
        socket: PathBuf,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    },
    /// The Delegated Identity API at `socket` (node mode).
    Delegated {
        socket: PathBuf,
    },
}

impl fmt::Display for IdentityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityConfig::None => f.write_str("none"),
            IdentityConfig::WorkloadApi { socket } => {
                write!(f, "workload_api {}", socket.display())
            }
            IdentityConfig::Files { cert, .. } => write!(f, "files {}", cert.display()),
            IdentityConfig::Delegated { socket } => write!(f, "delegated {}", socket.display()),
        }
    }
}

/// Strict or permissive, per inbound port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundPolicy {
    pub default: InboundMode,
    pub ports: BTreeMap<u16, InboundMode>,
}

impl InboundPolicy {
    pub fn mode_for(&self, port: u16) -> InboundMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

/// A validated, immutable configuration: the part fixed at start, the part applied live, and
/// the document both came from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The source's own version number, or a digest of the content.
    pub version: VersionId,
    pub boot: BootConfig,
    pub live: LiveConfig,
    raw: RawConfig,
}

/// What takes a restart to change: sockets bound and threads started at start-up, and the
/// identity source the control thread follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub listeners: Listeners,
    pub admin: SocketAddr,
    pub identity: IdentityConfig,
    /// `None`: as many as the CPUs (and CPU quota) allow.
    pub workers: Option<NonZeroU32>,
    /// Configuration over NATS, when the live part follows a control plane.
    pub nats: Option<NatsConfig>,
    /// `SO_MARK` on upstream sockets; `None` when marking is off. Restart-only: the
    /// interception rules installed beside the proxy exempt this mark (or the proxy's uid),
    /// and the proxy may lack the capability to set another.
    pub bypass_mark: Option<NonZeroU32>,
    pub mode: Mode,
    /// The registration socket and limits (used in node mode).
    pub node: NodeConfig,
}

/// Node mode's registration API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub socket: PathBuf,
    pub max_workloads: usize,
}

/// Where and how to follow the control plane over NATS, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    /// Roots for the server; `None`: the workload's trust bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate and key; `None`: the workload's SVID.
    pub client: Option<(PathBuf, PathBuf)>,
    pub bucket: String,
    pub status_bucket: String,
    pub node: Option<String>,
    pub persist: Option<PathBuf>,
    pub status_interval: Duration,
}

impl BootConfig {
    /// The fields of `next` that differ from `self` (the ones in force): each needs a
    /// restart to take effect.
    pub fn restart_fields(&self, next: &BootConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.listeners.outbound != next.listeners.outbound {
            out.push("listeners.outbound");
        }
        if self.listeners.inbound != next.listeners.inbound {
            out.push("listeners.inbound");
        }
        if self.listeners.udp_outbound != next.listeners.udp_outbound {
            out.push("listeners.udp_outbound");
        }
        if self.listeners.udp_inbound != next.listeners.udp_inbound {
            out.push("listeners.udp_inbound");
        }
        if self.admin != next.admin {
            out.push("admin");
        }
        if self.identity != next.identity {
            out.push("identity");
        }
        if self.workers != next.workers {
            out.push("workers");
        }
        if self.nats != next.nats {
            out.push("control_plane");
        }
        if self.bypass_mark != next.bypass_mark {
            out.push("bypass_mark");
        }
        if self.mode != next.mode {
            out.push("mode");
        }
        if self.node != next.node {
            out.push("node");
        }
        out
    }
}

/// What running workers pick up at once: every new connection sees the newest.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub tcp: TcpOptions,
    pub udp: UdpOptions,
    pub copy: CopyMode,
    pub egress: EgressPolicy,
    pub services: Vec<Service>,
    pub inbound: InboundPolicy,
    pub access: AccessPolicy,
    /// Protocol detection, the HTTP engine's limits, route groups.
    pub http: crate::http::HttpPolicy,
    by_vip: HashMap<SocketAddr, usize>,
    by_endpoint: HashMap<SocketAddr, (usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// The UDP relays (`None`: off).
    pub udp_outbound: Option<SocketAddr>,
    pub udp_inbound: Option<SocketAddr>,
}

/// The UDP relay's flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    pub idle: Duration,
    pub max_flows_per_worker: NonZeroU32,
    /// Datagrams per `recvmmsg(2)`, 1 to [`bounds::UDP_RECV_BATCH`].
    pub recv_batch: usize,
}

/// Every timeout, each within [`bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub handshake: Duration,
    pub first_byte: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections_per_worker: NonZeroU32,
}

/// Keepalive probes for idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe; whole seconds, at most `TCP_KEEPIDLE`'s limit.
    pub time: Duration,
    pub interval: Duration,
    pub probes: u32,
}

/// TCP options set on both sides of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`; `None` leaves the kernel's default.
    pub user_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub endpoints: Vec<Endpoint>,
    lb: WeightedRoundRobin,
}

impl Service {
    /// The endpoint for this turn of the caller's round-robin counter.
    pub fn pick(&self, turn: u64) -> &Endpoint {
        // Validation guarantees at least one endpoint, so `pick` always has an answer.
        &self.endpoints[self.lb.pick(turn).unwrap_or(0)]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: Option<SpiffeId>,
    pub weight: NonZeroU32,
}

/// Where an outbound connection goes, decided from its original destination alone.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// A service's virtual address: balance across its endpoints. `index` keys the caller's
    /// per-service round-robin counter.
    Service { index: usize, service: &'a Service },
    /// A known endpoint dialled directly: use it as is.
    Endpoint {
        service: &'a Service,
        endpoint: &'a Endpoint,
    },
    /// Not part of the mesh.
    Egress(EgressPolicy),
}

impl Config {
    /// Parses and validates a document in one step.
    pub fn from_str(text: &str, format: Format) -> Result<Self, Vec<ConfigError>> {
        RawConfig::parse(text, format)
            .map_err(|e| vec![e])?
            .validate()
    }

    /// The embedded default.
    pub fn embedded_default() -> Self {
        #[allow(clippy::expect_used)] // the embedded default is covered by a unit test
        Self::from_str(DEFAULT_YAML, Format::Yaml).expect("embedded default config is valid")
    }

    /// The document this config was built from.
    pub fn raw(&self) -> &RawConfig {
        &self.raw
    }

    /// The document's restart-only fields, for display (`/config`).
    pub fn raw_boot(&self) -> serde_json::Value {
        self.raw_part(BOOT_FIELDS, true)
    }

    /// The document's live fields, for display (`/config`).
    pub fn raw_live(&self) -> serde_json::Value {
        self.raw_part(BOOT_FIELDS, false)
    }

    fn raw_part(&self, boot: &[&str], want_boot: bool) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.raw).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.retain(|k, _| k != "version" && boot.contains(&k.as_str()) == want_boot);
        }
        v
    }
}

/// The top-level keys of the document that belong to [`BootConfig`].
const BOOT_FIELDS: &[&str] = &[
    "listeners",
    "admin",
    "identity",
    "workers",
    "control_plane",
    "bypass_mark",
    "mode",
    "node",
];

impl LiveConfig {
    /// The service an endpoint address belongs to (for inbound access checks).
    pub fn service_of_endpoint(&self, addr: SocketAddr) -> Option<&Service> {
        self.by_endpoint
            .get(&canonical(addr))
            .map(|&(si, _)| &self.services[si])
    }

    /// Looks up an outbound connection's original destination.
    pub fn route(&self, dst: OrigDst) -> Route<'_> {
        let addr = dst.addr();
        if let Some(&index) = self.by_vip.get(&addr) {
            return Route::Service {
                index,
                service: &self.services[index],
            };
        }
        if let Some(&(si, ei)) = self.by_endpoint.get(&addr) {
            let service = &self.services[si];
            return Route::Endpoint {
                service,
                endpoint: &service.endpoints[ei],
            };
        }
        Route::Egress(self.egress)
    }
}

#[cfg(test)]
mod tests;
