//! Per-request telemetry off the workers: the access log (a writer thread of its own) and
//! spans (batched and exported over OTLP/gRPC by the control thread). A worker only hands a
//! finished record to a bounded queue; when a queue is full the record is dropped and
//! counted, so a slow disk or a dead collector costs the data path nothing.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringmesh_core::http::access_log::{Entry, LogFormat};
use ringmesh_core::http::trace::SpanContext;
use ringmesh_core::metrics::{Direction, TelemetryInfo};

/// Records queued for the writer or the exporter before new ones are dropped.
const ACCESS_QUEUE: usize = 8192;
const SPAN_QUEUE: usize = 4096;
/// Spans per export request, and the longest a span waits for its batch.
const SPAN_BATCH: usize = 512;
const SPAN_LINGER: Duration = Duration::from_secs(1);
/// One export's deadline: past it the batch is dropped (and counted).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One line for the access log, with where and how it is written.
struct Line {
    entry: Entry,
    format: LogFormat,
    path: Arc<str>,
}

/// A finished, sampled span.
pub(crate) struct Span {
    pub context: SpanContext,
    pub name: String,
    pub direction: Direction,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub protocol: &'static str,
    pub upstream: Option<SocketAddr>,
    pub workload: String,
    pub error: bool,
}

/// The queues and their counters, shared by every worker.
pub(crate) struct Telemetry {
    access: OnceLock<SyncSender<Line>>,
    spans: tokio::sync::mpsc::Sender<Span>,
    /// Taken once by the control thread's exporter.
    span_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Span>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    access_lines: AtomicU64,
    access_dropped: AtomicU64,
    access_errors: AtomicU64,
    spans_exported: AtomicU64,
    spans_dropped: AtomicU64,
    export_failures: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(SPAN_QUEUE);
        Self {
            access: OnceLock::new(),
            spans: tx,
            span_rx: Mutex::new(Some(rx)),
            counters: Arc::default(),
        }
    }
}

