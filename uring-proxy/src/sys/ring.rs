//! The worker's own io_uring, beside monoio's: receives into a provided-buffer ring, sends out
//! of those buffers, and cancellations. `ring_copy` drives it; this module holds
//! its `unsafe` blocks.
//!
//! Submissions carry raw pointers into memory the kernel reads after `push` returns: only
//! send buffers, which are slices of [`BufRing`]'s mapping. The ring owns that mapping and
//! unmaps it only after every operation has completed and the ring itself is closed (see
//! [`Ring`]'s `Drop`), so no pointer the kernel holds can outlive its memory.
//!
//! The ring is set up with COOP_TASKRUN and SINGLE_ISSUER, like monoio's, and with an eventfd
//! registered (plain, not `IORING_REGISTER_EVENTFD_ASYNC`, which never fires for receives
//! completed by a poll wake-up under COOP_TASKRUN). A monoio task reads that eventfd, so the
//! worker sleeps in one place, monoio's `io_uring_enter`, and wakes for either ring.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// The user data of cancellation requests (their completions carry nothing to act on).
pub const CANCEL: u64 = u64::MAX;

/// One completion: user data, result, flags.
pub type Completion = (u64, i32, u32);

/// A worker's own ring and its provided buffers.
pub struct Ring {
    /// Declared first so that it is closed before `bufs` is unmapped.
    ring: IoUring,
    bufs: BufRing,
    group: u16,
    eventfd: OwnedFd,
    /// Operations queued or in flight whose completion has not been reaped (every operation
    /// here is one-shot: one completion each).
    outstanding: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("buffers", &self.bufs.count)
            .field("buffer_size", &self.bufs.size)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl Ring {
    /// A ring of `entries` submissions with `buffers` provided buffers of `size` bytes as
    /// buffer group `group`.
    pub fn new(entries: u32, buffers: u16, size: u32, group: u16) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)?;
        let bufs = BufRing::new(buffers, size)?;
        // SAFETY: the ring memory is `bufs.ring`, `bufs.count` entries, page aligned, and it
        // stays mapped until after the ring is closed (field order of `Ring`).
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.ring as u64, bufs.count, group)?;
        }
        // Blocking: monoio's read of it is an io_uring read, which waits by poll (eventfd
        // supports non-blocking reads internally) rather than failing with EAGAIN.
        // SAFETY: eventfd(2) has no memory arguments; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a new descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Self {
            ring,
            bufs,
            group,
            eventfd,
            outstanding: 0,
        })
    }

    /// A second descriptor of the eventfd signalled for every completion, for monoio to read.
    pub fn eventfd(&self) -> io::Result<File> {
        Ok(File::from(self.eventfd.try_clone()?))
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built below points only at memory that outlives its
            // operation (send buffers in `self.bufs`, see the module comment), or at nothing.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.outstanding += 1;
                return Ok(());
            }
            // Full: hand what is queued to the kernel and try again.
            self.submit()?;
        }
    }

    /// One receive on `fd` into a provided buffer the kernel picks when bytes arrive.
    pub fn recv(&mut self, fd: RawFd, user: u64) -> io::Result<()> {
        let sqe = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.bufs.size)
            .buf_group(self.group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user);
        self.push(&sqe)
    }

    /// Sends `len` bytes at offset `off` of provided buffer `bid` to `fd`.
    pub fn send(&mut self, fd: RawFd, bid: u16, off: u32, len: u32, user: u64) -> io::Result<()> {
        let ptr = self.bufs.ptr(bid, off, len);
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user);
        self.push(&sqe)
    }

    /// Cancels every operation on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd) -> io::Result<()> {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(CANCEL);
        self.push(&sqe)
    }

    /// Hands what is queued to the kernel, without waiting; no system call when nothing is.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the completions that are ready. A buffer a completion names is the caller's
    /// until it gives it back with [`provide`](Self::provide).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for c in self.ring.completion() {
            self.outstanding = self.outstanding.saturating_sub(1);
            if let Some(bid) = cqueue::buffer_select(c.flags()) {
                self.bufs.set_held(bid, true);
            }
            out.push((c.user_data(), c.result(), c.flags()));
        }
    }

    /// Hands buffer `bid` back to the kernel; it must be one a completion handed over.
    pub fn provide(&mut self, bid: u16) {
        assert!(self.bufs.held(bid), "buffer {bid} given back twice");
        self.bufs.set_held(bid, false);
        self.bufs.provide(bid);
    }

    /// Bytes `off..off + len` of buffer `bid`, which a completion handed over and which has
    /// not been given back.
    pub fn bytes(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        assert!(self.bufs.held(bid), "buffer {bid} is the kernel's");
        let p = self.bufs.ptr(bid, off, len);
        // SAFETY: the range lies in the mapping (`ptr` checks it) and in one buffer that the
        // kernel handed to us and that has not been provided again (checked above), so the
        // kernel does not write it; `provide`, the only way to hand it back, needs `&mut
        // self`, which this borrow excludes. Sends read it too, which is no conflict.
        unsafe { std::slice::from_raw_parts(p, len as usize) }
    }
}

