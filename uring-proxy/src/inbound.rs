//! One inbound connection, top to bottom: a peer dialled our app's port, NAT sent it to our
//! inbound listener, and we hand it to the app on loopback at the port it was going to.

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::ClientAddr;
use ringmesh_core::metrics::Direction;

use crate::pipeline::{self, Conn, Stop, Upstream};
use crate::state::copy_kind;
use crate::worker::{ConnRecord, WorkerCtx};

pub(crate) async fn serve(ctx: Rc<WorkerCtx>, down: TcpStream, client: ClientAddr) {
    let record = ConnRecord::open(ctx.shard(), Direction::Inbound);
    let mut conn = Conn::new(Direction::Inbound, client);
    let stop = proxy(&ctx, &down, &mut conn).await;
    conn.end(&ctx, record, stop);
}

async fn proxy(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Stop {
    // The set-up steps run in a boxed future, freed once the upstream is connected: a
    // long-lived connection then keeps only the copy's state.
    let up = match Box::pin(pipeline::unless_closing(ctx, down, open(ctx, down, conn))).await {
        Ok(up) => up,
        Err(stop) => return stop,
    };
    // Copy both ways until both sides close; the caller records the outcome.
    pipeline::relay(ctx, Direction::Inbound, down, &up.stream, up.copy, up.idle).await
}

/// The set-up steps, in order, up to a connected upstream.
async fn open(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Result<Upstream, Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Which app port it was going to.
    let dst = pipeline::original_dst(ctx, down, conn.client)?;
    conn.dst = Some(dst);

    // 3. Transport security: mTLS is detected and terminated here (issue 4), and access by
    //    peer identity decided after it; until then inbound is plaintext and open.

    // 4. Connect to the app on loopback at the original port.
    let snap = ctx.shared.config.load();
    let target = pipeline::loopback(dst);
    conn.upstream = Some(target);
    let stream = pipeline::dial(&snap, target).await?;

    // 5. Copy both ways until both sides close.
    Ok(Upstream {
        stream,
        copy: copy_kind(snap.config.copy),
        idle: snap.config.timeouts.idle,
    })
}
