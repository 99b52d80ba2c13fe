//! Every syscall the data plane makes outside the runtime, through socket2 and nix; the only
//! `unsafe` code in this crate is here: the fd borrow and the socket options below that
//! neither library offers, and the worker's own ring in [`ring`].
//!
//! Readiness comes from the runtime (an io_uring poll or epoll); the bytes then move with
//! non-blocking `splice(2)`, `recv(2)` and `send(2)` here. io_uring's own splice op would park
//! a kernel worker thread per pending splice (see DESIGN.md), so it is not used. The worker's
//! own ring, for the plaintext copy of small messages, is in [`ring`].

use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{MsgFlags, SockaddrIn, SockaddrIn6};
use socket2::SockRef;

pub mod ring;

fn io(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A borrowed view of an fd that a monoio object owns, for socket2 (`SockRef::from(&..)`)
/// and nix calls that take `AsFd`.
#[derive(Debug, Clone, Copy)]
pub struct FdRef<'a> {
    fd: RawFd,
    _owner: PhantomData<&'a ()>,
}

pub fn fd_ref<T: AsRawFd>(owner: &T) -> FdRef<'_> {
    FdRef {
        fd: owner.as_raw_fd(),
        _owner: PhantomData,
    }
}

impl AsFd for FdRef<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the `FdRef` borrows the object that owns the fd, so the fd stays open for
        // at least as long as this borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl AsRawFd for FdRef<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// The destination a NAT REDIRECT rewrote, from conntrack: `SO_ORIGINAL_DST` for IPv4
/// (also for IPv4 clients of a dual-stack `[::]` socket), `IP6T_SO_ORIGINAL_DST` for IPv6.
pub fn original_dst(fd: FdRef<'_>, ipv6: bool) -> io::Result<SocketAddr> {
    let sock = SockRef::from(&fd);
    let addr = if ipv6 {
        sock.original_dst_ipv6()?
    } else {
        sock.original_dst()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

/// Makes a just-accepted socket non-blocking with one `fcntl(F_SETFL)`, not the usual read
/// then write: accept leaves no other status flag set (no O_APPEND, O_ASYNC, O_DIRECT or
/// O_NOATIME on a socket), so there is nothing to keep.
pub fn set_nonblocking_accepted(fd: FdRef<'_>) -> io::Result<()> {
    nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map(drop)
        .map_err(io)
}

/// Shuts the write side of a socket the caller keeps open (`ring_copy` holds its sockets by
/// number while monoio owns them; `duplex` passes its borrowed ones). A peer that already
/// closed both ways cannot be half-closed, and that is not an error.
/// The most of hyper's read buffer one read offers the socket (it is zeroed first).
const CURSOR_CHUNK: usize = 16 * 1024;

/// Lets `read` fill the unfilled part of hyper's read buffer (at most 16 KiB of it, zeroed
/// first, so the slice is initialized memory), shows `seen` what it wrote, and marks that as
/// filled.
pub fn fill_cursor(
    buf: &mut hyper::rt::ReadBufCursor<'_>,
    read: impl FnOnce(&mut [u8]) -> std::task::Poll<io::Result<usize>>,
    seen: impl FnOnce(&[u8]),
) -> std::task::Poll<io::Result<()>> {
    use std::task::Poll;
    // SAFETY: only initialized bytes are exposed: the part handed on is zeroed here before a
    // `&mut [u8]` is made of it, and nothing uninitialized is written to the cursor.
    let uninit = unsafe { buf.as_mut() };
    let len = uninit.len().min(CURSOR_CHUNK);
    let part = &mut uninit[..len];
    for b in part.iter_mut() {
        b.write(0);
    }
    // SAFETY: every byte of `part` was initialized just above; MaybeUninit<u8> and u8 have
    // the same layout.
    let slice: &mut [u8] = unsafe { &mut *(std::ptr::from_mut(part) as *mut [u8]) };
    match read(&mut *slice) {
        Poll::Ready(Ok(n)) => {
            let n = n.min(len);
            seen(&slice[..n]);
            // SAFETY: `read` wrote `n` bytes (at most `len`) at the start of the unfilled
            // part, all of them initialized.
            unsafe { buf.advance(n) };
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Non-blocking `recv(2)` straight into the unfilled part of hyper's read buffer, showing
/// `seen` what the kernel wrote and marking it as filled: no zeroing first (which
/// `fill_cursor` must do for a slice, and which cost a 16 KiB memset per read).
pub fn recv_cursor(
    fd: RawFd,
    buf: &mut hyper::rt::ReadBufCursor<'_>,
    seen: impl FnOnce(&[u8]),
) -> io::Result<usize> {
    // SAFETY: the kernel is handed the unfilled part as raw memory to write into and writes
    // at most `len` bytes; nothing is read from it here, and no uninitialized byte is exposed.
    let uninit = unsafe { buf.as_mut() };
    let len = uninit.len();
    // SAFETY: `uninit` is valid for writes of `len` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, uninit.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n.unsigned_abs().min(len);
    // SAFETY: `recv` initialized the first `n` bytes of the unfilled part, which stay
    // borrowed from `buf` only for this call.
    seen(unsafe { std::slice::from_raw_parts(uninit.as_ptr().cast::<u8>(), n) });
    // SAFETY: `recv` initialized the first `n` bytes of the unfilled part.
    unsafe { buf.advance(n) };
    Ok(n)
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// A socket's local address (`getsockname`).
pub fn local_addr(fd: FdRef<'_>) -> io::Result<SocketAddr> {
    SockRef::from(&fd).local_addr()?.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "local address is not an IP address",
        )
    })
}

/// A pipe pair for splicing, both ends non-blocking.
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl Pipe {
    /// Opens a pipe and asks for `capacity` bytes (best effort: the per-user pipe limits may
    /// refuse, and the default 64 KiB then serves).
    pub fn new(capacity: usize) -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io)?;
        let size = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
        let _ = nix::fcntl::fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size));
        Ok(Self { read, write })
    }

    /// The capacity the kernel granted.
    pub fn capacity(&self) -> usize {
        nix::fcntl::fcntl(self.write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(65536)
    }
}

