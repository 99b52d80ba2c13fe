//! The plaintext copy on the worker's own io_uring (issue 12's first lever): a receive per
//! socket into a ring of provided buffers (the kernel picks a buffer only when bytes arrive),
//! so a message costs one completion instead of a poll, a wake-up and a `recv`; its send,
//! and the next receive, go to the kernel in the same `io_uring_enter` as every other
//! operation queued in that turn, and usually complete inside it. monoio 0.2.4 exposes
//! neither provided buffers nor its ring, so the worker keeps a second ring (`sys::ring`)
//! beside monoio's, and one task ([`RingCopy::run`]) reaps it each time its eventfd fires.
//!
//! Receives are one-shot, re-armed as each completes, not multishot: a multishot receive on
//! a socket with bulk arriving took every buffer of the pool before the first completion was
//! reaped (512 completions in one batch, measured), starving every other connection. One
//! receive in flight per direction bounds what a direction can hold to [`MAX_QUEUED`].
//!
//! It carries `copy: auto` connections on the io_uring driver while their messages are
//! small. A direction whose last [`BULK_RUN`] receives each filled a whole buffer had 64 KiB
//! waiting in its socket, which is what the buffered copy's switch means by bulk (one read
//! filling its 64 KiB buffer); a direction whose destination stops taking bytes (a send that
//! comes back short, or [`MAX_QUEUED`] buffers unsent) is a slow reader. Either way the connection is handed over to the readiness-driven copy in
//! `copy` (which splices bulk, and where a slow reader waits holding one buffer of its own
//! rather than the ring's shared pool): every operation on its sockets is cancelled, what
//! the ring had received and not yet sent is copied out, and the other copy writes it first.
//! A connection never returns to the ring.
//!
//! Operations name their connection by slot and generation, never by pointer. A connection
//! that ends for any reason (done, failed, idle, drained, its task dropped) cancels every
//! operation on its sockets and submits the cancellation before its owner closes them: a
//! queued operation names a descriptor number, which a new socket may reuse. The slot
//! itself is freed when its last completion has arrived, and only then do its buffers go
//! back. An idle connection holds no buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use monoio::net::TcpStream;
use ringmesh_core::metrics::{CopyMethod, Direction, Side};
use slab::Slab;

use crate::copy::Resume;
use crate::duplex::{CopyEnd, reset};
use crate::idle::{Expired, Toucher};
use crate::sys::{self, ring::Ring};
use crate::workload::Workload;

/// Size of a provided buffer.
pub(crate) const BUF_SIZE: u32 = 16 * 1024;
/// Provided buffers per worker: 2 MiB of address space. A page costs memory only once
/// something was received into it, but the kernel takes the buffers in turn, so after small
/// messages the first page of each is resident (512 KiB), and after bulk all of it: a fixed
/// cost per worker, whatever the number of connections. 256 buffers showed as 4 MiB more
/// RSS per worker after the benchmarks' bulk streams. Each direction holds at most
/// [`MAX_QUEUED`], and a buffer is usually back within the turn that filled it.
const BUFFERS: u16 = 128;
const GROUP: u16 = 0;
const RING_ENTRIES: u32 = 1024;
/// Batches of completions one reaping turn handles before it lets other tasks run.
const TURN_BATCHES: usize = 32;
/// Buffers one direction may hold, received and not yet sent, before the connection is
/// handed to the readiness-driven copy.
pub(crate) const MAX_QUEUED: usize = 8;
/// Receives in a row that filled their whole buffer and so make a direction bulk (4 × 16 KiB:
/// the buffered copy's own switch to splice is one 64 KiB read that fills its buffer).
pub(crate) const BULK_RUN: u8 = 4;

// Operation kinds, in the low byte of the user data: receive or send, plus the direction.
const RECV: u64 = 0;
const SEND: u64 = 2;

/// User data: slot (32 bits), generation (24 bits), operation (8 bits).
fn user(key: usize, generation: u32, op: u64) -> u64 {
    ((key as u64) << 32) | (u64::from(generation & 0xff_ffff) << 8) | op
}

fn split(user: u64) -> (usize, u32, u64) {
    (
        (user >> 32) as usize,
        ((user >> 8) & 0xff_ffff) as u32,
        user & 0xff,
    )
}

/// Where a connection's bytes are counted, from the reaping task.
pub(crate) struct Account {
    pub workload: Arc<Workload>,
    pub worker: usize,
    pub dir: Direction,
    pub idle: Toucher,
}

