//! The configuration schema, parsed once and validated once.
//!
//! Parsing ([`RawConfig`]) only checks structure: unknown fields and wrong types are refused
//! by serde. Values that need checking (addresses, durations, weights, identities) stay
//! strings in the raw form so that [`RawConfig::validate`] can report every bad value at
//! once, each with its path (`services[2].endpoints[0].addr: invalid socket address ...`).
//! A validated [`Config`] is immutable; a new one replaces it whole.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::{AccessPolicy, DefaultAccess, Rule as AccessRule};
use crate::addr::{OrigDst, canonical};
use crate::lb::WeightedRoundRobin;
use crate::spiffe::SpiffeId;

/// The configuration that serves when no file is given: a sidecar with egress allowed.
pub const DEFAULT_YAML: &str = include_str!("config/default.yaml");

/// One thing wrong with a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path in the document, e.g. `services[2].endpoints[0].addr`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
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

/// The document as written: structure checked, values not yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default = "default_admin")]
    pub admin: String,
    /// `SO_MARK` put on the proxy's upstream sockets so interception lets them pass; 0 turns
    /// marking off (bypass by uid instead).
    #[serde(default = "default_mark")]
    pub bypass_mark: u32,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
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

/// What inbound plaintext meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// mTLS and plaintext are both accepted (plaintext is counted).
    #[default]
    Permissive,
    /// Only mTLS from a trusted peer.
    Strict,
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
}