/// Non-blocking `splice(2)` of up to `len` bytes; `Ok(0)` from a socket means end of stream.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io)
}

/// Non-blocking `recv(2)` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    nix::sys::socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT).map_err(io)
}

/// Non-blocking `send(2)` of `buf`, without SIGPIPE when the peer is gone.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    nix::sys::socket::send(fd, buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL).map_err(io)
}

/// Receive slots for `recvmmsg(2)`: up to `N` datagrams of up to `size` bytes per call.
pub struct RecvBatch<const N: usize> {
    headers: nix::sys::socket::MultiHeaders<SockaddrIn>,
    bufs: [Box<[u8]>; N],
    got: [(usize, Option<SocketAddr>); N],
}

impl<const N: usize> std::fmt::Debug for RecvBatch<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("slots", &N).finish()
    }
}

impl<const N: usize> RecvBatch<N> {
    pub fn new(size: usize) -> Self {
        Self {
            headers: nix::sys::socket::MultiHeaders::preallocate(N, None),
            bufs: std::array::from_fn(|_| vec![0u8; size].into_boxed_slice()),
            got: [(0, None); N],
        }
    }

    /// Receives up to `max` (at most `N`) IPv4 datagrams without blocking, in one
    /// `recvmmsg(2)`, then calls `f` with each and its source; returns how many. WouldBlock
    /// when none is queued.
    pub fn recv(
        &mut self,
        fd: RawFd,
        max: usize,
        mut f: impl FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        let max = max.clamp(1, N);
        let mut n = 0;
        {
            let mut iovs = self
                .bufs
                .each_mut()
                .map(|b| [std::io::IoSliceMut::new(&mut b[..])]);
            let results = nix::sys::socket::recvmmsg(
                fd,
                &mut self.headers,
                iovs.iter_mut().take(max),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io)?;
            for (slot, r) in self.got.iter_mut().zip(results) {
                let truncated = r.flags.contains(MsgFlags::MSG_TRUNC);
                *slot = (
                    r.bytes,
                    r.address
                        .filter(|_| !truncated)
                        .map(|a| SocketAddr::V4(a.into())),
                );
                n += 1;
            }
        }
        for ((len, from), buf) in self.got.iter().zip(&self.bufs).take(n) {
            if let (Some(from), Some(data)) = (from, buf.get(..*len)) {
                f(data, *from);
            }
        }
        Ok(n)
    }
}

