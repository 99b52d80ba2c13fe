//! From the raw document to a [`Config`]: every value checked, every error reported with its
//! path, and every duration and size held within [`bounds`].

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    IdentitySourceKind, Mode, RawAccess, RawConfig, RawHttp, RawIdentity, RawNats, RawProtocols,
    RawService, RawTcp,
};
use super::{
    BootConfig, Config, ConfigError, Endpoint, IdentityConfig, InboundPolicy, Keepalive, Limits,
    Listeners, LiveConfig, NatsConfig, NodeConfig, Service, TcpOptions, Timeouts, UdpOptions,
    VersionId,
};
use crate::access::{AccessPolicy, Rule as AccessRule};
use crate::addr::canonical;
use crate::http::{HttpPolicy, Pattern, RouteGroup, RouteMatch, RouteRef};
use crate::lb::WeightedRoundRobin;
use crate::spiffe::SpiffeId;

/// The largest values that validate. Each is far beyond any sensible setting and far below
/// where deadline arithmetic (`Instant + Duration`), timer wheels or socket options
/// (`TCP_KEEPIDLE` takes at most 32767 s, `TCP_USER_TIMEOUT` an `int` of milliseconds) would
/// overflow, so no value that validates can crash a worker.
pub mod bounds {
    use std::time::Duration;

    pub const CONNECT: Duration = Duration::from_secs(10 * 60);
    pub const IDLE: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const HANDSHAKE: Duration = Duration::from_secs(10 * 60);
    pub const FIRST_BYTE: Duration = Duration::from_secs(60);
    /// `TCP_KEEPIDLE` and `TCP_KEEPINTVL` (Linux's `MAX_TCP_KEEPIDLE`).
    pub const KEEPALIVE: Duration = Duration::from_secs(32767);
    /// `TCP_KEEPCNT` (Linux's `MAX_TCP_KEEPCNT`).
    pub const KEEPALIVE_PROBES: u32 = 127;
    pub const USER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_CONNECTIONS_PER_WORKER: u32 = 1_000_000;
    pub const WORKERS: u32 = 1024;
    /// UDP flows per worker and direction (each holds a socket; the process may have
    /// 20,000 descriptors here).
    pub const UDP_FLOWS_PER_WORKER: u32 = 65_536;
    /// Datagrams per `recvmmsg(2)` (the relay's receive slots).
    pub const UDP_RECV_BATCH: u32 = 32;
    /// Workloads one node proxy serves.
    pub const NODE_WORKLOADS: u32 = 1024;
    /// Services and endpoints in one config.
    pub const SERVICES: usize = 100_000;
    pub const ENDPOINTS_PER_SERVICE: usize = 100_000;
    /// Access rules, and sources in one rule.
    pub const ACCESS_RULES: usize = 10_000;
    pub const RULE_SOURCES: usize = 10_000;
    /// The HTTP request head limit (hyper needs at least 8 KiB of read buffer).
    pub const HTTP_HEADER_BYTES_MIN: u32 = 8 * 1024;
    pub const HTTP_HEADER_BYTES: u32 = 1024 * 1024;
    pub const HTTP_HEADERS: u32 = 1000;
    pub const HTTP_RESPONSE: Duration = Duration::from_secs(3600);
    pub const HTTP_POOL_IDLE: u32 = 1024;
    pub const HTTP2_STREAMS: u32 = 10_000;
    pub const ROUTE_GROUPS: usize = 1000;
    pub const ROUTE_MATCHES: usize = 100;
    /// A route pattern's length (compiled patterns are also bounded in memory).
    pub const PATTERN_LEN: usize = 1024;
}

/// A UDP relay address: `Some(None)` when off, `None` when invalid.
fn udp_listener(
    raw: Option<&str>,
    tcp: Option<SocketAddr>,
    path: &str,
    errs: &mut Vec<ConfigError>,
) -> Option<Option<SocketAddr>> {
    match raw {
        Some("off") => Some(None),
        Some(s) => parse_addr(s, path, errs).map(Some),
        // Follows the TCP listener (whose own errors are reported under its own path).
        None => Some(tcp.and_then(|t| match t.ip() {
            IpAddr::V4(_) => Some(t),
            IpAddr::V6(ip) if ip.is_unspecified() => {
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), t.port()))
            }
            IpAddr::V6(_) => None,
        })),
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