impl Account {
    fn moved(&self, from: Side, n: u32) {
        self.idle.touch();
        self.workload.shards[self.worker].bytes(self.dir, from, CopyMethod::Ring, u64::from(n));
    }
}

/// A direction's received buffers not yet fully sent, in order: (buffer, bytes sent so far,
/// length). Inline and compact, since every open connection on the ring has two: at most
/// [`MAX_QUEUED`], because a direction that reaches that many is handed over.
#[derive(Debug, Default)]
struct Queue {
    entries: [(u16, u16, u16); MAX_QUEUED],
    head: u8,
    len: u8,
}

impl Queue {
    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn front(&self) -> Option<(u16, u32, u32)> {
        (self.len > 0).then(|| {
            let (bid, off, len) = self.entries[usize::from(self.head)];
            (bid, u32::from(off), u32::from(len))
        })
    }

    /// Appends a buffer; `false` (and nothing stored) when full, which the caller prevents.
    fn push_back(&mut self, bid: u16, len: u32) -> bool {
        let (Ok(len), true) = (u16::try_from(len), self.len() < MAX_QUEUED) else {
            return false;
        };
        let at = (usize::from(self.head) + self.len()) % MAX_QUEUED;
        self.entries[at] = (bid, 0, len);
        self.len += 1;
        true
    }

    fn pop_front(&mut self) -> Option<(u16, u32, u32)> {
        let front = self.front()?;
        self.head = ((usize::from(self.head) + 1) % MAX_QUEUED) as u8;
        self.len -= 1;
        Some(front)
    }

    /// Records `n` more bytes of the front buffer as sent.
    fn sent_front(&mut self, n: u32) {
        if self.len > 0 {
            let e = &mut self.entries[usize::from(self.head)];
            e.1 = u16::try_from(u32::from(e.1) + n).unwrap_or(e.2).min(e.2);
        }
    }
}

/// One direction: bytes received from `fds[d]`, sent to `fds[1 - d]`.
#[derive(Debug, Default)]
struct Half {
    /// Received buffers not yet fully sent.
    queue: Queue,
    /// A receive is in flight.
    armed: bool,
    /// A send is in flight.
    sending: bool,
    /// The source reached end of stream.
    eof: bool,
    /// The destination's write side was shut after the last byte.
    shut: bool,
    /// The receive stopped for want of a free buffer and waits for one.
    starved: bool,
    /// Receives in a row that filled their buffer.
    full_run: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Copying,
    /// A direction moved bulk or met a slow reader: the receives and sends are cancelled.
    HandingOff,
    /// One side failed (the side, the errno); every operation is cancelled.
    Failed(Side, i32),
    /// The connection's future is gone; the slot waits for its last completions.
    Orphan,
}

struct Slot {
    generation: u32,
    fds: [RawFd; 2],
    halves: [Half; 2],
    /// Operations queued or in flight.
    inflight: u32,
    state: State,
    /// Every operation on the sockets was cancelled.
    cancelled: bool,
    waker: Option<Waker>,
    account: Account,
}

/// How a connection on the ring ended, or that it goes on with the splice copy.
#[derive(Debug)]
pub(crate) enum RingEnd {
    Ended(CopyEnd),
    /// The copy goes on in `copy`, from where the ring left it.
    Handoff(Resume),
}

/// What a slot's future sees when it is polled.
enum Seen {
    Going,
    Done,
    Handoff,
    Failed(Side, i32),
}

struct Inner {
    ring: Ring,
    slots: Slab<Slot>,
    /// Halves whose receive waits for a free buffer: (slot, generation, direction).
    starved: VecDeque<(usize, u32, usize)>,
    generation: u32,
    completions: Vec<sys::ring::Completion>,
    wake: Vec<Waker>,
}

/// A worker's owned ring and the connections on it.
pub(crate) struct RingCopy {
    inner: RefCell<Inner>,
}

impl std::fmt::Debug for RingCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingCopy").finish_non_exhaustive()
    }
}

fn side_of(d: usize) -> Side {
    if d == 0 {
        Side::Downstream
    } else {
        Side::Upstream
    }
}

