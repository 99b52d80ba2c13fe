//! One outbound connection, top to bottom: the app dialled some address, NAT sent it to our
//! outbound listener, and we take it where it was going (or where the mesh says it goes).

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::config::EgressPolicy;
use ringmesh_core::metrics::{Direction, Outcome, Security, Side};
use ringmesh_core::{OrigDst, Route, decide};

use crate::ctx::{ConnRecord, WorkerCtx};
use crate::error::{Cause, Stop};
use crate::http;
use crate::pipeline::{self, Conn, Handling, Upstream};
use crate::state::copy_kind;
use crate::workload::Workload;

pub(crate) async fn serve(ctx: Rc<WorkerCtx>, workload: usize, down: TcpStream) {
    let shared = ctx.shared.clone();
    // The workload for the whole connection (a node workload removed meanwhile stays whole
    // for it); gone already: refused.
    let Some(w) = shared.workload(workload) else {
        crate::copy::reset(&down);
        return;
    };
    let w = &*w;
    let record = ConnRecord::open(ctx.shard(w), Direction::Outbound);
    let mut conn = Conn::new(Direction::Outbound, w);
    let stop = proxy(&ctx, w, &down, &mut conn).await;
    conn.end(&ctx, record, stop, &down);
}

async fn proxy(ctx: &Rc<WorkerCtx>, w: &Workload, down: &TcpStream, conn: &mut Conn<'_>) -> Stop {
    // 1-2. The accepted socket, where it was going, and what it speaks.
    let (dst, handling) = match Box::pin(pipeline::unless_closing(
        ctx,
        w,
        down,
        first(ctx, w, down, conn),
    ))
    .await
    {
        Ok(f) => f,
        Err(stop) => return stop,
    };
    let prefix = match handling {
        // HTTP: request by request, each routed on its own (boxed: the engine's state is
        // large, and only HTTP connections need it).
        Handling::Http(prefix, wire) => {
            let start = http::Start {
                dst,
                peer: None,
                tls: None,
                prefix,
                wire,
            };
            return Box::pin(http::serve(ctx, w, Direction::Outbound, down, start)).await;
        }
        Handling::Opaque(prefix) => prefix,
    };
    // The set-up steps run in a boxed future, freed once the upstream is connected: a
    // long-lived connection then keeps only the copy's state.
    let up = match Box::pin(pipeline::unless_closing(
        ctx,
        w,
        down,
        open(ctx, w, dst, conn, prefix),
    ))
    .await
    {
        Ok(up) => up,
        Err(stop) => return stop,
    };
    // Copy both ways until both sides close; the caller records the outcome.
    pipeline::relay(ctx, w, Direction::Outbound, down, up).await
}

/// The first steps: the accepted socket, its original destination, and, for a port that is
/// not pinned, HTTP detection on the app's first bytes.
async fn first(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    down: &TcpStream,
    conn: &mut Conn<'_>,
) -> Result<(OrigDst, Handling), Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Where it was going (and not the proxy itself).
    let dst = pipeline::original_dst(ctx, w, down)?;
    conn.dst = Some(dst);
    #[cfg(feature = "fault-injection")]
    crate::fault::on_outbound(dst);
    // A destination the policy refuses is refused before anything is read.
    let snap = ctx.shared.config.load();
    if let Route::Egress(EgressPolicy::Deny) = snap.config.live.route(dst) {
        return Err(Stop::new(
            Outcome::EgressDenied,
            Side::Downstream,
            Cause::EgressDenied(dst),
        ));
    }
    drop(snap);
    let handling = pipeline::classify(
        ctx,
        w,
        Direction::Outbound,
        down,
        None,
        dst.addr().port(),
        Vec::new(),
    )
    .await?;
    Ok((dst, handling))
}

/// The set-up steps, in order, up to a connected upstream that has what detection read.
async fn open(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    dst: OrigDst,
    conn: &mut Conn<'_>,
    prefix: Vec<u8>,
) -> Result<Upstream, Stop> {
    // 3. Policy: a service's virtual address is balanced over its endpoints, a known
    //    endpoint is used as is, anything else follows the egress policy. A meshed endpoint
    //    (one the config gives a SPIFFE ID) must be reached over mTLS, proving that ID.
    let snap = ctx.shared.config.load();
    let live = &snap.config.live;
    let shared_own = ctx.shared.own.load();
    let own = w.own.as_ref().unwrap_or(&shared_own);
    let plan = decide::outbound_plan(live, own, dst, |i| ctx.next_turn(snap.generation, i))
        .map_err(|outcome| {
            let cause = match outcome {
                Outcome::RedirectLoop => Cause::RedirectLoop(dst),
                _ => Cause::EgressDenied(dst),
            };
            Stop::new(outcome, Side::Downstream, cause)
        })?;
    ctx.shard(w).route(plan.route);
    conn.upstream = Some(plan.target);

    // 4. Connect, with the bypass mark and keepalive, under the connect timeout.
    let stream = pipeline::dial(ctx, w, live, plan.target).await?;

    // 5. Transport security: mTLS with the workload's SVID to a meshed endpoint; plaintext
    //    to anything else.
    let tls = match plan.identity {
        Some(want) => {
            Some(pipeline::mtls_client(ctx, w, &stream, want, live.timeouts.handshake, conn).await?)
        }
        None => {
            ctx.shard(w)
                .security(Direction::Outbound, Security::Plaintext);
            None
        }
    };

    let mut up = Upstream {
        stream,
        copy: copy_kind(live.copy),
        idle: live.timeouts.idle,
        tls,
    };
    // 6. What detection read goes first.
    pipeline::replay(&mut up, &prefix).await?;
    if !prefix.is_empty() {
        ctx.shard(w).bytes(
            Direction::Outbound,
            Side::Downstream,
            ringmesh_core::metrics::CopyMethod::Buffer,
            prefix.len() as u64,
        );
    }
    Ok(up)
}
