//! The ring and its provided buffers: every `unsafe` block of `ring-ceiling`.
//!
//! Submissions carry raw pointers into memory the kernel reads or writes after `push`
//! returns: send buffers (slices of [`BufRing`]'s memory, which lives as long as the ring) and
//! connect addresses (boxed in the connection, kept until its connect completes). The safe
//! methods here take those as arguments whose owners outlive the operation.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// One thread's ring.
pub struct Ring {
    ring: IoUring,
}

impl Ring {
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_defer_taskrun()
            .build(entries)?;
        Ok(Self { ring })
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by the methods below points only at memory that
            // outlives its operation (see the module comment), or at nothing.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            // Full: hand what is queued to the kernel and try again.
            self.ring.submit()?;
        }
    }

    pub fn accept_multi(&mut self, listener: RawFd, user: u64) -> io::Result<()> {
        self.push(
            &opcode::AcceptMulti::new(types::Fd(listener))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user),
        )
    }

    /// `addr` must stay where it is until the connect completes (it is boxed in the
    /// connection, which is freed only after every operation on it has completed).
    pub fn connect(&mut self, fd: RawFd, addr: &libc::sockaddr_in, user: u64) -> io::Result<()> {
        self.push(
            &opcode::Connect::new(
                types::Fd(fd),
                (addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
            .build()
            .user_data(user),
        )
    }

    pub fn recv_multi(&mut self, fd: RawFd, group: u16, user: u64) -> io::Result<()> {
        self.push(
            &opcode::RecvMulti::new(types::Fd(fd), group)
                .build()
                .user_data(user),
        )
    }

    /// Sends `len` bytes from offset `off` of provided buffer `bid`.
    pub fn send(
        &mut self,
        fd: RawFd,
        bufs: &BufRing,
        bid: u16,
        off: u32,
        len: u32,
        user: u64,
    ) -> io::Result<()> {
        let ptr = bufs.ptr(bid, off);
        self.push(
            &opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user),
        )
    }

    pub fn shutdown_write(&mut self, fd: RawFd, user: u64) -> io::Result<()> {
        self.push(
            &opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
                .build()
                .user_data(user),
        )
    }

    /// Submits what is queued and waits for at least one completion.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the completions that are ready: (user data, result, flags).
    pub fn drain(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    /// Registers `bufs` as buffer group `group` of this ring.
    pub fn register(&mut self, bufs: &BufRing, group: u16) -> io::Result<()> {
        // SAFETY: the ring memory is `bufs.ring`, `bufs.count` entries, page aligned; the
        // caller keeps `bufs` alive as long as the ring (both live in one worker's frame and
        // the ring is dropped first).
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring(bufs.ring as u64, bufs.count, group)
        }
    }
}

/// The buffer a completion used, if it used one.
pub fn buffer_id(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}

/// Whether a multishot operation stays armed after this completion.
pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}

/// A provided-buffer ring: `count` buffers of `size` bytes, and the ring of entries through
/// which they are handed (back) to the kernel.
pub struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    mem: *mut u8,
    mem_len: usize,
    count: u16,
    size: u32,
    tail: u16,
}

impl BufRing {
    pub fn new(count: u16, size: u32) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer ring entries: a power of two"
        );
        let ring_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let mem_len = usize::from(count) * size as usize;
        let ring = map(ring_len)?.cast::<types::BufRingEntry>();
        let mem = map(mem_len)?;
        let mut b = Self {
            ring,
            ring_len,
            mem,
            mem_len,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            b.provide(bid);
        }
        Ok(b)
    }

    /// Hands buffer `bid` (back) to the kernel.
    pub fn provide(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `tail & mask` < `count`, an entry of the mapped ring; only this thread
        // writes entries, and the kernel reads an entry only once the tail covers it.
        let entry = unsafe { &mut *self.ring.add(usize::from(self.tail & mask)) };
        entry.set_addr(self.ptr(bid, 0) as u64);
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

    fn ptr(&self, bid: u16, off: u32) -> *const u8 {
        let at = usize::from(bid) * self.size as usize + off as usize;
        assert!(
            at <= self.mem_len,
            "buffer {bid} offset {off} is outside the pool"
        );
        // SAFETY: `at` is within the mapping (checked above).
        unsafe { self.mem.add(at) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were mapped by `map` with these lengths and are not used after this.
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
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// A new TCP socket for an upstream, with TCP_NODELAY.
pub fn tcp_socket() -> io::Result<RawFd> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM.cloexec(), None)?;
    s.set_nodelay(true)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(s))
}

/// The destination a NAT REDIRECT rewrote.
pub fn original_dst(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: `fd` is an open socket the caller owns for the duration of the call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let addr = socket2::SockRef::from(&sock).original_dst()?;
    addr.as_socket_ipv4()
        .ok_or_else(|| io::Error::other("not an IPv4 original destination"))
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and no operation on it is in flight.
    unsafe {
        libc::close(fd);
    }
}

/// Both directions off now (used to unwind a connection on error: pending receives end).
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown on an fd the caller owns; it touches no memory.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

pub fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}