impl Default for RawListeners {
    fn default() -> Self {
        Self {
            outbound: default_outbound(),
            inbound: default_inbound(),
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
    /// How long an inbound connection may stay silent before its first byte decides TLS or
    /// plaintext; a peer that does not speak first (a server-first protocol) is plaintext.
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

fn default_handshake_timeout() -> String {
    "5s".into()
}
fn default_first_byte_timeout() -> String {
    "1s".into()
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
    /// The SPIFFE ID the endpoint's proxy must present (used once mTLS is on).
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
fn default_connect_timeout() -> String {
    "1s".into()
}
fn default_idle_timeout() -> String {
    "1h".into()
}
fn default_max_conns() -> u32 {
    8192
}
fn default_weight() -> u32 {
    1
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

    /// Checks every value and builds the immutable [`Config`], or returns every error found.
    pub fn validate(self) -> Result<Config, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let outbound = parse_addr(&self.listeners.outbound, "listeners.outbound", &mut errs);
        let inbound = parse_addr(&self.listeners.inbound, "listeners.inbound", &mut errs);
        if let (Some(o), Some(i)) = (outbound, inbound)
            && o.port() == i.port()
            && o.port() != 0
        {
            errs.push(ConfigError::new(
                "listeners.inbound",
                format!("port {} is also the outbound listener's port", i.port()),
            ));
        }
        let admin = parse_addr(&self.admin, "admin", &mut errs);
        let connect = parse_duration(&self.timeouts.connect, "timeouts.connect", &mut errs);
        let idle = parse_duration(&self.timeouts.idle, "timeouts.idle", &mut errs);
        let handshake = parse_duration(&self.timeouts.handshake, "timeouts.handshake", &mut errs);
        let first_byte =
            parse_duration(&self.timeouts.first_byte, "timeouts.first_byte", &mut errs);
        let max_conns = NonZeroU32::new(self.limits.max_connections_per_worker);
        if max_conns.is_none() {
            errs.push(ConfigError::new(
                "limits.max_connections_per_worker",
                "must be at least 1",
            ));
        }

        // Indexes into `services` equal raw indexes only when every service is valid, which
        // is the only case in which a Config is built; messages use the raw index.
        let mut services = Vec::with_capacity(self.services.len());
        let mut raw_index = Vec::with_capacity(self.services.len());
        let mut by_vip: HashMap<SocketAddr, (usize, String)> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (si, raw) in self.services.iter().enumerate() {
            let p = format!("services[{si}]");
            if let Some(svc) = validate_service(raw, &p, &mut errs) {
                if let Some(first) = names.insert(&raw.name, si) {
                    errs.push(ConfigError::new(
                        format!("{p}.name"),
                        format!(
                            "duplicate service name {:?} (also services[{first}])",
                            raw.name
                        ),
                    ));
                }
                for (ai, vip) in svc.addrs.iter().enumerate() {
                    if let Some((other, _)) = by_vip.get(vip) {
                        errs.push(ConfigError::new(
                            format!("{p}.addrs[{ai}]"),
                            format!("{vip} is already an address of services[{other}]"),
                        ));
                    } else {
                        by_vip.insert(*vip, (si, raw.name.clone()));
                    }
                }
                services.push(svc);
                raw_index.push(si);
            }
        }
        let mut by_endpoint = HashMap::new();
        for (si, svc) in services.iter().enumerate() {
            for (ei, ep) in svc.endpoints.iter().enumerate() {
                if let Some((other, _)) = by_vip.get(&ep.addr) {
                    errs.push(ConfigError::new(
                        format!("services[{}].endpoints[{ei}].addr", raw_index[si]),
                        format!("{} is a virtual address of services[{other}]", ep.addr),
                    ));
                }
                by_endpoint.entry(ep.addr).or_insert((si, ei));
            }
        }

        let identity = validate_identity(&self.identity, &mut errs);
        let access = validate_access(&self.access, &self.services, &mut errs);
        let inbound_policy = InboundPolicy {
            default: self.inbound.mode,
            ports: self.inbound.ports.clone(),
        };

        let timeouts = match (connect, idle, handshake, first_byte) {
            (Some(connect), Some(idle), Some(handshake), Some(first_byte)) => Some(Timeouts {
                connect,
                idle,
                handshake,
                first_byte,
            }),
            _ => None,
        };
        match (outbound, inbound, admin, timeouts, max_conns) {
            (Some(outbound), Some(inbound), Some(admin), Some(timeouts), Some(max))
                if errs.is_empty() =>
            {
                Ok(Config {
                    identity,
                    inbound: inbound_policy,
                    access,
                    listeners: Listeners { outbound, inbound },
                    admin,
                    bypass_mark: NonZeroU32::new(self.bypass_mark),
                    timeouts,
                    limits: Limits {
                        max_connections_per_worker: max,
                    },
                    copy: self.copy,
                    egress: self.egress,
                    by_vip: by_vip.into_iter().map(|(a, (si, _))| (a, si)).collect(),
                    by_endpoint,
                    services,
                    raw: self,
                })
            }
            _ => Err(errs),
        }
    }
}

fn parse_addr(s: &str, path: &str, errs: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(canonical(a)),
        Err(_) => {
            errs.push(ConfigError::new(
                path,
                format!(
                    "invalid socket address {s:?} (want IP:port, e.g. 10.0.0.1:80 or [fd00::1]:80)"
                ),
            ));
            None
        }
    }
}

fn parse_duration(s: &str, path: &str, errs: &mut Vec<ConfigError>) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            errs.push(ConfigError::new(path, "must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(ConfigError::new(
                path,
                format!("invalid duration {s:?}: {e} (e.g. 1s, 250ms, 1h)"),
            ));
            None
        }
    }
}

fn validate_identity(raw: &RawIdentity, errs: &mut Vec<ConfigError>) -> IdentityConfig {
    let mut need = |field: &str, v: &Option<String>| match v.as_deref() {
        Some(s) if !s.is_empty() => PathBuf::from(s),
        _ => {
            errs.push(ConfigError::new(
                format!("identity.{field}"),
                format!("required when identity.source is {:?}", raw.source),
            ));
            PathBuf::new()
        }
    };
    match raw.source {
        IdentitySourceKind::None => IdentityConfig::None,
        IdentitySourceKind::WorkloadApi => IdentityConfig::WorkloadApi {
            socket: need("socket", &raw.socket),
        },
        IdentitySourceKind::Files => IdentityConfig::Files {
            cert: need("cert", &raw.cert),
            key: need("key", &raw.key),
            bundle: need("bundle", &raw.bundle),
        },
    }
}