impl RingCopy {
    /// The worker's ring; an error means this kernel or sandbox refuses it, and the worker
    /// copies without it.
    pub(crate) fn new() -> io::Result<Self> {
        let ring = Ring::new(RING_ENTRIES, BUFFERS, BUF_SIZE, GROUP)?;
        Ok(Self {
            inner: RefCell::new(Inner {
                ring,
                slots: Slab::new(),
                starved: VecDeque::new(),
                generation: 0,
                completions: Vec::with_capacity(256),
                wake: Vec::new(),
            }),
        })
    }

    /// Reaps the ring each time its eventfd fires, for as long as the worker runs.
    pub(crate) async fn run(self: Rc<Self>) {
        let file = match self
            .inner
            .borrow()
            .ring
            .eventfd()
            .and_then(monoio::fs::File::from_std)
        {
            Ok(f) => f,
            Err(e) => panic!("cannot read the copy ring's eventfd: {e}"),
        };
        let mut buf = vec![0u8; 8];
        loop {
            let (r, b) = file.read_at(buf, 0).await;
            buf = b;
            if let Err(e) = r {
                // Connections on the ring would hang: the process must restart instead.
                panic!("reading the copy ring's eventfd failed: {e}");
            }
            self.turn();
        }
    }

    /// Handles every completion that is ready, submits what that queued, and wakes the
    /// connections whose state changed.
    fn turn(&self) {
        let wake = {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            // Bounded, so that other tasks (accepts, timers) get their turn under steady
            // traffic; completions left in the ring have signalled the eventfd again.
            for _ in 0..TURN_BATCHES {
                inner.ring.reap(&mut inner.completions);
                if inner.completions.is_empty() {
                    break;
                }
                let mut done = std::mem::take(&mut inner.completions);
                for (u, res, flags) in done.drain(..) {
                    inner.complete(u, res, flags);
                }
                inner.completions = done;
                inner.submit();
            }
            std::mem::take(&mut inner.wake)
        };
        for w in wake {
            w.wake();
        }
    }

    /// Starts copying between `down` and `up`; `None` (before anything is queued) if the
    /// ring cannot take the connection, which the caller then copies the other way.
    fn open(&self, down: RawFd, up: RawFd, account: Account) -> Option<(usize, u32)> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if inner.slots.vacant_key() > u32::MAX as usize {
            return None;
        }
        inner.generation = inner.generation.wrapping_add(1);
        let generation = inner.generation;
        let key = inner.slots.insert(Slot {
            generation,
            fds: [down, up],
            halves: Default::default(),
            inflight: 0,
            state: State::Copying,
            cancelled: false,
            waker: None,
            account,
        });
        inner.arm(key, 0);
        inner.arm(key, 1);
        inner.submit();
        // A receive that could not be queued failed the slot, and the connection ends as an
        // internal error: copying it the other way could lose what the other receive took.
        Some((key, generation))
    }

    fn poll_slot(&self, key: usize, generation: u32, waker: &Waker) -> Poll<RingEnd> {
        let mut inner = self.inner.borrow_mut();
        let Some(slot) = inner.slot(key, generation) else {
            return Poll::Ready(failed(Side::Internal, libc::EINVAL));
        };
        match slot.seen() {
            Seen::Going => {
                match &mut slot.waker {
                    Some(w) => w.clone_from(waker),
                    None => slot.waker = Some(waker.clone()),
                }
                Poll::Pending
            }
            Seen::Done => Poll::Ready(RingEnd::Ended(CopyEnd::Done)),
            Seen::Failed(side, errno) => Poll::Ready(failed(side, errno)),
            Seen::Handoff => Poll::Ready(RingEnd::Handoff(inner.take_over(key))),
        }
    }

    fn release(&self, key: usize, generation: u32) {
        self.inner.borrow_mut().release(key, generation);
    }
}

fn failed(side: Side, errno: i32) -> RingEnd {
    RingEnd::Ended(CopyEnd::Failed {
        side,
        error: io::Error::from_raw_os_error(errno),
    })
}

impl Slot {
    fn seen(&self) -> Seen {
        match self.state {
            State::Failed(side, errno) => Seen::Failed(side, errno),
            State::Orphan => Seen::Failed(Side::Internal, libc::EINVAL),
            State::HandingOff => {
                // Nothing of ours in flight: the kernel is done with the sockets' operations.
                if self.halves.iter().all(|h| !h.armed && !h.sending) {
                    Seen::Handoff
                } else {
                    Seen::Going
                }
            }
            State::Copying => {
                if self.halves.iter().all(|h| h.shut) {
                    Seen::Done
                } else {
                    Seen::Going
                }
            }
        }
    }

