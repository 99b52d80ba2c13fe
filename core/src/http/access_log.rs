//! The per-request access log: what one exchange was, as one line of text (nginx's combined
//! format extended with the mesh's fields, as NGINX Service Mesh logged) or one JSON object.
//! Entries are made on the workers and formatted where they are written, off the workers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::metrics::Direction;

/// How lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The access log's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogPolicy {
    pub enabled: bool,
    pub format: LogFormat,
    /// `stdout`, `stderr` or an absolute file path (appended to).
    pub path: std::sync::Arc<str>,
}

impl Default for AccessLogPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            format: LogFormat::Text,
            path: "stdout".into(),
        }
    }
}

/// Whether `path` names somewhere the log can go.
pub fn valid_path(path: &str) -> bool {
    path == "stdout"
        || path == "stderr"
        || (path.starts_with('/') && path.len() <= 4096 && !path.contains('\0'))
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When the request's head arrived.
    pub time: SystemTime,
    pub direction: Direction,
    pub workload: String,
    /// The downstream peer's address.
    pub client: Option<SocketAddr>,
    /// The peer proxy's SPIFFE ID (inbound over mTLS).
    pub peer_identity: Option<String>,
    pub method: String,
    /// `:authority` or `Host`.
    pub authority: String,
    /// The normalized path and the query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'static str,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// From the request's head to the response's last byte.
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub service: String,
    pub route: String,
    /// Why the proxy answered itself (`ringmesh-proxy-error`), if it did.
    pub proxy_error: Option<&'static str>,
    pub user_agent: String,
    /// The W3C trace the request belongs to.
    pub trace_id: Option<String>,
    /// The response ended early (the client went away, or the upstream cut it).
    pub cut: bool,
}

impl Entry {
    /// One line, newline included, in `format`.
    pub fn write(&self, format: LogFormat, out: &mut String) {
        match format {
            LogFormat::Text => self.write_text(out),
            LogFormat::Json => self.write_json(out),
        }
    }

    /// `[time] direction client "METHOD path PROTO" status bytes seconds "authority"
    /// "upstream" "service" "route" "user-agent" "peer" "grpc-status" "trace-id" "proxy-error"`,
    /// `-` for what is absent; quotes, backslashes and control bytes escaped as `\xNN`.
    fn write_text(&self, out: &mut String) {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        let _ = write!(
            out,
            "[{}] {} {} \"",
            humantime::format_rfc3339_millis(self.time),
            self.direction,
            self.client
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        );
        escape(&self.method, out);
        out.push(' ');
        escape(&self.path, out);
        let _ = write!(
            out,
            " {}\" {} {} {:.3}",
            self.protocol,
            self.status,
            self.response_bytes,
            self.duration.as_secs_f64()
        );
        let fields = [
            dash(&self.authority),
            self.upstream
                .map_or_else(|| "-".to_owned(), |u| u.to_string()),
            dash(&self.service),
            dash(&self.route),
            dash(&self.user_agent),
            self.peer_identity.clone().unwrap_or_else(|| "-".into()),
            self.grpc_status
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            self.trace_id.clone().unwrap_or_else(|| "-".into()),
            self.proxy_error
                .unwrap_or(if self.cut { "cut" } else { "-" })
                .to_owned(),
        ];
        for f in fields {
            out.push_str(" \"");
            escape(&f, out);
            out.push('"');
        }
        out.push('\n');
    }

    fn write_json(&self, out: &mut String) {
        let line = Json {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            direction: self.direction.as_str(),
            workload: &self.workload,
            client: self.client.map(|c| c.to_string()),
            peer_identity: self.peer_identity.as_deref(),
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            protocol: self.protocol,
            status: self.status,
            grpc_status: self.grpc_status,
            response_bytes: self.response_bytes,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            upstream: self.upstream.map(|u| u.to_string()),
            service: &self.service,
            route: &self.route,
            user_agent: &self.user_agent,
            trace_id: self.trace_id.as_deref(),
            proxy_error: self.proxy_error,
            cut: self.cut,
        };
        if let Ok(s) = serde_json::to_string(&line) {
            out.push_str(&s);
            out.push('\n');
        }
    }
}

#[derive(Serialize)]
struct Json<'a> {
    time: String,
    direction: &'static str,
    workload: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_identity: Option<&'a str>,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u32>,
    response_bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    service: &'a str,
    route: &'a str,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_error: Option<&'static str>,
    cut: bool,
}

/// Appends `s` with `"`, `\` and bytes outside printable ASCII as `\xNN` (as nginx does), so
/// a client cannot forge a field or a line.
fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}
