//! One inbound connection, top to bottom: a peer dialled our app's port, NAT sent it to our
//! inbound listener, and we hand it to the app on loopback at the port it was going to.

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::ClientAddr;
use ringmesh_core::metrics::Direction;

use crate::pipeline::{self, Conn, Stop};
use crate::state::copy_kind;
use crate::worker::{ConnRecord, WorkerCtx};

pub(crate) async fn serve(ctx: Rc<WorkerCtx>, down: TcpStream, client: ClientAddr) {
    let record = ConnRecord::open(ctx.shard(), Direction::Inbound);
    let mut conn = Conn::new(Direction::Inbound, client);
    let stop = pipeline::until_closing(&ctx, &down, proxy(&ctx, &down, &mut conn)).await;
    conn.end(&ctx, record, stop);
}

async fn proxy(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Stop {
    // 1. The accepted socket.
    if let Err(stop) = pipeline::prepare(down) {
        return stop;
    }
    // 2. Which app port it was going to.
    let dst = match pipeline::original_dst(ctx, down, conn.client) {
        Ok(dst) => dst,
        Err(stop) => return stop,
    };
    conn.dst = Some(dst);

    // 3. Transport security: mTLS is detected and terminated here (issue 4), and access by
    //    peer identity decided after it; until then inbound is plaintext and open.

    // 4. Connect to the app on loopback at the original port.
    let snap = ctx.shared.config.load();
    let target = pipeline::loopback(dst);
    conn.upstream = Some(target);
    let up = match pipeline::dial(&snap, target).await {
        Ok(up) => up,
        Err(stop) => return stop,
    };

    // 5. Copy both ways until both sides close.
    let kind = copy_kind(snap.config.copy);
    let idle = snap.config.timeouts.idle;
    drop(snap);
    pipeline::relay(ctx, Direction::Inbound, down, &up, kind, idle).await
}