/// A duration in `(0, max]`.
fn parse_duration(
    s: &str,
    path: &str,
    max: Duration,
    errs: &mut Vec<ConfigError>,
) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            errs.push(ConfigError::new(path, "must be longer than zero"));
            None
        }
        Ok(d) if d > max => {
            errs.push(ConfigError::new(
                path,
                format!(
                    "{s:?} is longer than the limit of {}",
                    humantime::format_duration(max)
                ),
            ));
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

/// A duration of whole seconds in `[1s, max]` (the unit of the keepalive socket options).
fn parse_seconds(
    s: &str,
    path: &str,
    max: Duration,
    errs: &mut Vec<ConfigError>,
) -> Option<Duration> {
    let d = parse_duration(s, path, max, errs)?;
    if d.subsec_nanos() != 0 {
        errs.push(ConfigError::new(
            path,
            format!("{s:?} must be a whole number of seconds"),
        ));
        return None;
    }
    Some(d)
}

impl RawConfig {
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
        let udp_outbound = udp_listener(
            self.listeners.udp_outbound.as_deref(),
            outbound,
            "listeners.udp_outbound",
            &mut errs,
        );
        let udp_inbound = udp_listener(
            self.listeners.udp_inbound.as_deref(),
            inbound,
            "listeners.udp_inbound",
            &mut errs,
        );
        for (a, path) in [
            (udp_outbound, "listeners.udp_outbound"),
            (udp_inbound, "listeners.udp_inbound"),
        ] {
            if let Some(Some(a)) = a
                && !a.is_ipv4()
            {
                errs.push(ConfigError::new(
                    path,
                    format!("{a}: the UDP relays are IPv4 (the eBPF interception carries IPv4 datagrams)"),
                ));
            }
        }
        // (Derived from the TCP listeners, a clash is already reported for them.)
        let udp_explicit =
            self.listeners.udp_outbound.is_some() || self.listeners.udp_inbound.is_some();
        if let (true, Some(Some(o)), Some(Some(i))) = (udp_explicit, udp_outbound, udp_inbound)
            && o.port() == i.port()
            && o.port() != 0
        {
            errs.push(ConfigError::new(
                "listeners.udp_inbound",
                format!("port {} is also the outbound UDP relay's port", i.port()),
            ));
        }
        let udp_idle = parse_duration(
            &self.udp.idle_timeout,
            "udp.idle_timeout",
            bounds::IDLE,
            &mut errs,
        );
        let udp_flows = match self.udp.max_flows_per_worker {
            n @ 1..=bounds::UDP_FLOWS_PER_WORKER => NonZeroU32::new(n),
            n => {
                errs.push(ConfigError::new(
                    "udp.max_flows_per_worker",
                    format!("{n} is not between 1 and {}", bounds::UDP_FLOWS_PER_WORKER),
                ));
                None
            }
        };
        let udp_batch = match self.udp.recv_batch {
            n @ 1..=bounds::UDP_RECV_BATCH => Some(n as usize),
            n => {
                errs.push(ConfigError::new(
                    "udp.recv_batch",
                    format!("{n} is not between 1 and {}", bounds::UDP_RECV_BATCH),
                ));
                None
            }
        };
        let udp = match (udp_idle, udp_flows, udp_batch) {
            (Some(idle), Some(max_flows_per_worker), Some(recv_batch)) => Some(UdpOptions {
                idle,
                max_flows_per_worker,
                recv_batch,
            }),
            _ => None,
        };
        let admin = parse_addr(&self.admin, "admin", &mut errs);
        let workers = match self.workers {
            None => None,
            Some(n) if (1..=bounds::WORKERS).contains(&n) => NonZeroU32::new(n),
            Some(n) => {
                errs.push(ConfigError::new(
                    "workers",
                    format!("{n} is not between 1 and {}", bounds::WORKERS),
                ));
                None
            }
        };
        let t = &self.timeouts;
        let connect = parse_duration(&t.connect, "timeouts.connect", bounds::CONNECT, &mut errs);
        let idle = parse_duration(&t.idle, "timeouts.idle", bounds::IDLE, &mut errs);
        let handshake = parse_duration(
            &t.handshake,
            "timeouts.handshake",
            bounds::HANDSHAKE,
            &mut errs,
        );
        let first_byte = parse_duration(
            &t.first_byte,
            "timeouts.first_byte",
            bounds::FIRST_BYTE,
            &mut errs,
        );
        let max_conns = match self.limits.max_connections_per_worker {
            0 => {
                errs.push(ConfigError::new(
                    "limits.max_connections_per_worker",
                    "must be at least 1",
                ));
                None
            }
            n if n > bounds::MAX_CONNECTIONS_PER_WORKER => {
                errs.push(ConfigError::new(
                    "limits.max_connections_per_worker",
                    format!(
                        "{n} is above the limit of {}",
                        bounds::MAX_CONNECTIONS_PER_WORKER
                    ),
                ));
                None
            }
            n => NonZeroU32::new(n),
        };
        let tcp = validate_tcp(&self.tcp, &mut errs);

        if self.services.len() > bounds::SERVICES {
            errs.push(ConfigError::new(
                "services",
                format!(
                    "{} services; at most {} fit one config",
                    self.services.len(),
                    bounds::SERVICES
                ),
            ));
        }
        // Indexes into `services` equal raw indexes only when every service is valid, which
        // is the only case in which a Config is built; messages use the raw index.
        let mut services = Vec::with_capacity(self.services.len());
        let mut raw_index = Vec::with_capacity(self.services.len());
        let mut by_vip: HashMap<SocketAddr, usize> = HashMap::new();
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
                    if let Some(other) = by_vip.get(vip) {
                        errs.push(ConfigError::new(
                            format!("{p}.addrs[{ai}]"),
                            format!("{vip} is already an address of services[{other}]"),
                        ));
                    } else {
                        by_vip.insert(*vip, si);
                    }
                }
                services.push(svc);
                raw_index.push(si);
            }
        }
        let mut by_endpoint = HashMap::new();
        for (si, svc) in services.iter().enumerate() {
            for (ei, ep) in svc.endpoints.iter().enumerate() {
                if let Some(other) = by_vip.get(&ep.addr) {
                    errs.push(ConfigError::new(
                        format!("services[{}].endpoints[{ei}].addr", raw_index[si]),
                        format!("{} is a virtual address of services[{other}]", ep.addr),
                    ));
                }
                by_endpoint.entry(ep.addr).or_insert((si, ei));
            }
        }

        let identity = validate_identity(&self.identity, &mut errs);
        match (self.mode, &identity) {
            (Mode::Sidecar, IdentityConfig::Delegated { .. }) => errs.push(ConfigError::new(
                "identity.source",
                "delegated issues SVIDs for other workloads: it is for mode: node",
            )),
            (Mode::Node, IdentityConfig::WorkloadApi { .. } | IdentityConfig::Files { .. }) => errs
                .push(ConfigError::new(
                    "identity.source",
                    "a node proxy presents each workload's own SVID: use delegated (or none)",
                )),
            _ => {}
        }
        if self.mode == Mode::Node && self.control_plane.is_some() {
            errs.push(ConfigError::new(
                "control_plane",
                "configuration over NATS follows one workload's scope; node mode takes its config from the file",
            ));
        }
        let node = match self.node.max_workloads {
            n @ 1..=bounds::NODE_WORKLOADS if !self.node.socket.is_empty() => Some(NodeConfig {
                socket: PathBuf::from(&self.node.socket),
                max_workloads: n as usize,
            }),
            n @ 1..=bounds::NODE_WORKLOADS => {
                let _ = n;
                errs.push(ConfigError::new("node.socket", "must not be empty"));
                None
            }
            n => {
                errs.push(ConfigError::new(
                    "node.max_workloads",
                    format!("{n} is not between 1 and {}", bounds::NODE_WORKLOADS),
                ));
                None
            }
        };
        let nats = self
            .control_plane
            .as_ref()
            .and_then(|cp| validate_nats(&cp.nats, &identity, &mut errs));
        let http = validate_http(&self.protocols, &self.http, &mut errs);
        let access = validate_access(&self.access, &self.services, &http, &mut errs);
        let inbound_policy = InboundPolicy {
            default: self.inbound.mode,
            ports: self.inbound.ports.clone(),
        };
        if self.inbound.ports.contains_key(&0) {
            errs.push(ConfigError::new("inbound.ports", "port 0 is not a port"));
        }

        let timeouts = match (connect, idle, handshake, first_byte) {
            (Some(connect), Some(idle), Some(handshake), Some(first_byte)) => Some(Timeouts {
                connect,
                idle,
                handshake,
                first_byte,
            }),
            _ => None,
        };
        match (
            outbound, inbound, admin, timeouts, max_conns, tcp, udp, node,
        ) {
            (
                Some(outbound),
                Some(inbound),
                Some(admin),
                Some(timeouts),
                Some(max),
                Some(tcp),
                Some(udp),
                Some(node),
            ) if errs.is_empty() => {
                // Services were validated one by one; a valid config has all of them, so the
                // vip index (raw positions) is also an index into `services`.
                Ok(Config {
                    version: VersionId::of(&self),
                    boot: BootConfig {
                        listeners: Listeners {
                            outbound,
                            inbound,
                            udp_outbound: udp_outbound.flatten(),
                            udp_inbound: udp_inbound.flatten(),
                        },
                        admin,
                        identity,
                        workers,
                        nats,
                        bypass_mark: NonZeroU32::new(self.bypass_mark),
                        mode: self.mode,
                        node,
                    },
                    live: LiveConfig {
                        timeouts,
                        limits: Limits {
                            max_connections_per_worker: max,
                        },
                        tcp,
                        udp,
                        copy: self.copy,
                        egress: self.egress,
                        services,
                        inbound: inbound_policy,
                        access,
                        http,
                        by_vip,
                        by_endpoint,
                    },
                    raw: self,
                })
            }
            _ => Err(errs),
        }
    }
}

