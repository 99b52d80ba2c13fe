//! One inbound connection, top to bottom: a peer dialled our app's port, NAT sent it to our
//! inbound listener, and we hand it to the app on loopback at the port it was going to.

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::config::InboundMode;
use ringmesh_core::metrics::{Direction, Outcome, Security, Side};

use crate::copy;
use crate::pipeline::{self, Conn, Stop, Upstream};
use crate::state::copy_kind;
use crate::tls;
use crate::worker::{ConnRecord, WorkerCtx};

pub(crate) async fn serve(ctx: Rc<WorkerCtx>, down: TcpStream) {
    let record = ConnRecord::open(ctx.shard(), Direction::Inbound);
    let mut conn = Conn::new(Direction::Inbound);
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
    pipeline::relay(ctx, Direction::Inbound, down, up).await
}

/// The set-up steps, in order, up to a connected upstream.
async fn open(ctx: &Rc<WorkerCtx>, down: &TcpStream, conn: &mut Conn) -> Result<Upstream, Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Which app port it was going to.
    let dst = pipeline::original_dst(ctx, down)?;
    conn.dst = Some(dst);

    // 3. Transport security: the first byte tells mTLS from another proxy (a TLS handshake
    //    record) from plaintext. mTLS needs a client SVID from a trusted domain; plaintext is
    //    refused on a strict port and passed (and counted) on a permissive one.
    let snap = ctx.shared.config.load();
    let timeouts = snap.config.timeouts;
    let (tls, peer) = match tls::sniff(down, timeouts.first_byte).await {
        Ok(Some(true)) => {
            let (link, peer) = pipeline::mtls_server(ctx, down, timeouts.handshake).await?;
            conn.peer = peer.clone().map(Box::new);
            (Some(link), peer)
        }
        Ok(Some(false)) => {
            if snap.config.inbound.mode_for(dst.addr().port()) == InboundMode::Strict {
                copy::reset(down);
                return Err(Stop::failed(
                    Outcome::PlaintextRefused,
                    Side::Downstream,
                    format!(
                        "plaintext to port {}, which is strict (mTLS only)",
                        dst.addr().port()
                    ),
                ));
            }
            ctx.shard()
                .security(Direction::Inbound, Security::Plaintext);
            (None, None)
        }
        // The peer left without a byte.
        Ok(None) => return Err(Stop::refused(Outcome::Ok)),
        Err(e) => return Err(Stop::failed(Outcome::DownstreamError, Side::Downstream, e)),
    };

    // 4. Access: may this peer reach this destination? Decided before the app is dialled, so a
    //    refused peer never gets a byte to it.
    pipeline::check_access(ctx, &snap, dst, peer.as_ref(), down)?;

    // 5. Connect to the app on loopback at the original port.
    let target = pipeline::loopback(dst);
    conn.upstream = Some(target);
    let stream = pipeline::dial(&snap, target).await?;

    Ok(Upstream {
        stream,
        copy: copy_kind(snap.config.copy),
        idle: timeouts.idle,
        tls,
    })
}
