//! `ring-ceiling`: how fast can an L4 proxy on this machine be when it owns its io_uring?
//!
//! A measuring instrument for perf/ (issue 12's first lever), not a product: the smallest
//! transparent TCP forwarder that uses io_uring the way monoio 0.2.4 cannot: one multishot
//! accept per listener, one multishot recv per socket into a provided-buffer ring (one
//! completion per arriving segment instead of a poll and a recv), sends, connects and
//! shutdowns as ring operations, and one `io_uring_enter` per loop turn for everything. It
//! reads `SO_ORIGINAL_DST` like uring-proxy and forwards to `127.0.0.1:<original port>`
//! (perf/compare.sh's backends), with no routing, policy, TLS, metrics or timeouts: the
//! ceiling that an owned ring could lift uring-proxy's plaintext path towards.
//!
//!   ring-ceiling --listen 127.0.0.1:15081 --workers 2 [--pin] [--upstream 127.0.0.1:9000]

#[allow(unsafe_code)]
mod sys;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "ring-ceiling", about)]
struct Args {
    /// Address of the listeners (one SO_REUSEPORT socket per worker).
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Pin worker i to CPU i.
    #[arg(long)]
    pin: bool,
    /// Provided buffers per worker (a power of two) and their size.
    #[arg(long, default_value_t = 1024)]
    buffers: u16,
    #[arg(long, default_value_t = 16384)]
    buffer_size: u32,
    /// Forward every connection here instead of to 127.0.0.1:<original port> (no NAT
    /// needed: the smoke test uses it).
    #[arg(long)]
    upstream: Option<SocketAddrV4>,
}

const GROUP: u16 = 0;
const ACCEPT: u64 = u64::MAX;
// Operation kinds in the low byte of the user data; the connection index above it.
const CONNECT: u64 = 1;
const RECV: u64 = 2; // + direction
const SEND: u64 = 4; // + direction
const SHUT: u64 = 6; // + direction

fn user(conn: usize, op: u64) -> u64 {
    ((conn as u64) << 8) | op
}

/// One direction: bytes read from `fds[d]`, written to `fds[1 - d]`.
#[derive(Debug, Default)]
struct Half {
    /// Received buffers not yet fully sent: (buffer id, offset, end).
    queue: VecDeque<(u16, u32, u32)>,
    sending: bool,
    /// The receiving side reached EOF (or failed).
    eof: bool,
    /// The write side was shut down after the last byte.
    shut: bool,
    /// The multishot receive stopped for want of buffers and waits for one.
    starved: bool,
}

#[derive(Debug)]
struct Conn {
    /// 0: the accepted client, 1: the upstream.
    fds: [RawFd; 2],
    halves: [Half; 2],
    addr: Box<libc::sockaddr_in>,
    /// Operations submitted and not yet finished (a multishot one counts once).
    inflight: u32,
    failed: bool,
}