fn validate_tcp(raw: &RawTcp, errs: &mut Vec<ConfigError>) -> Option<TcpOptions> {
    let time = parse_seconds(
        &raw.keepalive_time,
        "tcp.keepalive_time",
        bounds::KEEPALIVE,
        errs,
    );
    let interval = parse_seconds(
        &raw.keepalive_interval,
        "tcp.keepalive_interval",
        bounds::KEEPALIVE,
        errs,
    );
    let probes_ok = (1..=bounds::KEEPALIVE_PROBES).contains(&raw.keepalive_probes);
    if !probes_ok {
        errs.push(ConfigError::new(
            "tcp.keepalive_probes",
            format!("must be between 1 and {}", bounds::KEEPALIVE_PROBES),
        ));
    }
    let user_timeout = if raw.user_timeout == "off" {
        Some(None)
    } else {
        parse_duration(
            &raw.user_timeout,
            "tcp.user_timeout",
            bounds::USER_TIMEOUT,
            errs,
        )
        .map(Some)
    };
    let (time, interval, user_timeout) = (time?, interval?, user_timeout?);
    probes_ok.then_some(TcpOptions {
        keepalive: raw.keepalive.then_some(Keepalive {
            time,
            interval,
            probes: raw.keepalive_probes,
        }),
        user_timeout,
    })
}

fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_nats(
    raw: &RawNats,
    identity: &IdentityConfig,
    errs: &mut Vec<ConfigError>,
) -> Option<NatsConfig> {
    let before = errs.len();
    let p = "control_plane.nats";
    if raw.servers.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.servers"),
            "at least one server is needed",
        ));
    }
    for (i, s) in raw.servers.iter().enumerate() {
        let hostport = s.split_once("://").map_or(s.as_str(), |(scheme, rest)| {
            if !matches!(scheme, "tls" | "nats") {
                errs.push(ConfigError::new(
                    format!("{p}.servers[{i}]"),
                    format!(
                        "{s:?}: the scheme must be tls:// (or nats://, with TLS required anyway)"
                    ),
                ));
            }
            rest
        });
        let port_ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            errs.push(ConfigError::new(
                format!("{p}.servers[{i}]"),
                format!("{s:?}: want tls://HOST:PORT"),
            ));
        }
    }
    for (field, name) in [
        ("bucket", &raw.bucket),
        ("status_bucket", &raw.status_bucket),
    ] {
        if !valid_bucket(name) {
            errs.push(ConfigError::new(
                format!("{p}.{field}"),
                format!("{name:?}: letters, digits, '-' and '_', at most 64"),
            ));
        }
    }
    let no_identity = *identity == IdentityConfig::None;
    let client = match (&raw.tls.cert, &raw.tls.key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) if no_identity => {
            errs.push(ConfigError::new(
                format!("{p}.tls"),
                "a client certificate is needed: tls.cert and tls.key, or an identity source (the workload's SVID is used)",
            ));
            None
        }
        (None, None) => None,
        _ => {
            errs.push(ConfigError::new(
                format!("{p}.tls"),
                "cert and key go together",
            ));
            None
        }
    };
    if raw.tls.ca.is_none() && no_identity {
        errs.push(ConfigError::new(
            format!("{p}.tls.ca"),
            "the roots for the server's certificate are needed, or an identity source (its trust bundle is used)",
        ));
    }
    let status_interval = parse_duration(
        &raw.status_interval,
        &format!("{p}.status_interval"),
        Duration::from_secs(300),
        errs,
    );
    if errs.len() > before {
        return None;
    }
    Some(NatsConfig {
        servers: raw.servers.clone(),
        ca: raw.tls.ca.as_ref().map(PathBuf::from),
        client,
        bucket: raw.bucket.clone(),
        status_bucket: raw.status_bucket.clone(),
        node: raw.node.clone(),
        persist: raw.persist.as_ref().map(PathBuf::from),
        status_interval: status_interval?,
    })
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
        IdentitySourceKind::Delegated => IdentityConfig::Delegated {
            socket: need("socket", &raw.socket),
        },
    }
}

