//! Per-request HTTP metrics. Their labels are values of the config (service and route names)
//! and of the protocol (status codes), so they live in maps, bounded per shard: past
//! [`HTTP_SERIES`] distinct label sets, new ones are counted under `_overflow`. Each shard's
//! maps sit behind an uncontended mutex (its worker writes once per request; a scrape
//! reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::labels::Direction;
use super::shard::Histogram;
use crate::http::{Classification, MethodClass};

/// Distinct label sets one shard keeps per map.
pub const HTTP_SERIES: usize = 1024;

/// Upper bounds (seconds) of the response latency histograms.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What protocol detection decided, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProtocolSeen {
    /// HTTP/1.x request line: handled request by request.
    Http1,
    /// HTTP/2 preface: copied opaquely (this build has no HTTP/2 engine).
    Http2,
    /// Bytes that are not HTTP.
    Opaque,
    /// A port that skips detection (server-first, or detection off).
    Skipped,
    /// A port the config pins to HTTP.
    Pinned,
    /// Nothing conclusive within the detection timeout.
    Timeout,
    /// An HTTP/1.x request asking for an upgrade (WebSocket): carried as a tunnel.
    Upgrade,
}

impl ProtocolSeen {
    pub const ALL: [Self; 7] = [
        Self::Http1,
        Self::Http2,
        Self::Opaque,
        Self::Skipped,
        Self::Pinned,
        Self::Timeout,
        Self::Upgrade,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "opaque",
            Self::Skipped => "skipped",
            Self::Pinned => "pinned",
            Self::Timeout => "timeout",
            Self::Upgrade => "upgrade",
        }
    }
}

/// Whom a request was for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    pub dir: Direction,
    /// The destination service, or empty.
    pub service: Box<str>,
    /// The route (`group/match`) that allowed it, or empty.
    pub route: Box<str>,
    pub method: MethodClass,
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResponseLabels {
    pub status: u16,
    pub class: Classification,
    /// `grpc-status`, for gRPC responses.
    pub grpc: Option<u32>,
    /// The proxy produced the response itself (a refusal, or an upstream failure).
    pub by_proxy: bool,
}

#[derive(Debug, Default)]
struct Maps {
    requests: BTreeMap<RequestLabels, u64>,
    responses: BTreeMap<(RequestLabels, ResponseLabels), u64>,
    first_byte: BTreeMap<(Direction, Box<str>), Histogram<{ LATENCY_BUCKETS.len() }>>,
    total: BTreeMap<(Direction, Box<str>), Histogram<{ LATENCY_BUCKETS.len() }>>,
    detected: [[u64; ProtocolSeen::ALL.len()]; Direction::COUNT],
    denied: u64,
    pool_hits: u64,
    pool_misses: u64,
}

/// One worker's HTTP metrics for one workload.
#[derive(Debug, Default)]
pub struct HttpShard {
    maps: Mutex<Maps>,
}

fn overflow(l: &RequestLabels) -> RequestLabels {
    RequestLabels {
        dir: l.dir,
        service: super::OVERFLOW_LABEL.into(),
        route: super::OVERFLOW_LABEL.into(),
        method: l.method,
    }
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, spill: impl FnOnce(&K) -> K) {
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
    } else if map.len() < HTTP_SERIES {
        map.insert(key, 1);
    } else {
        *map.entry(spill(&key)).or_default() += 1;
    }
}

impl HttpShard {
    fn with<T>(&self, f: impl FnOnce(&mut Maps) -> T) -> T {
        // A panic elsewhere while holding it aborts the process (the panic hook), so a
        // poisoned lock is never seen by a live worker; take the data either way.
        let mut m = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut m)
    }

    pub fn detected(&self, dir: Direction, seen: ProtocolSeen) {
        self.with(|m| m.detected[dir.idx()][seen as usize] += 1);
    }

    pub fn request(&self, l: &RequestLabels) {
        self.with(|m| bump(&mut m.requests, l.clone(), overflow));
    }

    /// A response's head reached the client `first_byte` after the request began.
    pub fn first_byte(&self, dir: Direction, service: &str, took: Duration) {
        self.with(|m| {
            histogram(&mut m.first_byte, dir, service).observe(took);
        });
    }

    /// A response ended (its last byte, or the exchange was cut) `took` after the request
    /// began.
    pub fn response(&self, l: &RequestLabels, r: ResponseLabels, took: Duration) {
        self.with(|m| {
            bump(&mut m.responses, (l.clone(), r), |(l, r)| (overflow(l), *r));
            histogram(&mut m.total, l.dir, &l.service).observe(took);
        });
    }

    /// A request the access policy refused (403).
    pub fn denied(&self) {
        self.with(|m| m.denied += 1);
    }

    /// An upstream connection for a request: reused from the pool, or new.
    pub fn pool(&self, reused: bool) {
        self.with(|m| {
            if reused {
                m.pool_hits += 1;
            } else {
                m.pool_misses += 1;
            }
        });
    }
}

fn histogram<'m>(
    map: &'m mut BTreeMap<(Direction, Box<str>), Histogram<{ LATENCY_BUCKETS.len() }>>,
    dir: Direction,
    service: &str,
) -> &'m Histogram<{ LATENCY_BUCKETS.len() }> {
    let key = if map.len() < HTTP_SERIES || map.contains_key(&(dir, service.into())) {
        (dir, service.into())
    } else {
        (dir, super::OVERFLOW_LABEL.into())
    };
    map.entry(key)
        .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
}