struct Worker {
    ring: sys::Ring,
    bufs: sys::BufRing,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    listener: std::net::TcpListener,
    starved: Vec<(usize, usize)>,
    upstream: Option<SocketAddrV4>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut listeners = Vec::new();
    for _ in 0..args.workers {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(args.listen),
            socket2::Type::STREAM.cloexec(),
            None,
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nodelay(true)?;
        s.bind(&args.listen.into())?;
        s.listen(4096)?;
        listeners.push(std::net::TcpListener::from(s));
    }
    let threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let (pin, buffers, size, upstream) =
                (args.pin, args.buffers, args.buffer_size, args.upstream);
            std::thread::spawn(move || -> io::Result<()> {
                if pin {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(i).map_err(io::Error::from)?;
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .map_err(io::Error::from)?;
                }
                Worker::new(listener, buffers, size, upstream)?.run()
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

impl Worker {
    fn new(
        listener: std::net::TcpListener,
        buffers: u16,
        size: u32,
        upstream: Option<SocketAddrV4>,
    ) -> io::Result<Self> {
        let mut ring = sys::Ring::new(4096)?;
        let bufs = sys::BufRing::new(buffers, size)?;
        ring.register(&bufs, GROUP)?;
        Ok(Self {
            ring,
            bufs,
            conns: Vec::new(),
            free: Vec::new(),
            listener,
            starved: Vec::new(),
            upstream,
        })
    }

    fn run(mut self) -> io::Result<()> {
        self.ring.accept_multi(self.listener.as_raw_fd(), ACCEPT)?;
        let mut done = Vec::with_capacity(256);
        loop {
            self.ring.submit_and_wait()?;
            self.ring.drain(&mut done);
            for (user, res, flags) in done.drain(..) {
                if user == ACCEPT {
                    if !sys::more(flags) {
                        self.ring.accept_multi(self.listener.as_raw_fd(), ACCEPT)?;
                    }
                    if res >= 0 {
                        self.accepted(res)?;
                    }
                    continue;
                }
                let (c, op) = ((user >> 8) as usize, user & 0xff);
                self.complete(c, op, res, flags)?;
            }
        }
    }

    fn accepted(&mut self, fd: RawFd) -> io::Result<()> {
        let target = match self.upstream.map_or_else(
            || sys::original_dst(fd).map(|d| SocketAddrV4::new(Ipv4Addr::LOCALHOST, d.port())),
            Ok,
        ) {
            Ok(t) => t,
            Err(_) => {
                sys::close(fd);
                return Ok(());
            }
        };
        let up = match sys::tcp_socket() {
            Ok(s) => s,
            Err(_) => {
                sys::close(fd);
                return Ok(());
            }
        };
        let conn = Conn {
            fds: [fd, up],
            halves: Default::default(),
            addr: Box::new(sys::sockaddr_in(target)),
            inflight: 1,
            failed: false,
        };
        let c = match self.free.pop() {
            Some(c) => {
                self.conns[c] = Some(conn);
                c
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        let conn = self.conns[c].as_ref().expect("just stored");
        self.ring.connect(up, &conn.addr, user(c, CONNECT))
    }

    fn complete(&mut self, c: usize, op: u64, res: i32, flags: u32) -> io::Result<()> {
        let Some(conn) = self.conns[c].as_mut() else {
            return Ok(());
        };
        let multishot_goes_on = op & !1 == RECV && sys::more(flags);
        let mut returned = false;
        if !multishot_goes_on {
            conn.inflight -= 1;
        }
        match op {
            CONNECT => {
                if res < 0 {
                    conn.failed = true;
                } else {
                    let fds = conn.fds;
                    conn.inflight += 2;
                    self.ring.recv_multi(fds[0], GROUP, user(c, RECV))?;
                    self.ring.recv_multi(fds[1], GROUP, user(c, RECV + 1))?;
                }
            }
            _ if op & !1 == RECV => {
                let d = (op - RECV) as usize;
                let bid = sys::buffer_id(flags);
                if res > 0 {
                    let bid = bid.expect("a receive with data names its buffer");
                    conn.halves[d].queue.push_back((bid, 0, res as u32));
                    if !multishot_goes_on && !conn.failed {
                        conn.inflight += 1;
                        self.ring
                            .recv_multi(conn.fds[d], GROUP, user(c, RECV + d as u64))?;
                    }
                } else if res == -libc::ENOBUFS {
                    conn.halves[d].starved = true;
                    self.starved.push((c, d));
                } else {
                    if let Some(b) = bid {
                        self.bufs.provide(b);
                    }
                    conn.halves[d].eof = true;
                    if res < 0 {
                        conn.failed = true;
                    }
                }
                self.pump(c, d)?;
            }
            _ if op & !1 == SEND => {
                let d = (op - SEND) as usize;
                let half = &mut conn.halves[d];
                half.sending = false;
                if res <= 0 {
                    conn.failed = true;
                } else if let Some(front) = half.queue.front_mut() {
                    front.1 += res as u32;
                    if front.1 >= front.2 {
                        let bid = front.0;
                        half.queue.pop_front();
                        self.bufs.provide(bid);
                        returned = true;
                    }
                }
                self.pump(c, d)?;
            }
            _ if op & !1 == SHUT => {
                let d = (op - SHUT) as usize;
                conn.halves[d].shut = true;
            }
            _ => unreachable_op(op),
        }
        if returned {
            self.refill()?;
        }
        self.settle(c)
    }

    /// Sends the next queued buffer of direction `d`, or shuts the write side after the last.
    fn pump(&mut self, c: usize, d: usize) -> io::Result<()> {
        let Some(conn) = self.conns[c].as_mut() else {
            return Ok(());
        };
        if conn.failed {
            return Ok(());
        }
        let to = conn.fds[1 - d];
        let half = &mut conn.halves[d];
        if half.sending {
            return Ok(());
        }
        if let Some(&(bid, off, end)) = half.queue.front() {
            half.sending = true;
            conn.inflight += 1;
            return self.ring.send(
                to,
                &self.bufs,
                bid,
                off,
                end - off,
                user(c, SEND + d as u64),
            );
        }
        if half.eof && !half.shut {
            half.shut = true;
            conn.inflight += 1;
            return self.ring.shutdown_write(to, user(c, SHUT + d as u64));
        }
        Ok(())
    }

    /// Re-arms receives that stopped for want of buffers, now that one is back.
    fn refill(&mut self) -> io::Result<()> {
        while let Some((c, d)) = self.starved.pop() {
            let Some(conn) = self.conns[c].as_mut() else {
                continue;
            };
            if conn.halves[d].starved && !conn.failed {
                conn.halves[d].starved = false;
                conn.inflight += 1;
                self.ring
                    .recv_multi(conn.fds[d], GROUP, user(c, RECV + d as u64))?;
            }
        }
        Ok(())
    }

    /// Unwinds a failed connection, and frees one with nothing left to do.
    fn settle(&mut self, c: usize) -> io::Result<()> {
        let Some(conn) = self.conns[c].as_mut() else {
            return Ok(());
        };
        let finished = conn
            .halves
            .iter()
            .all(|h| h.eof && h.shut && h.queue.is_empty());
        if conn.failed && conn.inflight > 0 {
            // Ends the pending receives; their completions come back here.
            for fd in conn.fds {
                sys::shutdown_both(fd);
            }
            return Ok(());
        }
        if (finished || conn.failed) && conn.inflight == 0 {
            let conn = self.conns[c].take().expect("checked above");
            for (bid, _, _) in conn.halves.into_iter().flat_map(|h| h.queue) {
                self.bufs.provide(bid);
            }
            for fd in conn.fds {
                sys::close(fd);
            }
            self.free.push(c);
            self.refill()?;
        }
        Ok(())
    }
}

fn unreachable_op(op: u64) -> ! {
    panic!("completion for unknown operation {op}")
}