fn validate_access(
    raw: &RawAccess,
    services: &[RawService],
    http: &HttpPolicy,
    errs: &mut Vec<ConfigError>,
) -> AccessPolicy {
    if raw.rules.len() > bounds::ACCESS_RULES {
        errs.push(ConfigError::new(
            "access.rules",
            format!(
                "{} rules; at most {} fit one config",
                raw.rules.len(),
                bounds::ACCESS_RULES
            ),
        ));
    }
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
        if r.sources.len() > bounds::RULE_SOURCES {
            errs.push(ConfigError::new(
                format!("{p}.sources"),
                format!("more than {} sources", bounds::RULE_SOURCES),
            ));
        }
        let mut sources = BTreeSet::new();
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
        let mut routes = Vec::with_capacity(r.routes.len());
        for (k, name) in r.routes.iter().enumerate() {
            match resolve_route(http, name) {
                Ok(route) => routes.push(route),
                Err(msg) => errs.push(ConfigError::new(format!("{p}.routes[{k}]"), msg)),
            }
        }
        rules.push(AccessRule {
            service: r.destination.service.clone(),
            port: r.destination.port,
            sources,
            routes,
        });
    }
    AccessPolicy {
        default: raw.default,
        rules,
    }
}

/// `group` or `group/match`, as indexes into the route groups.
fn resolve_route(http: &HttpPolicy, name: &str) -> Result<RouteRef, String> {
    let (group, matched) = match name.split_once('/') {
        Some((g, m)) => (g, Some(m)),
        None => (name, None),
    };
    let gi = http
        .groups
        .iter()
        .position(|g| g.name == group)
        .ok_or_else(|| format!("unknown route group {group:?} (not in http.route_groups)"))?;
    let matched = match matched {
        None => None,
        Some(m) => Some(
            http.groups[gi]
                .matches
                .iter()
                .position(|x| x.name == m)
                .ok_or_else(|| format!("route group {group:?} has no match named {m:?}"))?,
        ),
    };
    Ok(RouteRef { group: gi, matched })
}

