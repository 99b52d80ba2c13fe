//! How a connection stops: its outcome (a metric label), the side that failed, and the typed
//! cause. Nothing here allocates or formats on the hot path: a cause holds the values it
//! needs, and its text is produced only if a line is actually logged.

use std::fmt;
use std::io;
use std::time::Duration;

use ringmesh_core::access::Decision;
use ringmesh_core::client_hello::HelloError;
use ringmesh_core::metrics::{Outcome, Side};
use ringmesh_core::{OrigDst, SpiffeId};

use crate::tls::HandshakeError;

/// How a pipeline step, or the copy, ended the connection.
#[derive(Debug)]
pub(crate) struct Stop {
    pub outcome: Outcome,
    pub side: Side,
    pub cause: Cause,
}

/// Why, in typed form.
#[derive(Debug)]
pub(crate) enum Cause {
    /// Nothing to add beyond the outcome (a clean end, an idle timeout, a drain).
    None,
    /// A socket call failed.
    Io(io::Error),
    /// The kernel had no original destination (not redirected by NAT).
    NoOriginalDst(io::Error),
    /// The original destination is one of the proxy's own listeners.
    RedirectLoop(OrigDst),
    /// Not in the mesh, and egress is denied.
    EgressDenied(OrigDst),
    ConnectTimeout(Duration),
    Handshake(HandshakeError),
    /// The workload holds no valid SVID, so it cannot take part in mTLS.
    NoIdentity,
    /// Plaintext to a strict port.
    PlaintextOnStrict(u16),
    /// The app's own TLS to a strict port.
    AppTlsOnStrict(u16, Option<HelloError>),
    /// A ClientHello that did not finish within the detection timeout.
    TruncatedHello(Duration),
    AccessDenied {
        peer: Option<Box<SpiffeId>>,
        port: u16,
        decision: Decision,
    },
    /// A TLS peer ended its stream without `close_notify` (a truncation attack, or a crash).
    NoCloseNotify,
    /// The HTTP engine refused what the client sent.
    Http(String),
}

impl Stop {
    /// A refusal or ending that needs no more words than its outcome.
    pub fn plain(outcome: Outcome) -> Self {
        Self {
            outcome,
            side: Side::Downstream,
            cause: Cause::None,
        }
    }

    pub fn new(outcome: Outcome, side: Side, cause: Cause) -> Self {
        Self {
            outcome,
            side,
            cause,
        }
    }

    /// A failed socket call on `side`, counted as that side's error.
    pub fn io(side: Side, e: io::Error) -> Self {
        let outcome = match side {
            Side::Downstream => Outcome::DownstreamError,
            Side::Upstream => Outcome::UpstreamError,
            Side::Internal => Outcome::InternalError,
        };
        Self::new(outcome, side, Cause::Io(e))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::None => Ok(()),
            Cause::Http(e) => write!(f, "malformed HTTP: {e}"),
            Cause::Io(e) => e.fmt(f),
            Cause::NoOriginalDst(e) => write!(f, "no original destination: {e}"),
            Cause::RedirectLoop(dst) => write!(
                f,
                "original destination {dst} is this proxy's own listener (redirect loop or direct connection)"
            ),
            Cause::EgressDenied(dst) => {
                write!(f, "{dst} is not in the mesh and egress is denied")
            }
            Cause::ConnectTimeout(d) => write!(f, "connect timed out after {d:?}"),
            Cause::Handshake(e) => e.fmt(f),
            Cause::NoIdentity => f.write_str(
                "no valid SVID: meshed connections are refused until the identity source delivers one",
            ),
            Cause::PlaintextOnStrict(port) => {
                write!(f, "plaintext to port {port}, which is strict (mTLS only)")
            }
            Cause::AppTlsOnStrict(port, None) => write!(
                f,
                "TLS without the mesh's ALPN to port {port}, which is strict (mesh mTLS only)"
            ),
            Cause::AppTlsOnStrict(port, Some(e)) => write!(
                f,
                "unreadable TLS ({e}) to port {port}, which is strict (mesh mTLS only)"
            ),
            Cause::TruncatedHello(d) => {
                write!(f, "the TLS ClientHello did not complete within {d:?}")
            }
            Cause::AccessDenied {
                peer,
                port,
                decision,
            } => match peer {
                Some(p) => write!(f, "access denied: {p} may not reach port {port} ({decision:?})"),
                None => write!(
                    f,
                    "access denied: a peer without a mesh identity may not reach port {port} ({decision:?})"
                ),
            },
            Cause::NoCloseNotify => f.write_str(
                "the TLS peer ended its stream without close_notify; the other side is reset, not closed",
            ),
        }
    }
}
