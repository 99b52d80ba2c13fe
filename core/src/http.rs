//! HTTP awareness, sans-IO: what the first bytes of a connection are (HTTP/1.x, HTTP/2's
//! preface, anything else), which ports skip detection, the request path as policy sees it,
//! routes (SMI `HTTPRouteGroup` matches) and how a response is classified.
//!
//! The proxy's HTTP engine (hyper, in `uring-proxy`) parses requests; this module decides
//! about them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a port's traffic is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Read the first bytes and decide (the default for ports not pinned).
    Detect,
    /// HTTP/1.x, request by request.
    Http,
    /// HTTP/2 with prior knowledge (h2c), gRPC included.
    #[serde(alias = "grpc", alias = "h2c")]
    Http2,
    /// Bytes, copied as they come (no detection).
    #[serde(alias = "tcp")]
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Detect => "detect",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Ports whose server speaks first (a client there sends nothing until it hears the
/// server's greeting, so detection would only wait out its timeout), or whose protocol is
/// known not to be HTTP: SSH, FTP, SMTP and submission, POP3, IMAP, MySQL, NATS (client and
/// cluster), PostgreSQL, Redis, Elasticsearch transport, memcached, and 4444 (Galera/SST).
/// They are copied opaquely unless the config pins them.
pub const SERVER_FIRST_PORTS: [u16; 15] = [
    21, 22, 25, 110, 143, 587, 3306, 4222, 4444, 5432, 6222, 6379, 9300, 11211, 27017,
];

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Detection reads at most this much before calling a connection opaque: a request line
/// longer than this is not one a proxy should wait for.
pub const MAX_SNIFF: usize = 8192;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 preface.
    Http2,
    /// Something else.
    Opaque,
    /// Consistent with HTTP so far: read more.
    NeedMore,
}

/// Classifies the bytes read so far. Never asks for more than [`MAX_SNIFF`] bytes.
pub fn sniff(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            Sniff::NeedMore
        };
    }
    match request_line(buf) {
        Line::Valid => Sniff::Http1,
        Line::Partial if buf.len() < MAX_SNIFF => Sniff::NeedMore,
        Line::Partial | Line::Invalid => Sniff::Opaque,
    }
}

enum Line {
    Valid,
    Partial,
    Invalid,
}

/// `method SP request-target SP HTTP/1.d CRLF` (RFC 9112 §3), checked as far as it goes.
fn request_line(buf: &[u8]) -> Line {
    let mut i = 0;
    // The method: a token, and in practice upper-case letters, `-` and `_` (every registered
    // method is), at most 24 of them. Narrower than the grammar so that a binary or
    // lower-case payload is told from HTTP at its first byte instead of after the timeout.
    while i < buf.len() && is_method_char(buf[i]) {
        i += 1;
        if i > 24 {
            return Line::Invalid;
        }
    }
    if i == buf.len() {
        return Line::Partial;
    }
    if i == 0 || buf[i] != b' ' {
        return Line::Invalid;
    }
    i += 1;
    let target = i;
    while i < buf.len() && buf[i] > b' ' && buf[i] != 0x7f {
        i += 1;
    }
    if i == buf.len() {
        return Line::Partial;
    }
    if i == target || buf[i] != b' ' {
        return Line::Invalid;
    }
    i += 1;
    let version = b"HTTP/1.";
    let rest = &buf[i..];
    let k = rest.len().min(version.len());
    if rest[..k] != version[..k] {
        return Line::Invalid;
    }
    let rest = &rest[k..];
    match rest {
        [] => Line::Partial,
        [d, ..] if !d.is_ascii_digit() => Line::Invalid,
        [_] => Line::Partial,
        [_, b'\r'] => Line::Partial,
        [_, b'\r', b'\n', ..] | [_, b'\n', ..] => Line::Valid,
        _ => Line::Invalid,
    }
}