fn validate_access(
    raw: &RawAccess,
    services: &[RawService],
    errs: &mut Vec<ConfigError>,
) -> AccessPolicy {
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (ri, r) in raw.rules.iter().enumerate() {
        let p = format!("access.rules[{ri}]");
        if let Some(svc) = &r.destination.service
            && !services.iter().any(|s| &s.name == svc)
        {
            errs.push(ConfigError::new(
                format!("{p}.destination.service"),
                format!("unknown service {svc:?} (not in services)"),
            ));
        }
        if r.destination.port == Some(0) {
            errs.push(ConfigError::new(
                format!("{p}.destination.port"),
                "port 0 is not a port",
            ));
        }
        if r.sources.is_empty() {
            errs.push(ConfigError::new(
                format!("{p}.sources"),
                "a rule needs at least one source (to refuse everyone, use default: deny)",
            ));
        }
        let mut sources = std::collections::BTreeSet::new();
        for (si, src) in r.sources.iter().enumerate() {
            match SpiffeId::parse(src) {
                Ok(id) => {
                    sources.insert(id);
                }
                Err(e) => errs.push(ConfigError::new(
                    format!("{p}.sources[{si}]"),
                    format!("invalid SPIFFE ID {src:?}: {e}"),
                )),
            }
        }
        rules.push(AccessRule {
            service: r.destination.service.clone(),
            port: r.destination.port,
            sources,
        });
    }
    AccessPolicy {
        default: raw.default,
        rules,
    }
}

fn validate_service(raw: &RawService, p: &str, errs: &mut Vec<ConfigError>) -> Option<Service> {
    let before = errs.len();
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        errs.push(ConfigError::new(
            format!("{p}.name"),
            format!(
                "invalid service name {:?} (letters, digits, '-', '.', '_')",
                raw.name
            ),
        ));
    }
    if raw.addrs.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.addrs"),
            "a service needs at least one address",
        ));
    }
    let mut addrs = Vec::new();
    for (ai, a) in raw.addrs.iter().enumerate() {
        let path = format!("{p}.addrs[{ai}]");
        if let Some(addr) = parse_addr(a, &path, errs) {
            if addr.port() == 0 {
                errs.push(ConfigError::new(path, "port 0 cannot be dialled"));
            } else if addrs.contains(&addr) {
                errs.push(ConfigError::new(path, format!("{addr} is listed twice")));
            } else {
                addrs.push(addr);
            }
        }
    }
    if raw.endpoints.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.endpoints"),
            "a service needs at least one endpoint",
        ));
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (ei, e) in raw.endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{ei}]");
        let addr = parse_addr(&e.addr, &format!("{ep}.addr"), errs);
        if let Some(a) = addr {
            if a.port() == 0 || a.ip().is_unspecified() {
                errs.push(ConfigError::new(
                    format!("{ep}.addr"),
                    format!("{a} cannot be dialled"),
                ));
            } else if endpoints.iter().any(|x| x.addr == a) {
                errs.push(ConfigError::new(
                    format!("{ep}.addr"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        let weight = NonZeroU32::new(e.weight);
        if weight.is_none() {
            errs.push(ConfigError::new(
                format!("{ep}.weight"),
                "must be at least 1",
            ));
        }
        let identity = match e.identity.as_deref().map(SpiffeId::parse) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(err)) => {
                errs.push(ConfigError::new(
                    format!("{ep}.identity"),
                    format!(
                        "invalid SPIFFE ID {:?}: {err}",
                        e.identity.as_deref().unwrap_or("")
                    ),
                ));
                None
            }
        };
        if let (Some(addr), Some(weight)) = (addr, weight) {
            endpoints.push(Endpoint {
                addr,
                identity,
                weight,
            });
        }
    }
    if errs.len() > before {
        return None;
    }
    let lb = WeightedRoundRobin::new(endpoints.iter().map(|e| e.weight));
    Some(Service {
        name: raw.name.clone(),
        addrs,
        endpoints,
        lb,
    })
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

/// A validated, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub identity: IdentityConfig,
    pub inbound: InboundPolicy,
    pub access: AccessPolicy,
    pub listeners: Listeners,
    pub admin: SocketAddr,
    /// `None` when marking is off.
    pub bypass_mark: Option<NonZeroU32>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub copy: CopyMode,
    pub egress: EgressPolicy,
    pub services: Vec<Service>,
    by_vip: HashMap<SocketAddr, usize>,
    by_endpoint: HashMap<SocketAddr, (usize, usize)>,
    raw: RawConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
}

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

    /// The document this config was built from, for display (`/config`).
    pub fn raw(&self) -> &RawConfig {
        &self.raw
    }

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