impl Drop for Ring {
    /// Cancels everything and waits (boundedly) for the kernel to finish with the buffers
    /// before they are unmapped.
    fn drop(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancellation points at no memory.
        if unsafe { self.ring.submission().push(&any) }.is_ok() {
            self.outstanding += 1;
        }
        let mut sink = Vec::new();
        for _ in 0..100 {
            if self.outstanding == 0 {
                return;
            }
            let wait = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&wait);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            sink.clear();
            self.reap(&mut sink);
        }
        // Still busy after a second: leak the buffers rather than unmap memory the kernel
        // may write.
        tracing::warn!(
            outstanding = self.outstanding,
            "io_uring operations did not finish; leaking the copy buffers"
        );
        self.bufs.leak = true;
    }
}

/// The buffer a completion used, if it used one.
pub fn buffer_id(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}

/// A provided-buffer ring: `count` buffers of `size` bytes, and the ring of entries through
/// which they are handed (back) to the kernel. Mapped without MAP_POPULATE: a page costs
/// memory only once a receive has written to it.
struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    mem: *mut u8,
    mem_len: usize,
    count: u16,
    size: u32,
    tail: u16,
    leak: bool,
    /// One bit per buffer: handed to user space by a completion, not yet provided again.
    held: Vec<u64>,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provided buffers: a power of two",
            ));
        }
        let ring_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let mem_len = usize::from(count) * size as usize;
        let ring = map(ring_len)?.cast::<types::BufRingEntry>();
        let mem = match map(mem_len) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: mapped just above with this length; nothing refers to it.
                unsafe { libc::munmap(ring.cast(), ring_len) };
                return Err(e);
            }
        };
        let mut b = Self {
            ring,
            ring_len,
            mem,
            mem_len,
            count,
            size,
            tail: 0,
            leak: false,
            held: vec![0; usize::from(count).div_ceil(64)],
        };
        for bid in 0..count {
            b.provide(bid);
        }
        Ok(b)
    }

    fn held(&self, bid: u16) -> bool {
        let i = usize::from(bid);
        bid < self.count && self.held[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_held(&mut self, bid: u16, held: bool) {
        assert!(bid < self.count, "buffer {bid} is not in the pool");
        let i = usize::from(bid);
        if held {
            self.held[i / 64] |= 1 << (i % 64);
        } else {
            self.held[i / 64] &= !(1 << (i % 64));
        }
    }

    fn provide(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer {bid} is not in the pool");
        let mask = self.count - 1;
        let addr = self.ptr(bid, 0, self.size) as u64;
        // SAFETY: `tail & mask` < `count`, an entry of the mapped ring; only this thread
        // writes entries, and the kernel reads an entry only once the tail covers it.
        let entry = unsafe { &mut *self.ring.add(usize::from(self.tail & mask)) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the u16 in the ring's first entry (`BufRingEntry::tail`), which
        // is mapped and aligned; the kernel reads it, so it is published with a release
        // store after the entry above is written.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The address of `len` bytes at `off` in buffer `bid`, checked to lie in that buffer.
    fn ptr(&self, bid: u16, off: u32, len: u32) -> *const u8 {
        assert!(
            bid < self.count && u64::from(off) + u64::from(len) <= u64::from(self.size),
            "buffer {bid} range {off}+{len} is outside its buffer"
        );
        let at = usize::from(bid) * self.size as usize + off as usize;
        // SAFETY: `at` is within the mapping (checked above).
        unsafe { self.mem.add(at) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: both were mapped by `map` with these lengths; the ring that used them is
        // closed (it is dropped first) and nothing else points into them.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.mem.cast(), self.mem_len);
        }
    }
}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}