fn validate_http(
    protocols: &RawProtocols,
    raw: &RawHttp,
    errs: &mut Vec<ConfigError>,
) -> HttpPolicy {
    if protocols.ports.contains_key(&0) {
        errs.push(ConfigError::new("protocols.ports", "port 0 is not a port"));
    }
    let max_header_bytes = match raw.max_header_bytes {
        n if (bounds::HTTP_HEADER_BYTES_MIN..=bounds::HTTP_HEADER_BYTES).contains(&n) => n,
        n => {
            errs.push(ConfigError::new(
                "http.max_header_bytes",
                format!(
                    "{n} is not between {} and {}",
                    bounds::HTTP_HEADER_BYTES_MIN,
                    bounds::HTTP_HEADER_BYTES
                ),
            ));
            bounds::HTTP_HEADER_BYTES_MIN
        }
    };
    let max_headers = match raw.max_headers {
        n if (1..=bounds::HTTP_HEADERS).contains(&n) => n,
        n => {
            errs.push(ConfigError::new(
                "http.max_headers",
                format!("{n} is not between 1 and {}", bounds::HTTP_HEADERS),
            ));
            1
        }
    };
    if raw.pool_max_idle > bounds::HTTP_POOL_IDLE {
        errs.push(ConfigError::new(
            "http.pool_max_idle",
            format!(
                "{} is more than {}",
                raw.pool_max_idle,
                bounds::HTTP_POOL_IDLE
            ),
        ));
    }
    let max_concurrent_streams = match raw.max_concurrent_streams {
        n if (1..=bounds::HTTP2_STREAMS).contains(&n) => n,
        n => {
            errs.push(ConfigError::new(
                "http.max_concurrent_streams",
                format!("{n} is not between 1 and {}", bounds::HTTP2_STREAMS),
            ));
            1
        }
    };
    let access_log = crate::http::access_log::AccessLogPolicy {
        enabled: raw.access_log.enabled,
        format: raw.access_log.format,
        path: raw.access_log.path.as_str().into(),
    };
    if !crate::http::access_log::valid_path(&raw.access_log.path) {
        errs.push(ConfigError::new(
            "http.access_log.path",
            format!(
                "{:?} is not stdout, stderr or an absolute path",
                raw.access_log.path
            ),
        ));
    }
    let sample_ppm = crate::http::trace::ratio_ppm(raw.tracing.sample_ratio).unwrap_or_else(|| {
        errs.push(ConfigError::new(
            "http.tracing.sample_ratio",
            format!("{} is not between 0 and 1", raw.tracing.sample_ratio),
        ));
        0
    });
    let otlp = raw.tracing.otlp.as_deref().and_then(|a| match a.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errs.push(ConfigError::new(
                "http.tracing.otlp",
                format!("{a:?} is not an IP:port"),
            ));
            None
        }
    });
    let name = &raw.tracing.service_name;
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        errs.push(ConfigError::new(
            "http.tracing.service_name",
            "must be 1 to 255 characters, none of them control characters",
        ));
    }
    let tracing = crate::http::trace::TracingPolicy {
        sample_ppm,
        otlp,
        service_name: name.clone(),
    };
    let response_timeout = parse_duration(
        &raw.response_timeout,
        "http.response_timeout",
        bounds::HTTP_RESPONSE,
        errs,
    );
    let pool_idle_timeout = parse_duration(
        &raw.pool_idle_timeout,
        "http.pool_idle_timeout",
        bounds::IDLE,
        errs,
    );
    if raw.route_groups.len() > bounds::ROUTE_GROUPS {
        errs.push(ConfigError::new(
            "http.route_groups",
            format!("more than {} route groups", bounds::ROUTE_GROUPS),
        ));
    }
    let mut groups: Vec<RouteGroup> = Vec::with_capacity(raw.route_groups.len());
    for (gi, g) in raw.route_groups.iter().enumerate() {
        let p = format!("http.route_groups[{gi}]");
        if !valid_route_name(&g.name) {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                format!(
                    "{:?} is not a route name (1 to 63 of a-z, 0-9, '-', '_', '.')",
                    g.name
                ),
            ));
        }
        if groups.iter().any(|x| x.name == g.name) {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                format!("route group {:?} is named twice", g.name),
            ));
        }
        if g.matches.is_empty() || g.matches.len() > bounds::ROUTE_MATCHES {
            errs.push(ConfigError::new(
                format!("{p}.matches"),
                format!("a route group has 1 to {} matches", bounds::ROUTE_MATCHES),
            ));
        }
        let mut matches: Vec<RouteMatch> = Vec::with_capacity(g.matches.len());
        for (mi, m) in g.matches.iter().enumerate() {
            let mp = format!("{p}.matches[{mi}]");
            if !valid_route_name(&m.name) {
                errs.push(ConfigError::new(
                    format!("{mp}.name"),
                    format!(
                        "{:?} is not a route name (1 to 63 of a-z, 0-9, '-', '_', '.')",
                        m.name
                    ),
                ));
            }
            if matches.iter().any(|x| x.name == m.name) {
                errs.push(ConfigError::new(
                    format!("{mp}.name"),
                    format!("match {:?} is named twice in its group", m.name),
                ));
            }
            let path = m
                .path_regex
                .as_deref()
                .and_then(|re| compile(re, &format!("{mp}.pathRegex"), errs));
            let mut methods = Vec::new();
            for (k, method) in m.methods.iter().enumerate() {
                if method == "*" {
                    methods.clear();
                    break;
                }
                if method.is_empty()
                    || method.len() > 32
                    || !method.bytes().all(|b| b.is_ascii_uppercase())
                {
                    errs.push(ConfigError::new(
                        format!("{mp}.methods[{k}]"),
                        format!("{method:?} is not a method (upper case letters, e.g. GET, or *)"),
                    ));
                }
                methods.push(method.clone());
            }
            let mut headers = Vec::new();
            for (name, re) in &m.headers {
                let hp = format!("{mp}.headers.{name}");
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    errs.push(ConfigError::new(
                        hp.clone(),
                        format!("{name:?} is not a header name"),
                    ));
                }
                if let Some(p) = compile(re, &hp, errs) {
                    headers.push((name.to_ascii_lowercase(), p));
                }
            }
            matches.push(RouteMatch {
                name: m.name.clone(),
                path,
                methods,
                headers,
            });
        }
        groups.push(RouteGroup {
            name: g.name.clone(),
            matches,
        });
    }
    let defaults = HttpPolicy::default();
    HttpPolicy {
        detect: protocols.detect,
        ports: protocols.ports.clone(),
        groups,
        max_header_bytes: max_header_bytes as usize,
        max_headers: max_headers as usize,
        response_timeout: response_timeout.unwrap_or(defaults.response_timeout),
        pool_max_idle: raw.pool_max_idle.min(bounds::HTTP_POOL_IDLE) as usize,
        pool_idle_timeout: pool_idle_timeout.unwrap_or(defaults.pool_idle_timeout),
        max_concurrent_streams,
        h2_between_proxies: raw.h2_between_proxies,
        access_log,
        tracing,
    }
}

