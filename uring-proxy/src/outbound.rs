//! One outbound connection, top to bottom: the app dialled some address, NAT sent it to our
//! outbound listener, and we take it where it was going (or where the mesh says it goes).

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::decide;
use ringmesh_core::metrics::{Direction, Outcome, Security, Side};

use crate::ctx::{ConnRecord, WorkerCtx};
use crate::error::{Cause, Stop};
use crate::pipeline::{self, Conn, Upstream};
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
    // The set-up steps run in a boxed future, freed once the upstream is connected: a
    // long-lived connection then keeps only the copy's state.
    let up = match Box::pin(pipeline::unless_closing(
        ctx,
        w,
        down,
        open(ctx, w, down, conn),
    ))
    .await
    {
        Ok(up) => up,
        Err(stop) => return stop,
    };
    // Copy both ways until both sides close; the caller records the outcome.
    pipeline::relay(ctx, w, Direction::Outbound, down, up).await
}

/// The set-up steps, in order, up to a connected upstream.
async fn open(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    down: &TcpStream,
    conn: &mut Conn<'_>,
) -> Result<Upstream, Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Where it was going (and not the proxy itself).
    let dst = pipeline::original_dst(ctx, w, down)?;
    conn.dst = Some(dst);
    #[cfg(feature = "fault-injection")]
    crate::fault::on_outbound(dst);

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

    Ok(Upstream {
        stream,
        copy: copy_kind(live.copy),
        idle: live.timeouts.idle,
        tls,
    })
}
