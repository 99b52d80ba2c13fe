//! The UDP relay: one outbound and one inbound socket per worker (SO_REUSEPORT, so the kernel
//! keeps a source on one worker), a flow table per worker and direction, and one connected
//! upstream socket per flow.
//!
//! The path of one datagram, outbound: the app sends to some address; the eBPF program puts
//! a PROXY v2 header (original source and destination) in front of the payload and steers it
//! to our outbound port. We parse the header (a malformed one drops that datagram only), find
//! or create the flow for (source, original destination) — creating it applies the same
//! lookup as TCP: a service's virtual address is balanced over its endpoints, once per flow,
//! and egress policy decides unknown destinations — and send the payload on the flow's
//! socket. A reply on that socket goes back to the app from our outbound port with a header
//! naming the original destination as its source; the eBPF program on `lo` strips it and
//! rewrites the source, so the app sees the answer come from where it sent. Inbound is the
//! same with the app as the upstream: the reply leaves our inbound port with a header, and
//! the egress program restores the app's port as its source.
//!
//! Policy: UDP here is plaintext (as in NGINX Service Mesh), so there is no peer identity and
//! no access rule by identity applies. What applies is routing (services, endpoints), egress
//! allow/deny, loop protection, and the flow limits. The step where encryption between
//! proxies would go is [`Relay::open_flow`]: it chooses the upstream.
//!
//! Readiness comes from the runtime (io_uring poll or epoll); each ready socket is drained
//! with non-blocking `recvfrom`/`send` through one scratch buffer per relay, so an idle flow
//! holds its socket and a few words, never a buffer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::udp::UdpSocket;
use ringmesh_core::config::bounds;
use ringmesh_core::decide;
use ringmesh_core::metrics::{Direction, Side, UdpDrop, UdpShard};
use ringmesh_core::proxy_v2::{self, Addrs, Transport};
use ringmesh_core::{OrigDst, canonical};
use socket2::{Domain, Protocol, Socket, Type};

use crate::ctx::WorkerCtx;
use crate::signal::LocalSignal;
use crate::sys;
use crate::workload::Workload;

/// The largest UDP payload over IPv4 (65535 - 20 - 8).
const MAX_PAYLOAD: usize = 65_507;
/// Room for a header in front of a reply.
const HDR: usize = proxy_v2::V4_LEN;

/// One relay socket of a worker, bound by the main thread.
#[derive(Debug)]
pub(crate) struct UdpSetup {
    pub dir: Direction,
    pub workload: usize,
    pub socket: std::net::UdpSocket,
}

/// (source, original destination).
type FlowKey = (SocketAddr, SocketAddr);

struct Flow {
    key: FlowKey,
    socket: UdpSocket,
    /// The last datagram either way.
    last: Cell<Instant>,
    /// Fired when a full table pushes this flow out.
    evicted: LocalSignal,
}

/// One worker's relay for one direction and workload.
struct Relay {
    ctx: Rc<WorkerCtx>,
    dir: Direction,
    workload: Arc<Workload>,
    listener: UdpSocket,
    flows: RefCell<HashMap<FlowKey, Rc<Flow>>>,
    /// Scratch for one datagram and the header in front of it. Never borrowed across an
    /// await.
    buf: RefCell<Box<[u8]>>,
    /// Receive slots for the relay socket (`recvmmsg`). Never borrowed across an await.
    batch: RefCell<sys::RecvBatch<{ bounds::UDP_RECV_BATCH as usize }>>,
}

pub(crate) fn spawn(ctx: Rc<WorkerCtx>, setup: UdpSetup) -> io::Result<()> {
    let listener = UdpSocket::from_std(setup.socket)?;
    let workload = ctx
        .shared
        .workload(setup.workload)
        .ok_or_else(|| io::Error::other("a UDP relay for a workload that is not registered"))?;
    let relay = Rc::new(Relay {
        ctx,
        dir: setup.dir,
        workload,
        listener,
        flows: RefCell::new(HashMap::new()),
        buf: RefCell::new(vec![0u8; HDR + MAX_PAYLOAD + 1].into_boxed_slice()),
        batch: RefCell::new(sys::RecvBatch::new(HDR + MAX_PAYLOAD + 1)),
    });
    monoio::spawn(listen(relay));
    Ok(())
}