impl Telemetry {
    /// Queues one access log line (the writer thread starts with the first).
    pub fn log(&self, entry: Entry, format: LogFormat, path: Arc<str>) {
        let tx = self
            .access
            .get_or_init(|| spawn_writer(self.counters.clone()));
        match tx.try_send(Line {
            entry,
            format,
            path,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.access_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Queues a sampled span for export.
    pub fn span(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            self.counters.spans_dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn info(&self) -> TelemetryInfo {
        let c = &self.counters;
        TelemetryInfo {
            access_log_lines: c.access_lines.load(Relaxed),
            access_log_dropped: c.access_dropped.load(Relaxed),
            access_log_errors: c.access_errors.load(Relaxed),
            spans_exported: c.spans_exported.load(Relaxed),
            spans_dropped: c.spans_dropped.load(Relaxed),
            span_export_failures: c.export_failures.load(Relaxed),
        }
    }

    /// The exporter's end of the span queue (once).
    pub fn take_spans(&self) -> Option<tokio::sync::mpsc::Receiver<Span>> {
        self.span_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The access log writer: formats and writes lines as they come, flushing whenever the queue
/// is empty; reopens when the config names another path.
fn spawn_writer(counters: Arc<Counters>) -> SyncSender<Line> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(ACCESS_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("ringmesh-access-log".into())
        .spawn(move || {
            let mut sink: Option<(Arc<str>, Box<dyn Write>)> = None;
            // The path that could not be opened: not retried (nor warned about) per line
            // until the config names another.
            let mut failed: Option<Arc<str>> = None;
            let mut text = String::with_capacity(512);
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(line) = next.take() {
                    if sink.as_ref().is_none_or(|(p, _)| *p != line.path)
                        && failed.as_ref() != Some(&line.path)
                    {
                        if let Some((_, mut old)) = sink.take() {
                            let _ = old.flush();
                        }
                        match open(&line.path) {
                            Ok(w) => {
                                sink = Some((line.path.clone(), w));
                                failed = None;
                            }
                            Err(e) => {
                                tracing::warn!(path = %line.path, error = %e, "access log cannot be opened; its lines are dropped and counted");
                                failed = Some(line.path.clone());
                            }
                        }
                    }
                    text.clear();
                    line.entry.write(line.format, &mut text);
                    let written = match sink.as_mut() {
                        Some((p, w)) if *p == line.path => w.write_all(text.as_bytes()).is_ok(),
                        _ => false,
                    };
                    if written {
                        counters.access_lines.fetch_add(1, Relaxed);
                    } else {
                        counters.access_errors.fetch_add(1, Relaxed);
                    }
                    next = rx.try_recv().ok();
                }
                if let Some((_, w)) = sink.as_mut() {
                    let _ = w.flush();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the access log writer could not start; lines are dropped");
    }
    tx
}

fn open(path: &str) -> std::io::Result<Box<dyn Write>> {
    Ok(match path {
        "stdout" => Box::new(std::io::BufWriter::new(std::io::stdout())),
        "stderr" => Box::new(std::io::BufWriter::new(std::io::stderr())),
        p => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
    })
}

/// The control thread's exporter: batches spans and sends each batch to the collector the
/// live config names; with none named, batches are dropped (and counted).
pub(crate) async fn export(shared: Arc<crate::state::Shared>) {
    let Some(mut rx) = shared.telemetry.take_spans() else {
        return;
    };
    let counters = shared.telemetry.counters.clone();
    let mut client: Option<(SocketAddr, otlp::Client)> = None;
    let mut batch = Vec::with_capacity(SPAN_BATCH);
    loop {
        batch.clear();
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + SPAN_LINGER;
        while batch.len() < SPAN_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let snap = shared.config.load();
        let tracing = &snap.config.live.http.tracing;
        let (Some(addr), service) = (tracing.otlp, tracing.service_name.clone()) else {
            counters
                .spans_dropped
                .fetch_add(batch.len() as u64, Relaxed);
            continue;
        };
        drop(snap);
        if client.as_ref().is_none_or(|(a, _)| *a != addr) {
            client = otlp::Client::new(addr).map(|c| (addr, c));
        }
        let n = batch.len() as u64;
        let Some((_, c)) = client.as_mut() else {
            counters.export_failures.fetch_add(1, Relaxed);
            counters.spans_dropped.fetch_add(n, Relaxed);
            continue;
        };
        let request = otlp::request(&service, &batch);
        match tokio::time::timeout(EXPORT_TIMEOUT, c.export(request)).await {
            Ok(Ok(())) => {
                counters.spans_exported.fetch_add(n, Relaxed);
            }
            Ok(Err(e)) => {
                tracing::debug!(collector = %addr, error = %e, "span export failed");
                counters.export_failures.fetch_add(1, Relaxed);
                counters.spans_dropped.fetch_add(n, Relaxed);
            }
            Err(_) => {
                tracing::debug!(collector = %addr, "span export timed out");
                counters.export_failures.fetch_add(1, Relaxed);
                counters.spans_dropped.fetch_add(n, Relaxed);
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The OTLP trace messages ringmesh sends (field numbers from opentelemetry-proto's
/// `trace/v1/trace.proto`, `common/v1/common.proto`, `resource/v1/resource.proto` and
/// `collector/trace/v1/trace_service.proto`), and the gRPC client that sends them.
mod otlp {
    use super::{Span, unix_nanos};
    use std::net::SocketAddr;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<PartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_spans: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<OtlpSpan>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OtlpSpan {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2: server, 3: client.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0: unset, 1: ok, 2: error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 3")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(int64, tag = "3")]
        Int(i64),
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    /// One request for a batch, under one resource (`service.name`) and one scope.
    pub fn request(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
        let spans = spans
            .iter()
            .map(|s| {
                let mut attributes = vec![
                    kv("http.request.method", Value::String(s.method.clone())),
                    kv("url.path", Value::String(s.path.clone())),
                    kv("server.address", Value::String(s.authority.clone())),
                    kv("http.response.status_code", Value::Int(i64::from(s.status))),
                    kv(
                        "network.protocol.version",
                        Value::String(s.protocol.trim_start_matches("HTTP/").into()),
                    ),
                    kv(
                        "ringmesh.direction",
                        Value::String(s.direction.as_str().into()),
                    ),
                    kv("ringmesh.workload", Value::String(s.workload.clone())),
                ];
                if let Some(g) = s.grpc_status {
                    attributes.push(kv("rpc.grpc.status_code", Value::Int(i64::from(g))));
                }
                if let Some(u) = s.upstream {
                    attributes.push(kv(
                        "network.peer.address",
                        Value::String(u.ip().to_string()),
                    ));
                    attributes.push(kv("network.peer.port", Value::Int(i64::from(u.port()))));
                }
                OtlpSpan {
                    trace_id: s.context.trace_id.to_vec(),
                    span_id: s.context.span_id.to_vec(),
                    parent_span_id: s.context.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
                    name: s.name.clone(),
                    kind: match s.direction {
                        ringmesh_core::metrics::Direction::Inbound => 2,
                        ringmesh_core::metrics::Direction::Outbound => 3,
                    },
                    start_time_unix_nano: unix_nanos(s.start),
                    end_time_unix_nano: unix_nanos(s.end),
                    attributes,
                    status: Some(Status {
                        message: String::new(),
                        code: if s.error { 2 } else { 0 },
                    }),
                }
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::String(service.into()))],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "ringmesh".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                }],
            }],
        }
    }

    /// An OTLP/gRPC trace client (plaintext HTTP/2; the collector is on the node or local).
    pub struct Client(tonic::client::Grpc<tonic::transport::Channel>);

    impl Client {
        pub fn new(addr: SocketAddr) -> Option<Self> {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(super::EXPORT_TIMEOUT);
            Some(Self(tonic::client::Grpc::new(endpoint.connect_lazy())))
        }

        pub async fn export(
            &mut self,
            req: ExportTraceServiceRequest,
        ) -> Result<(), tonic::Status> {
            self.0
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            );
            let codec = tonic_prost::ProstCodec::<
                ExportTraceServiceRequest,
                ExportTraceServiceResponse,
            >::default();
            self.0
                .unary(tonic::Request::new(req), path, codec)
                .await
                .map(|_| ())
        }
    }
}
