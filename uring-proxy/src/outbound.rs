//! One outbound connection, top to bottom: the app dialled some address, NAT sent it to our
//! outbound listener, and we take it where it was going (or where the mesh says it goes).

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::config::{EgressPolicy, Route};
use ringmesh_core::metrics::{Direction, Outcome, RouteKind, Security, Side};

use crate::pipeline::{self, Conn, Stop, Upstream};
use crate::state::copy_kind;
use crate::worker::{ConnRecord, WorkerCtx};

pub(crate) async fn serve(ctx: Rc<WorkerCtx>, down: TcpStream) {
    let record = ConnRecord::open(ctx.shard(), Direction::Outbound);
    let mut conn = Conn::new(Direction::Outbound);
    let stop = proxy(&ctx, &down, &mut conn).await;
    conn.end(&ctx, record, stop, &down);
}

async fn proxy(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Stop {
    // The set-up steps run in a boxed future, freed once the upstream is connected: a
    // long-lived connection then keeps only the copy's state.
    let up = match Box::pin(pipeline::unless_closing(ctx, down, open(ctx, down, conn))).await {
        Ok(up) => up,
        Err(stop) => return stop,
    };
    // Copy both ways until both sides close; the caller records the outcome.
    pipeline::relay(ctx, Direction::Outbound, down, up).await
}

/// The set-up steps, in order, up to a connected upstream.
async fn open(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Result<Upstream, Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Where it was going.
    let dst = pipeline::original_dst(ctx, down)?;
    conn.dst = Some(dst);

    // 3. Policy: a service's virtual address is balanced over its endpoints, a known
    //    endpoint is used as is, anything else follows the egress policy.
    let snap = ctx.shared.config.load();
    // A meshed endpoint (one the config gives a SPIFFE ID) must be reached over mTLS.
    let (target, meshed) = match snap.config.route(dst) {
        Route::Service { index, service } => {
            ctx.shard().route(RouteKind::Service);
            let endpoint = service.pick(ctx.next_turn(snap.version, index));
            (endpoint.addr, endpoint.identity.clone())
        }
        Route::Endpoint { endpoint, .. } => {
            ctx.shard().route(RouteKind::Endpoint);
            (endpoint.addr, endpoint.identity.clone())
        }
        Route::Egress(EgressPolicy::Allow) => {
            ctx.shard().route(RouteKind::Egress);
            (dst.addr(), None)
        }
        Route::Egress(EgressPolicy::Deny) => {
            ctx.shard().route(RouteKind::Egress);
            return Err(Stop::failed(
                Outcome::EgressDenied,
                Side::Downstream,
                format!("{dst} is not in the mesh and egress is denied"),
            ));
        }
    };
    conn.upstream = Some(target);

    // 4. Connect, with the bypass mark, under the connect timeout.
    let stream = pipeline::dial(&snap, target).await?;

    // 5. Transport security: mTLS with our SVID to a meshed endpoint, which must prove it
    //    is the SPIFFE ID the config gives it; plaintext to anything else.
    let tls = match &meshed {
        Some(want) => Some(
            pipeline::mtls_client(ctx, &stream, want, snap.config.timeouts.handshake, conn).await?,
        ),
        None => {
            ctx.shard()
                .security(Direction::Outbound, Security::Plaintext);
            None
        }
    };

    Ok(Upstream {
        stream,
        copy: copy_kind(snap.config.copy),
        idle: snap.config.timeouts.idle,
        tls,
    })
    // 7. The caller records the outcome.
}