impl Relay {
    fn shard(&self) -> &UdpShard {
        &self.ctx.shard(&self.workload).udp
    }

    fn dropped(&self, why: UdpDrop, detail: &dyn std::fmt::Display) {
        self.shard().drop(self.dir, why);
        tracing::debug!(worker = self.ctx.id, dir = %self.dir, reason = %why, %detail, "datagram dropped");
    }

    /// One datagram from downstream (header and payload).
    fn on_datagram(self: &Rc<Self>, data: &[u8], from: SocketAddr) {
        let (header, payload) = match proxy_v2::parse(data) {
            Ok(h) => h,
            Err(m) => {
                self.shard().malformed(self.dir, m);
                tracing::debug!(worker = self.ctx.id, dir = %self.dir, %from, reason = m.as_str(), "malformed PROXY header; datagram dropped");
                return;
            }
        };
        let Some(addrs) = header.addrs else {
            self.dropped(UdpDrop::NoAddresses, &from);
            return;
        };
        let key = (canonical(addrs.source), canonical(addrs.destination));
        if key.0 != canonical(from) {
            self.dropped(
                UdpDrop::SourceMismatch,
                &format_args!("{from} sent a header for {}", key.0),
            );
            return;
        }
        self.shard()
            .datagram(self.dir, Side::Downstream, payload.len());
        let existing = self.flows.borrow().get(&key).cloned();
        let flow = match existing {
            Some(f) => f,
            None => match self.open_flow(key) {
                Some(f) => f,
                None => return,
            },
        };
        flow.last.set(Instant::now());
        if let Err(e) = sys::send(flow.socket.as_raw_fd(), payload) {
            // Also an earlier datagram's ICMP error (port unreachable), reported on this send.
            self.dropped(UdpDrop::SendFailed, &format_args!("to {}: {e}", key.1));
        }
    }

    /// Creates the flow for `key`: chooses the upstream (where mesh encryption would go),
    /// opens its socket, makes room in the table, and starts its reply task.
    fn open_flow(self: &Rc<Self>, key: FlowKey) -> Option<Rc<Flow>> {
        let ctx = &self.ctx;
        if ctx.draining.is_fired() {
            self.dropped(UdpDrop::Draining, &key.0);
            return None;
        }
        let dst = OrigDst::new(key.1);
        let shared_own = ctx.shared.own.load();
        let own = self.workload.own.as_ref().unwrap_or(&shared_own);
        let target = match self.dir {
            Direction::Outbound => {
                let snap = ctx.shared.config.load();
                match decide::outbound_plan(&snap.config.live, own, dst, |i| {
                    ctx.next_turn(snap.generation, i)
                }) {
                    Ok(plan) => plan.target,
                    Err(outcome) => {
                        let why = match outcome {
                            ringmesh_core::metrics::Outcome::RedirectLoop => UdpDrop::RedirectLoop,
                            _ => UdpDrop::EgressDenied,
                        };
                        self.dropped(why, &key.1);
                        return None;
                    }
                }
            }
            Direction::Inbound => {
                if own.is_own(dst) {
                    self.dropped(UdpDrop::RedirectLoop, &key.1);
                    return None;
                }
                key.1
            }
        };
        let socket = match upstream_socket(target, ctx.shared.boot.bypass_mark.map(|m| m.get())) {
            Ok(s) => s,
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        UdpDrop::NoSocket
                    }
                    _ => UdpDrop::SendFailed,
                };
                self.dropped(why, &format_args!("flow to {target}: {e}"));
                return None;
            }
        };
        let max = ctx
            .shared
            .config
            .load()
            .config
            .live
            .udp
            .max_flows_per_worker
            .get() as usize;
        {
            let mut flows = self.flows.borrow_mut();
            while flows.len() >= max {
                // The least recently used flow goes; a scan, only when the table is full.
                let Some(oldest) = flows.values().min_by_key(|f| f.last.get()).map(|f| f.key)
                else {
                    break;
                };
                if let Some(f) = flows.remove(&oldest) {
                    f.evicted.fire();
                }
            }
        }
        let flow = Rc::new(Flow {
            key,
            socket,
            last: Cell::new(Instant::now()),
            evicted: LocalSignal::default(),
        });
        self.flows.borrow_mut().insert(key, flow.clone());
        self.shard().flow_created(self.dir);
        tracing::trace!(worker = ctx.id, dir = %self.dir, src = %key.0, dst = %key.1, %target, "UDP flow");
        monoio::spawn(replies(self.clone(), flow.clone()));
        Some(flow)
    }

    /// Sends one reply (already in `buf[HDR..HDR + n]`) back to the flow's source.
    fn send_reply(&self, buf: &mut [u8], n: usize, key: FlowKey) {
        if n > MAX_PAYLOAD - HDR {
            self.dropped(
                UdpDrop::Oversized,
                &format_args!("{n} bytes from {}", key.1),
            );
            return;
        }
        let addrs = Addrs {
            transport: Transport::Datagram,
            source: key.1,
            destination: key.0,
        };
        if proxy_v2::write(&addrs, &mut buf[..HDR]).is_err() {
            self.dropped(UdpDrop::Oversized, &key.1);
            return;
        }
        if let Err(e) = sys::send_to(self.listener.as_raw_fd(), &buf[..HDR + n], key.0) {
            self.dropped(
                UdpDrop::SendFailed,
                &format_args!("reply to {}: {e}", key.0),
            );
        }
    }
}

