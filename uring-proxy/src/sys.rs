//! Every raw syscall the data plane makes; the only `unsafe` code in this crate.
//!
//! Readiness comes from the runtime (an io_uring poll or epoll); the bytes then move with
//! non-blocking `splice(2)`, `recv(2)` and `send(2)` here. io_uring's own splice op would park
//! a kernel worker thread per pending splice (see DESIGN.md), so it is not used.

use std::io;
use std::marker::PhantomData;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// A borrowed view of an fd that a monoio object owns, usable as `socket2::SockRef::from(&..)`
/// for socket options: `SockRef::from(&fd_ref(&stream)).set_linger(..)`.
#[derive(Debug)]
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

/// The destination a NAT REDIRECT rewrote, from conntrack: `SO_ORIGINAL_DST` for IPv4
/// (also for IPv4 clients of a dual-stack `[::]` socket), `IP6T_SO_ORIGINAL_DST` for IPv6.
pub fn original_dst(fd: RawFd, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        let mut sa = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `sa` is a writable sockaddr_in6 and `len` holds its size, as getsockopt
        // requires; the kernel writes at most `len` bytes.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                libc::IP6T_SO_ORIGINAL_DST,
                sa.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        // SAFETY: zero-initialised and then (partly) filled by the kernel: every bit pattern
        // is a valid sockaddr_in6.
        let sa = unsafe { sa.assume_init() };
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    } else {
        let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as above, for a sockaddr_in.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                sa.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        // SAFETY: zero-initialised and filled by the kernel; any bit pattern is valid.
        let sa = unsafe { sa.assume_init() };
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    }
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
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument; the fd is a pipe we own.
        let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        Ok(Self { read, write })
    }

    /// The capacity the kernel granted.
    pub fn capacity(&self) -> usize {
        // SAFETY: F_GETPIPE_SZ takes no argument; the fd is a pipe we own.
        let n = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        usize::try_from(n).unwrap_or(65536)
    }
}

/// Non-blocking `splice(2)` of up to `len` bytes; `Ok(0)` from a socket means end of stream.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are required for pipes and sockets; the fds are open for the call
    // (the caller holds their owners).
    cvt_size(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// Non-blocking `recv(2)` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// Non-blocking look at what has arrived, leaving it queued (`MSG_PEEK`).
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt_size(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    })
}

/// Non-blocking `send(2)` of `buf`, without SIGPIPE when the peer is gone.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: `set` is a writable cpu_set_t of the size passed; pid 0 is this thread.
    cvt(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), set.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and filled by the kernel.
    let set = unsafe { set.assume_init() };
    // SAFETY: CPU_ISSET only reads the set, for indexes below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (the index is
    // checked against CPU_SETSIZE by the caller's source, sched_getaffinity).
    let set = unsafe {
        libc::CPU_SET(cpu, &mut *set.as_mut_ptr());
        set.assume_init()
    };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    cvt(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// Raises the soft open-files limit to the hard limit (root cannot go past the hard limit
/// without CAP_SYS_RESOURCE); returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// The effective uid, for messages about privileges.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}
