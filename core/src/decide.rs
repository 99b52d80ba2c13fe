//! The decisions of both pipelines as pure functions: what to do with an inbound connection
//! given what detection saw and the port's mode, whether its peer may reach the app, where an
//! outbound connection goes and which identity must answer there, and whether a destination
//! is the proxy itself. `uring-proxy` does the I/O around them; they are tested here without
//! sockets or timers.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::access::{AccessPolicy, Decision, Destination};
use crate::addr::{OrigDst, canonical};
use crate::client_hello::{ClientHello, Parsed};
use crate::config::{EgressPolicy, InboundMode, InboundPolicy, LiveConfig, Route};
use crate::metrics::{Detection, Outcome, RouteKind, Security};
use crate::spiffe::SpiffeId;
use crate::workload::WorkloadKey;

/// A protocol that mesh proxies speak to each other, told apart by its ALPN. One today;
/// HBONE (HTTP/2 CONNECT, ALPN `h2` on its own port) can join without changing callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshProtocol {
    /// ringmesh's own: mutual TLS 1.3 with X509-SVIDs, then the connection's bytes.
    Ringmesh,
}

impl MeshProtocol {
    pub const ALL: &'static [MeshProtocol] = &[MeshProtocol::Ringmesh];

    pub fn alpn(self) -> &'static [u8] {
        match self {
            MeshProtocol::Ringmesh => b"ringmesh",
        }
    }

    /// The mesh protocol a ClientHello asks for, if any.
    pub fn of(hello: &ClientHello<'_>) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| hello.offers(p.alpn()))
    }
}

/// What the first bytes of an inbound connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A ClientHello offering a mesh protocol.
    Mesh(MeshProtocol),
    /// A ClientHello without a mesh protocol: the application's own TLS.
    AppTls,
    /// Began like TLS, but unreadable as a ClientHello.
    MalformedTls,
    /// Anything that is not TLS.
    Plaintext,
    /// Nothing arrived within the detection timeout.
    Silent,
    /// A ClientHello began and did not complete within the detection timeout.
    Truncated,
    /// The peer closed without a byte.
    Closed,
}

impl Detected {
    /// Classifies a parse of the bytes so far; `None` while more are needed.
    pub fn from_parse(parsed: &Parsed<'_>) -> Option<Self> {
        match parsed {
            Parsed::NotTls => Some(Detected::Plaintext),
            Parsed::Incomplete { .. } => None,
            Parsed::Hello(h) => Some(MeshProtocol::of(h).map_or(Detected::AppTls, Detected::Mesh)),
            Parsed::Invalid(_) => Some(Detected::MalformedTls),
        }
    }

    /// What to conclude when the detection timeout passes with `seen` bytes read.
    pub fn on_timeout(seen: usize) -> Self {
        if seen == 0 {
            Detected::Silent
        } else {
            Detected::Truncated
        }
    }

    /// Its metric label.
    pub fn label(self) -> Detection {
        match self {
            Detected::Mesh(_) => Detection::MeshTls,
            Detected::AppTls => Detection::AppTls,
            Detected::MalformedTls => Detection::MalformedTls,
            Detected::Plaintext => Detection::Plaintext,
            Detected::Silent => Detection::Silent,
            Detected::Truncated => Detection::Truncated,
            Detected::Closed => Detection::Closed,
        }
    }
}

/// What to do with an inbound connection once detection is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundStep {
    /// Terminate mesh mTLS; the access check follows the handshake.
    Mesh(MeshProtocol),
    /// Pass the bytes to the app unopened (plaintext, or the app's own TLS); the access check
    /// follows, with no peer identity.
    Forward(Security),
    /// Refuse (reset) and count the outcome.
    Refuse(Outcome),
    /// The peer already left: nothing to do.
    Done,
}

/// The inbound decision: mesh mTLS is always terminated; anything else passes on a
/// permissive port and is refused on a strict one; a ClientHello left unfinished is refused
/// everywhere (a stalled handshake is not a server-first protocol).
pub fn inbound_step(mode: InboundMode, detected: Detected) -> InboundStep {
    use InboundMode::{Permissive, Strict};
    match (detected, mode) {
        (Detected::Mesh(p), _) => InboundStep::Mesh(p),
        (Detected::Closed, _) => InboundStep::Done,
        (Detected::Truncated, _) => InboundStep::Refuse(Outcome::TruncatedHello),
        (Detected::AppTls | Detected::MalformedTls, Permissive) => {
            InboundStep::Forward(Security::AppTls)
        }
        (Detected::AppTls | Detected::MalformedTls, Strict) => {
            InboundStep::Refuse(Outcome::AppTlsRefused)
        }
        // A silent peer is taken to wait for the server (MySQL, SMTP): plaintext.
        (Detected::Plaintext | Detected::Silent, Permissive) => {
            InboundStep::Forward(Security::Plaintext)
        }
        (Detected::Plaintext | Detected::Silent, Strict) => {
            InboundStep::Refuse(Outcome::PlaintextRefused)
        }
    }
}

