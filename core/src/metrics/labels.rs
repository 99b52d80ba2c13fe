//! The closed label sets of the metrics. Each is an enum indexed into fixed arrays, so
//! recording a metric never allocates and a series can never appear from traffic alone.

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub const COUNT: usize = Self::ALL.len();
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            pub(crate) fn idx(self) -> usize { self as usize }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// Which listener accepted the connection.
    Direction { Inbound => "inbound", Outbound => "outbound" }
);

label_enum!(
    /// Which side of a proxied connection something happened on; also the log field `side`.
    Side {
        /// The peer that connected to the proxy.
        Downstream => "downstream",
        /// The peer the proxy connected to.
        Upstream => "upstream",
        /// The proxy itself (resources, bugs).
        Internal => "internal",
    }
);

label_enum!(
    /// How a connection ended. Every opened connection ends in exactly one outcome.
    Outcome {
        /// Both sides closed cleanly.
        Ok => "ok",
        /// No byte moved for the idle timeout.
        IdleTimeout => "idle_timeout",
        /// Still open when the drain deadline passed.
        Drained => "drained",
        /// The downstream peer reset or failed.
        DownstreamError => "downstream_error",
        /// The upstream refused, reset or failed.
        UpstreamError => "upstream_error",
        /// The upstream did not answer the connect in time.
        ConnectTimeout => "connect_timeout",
        /// The proxy could not serve it (e.g. out of file descriptors).
        InternalError => "internal_error",
        /// Refused: its original destination was the proxy's own listener.
        RedirectLoop => "redirect_loop",
        /// Refused: unknown destination and egress is denied.
        EgressDenied => "egress_denied",
        /// Refused: the worker was at its connection limit.
        ConnectionLimit => "connection_limit",
        /// Refused: the kernel had no original destination for it.
        NoOriginalDst => "no_original_dst",
        /// The TLS handshake failed (bad or untrusted certificate, protocol error, timeout).
        TlsError => "tls_error",
        /// The upstream's certificate is a valid SVID for another SPIFFE ID than the endpoint
        /// should have (refused inside the handshake).
        IdentityMismatch => "identity_mismatch",
        /// Refused by the access policy (after the handshake, before a byte reached the app).
        AccessDenied => "access_denied",
        /// Refused: plaintext to a port in strict mode.
        PlaintextRefused => "plaintext_refused",
        /// Refused: the application's own TLS (not mesh mTLS) to a port in strict mode.
        AppTlsRefused => "app_tls_refused",
        /// Refused: a TLS ClientHello began but did not complete (within the detection timeout,
        /// or before the peer closed).
        TruncatedHello => "truncated_hello",
        /// Refused: mTLS is needed and the workload holds no valid SVID (fail closed).
        NoIdentity => "no_identity",
        /// Malformed HTTP from the client (the proxy answered 400 or 431 and closed).
        BadRequest => "bad_request",
    }
);

impl Outcome {
    /// Refused before any upstream was dialled.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Outcome::RedirectLoop
                | Outcome::EgressDenied
                | Outcome::ConnectionLimit
                | Outcome::NoOriginalDst
                | Outcome::AccessDenied
                | Outcome::PlaintextRefused
                | Outcome::AppTlsRefused
                | Outcome::TruncatedHello
                | Outcome::NoIdentity
        )
    }

    /// An ending worth a log line (at warn, rate-limited); the rest log at debug.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::IdleTimeout | Outcome::Drained)
    }
}

label_enum!(
    /// How an outbound destination was resolved.
    RouteKind { Service => "service", Endpoint => "endpoint", Egress => "egress" }
);

label_enum!(
    /// How a connection's bytes are copied (the configured or chosen method).
    CopyKind {
        /// Buffered until a direction moves bulk, then splice for that direction.
        Auto => "auto",
        Splice => "splice",
        Buffered => "buffered",
    }
);

label_enum!(
    /// How bytes actually moved.
    CopyMethod {
        /// Zero-copy `splice(2)` through a pipe.
        Splice => "splice",
        /// Through a user-space buffer.
        Buffer => "buffer",
        /// Received into and sent from the worker's own io_uring's provided buffers.
        Ring => "ring",
        /// Sealed or opened by TLS in user space.
        Tls => "tls",
    }
);

label_enum!(
    /// What a connection's peer link is.
    Security {
        /// Mesh mutual TLS, terminated or originated by the proxy.
        Mtls => "mtls",
        Plaintext => "plaintext",
        /// The application's own TLS, passed through unopened.
        AppTls => "app_tls",
    }
);

label_enum!(
    /// What protocol detection saw at the start of an inbound connection.
    Detection {
        /// A ClientHello offering the mesh's ALPN.
        MeshTls => "mesh_tls",
        /// A ClientHello without it: the application's own TLS.
        AppTls => "app_tls",
        /// Began like TLS, but not a ClientHello we could read.
        MalformedTls => "malformed_tls",
        /// Anything else.
        Plaintext => "plaintext",
        /// Nothing within the detection timeout (a server-first protocol).
        Silent => "silent",
        /// A ClientHello that did not complete within the detection timeout.
        Truncated => "truncated",
        /// The peer closed before sending a byte.
        Closed => "closed",
    }
);

label_enum!(
    /// How a TLS handshake ended.
    HandshakeResult { Ok => "ok", Failed => "failed" }
);

label_enum!(
    /// Why accept failed.
    AcceptError { FdExhausted => "fd_exhausted", Other => "other" }
);

label_enum!(
    /// Why the relay dropped a datagram.
    UdpDrop {
        /// Its PROXY v2 header was refused (the `reason` label says why, from
        /// `proxy_v2::Malformed`): only that datagram is dropped.
        Malformed => "malformed_header",
        /// A header without addresses (LOCAL, or the UNSPEC family): nowhere to send it.
        NoAddresses => "no_addresses",
        /// The header's source is not the datagram's own source (the interception never
        /// writes such a header: a local process forged it).
        SourceMismatch => "source_mismatch",
        /// Its original destination is the proxy's own listener.
        RedirectLoop => "redirect_loop",
        /// Unknown destination and egress is denied.
        EgressDenied => "egress_denied",
        /// The kernel refused the send (the upstream's port unreachable, no route, ...).
        SendFailed => "send_failed",
        /// No socket could be opened for a new flow (out of file descriptors).
        NoSocket => "no_socket",
        /// A reply longer than a datagram can carry with its header.
        Oversized => "oversized",
        /// Draining: no new flows.
        Draining => "draining",
    }
);