/// Whether the request head in `buf` (as far as it goes) has an `Upgrade` header: a
/// WebSocket (or other) upgrade, which the proxy carries as a tunnel.
pub fn asks_upgrade(buf: &[u8]) -> bool {
    for line in buf.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        if line.len() > 8 && line[..8].eq_ignore_ascii_case(b"upgrade:") {
            return true;
        }
    }
    false
}

fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// A request method as metrics label it: the common ones by name, the rest as `other`
/// (method names come from clients, so they are not a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl MethodClass {
    pub fn of(method: &str) -> Self {
        match method {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            "OPTIONS" => Self::Options,
            "CONNECT" => Self::Connect,
            "TRACE" => Self::Trace,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
            Self::Connect => "CONNECT",
            Self::Trace => "TRACE",
            Self::Other => "other",
        }
    }
}

/// Whether a response counts as a success (Linkerd's classification: a 5xx, or a gRPC
/// status other than OK, is a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Classification {
    Success,
    Failure,
}

/// The gRPC status a gRPC client gets for an answer the proxy makes itself with HTTP
/// `status` (after gRPC's own HTTP-to-gRPC mapping, with a proxy's timeout as
/// `DEADLINE_EXCEEDED`): 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
/// UNIMPLEMENTED, 429, 502 and 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, else UNKNOWN.
pub fn grpc_status_for(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// Whether a request is gRPC (`content-type: application/grpc`, `application/grpc+proto`...).
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.trim();
        c.len() >= 16
            && c[..16].eq_ignore_ascii_case("application/grpc")
            && matches!(c.as_bytes().get(16), None | Some(b'+' | b';'))
    })
}

impl Classification {
    /// `grpc_status` is the `grpc-status` of the trailers (or of a trailers-only response),
    /// when the response is gRPC.
    pub fn of(status: u16, grpc_status: Option<u32>) -> Self {
        if status >= 500 || grpc_status.is_some_and(|s| s != 0) {
            Self::Failure
        } else {
            Self::Success
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// Why a request path is refused before any policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not begin with '/'")]
    NotAbsolute,
    #[error("a '%' not followed by two hex digits")]
    BadPercent,
    #[error("an encoded '/', '\\' or NUL (%2F, %5C, %00): ambiguous between proxy and app")]
    EncodedSeparator,
    #[error("'..' climbs above the root")]
    AboveRoot,
}

/// The path as policy matches it, and as it is forwarded: percent-encoded unreserved
/// characters decoded (RFC 3986 §6.2.2.2, so `/%61pi` is `/api`), `.` and `..` segments
/// removed (§5.2.4), the query left as it was. An encoded slash, backslash or NUL is refused:
/// an app that decodes it would see another path than the one policy checked. Returns the
/// normalized path (without the query) and the query (with its `?`), or the reason.
pub fn normalize_path(target: &str) -> Result<(String, &str), PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Decode what may be decoded; keep the other escapes, upper-cased.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return Err(PathError::BadPercent);
            };
            let c = h << 4 | l;
            match c {
                b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => decoded.push(c as char),
                c => {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
                }
            }
            i += 3;
        } else {
            // `path` is a str: copy whole characters.
            let ch_len = utf8_len(b);
            decoded.push_str(&path[i..i + ch_len]);
            i += ch_len;
        }
    }
    // Remove dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = k == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = k == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    for s in &out {
        normalized.push('/');
        normalized.push_str(s);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Ok((normalized, query))
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// An anchored regular expression: it must match the whole value (`/api` is not `/apiv2`).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends; the size limit keeps a hostile pattern from
    /// taking the proxy's memory.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let re = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            re,
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        self.re.is_match(s)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

/// A request's headers as route matching reads them.
pub trait Headers {
    /// Whether some value of the header `name` (lower case) satisfies `f`.
    fn any(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl Headers for &[(&str, &str)] {
    fn any(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| f(v))
    }
}

/// What route matching sees of a request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The normalized path ([`normalize_path`]), without the query.
    pub path: &'a str,
    pub headers: &'a dyn Headers,
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestView")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One match of an `HTTPRouteGroup`: every part given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub name: String,
    /// Anchored; any path when `None`.
    pub path: Option<Pattern>,
    /// Exact, case-sensitive method names; any method when empty (or `*` in the config).
    pub methods: Vec<String>,
    /// Lower-case header names and the pattern one of their values must match.
    pub headers: Vec<(String, Pattern)>,
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && self.path.as_ref().is_none_or(|p| p.matches(req.path))
            && self
                .headers
                .iter()
                .all(|(name, p)| req.headers.any(name, &mut |v| p.matches(v)))
    }
}