/// The policies that apply to one workload's inbound connections.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadPolicy<'a> {
    pub inbound: &'a InboundPolicy,
    pub access: &'a AccessPolicy,
}

/// The policies for `workload`. Every workload of a sidecar shares the config's policies;
/// per-workload policies (node mode) are looked up here and nowhere else.
pub fn policy_for<'a>(live: &'a LiveConfig, _workload: &WorkloadKey) -> WorkloadPolicy<'a> {
    WorkloadPolicy {
        inbound: &live.inbound,
        access: &live.access,
    }
}

/// Whether the peer (`None`: no mesh identity) may reach `dst` of the workload's app.
pub fn inbound_access(
    live: &LiveConfig,
    policy: WorkloadPolicy<'_>,
    dst: OrigDst,
    peer: Option<&SpiffeId>,
) -> Decision {
    let service = live
        .service_of_endpoint(dst.addr())
        .map(|s| s.name.as_str());
    policy.access.decide(
        Destination {
            service,
            port: dst.addr().port(),
        },
        peer,
    )
}

/// The proxy's own addresses: its listeners and the addresses of the host (or pod) it
/// listens on, so that a connection to itself is told from one to the same port elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnAddrs {
    listeners: Vec<SocketAddr>,
    local_ips: HashSet<IpAddr>,
}

impl OwnAddrs {
    pub fn new(
        listeners: impl IntoIterator<Item = SocketAddr>,
        local_ips: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        Self {
            listeners: listeners.into_iter().map(canonical).collect(),
            local_ips: local_ips
                .into_iter()
                .map(|ip| canonical(SocketAddr::new(ip, 0)).ip())
                .collect(),
        }
    }

    /// Whether a connection to `dst` would land on one of the proxy's own listeners.
    pub fn is_own(&self, dst: OrigDst) -> bool {
        let dst = dst.addr();
        self.listeners.iter().any(|l| {
            if l.port() != dst.port() {
                return false;
            }
            if l.ip() == dst.ip() {
                return true;
            }
            if !l.ip().is_unspecified() {
                return false;
            }
            // A wildcard listener: `0.0.0.0` takes IPv4 only, `[::]` both families.
            let family_ok = l.is_ipv6() || dst.is_ipv4();
            family_ok
                && (dst.ip().is_loopback()
                    || dst.ip().is_unspecified()
                    || self.local_ips.contains(&dst.ip()))
        })
    }
}

/// Where an outbound connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundPlan<'a> {
    pub route: RouteKind,
    /// The address to dial.
    pub target: SocketAddr,
    /// The SPIFFE ID that must answer there over mTLS; `None`: plaintext.
    pub identity: Option<&'a SpiffeId>,
    /// The mesh service, when the destination is one.
    pub service: Option<&'a str>,
}

/// The outbound decision. `turn` gives the caller's round-robin turn for a service (by its
/// index), called only when a service's endpoints are balanced.
pub fn outbound_plan<'a>(
    live: &'a LiveConfig,
    own: &OwnAddrs,
    dst: OrigDst,
    turn: impl FnOnce(usize) -> u64,
) -> Result<OutboundPlan<'a>, Outcome> {
    if own.is_own(dst) {
        return Err(Outcome::RedirectLoop);
    }
    match live.route(dst) {
        Route::Service { index, service } => {
            let ep = service.pick(turn(index));
            Ok(OutboundPlan {
                route: RouteKind::Service,
                target: ep.addr,
                identity: ep.identity.as_ref(),
                service: Some(&service.name),
            })
        }
        Route::Endpoint { service, endpoint } => Ok(OutboundPlan {
            route: RouteKind::Endpoint,
            target: endpoint.addr,
            identity: endpoint.identity.as_ref(),
            service: Some(&service.name),
        }),
        Route::Egress(EgressPolicy::Allow) => Ok(OutboundPlan {
            route: RouteKind::Egress,
            target: dst.addr(),
            identity: None,
            service: None,
        }),
        Route::Egress(EgressPolicy::Deny) => Err(Outcome::EgressDenied),
    }
}

#[cfg(test)]
mod tests;