fn valid_route_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn compile(re: &str, path: &str, errs: &mut Vec<ConfigError>) -> Option<Pattern> {
    if re.len() > bounds::PATTERN_LEN {
        errs.push(ConfigError::new(
            path,
            format!("a pattern is at most {} bytes", bounds::PATTERN_LEN),
        ));
        return None;
    }
    match Pattern::new(re) {
        Ok(p) => Some(p),
        Err(e) => {
            errs.push(ConfigError::new(
                path,
                format!("invalid regular expression {re:?}: {e}"),
            ));
            None
        }
    }
}

fn validate_service(raw: &RawService, p: &str, errs: &mut Vec<ConfigError>) -> Option<Service> {
    let before = errs.len();
    if raw.name.is_empty()
        || raw.name.len() > 253
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        errs.push(ConfigError::new(
            format!("{p}.name"),
            format!(
                "invalid service name {:?} (1 to 253 letters, digits, '-', '.', '_')",
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
    if raw.endpoints.len() > bounds::ENDPOINTS_PER_SERVICE {
        errs.push(ConfigError::new(
            format!("{p}.endpoints"),
            format!("more than {} endpoints", bounds::ENDPOINTS_PER_SERVICE),
        ));
        return None;
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (ei, e) in raw.endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{ei}]");
        let addr = parse_addr(&e.addr, &format!("{ep}.addr"), errs);
        if let Some(a) = addr {
            if a.port() == 0 || a.ip().is_unspecified() {
                errs.push(ConfigError::new(
                    format!("{ep}.addr"),
                    format!("{a} cannot be dialled"),
                ));
            } else if !seen.insert(a) {
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