/// Writes the HTTP families for every workload; `shards(i)` gives workload `i`'s key and its
/// shards' HTTP parts.
pub(crate) fn render<'a>(
    o: &mut String,
    workloads: impl Iterator<Item = (&'a str, Vec<&'a HttpShard>)>,
    escape: impl Fn(&str) -> String,
) {
    let mut requests = BTreeMap::<(&str, RequestLabels), u64>::new();
    let mut responses = BTreeMap::<(&str, RequestLabels, ResponseLabels), u64>::new();
    let mut detected = BTreeMap::<(&str, Direction, ProtocolSeen), u64>::new();
    let mut singles = BTreeMap::<(&str, &str), u64>::new();
    type Hist = Histogram<{ LATENCY_BUCKETS.len() }>;
    let mut first = BTreeMap::<(&str, Direction, Box<str>), Hist>::new();
    let mut total = BTreeMap::<(&str, Direction, Box<str>), Hist>::new();
    for (key, shards) in workloads {
        for s in shards {
            s.with(|m| {
                for (l, n) in &m.requests {
                    *requests.entry((key, l.clone())).or_default() += n;
                }
                for ((l, r), n) in &m.responses {
                    *responses.entry((key, l.clone(), *r)).or_default() += n;
                }
                for d in Direction::ALL {
                    for p in ProtocolSeen::ALL {
                        *detected.entry((key, *d, p)).or_default() +=
                            m.detected[d.idx()][p as usize];
                    }
                }
                *singles.entry((key, "denied")).or_default() += m.denied;
                *singles.entry((key, "hit")).or_default() += m.pool_hits;
                *singles.entry((key, "miss")).or_default() += m.pool_misses;
                for (src, dst) in [(&m.first_byte, &mut first), (&m.total, &mut total)] {
                    for ((d, svc), h) in src {
                        dst.entry((key, *d, svc.clone()))
                            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                            .merge(h);
                    }
                }
            });
        }
    }
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        o,
        "ringmesh_http_detected_total",
        "counter",
        "Connections by what protocol detection decided (http1: handled request by request; http2: the preface, copied opaquely; skipped: a server-first or undetected port; pinned: a port the config pins to HTTP; timeout: nothing conclusive in time; upgrade: an HTTP/1.x upgrade request, carried as a tunnel).",
    );
    for ((w, d, p), n) in &detected {
        let _ = writeln!(
            o,
            "ringmesh_http_detected_total{{workload=\"{}\",direction=\"{}\",protocol=\"{}\"}} {n}",
            escape(w),
            d.as_str(),
            p.as_str()
        );
    }
    let req_labels = |w: &str, l: &RequestLabels| {
        format!(
            "workload=\"{}\",direction=\"{}\",dst_service=\"{}\",route=\"{}\",method=\"{}\"",
            escape(w),
            l.dir.as_str(),
            escape(&l.service),
            escape(&l.route),
            l.method.as_str()
        )
    };
    family(
        o,
        "ringmesh_http_requests_total",
        "counter",
        "HTTP requests, by direction, destination service, route (the one that allowed it) and method.",
    );
    for ((w, l), n) in &requests {
        let _ = writeln!(
            o,
            "ringmesh_http_requests_total{{{}}} {n}",
            req_labels(w, l)
        );
    }
    family(
        o,
        "ringmesh_http_responses_total",
        "counter",
        "HTTP responses, by status code, classification (failure: 5xx or a gRPC status other than OK), gRPC status, and whether the proxy produced it.",
    );
    for ((w, l, r), n) in &responses {
        let grpc = r.grpc.map(|g| g.to_string()).unwrap_or_default();
        let _ = writeln!(
            o,
            "ringmesh_http_responses_total{{{},status_code=\"{}\",classification=\"{}\",grpc_status=\"{grpc}\",proxy=\"{}\"}} {n}",
            req_labels(w, l),
            r.status,
            r.class.as_str(),
            r.by_proxy
        );
    }
    for (name, help, map) in [
        (
            "ringmesh_http_response_first_byte_seconds",
            "From a request's first byte to its response's head.",
            &first,
        ),
        (
            "ringmesh_http_response_duration_seconds",
            "From a request's first byte to its response's last.",
            &total,
        ),
    ] {
        family(o, name, "histogram", help);
        for ((w, d, svc), h) in map {
            let labels = format!(
                "workload=\"{}\",direction=\"{}\",dst_service=\"{}\"",
                escape(w),
                d.as_str(),
                escape(svc)
            );
            h.write(o, name, &labels);
        }
    }
    family(
        o,
        "ringmesh_http_access_denied_total",
        "counter",
        "HTTP requests the access policy refused with 403.",
    );
    for ((w, what), n) in &singles {
        if *what == "denied" {
            let _ = writeln!(
                o,
                "ringmesh_http_access_denied_total{{workload=\"{}\"}} {n}",
                escape(w)
            );
        }
    }
    family(
        o,
        "ringmesh_http_upstream_connections_total",
        "counter",
        "Upstream connections requests went out on: reused from the worker's pool (hit) or new (miss).",
    );
    for ((w, what), n) in &singles {
        if *what != "denied" {
            let _ = writeln!(
                o,
                "ringmesh_http_upstream_connections_total{{workload=\"{}\",pool=\"{what}\"}} {n}",
                escape(w)
            );
        }
    }
}