/// An SMI `HTTPRouteGroup`: named matches that access rules (and later traffic policies)
/// refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGroup {
    pub name: String,
    pub matches: Vec<RouteMatch>,
}

/// A rule's reference to routes: a whole group, or one match of it (indexes into
/// [`HttpPolicy::groups`], resolved at validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    pub group: usize,
    /// One match; the whole group when `None`.
    pub matched: Option<usize>,
}

/// HTTP settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Detection on ports the config does not pin.
    pub detect: bool,
    /// Pinned protocols by port (they win over [`SERVER_FIRST_PORTS`]).
    pub ports: std::collections::BTreeMap<u16, Protocol>,
    pub groups: Vec<RouteGroup>,
    /// Request head (start line and headers) limit, bytes.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// From the request's head sent upstream to the response's head: past it the client
    /// gets 504.
    pub response_timeout: std::time::Duration,
    /// Idle upstream connections one worker keeps per endpoint.
    pub pool_max_idle: usize,
    /// An idle pooled connection older than this is closed.
    pub pool_idle_timeout: std::time::Duration,
    /// HTTP/2 streams at once on one downstream connection.
    pub max_concurrent_streams: u32,
    /// HTTP/1.1 requests to a meshed endpoint go as HTTP/2 streams, marked with
    /// [`ORIG_PROTO`], and the peer sends them on as HTTP/1.1.
    pub h2_between_proxies: bool,
    pub access_log: access_log::AccessLogPolicy,
    pub tracing: trace::TracingPolicy,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            detect: true,
            ports: Default::default(),
            groups: Vec::new(),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            response_timeout: std::time::Duration::from_secs(15),
            pool_max_idle: 256,
            pool_idle_timeout: std::time::Duration::from_secs(90),
            max_concurrent_streams: 100,
            h2_between_proxies: true,
            access_log: access_log::AccessLogPolicy::default(),
            tracing: trace::TracingPolicy::default(),
        }
    }
}

impl HttpPolicy {
    /// How traffic to `port` is handled: a pin, else opaque for a server-first port, else
    /// detection (when on).
    pub fn protocol_for(&self, port: u16) -> Protocol {
        if let Some(p) = self.ports.get(&port) {
            return *p;
        }
        if !self.detect || SERVER_FIRST_PORTS.contains(&port) {
            return Protocol::Opaque;
        }
        Protocol::Detect
    }

    /// Whether `r` names a route `req` is on; the route's `group/match` name when so.
    pub fn route_matches(&self, r: RouteRef, req: &RequestView<'_>) -> Option<RouteName<'_>> {
        let g = self.groups.get(r.group)?;
        let hit = match r.matched {
            Some(m) => g.matches.get(m).filter(|m| m.matches(req)),
            None => g.matches.iter().find(|m| m.matches(req)),
        }?;
        Some(RouteName {
            group: &g.name,
            matched: &hit.name,
        })
    }
}

/// A matched route, as logs and metrics name it (`group/match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteName<'a> {
    pub group: &'a str,
    pub matched: &'a str,
}

impl fmt::Display for RouteName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.matched)
    }
}

pub mod access_log;
/// The header on an HTTP/2 stream between two ringmesh proxies that carries an HTTP/1.1
/// request (`HttpPolicy::h2_between_proxies`): the peer sends it on to its app as HTTP/1.1.
/// Honoured only from a peer proxy (over mTLS), removed before the app.
pub const ORIG_PROTO: &str = "ringmesh-orig-proto";

pub mod framing;
pub mod trace;

#[cfg(test)]
mod tests;
