//! One inbound connection, top to bottom: a peer dialled our app's port, NAT sent it to our
//! inbound listener, and we hand it to the app on loopback at the port it was going to.

use std::rc::Rc;

use monoio::net::TcpStream;
use ringmesh_core::decide::{self, InboundStep};
use ringmesh_core::metrics::{CopyMethod, Direction, Outcome, Side};

use crate::copy;
use crate::ctx::{ConnRecord, WorkerCtx};
use crate::detect;
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
    let record = ConnRecord::open(ctx.shard(w), Direction::Inbound);
    let mut conn = Conn::new(Direction::Inbound, w);
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
        Ok(Opened::Copy(up)) => up,
        // HTTP: request by request, each checked by the access policy (boxed: the engine's
        // state is large, and only HTTP connections need it).
        Ok(Opened::Http(start)) => {
            return Box::pin(http::serve(ctx, w, Direction::Inbound, down, *start)).await;
        }
        Err(stop) => return stop,
    };
    // Copy both ways until both sides close; the caller records the outcome.
    pipeline::relay(ctx, w, Direction::Inbound, down, up).await
}

/// Where the set-up steps end.
enum Opened {
    /// Bytes, both ways, with the app's connection.
    Copy(Upstream),
    /// An HTTP connection for the HTTP engine.
    Http(Box<http::Start>),
}

/// The set-up steps, in order, up to a connected upstream (or the HTTP engine).
async fn open(
    ctx: &Rc<WorkerCtx>,
    w: &Workload,
    down: &TcpStream,
    conn: &mut Conn<'_>,
) -> Result<Opened, Stop> {
    // 1. The accepted socket.
    pipeline::prepare(down)?;
    // 2. Which app port it was going to (and not the proxy itself).
    let dst = pipeline::original_dst(ctx, w, down)?;
    conn.dst = Some(dst);
    let port = dst.addr().port();

    // 3. Detection: read the ClientHello (or whatever comes first) under the detection
    //    timeout; mesh mTLS is told from the app's own TLS by its ALPN.
    let snap = ctx.shared.config.load();
    let live = &snap.config.live;
    let policy = decide::policy_for(live, &w.key);
    let found = detect::detect(down, live.timeouts.first_byte, &ctx.pools)
        .await
        .map_err(|e| Stop::io(Side::Downstream, e))?;
    ctx.shard(w).detected(found.detected.label());

    // 4. Transport: mesh mTLS is terminated; the rest passes on a permissive port and is
    //    refused on a strict one.
    let (mut tls, peer, replay) =
        match decide::inbound_step(policy.inbound.mode_for(port), found.detected) {
            InboundStep::Mesh(_) => {
                let (link, peer) =
                    pipeline::mtls_server(ctx, w, down, &found.prefix, live.timeouts.handshake)
                        .await?;
                conn.peer = peer.clone().map(Box::new);
                (Some(link), peer, None)
            }
            InboundStep::Forward(security) => {
                ctx.shard(w).security(Direction::Inbound, security);
                (None, None, Some(found.prefix))
            }
            InboundStep::Refuse(outcome) => {
                copy::reset(down);
                let cause = match outcome {
                    Outcome::PlaintextRefused => Cause::PlaintextOnStrict(port),
                    Outcome::AppTlsRefused => Cause::AppTlsOnStrict(port, found.hello_error),
                    _ => Cause::TruncatedHello(live.timeouts.first_byte),
                };
                return Err(Stop::new(outcome, Side::Downstream, cause));
            }
            InboundStep::Done => return Err(Stop::plain(Outcome::Ok)),
        };

    // 5. HTTP detection on the plaintext (inside the mTLS session, or as it came): HTTP goes
    //    to the engine, which asks the access policy request by request.
    let first = replay.map(Vec::from).unwrap_or_default();
    let handling = pipeline::classify(
        ctx,
        w,
        Direction::Inbound,
        down,
        tls.as_mut().map(|l| &mut l.conn),
        port,
        first,
    )
    .await?;
    let replay = match handling {
        Handling::Http(prefix, wire) => {
            return Ok(Opened::Http(Box::new(http::Start {
                dst,
                peer,
                tls: tls.map(|l| Box::new(l.conn)),
                prefix,
                wire,
            })));
        }
        Handling::Opaque(prefix) => prefix,
    };

    // 6. Access: may this peer reach this destination? Decided before the app is dialled, so a
    //    refused peer never gets a byte to it.
    let decision = decide::inbound_access(live, policy, dst, peer.as_ref());
    if !decision.allowed() {
        let source = peer.as_ref().map(ToString::to_string);
        ctx.shard(w).access_denied(source.as_deref());
        copy::reset(down);
        return Err(Stop::new(
            Outcome::AccessDenied,
            Side::Downstream,
            Cause::AccessDenied {
                peer: peer.map(Box::new),
                port,
                decision,
            },
        ));
    }

    // 7. Connect to the app on loopback at the original port, and hand it what detection
    //    read.
    let target = pipeline::loopback(dst);
    conn.upstream = Some(target);
    let stream = pipeline::dial(ctx, w, live, target).await?;
    if !replay.is_empty() {
        let prefix = replay;
        detect::replay(&stream, &prefix)
            .await
            .map_err(|e| Stop::io(Side::Upstream, e))?;
        ctx.shard(w).bytes(
            Direction::Inbound,
            Side::Downstream,
            CopyMethod::Buffer,
            prefix.len() as u64,
        );
    }

    Ok(Opened::Copy(Upstream {
        stream,
        copy: copy_kind(live.copy),
        idle: live.timeouts.idle,
        tls,
    }))
}
