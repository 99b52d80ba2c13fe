//! Response bodies going back to the client: an upstream's, streamed frame by frame and
//! recorded when it ends (status, gRPC status from the trailers, time to the last byte), or
//! one the proxy made.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{HeaderMap, Response};
use ringmesh_core::http::Classification;
use ringmesh_core::metrics::{RequestLabels, ResponseLabels};

use super::pool::{PoolKey, Sender};
use super::trail::{End, Trail};
use crate::ctx::WorkerCtx;
use crate::workload::Workload;

/// What is recorded when an upstream response ends.
pub(crate) struct Record {
    ctx: Rc<WorkerCtx>,
    w: Arc<Workload>,
    labels: RequestLabels,
    start: Instant,
    status: u16,
    grpc: Option<u32>,
    /// Body bytes sent on.
    bytes: u64,
    trail: Option<Box<Trail>>,
    back: Option<Return>,
}

/// An HTTP/1 upstream connection to give back to the pool when its response has ended.
pub(crate) struct Return {
    pub key: PoolKey,
    pub sender: Sender,
    pub max: usize,
}

/// What a response is recorded with.
pub(crate) struct Recorded {
    pub ctx: Rc<WorkerCtx>,
    pub w: Arc<Workload>,
    pub labels: RequestLabels,
    pub start: Instant,
    pub trail: Option<Box<Trail>>,
    pub back: Option<Return>,
}

impl Record {
    fn finish(self, cut: bool) {
        // Whole: the connection is free for the next request. Cut: its state is unknown,
        // and dropping it closes it.
        if let Some(b) = self.back
            && !cut
        {
            self.ctx.http_pool.put(b.key, b.sender, b.max);
        }
        if let Some(t) = self.trail {
            t.finish(
                &self.ctx.shared,
                End {
                    labels: &self.labels,
                    status: self.status,
                    grpc: self.grpc,
                    bytes: self.bytes,
                    cut,
                    proxy_error: None,
                },
            );
        }
        let class = if cut {
            Classification::Failure
        } else {
            Classification::of(self.status, self.grpc)
        };
        self.ctx.shard(&self.w).http.response(
            &self.labels,
            ResponseLabels {
                status: self.status,
                class,
                grpc: self.grpc,
                by_proxy: false,
            },
            self.start.elapsed(),
        );
    }
}

/// A response body on its way to the client.
pub(crate) enum ProxyBody {
    Upstream {
        inner: Incoming,
        record: Option<Box<Record>>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(b: Bytes) -> Self {
        Self::Local(Some(b))
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// Wraps an upstream response so its end is recorded.
pub(crate) fn record(r: Recorded, resp: Response<Incoming>) -> Response<ProxyBody> {
    let Recorded {
        ctx,
        w,
        labels,
        start,
        trail,
        back,
    } = r;
    let status = resp.status().as_u16();
    // A trailers-only gRPC response carries its status in the head.
    let grpc = grpc_status(resp.headers());
    let record = Box::new(Record {
        ctx,
        w,
        labels,
        start,
        status,
        grpc,
        bytes: 0,
        trail,
        back,
    });
    let (parts, inner) = resp.into_parts();
    let body = ProxyBody::Upstream {
        inner,
        record: Some(record),
    };
    let mut out = Response::from_parts(parts, body);
    // An empty body ends before any poll (hyper does not poll a known-empty body).
    if out.body().is_end_stream()
        && let ProxyBody::Upstream { record, .. } = out.body_mut()
        && let Some(r) = record.take()
    {
        r.finish(false);
    }
    out
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { inner, record } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(d), Some(r)) = (frame.data_ref(), record.as_deref_mut()) {
                            r.bytes += d.len() as u64;
                        }
                        if let Some(t) = frame.trailers_ref()
                            && let Some(r) = record.as_deref_mut()
                        {
                            r.grpc = grpc_status(t).or(r.grpc);
                        }
                        if inner.is_end_stream()
                            && let Some(r) = record.take()
                        {
                            r.finish(false);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(r) = record.take() {
                            r.finish(false);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(r) = record.take() {
                            r.finish(true);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(b) => b.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the exchange was cut.
        if let ProxyBody::Upstream { record, .. } = self
            && let Some(r) = record.take()
        {
            r.finish(true);
        }
    }
}