    fn wake(&mut self, out: &mut Vec<Waker>) {
        if !matches!(self.seen(), Seen::Going)
            && let Some(w) = self.waker.take()
        {
            out.push(w);
        }
    }
}

impl Inner {
    /// Slot `key`, if it still holds the connection of that generation.
    fn slot(&mut self, key: usize, generation: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(key)
            .filter(|s| s.generation == generation)
    }

    fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            // Every queued operation stays queued and goes with the next submit; a ring that
            // refuses submissions is broken for good, so say it.
            tracing::error!(error = %e, "io_uring submit on the copy ring failed");
        }
    }

    /// Arms direction `d`'s receive if it should be running.
    fn arm(&mut self, key: usize, d: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let h = &slot.halves[d];
        if slot.state != State::Copying
            || h.armed
            || h.eof
            || h.starved
            || h.queue.len() >= MAX_QUEUED
        {
            return;
        }
        let u = user(key, slot.generation, RECV + d as u64);
        match self.ring.recv(slot.fds[d], u) {
            Ok(()) => {
                slot.inflight += 1;
                slot.halves[d].armed = true;
            }
            Err(e) => self.fail(key, Side::Internal, e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Sends direction `d`'s next queued buffer, or passes its end of stream on.
    fn pump(&mut self, key: usize, d: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !matches!(slot.state, State::Copying | State::HandingOff) {
            return;
        }
        let handing_off = slot.state == State::HandingOff;
        let to = slot.fds[1 - d];
        let generation = slot.generation;
        let h = &mut slot.halves[d];
        if h.sending || (handing_off && !h.queue.is_empty()) {
            // What is queued at a handoff goes with it.
            return;
        }
        if let Some((bid, off, len)) = h.queue.front() {
            match self.ring.send(
                to,
                bid,
                off,
                len - off,
                user(key, generation, SEND + d as u64),
            ) {
                Ok(()) => {
                    h.sending = true;
                    slot.inflight += 1;
                }
                Err(e) => self.fail(key, Side::Internal, e.raw_os_error().unwrap_or(libc::EIO)),
            }
            return;
        }
        if h.eof && !h.armed && !h.shut {
            h.shut = true;
            if let Err(e) = sys::shutdown_write(to) {
                self.fail(key, side_of(1 - d), e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
    }

    /// One side failed: every operation on the connection is cancelled and its future woken.
    fn fail(&mut self, key: usize, side: Side, errno: i32) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if matches!(slot.state, State::Failed(..) | State::Orphan) {
            return;
        }
        slot.state = State::Failed(side, errno);
        self.cancel_all(key);
        if let Some(slot) = self.slots.get_mut(key) {
            slot.wake(&mut self.wake);
        }
    }

    fn cancel_all(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.cancelled || slot.inflight == 0 {
            return;
        }
        slot.cancelled = true;
        for fd in slot.fds {
            if let Err(e) = self.ring.cancel_fd(fd) {
                tracing::error!(error = %e, "cannot cancel copy-ring operations");
            }
        }
    }

    /// The connection's future is done with the slot: free it, or cancel what is in flight
    /// and free it when the last completion comes. Submits at once, before the caller closes
    /// the sockets.
    fn release(&mut self, key: usize, generation: u32) {
        let Some(slot) = self.slot(key, generation) else {
            return;
        };
        slot.state = State::Orphan;
        slot.waker = None;
        if slot.inflight == 0 {
            self.free(key);
            return;
        }
        self.cancel_all(key);
        self.submit();
    }

    /// Copies out what a handed-over connection had received and not sent, and gives its
    /// buffers back.
    fn take_over(&mut self, key: usize) -> Resume {
        let mut resume = Resume::default();
        for (d, h) in self.slots[key].halves.iter_mut().enumerate() {
            resume.done[d] = h.shut;
            while let Some((bid, off, len)) = h.queue.pop_front() {
                resume.pending[d].extend_from_slice(self.ring.bytes(bid, off, len - off));
                self.ring.provide(bid);
            }
        }
        self.refill();
        resume
    }

    fn free(&mut self, key: usize) {
        let slot = self.slots.remove(key);
        for mut h in slot.halves {
            while let Some((bid, _, _)) = h.queue.pop_front() {
                self.ring.provide(bid);
            }
        }
        self.refill();
    }

    /// Hands a buffer back to the kernel and restarts receives that waited for one.
    fn give_back(&mut self, bid: u16) {
        self.ring.provide(bid);
        self.refill();
    }

    /// Re-arms receives that stopped for want of buffers.
    fn refill(&mut self) {
        while let Some((key, generation, d)) = self.starved.pop_front() {
            let Some(slot) = self.slot(key, generation) else {
                continue;
            };
            slot.halves[d].starved = false;
            self.arm(key, d);
        }
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        if u == sys::ring::CANCEL {
            return;
        }
        let (key, generation, op) = split(u);
        let known = self
            .slots
            .get(key)
            .is_some_and(|s| s.generation & 0xff_ffff == generation);
        if !known {
            // A slot is freed only after its last completion: nothing should land here, and
            // a stray buffer must still go back.
            if let Some(bid) = sys::ring::buffer_id(flags) {
                self.give_back(bid);
            }
            return;
        }
        let d = (op & 1) as usize;
        if op & !1 == RECV {
            self.received(key, d, res, flags);
        } else {
            self.sent(key, d, res);
        }
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.state == State::Orphan {
            if slot.inflight == 0 {
                self.free(key);
            }
            return;
        }
        self.pump(key, d);
        self.arm(key, d);
        if let Some(slot) = self.slots.get_mut(key) {
            slot.wake(&mut self.wake);
        }
    }

    fn received(&mut self, key: usize, d: usize, res: i32, flags: u32) {
        let bid = sys::ring::buffer_id(flags);
        let slot = &mut self.slots[key];
        slot.inflight -= 1;
        slot.halves[d].armed = false;
        let live = matches!(slot.state, State::Copying | State::HandingOff);
        if res > 0 {
            let Some(bid) = bid else {
                self.fail(key, Side::Internal, libc::EIO);
                return;
            };
            if !live {
                self.give_back(bid);
                return;
            }
            let n = res as u32;
            slot.account.moved(side_of(d), n);
            let h = &mut slot.halves[d];
            if !h.queue.push_back(bid, n) {
                // Never: a direction at MAX_QUEUED is handed over and receives no more.
                self.give_back(bid);
                self.fail(key, Side::Internal, libc::EOVERFLOW);
                return;
            }
            let h = &mut self.slots[key].halves[d];
            h.full_run = if n == BUF_SIZE {
                h.full_run.saturating_add(1)
            } else {
                0
            };
            // Bulk, or a destination that does not keep up: the other copy takes over.
            let bulk = h.full_run >= BULK_RUN;
            let slow = h.queue.len() >= MAX_QUEUED;
            if bulk || slow {
                self.hand_off(key);
            }
            return;
        }
        if let Some(bid) = bid {
            self.give_back(bid);
        }
        let slot = &mut self.slots[key];
        match -res {
            0 => slot.halves[d].eof = true,
            libc::ENOBUFS if live => {
                slot.halves[d].starved = true;
                slot.account.workload.shards[slot.account.worker].ring_starved();
                let generation = slot.generation;
                self.starved.push_back((key, generation, d));
            }
            libc::ECANCELED | libc::ENOBUFS => {}
            errno if live => self.fail(key, side_of(d), errno),
            _ => {}
        }
    }

    fn sent(&mut self, key: usize, d: usize, res: i32) {
        let slot = &mut self.slots[key];
        slot.inflight -= 1;
        let live = matches!(slot.state, State::Copying | State::HandingOff);
        let handing_off = slot.state == State::HandingOff;
        let h = &mut slot.halves[d];
        h.sending = false;
        if res == -libc::ECANCELED && handing_off {
            // Nothing of it was sent; the bytes go with the handoff.
            return;
        }
        if res <= 0 {
            if live {
                let errno = if res == 0 { libc::EPIPE } else { -res };
                self.fail(key, side_of(1 - d), errno);
            }
            return;
        }
        let Some((bid, off, len)) = h.queue.front() else {
            return;
        };
        let n = res as u32;
        // A send that came back short met a destination whose buffer is full. (One that
        // waits for room holds its direction's queue until it reaches MAX_QUEUED.)
        let slow = n < len - off;
        if off + n >= len {
            h.queue.pop_front();
            self.give_back(bid);
        } else {
            h.queue.sent_front(n);
        }
        if slow {
            self.hand_off(key);
        }
    }

    /// Moves the connection towards the other copy: everything in flight is cancelled.
    fn hand_off(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        if slot.state != State::Copying {
            return;
        }
        slot.state = State::HandingOff;
        slot.account.workload.shards[slot.account.worker].ring_handoff();
        // By descriptor, which finds every operation; a cancellation by user data did not
        // find a multishot receive between two of its completions (ENOENT on 6.18).
        self.cancel_all(key);
    }
}

/// Copies both ways between two plaintext sockets on the worker's ring until both sides
/// close, one fails, the connection idles out, `closing` completes, or a direction moves
/// bulk; `None` when the ring cannot take the connection.
pub(crate) fn bidirectional<'a, C: Future<Output = ()>>(
    ring: &'a RingCopy,
    down: &'a TcpStream,
    up: &'a TcpStream,
    account: Account,
    idle: Expired<'a>,
    closing: C,
) -> Option<RingRelay<'a, C>> {
    let (key, generation) = ring.open(down.as_raw_fd(), up.as_raw_fd(), account)?;
    Some(RingRelay {
        ring,
        key,
        generation,
        idle,
        closing,
        down,
        up,
    })
}

pin_project_lite::pin_project! {
    /// The future [`bidirectional`] returns; dropping it ends the connection's use of the
    /// ring (its operations are cancelled before the sockets can close).
    pub(crate) struct RingRelay<'a, C> {
        ring: &'a RingCopy,
        key: usize,
        generation: u32,
        idle: Expired<'a>,
        #[pin]
        closing: C,
        down: &'a TcpStream,
        up: &'a TcpStream,
    }

    impl<'a, C> PinnedDrop for RingRelay<'a, C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.ring.release(*this.key, *this.generation);
        }
    }
}

