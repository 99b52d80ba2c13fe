//! What one request leaves behind beyond the metrics: its W3C trace context (always
//! propagated), and, when asked for, an access log line and a span. Made only when the access
//! log is on or the span is sampled with a collector named, so otherwise a request pays for
//! the `traceparent` header alone.

use std::net::SocketAddr;
use std::time::SystemTime;

use hyper::header::{HeaderMap, HeaderValue};
use ringmesh_core::http::access_log::{Entry, LogFormat};
use ringmesh_core::http::trace::{self, SpanContext, TracingPolicy};
use ringmesh_core::metrics::{Direction, RequestLabels};

use crate::state::Shared;
use crate::telemetry::Span;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The request's span: a child of the caller's, or the root of a new trace.
pub(crate) fn span_for(headers: &HeaderMap, policy: &TracingPolicy) -> SpanContext {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace::parse);
    SpanContext::start(
        incoming,
        policy,
        fastrand::u32(..1_000_000),
        fastrand::u128(..).to_ne_bytes(),
        fastrand::u64(..).to_ne_bytes(),
    )
}

/// Sets the upstream's `traceparent` to `span`. A caller's `tracestate` travels with its
/// valid `traceparent`; without one it is dropped, as the spec says.
pub(crate) fn propagate(headers: &mut HeaderMap, span: &SpanContext) {
    if span.parent_id.is_none() {
        headers.remove(TRACESTATE);
    }
    if let Ok(v) = HeaderValue::from_str(&span.header()) {
        headers.insert(TRACEPARENT, v);
    }
}

/// A request's facts for its log line and span, kept until its response ends.
pub(crate) struct Trail {
    pub time: SystemTime,
    pub direction: Direction,
    pub workload: String,
    pub client: Option<SocketAddr>,
    pub peer: Option<String>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub user_agent: String,
    pub upstream: Option<SocketAddr>,
    pub span: SpanContext,
    /// Where the line goes, when the access log is on.
    pub log: Option<(LogFormat, std::sync::Arc<str>)>,
    /// The span is exported.
    pub export: bool,
}

/// How the response ended.
pub(crate) struct End<'a> {
    pub labels: &'a RequestLabels,
    pub status: u16,
    pub grpc: Option<u32>,
    pub bytes: u64,
    pub cut: bool,
    pub proxy_error: Option<&'static str>,
}

impl Trail {
    /// Hands the line and the span to their queues.
    pub fn finish(self, shared: &Shared, end: End<'_>) {
        let now = SystemTime::now();
        let duration = now.duration_since(self.time).unwrap_or_default();
        let error = end.cut
            || ringmesh_core::http::Classification::of(end.status, end.grpc)
                == ringmesh_core::http::Classification::Failure;
        if self.export {
            shared.telemetry.span(Span {
                context: self.span,
                name: format!(
                    "{} {}",
                    self.method,
                    if end.labels.route.is_empty() {
                        &*end.labels.service
                    } else {
                        &*end.labels.route
                    }
                )
                .trim_end()
                .to_owned(),
                direction: self.direction,
                start: self.time,
                end: now,
                method: self.method.clone(),
                path: self.path.clone(),
                authority: self.authority.clone(),
                status: end.status,
                grpc_status: end.grpc,
                protocol: self.protocol,
                upstream: self.upstream,
                workload: self.workload.clone(),
                error,
            });
        }
        if let Some((format, path)) = self.log {
            let entry = Entry {
                time: self.time,
                direction: self.direction,
                workload: self.workload,
                client: self.client,
                peer_identity: self.peer,
                method: self.method,
                authority: self.authority,
                path: self.path,
                protocol: self.protocol,
                status: end.status,
                grpc_status: end.grpc,
                response_bytes: end.bytes,
                duration,
                upstream: self.upstream,
                service: end.labels.service.to_string(),
                route: end.labels.route.to_string(),
                proxy_error: end.proxy_error,
                user_agent: self.user_agent,
                trace_id: Some(self.span.trace_id_hex()),
                cut: end.cut,
            };
            shared.telemetry.log(entry, format, path);
        }
    }
}