/// Non-blocking `sendto(2)` of one datagram.
pub fn send_to(fd: RawFd, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    match to {
        SocketAddr::V4(a) => nix::sys::socket::sendto(fd, buf, &SockaddrIn::from(a), flags),
        SocketAddr::V6(a) => nix::sys::socket::sendto(fd, buf, &SockaddrIn6::from(a), flags),
    }
    .map_err(io)
}

/// `SO_NO_CHECK`: send IPv4 UDP without a checksum (the kernel then leaves none for the
/// eBPF program that rewrites the datagram to get wrong).
pub fn set_udp_no_check(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_NO_CHECK, &one)
}

/// `setsockopt(2)` with `value` as the option (what socket2 and nix do not offer). `T` must
/// be the type the kernel reads for `level`/`name`.
fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `fd` is a borrowed, open socket; the kernel reads `size_of::<T>()` bytes from
    // `value`, a live `T`. A value that holds pointers (a `sock_fprog`) has them pointing at
    // memory its caller keeps alive for the call; the kernel copies what they point at.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `f` (a socket call) with the calling thread in the network namespace `target`, then
/// puts the thread back in `home`. A socket keeps the namespace it was made in. If the way
/// back fails the thread is in the wrong namespace for good, so that aborts.
pub fn in_netns<T>(
    target: &std::fs::File,
    home: &std::fs::File,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    use nix::sched::{CloneFlags, setns};
    setns(target, CloneFlags::CLONE_NEWNET).map_err(io)?;
    let r = f();
    if let Err(e) = setns(home, CloneFlags::CLONE_NEWNET) {
        eprintln!("uring-proxy: cannot return a worker to its network namespace ({e}); aborting");
        std::process::abort();
    }
    r
}

/// Steers a SO_REUSEPORT group by CPU: a new connection goes to the group's `i`th socket
/// when the CPU that processed its SYN is `cpus[i]` (classic BPF reading `SKF_AD_CPU`; a
/// CPU not in the list, or an index past the group, falls back to the kernel's hash). The
/// group's order is the order its sockets called `listen`, so `cpus[i]` must be the CPU of
/// the worker holding the `i`th listener.
pub fn steer_reuseport_by_cpu(fd: BorrowedFd<'_>, cpus: &[usize]) -> io::Result<()> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    // cBPF programs hold at most 4096 instructions: two per CPU and two more.
    if cpus.len() > 2000 {
        return Err(io::Error::other(format!(
            "{} CPUs: too many for a classic BPF steering program",
            cpus.len()
        )));
    }
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = Vec::with_capacity(2 * cpus.len() + 2);
    prog.push(op(
        BPF_LD_W_ABS,
        0,
        0,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    ));
    for (i, &cpu) in cpus.iter().enumerate() {
        prog.push(op(BPF_JMP_JEQ_K, 0, 1, cpu as u32));
        prog.push(op(BPF_RET_K, 0, 0, i as u32));
    }
    prog.push(op(BPF_RET_K, 0, 0, u32::MAX));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // The kernel copies the program (through `fprog`, which points at `prog`, alive for the
    // call) and validates every instruction: a bad one is EINVAL.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(io)?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io)
}

/// Raises the soft open-files limit to the hard limit (root cannot go past the hard limit
/// without CAP_SYS_RESOURCE); returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io)?;
    }
    Ok(hard.max(soft))
}

/// The effective uid, for messages about privileges.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Every IP address of this network namespace's interfaces.
pub fn local_ips() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io)? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}