impl<C: Future<Output = ()>> Future for RingRelay<'_, C> {
    type Output = RingEnd;

    fn poll(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<RingEnd> {
        let this = self.project();
        if let Poll::Ready(end) = this
            .ring
            .poll_slot(*this.key, *this.generation, task.waker())
        {
            if let RingEnd::Ended(CopyEnd::Failed { side, .. }) = &end {
                reset(if *side == Side::Downstream {
                    this.up
                } else {
                    this.down
                });
            }
            return Poll::Ready(end);
        }
        if Pin::new(this.idle).poll(task).is_ready() {
            return Poll::Ready(RingEnd::Ended(CopyEnd::Idle));
        }
        if this.closing.poll(task).is_ready() {
            reset(this.down);
            reset(this.up);
            return Poll::Ready(RingEnd::Ended(CopyEnd::Closed));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (key, generation, op) in [(0, 1, RECV), (7, 0xff_ffff, SEND + 1), (1 << 31, 5, 1)] {
            assert_eq!(split(user(key, generation, op)), (key, generation, op));
        }
        // The generation wraps at 24 bits, and the reaper compares only those.
        assert_eq!(split(user(3, 0x0100_0002, RECV)).1, 2);
        assert_ne!(user(0, 0, RECV), sys::ring::CANCEL);
    }

    #[test]
    fn queue_keeps_order_wraps_and_refuses_past_its_bound() {
        let mut q = Queue::default();
        for round in 0..3u16 {
            for i in 0..MAX_QUEUED as u16 {
                assert!(q.push_back(round * 100 + i, 1000 + u32::from(i)));
            }
            assert!(!q.push_back(9, 1), "full at MAX_QUEUED");
            assert!(
                !Queue::default().push_back(1, 1 << 16),
                "a length past a buffer"
            );
            q.sent_front(400);
            assert_eq!(q.front(), Some((round * 100, 400, 1000)));
            q.sent_front(10_000);
            assert_eq!(
                q.front(),
                Some((round * 100, 1000, 1000)),
                "never past the end"
            );
            for i in 0..MAX_QUEUED as u16 {
                let (bid, _, len) = q.pop_front().unwrap();
                assert_eq!((bid, len), (round * 100 + i, 1000 + u32::from(i)));
            }
            assert!(q.is_empty() && q.pop_front().is_none());
            // Leave the head somewhere else for the next round.
            assert!(q.push_back(7, 1));
            q.pop_front();
        }
    }

    #[test]
    fn a_connection_on_the_ring_costs_little() {
        // Every open connection on the ring keeps one slot for its whole life.
        let size = std::mem::size_of::<Slot>();
        eprintln!("ring slot: {size} bytes");
        assert!(size <= 256, "a ring slot is {size} bytes");
    }
}