fn upstream_socket(target: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.connect(&target.into())?;
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

/// Reads the relay socket until the worker closes.
async fn listen(relay: Rc<Relay>) {
    let ctx = relay.ctx.clone();
    loop {
        let ready = monoio::select! {
            biased;
            _ = ctx.closing.wait() => break,
            r = relay.listener.readable(false) => r,
        };
        if let Err(e) = ready {
            tracing::warn!(worker = ctx.id, dir = %relay.dir, error = %e, "UDP relay socket failed");
            break;
        }
        // Drain what is queued, a batch per call, then wait again.
        let max = ctx.shared.config.load().config.live.udp.recv_batch;
        loop {
            let mut batch = relay.batch.borrow_mut();
            match batch.recv(relay.listener.as_raw_fd(), max, |data, from| {
                relay.on_datagram(data, from)
            }) {
                Ok(n) if n < max => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(worker = ctx.id, dir = %relay.dir, error = %e, "UDP receive failed");
                    break;
                }
            }
        }
    }
    // The flows' tasks end on the same signal.
    relay.flows.borrow_mut().clear();
}

/// One flow's replies, until it is idle for the timeout, evicted, or the worker closes.
async fn replies(relay: Rc<Relay>, flow: Rc<Flow>) {
    let ctx = relay.ctx.clone();
    let evicted = loop {
        let idle = ctx.shared.config.load().config.live.udp.idle;
        let deadline = flow.last.get() + idle;
        let now = Instant::now();
        if now >= deadline {
            break false;
        }
        let ready = monoio::select! {
            biased;
            _ = flow.evicted.wait() => break true,
            _ = ctx.closing.wait() => break false,
            _ = monoio::time::sleep(deadline - now) => continue,
            r = flow.socket.readable(false) => r,
        };
        if ready.is_err() {
            break false;
        }
        loop {
            let mut buf = relay.buf.borrow_mut();
            let room = buf.get_mut(HDR..).unwrap_or_default();
            match sys::recv(flow.socket.as_raw_fd(), room) {
                Ok(n) => {
                    relay.shard().datagram(relay.dir, Side::Upstream, n);
                    flow.last.set(Instant::now());
                    relay.send_reply(&mut buf, n, flow.key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP from the upstream (port unreachable): the flow stays, the error is
                    // counted, the app's next datagram tries again.
                    relay.dropped(
                        UdpDrop::SendFailed,
                        &format_args!("from {}: {e}", flow.key.1),
                    );
                    break;
                }
            }
        }
    };
    {
        let mut flows = relay.flows.borrow_mut();
        if flows.get(&flow.key).is_some_and(|f| Rc::ptr_eq(f, &flow)) {
            flows.remove(&flow.key);
        }
    }
    relay.shard().flow_ended(relay.dir, evicted);
}
