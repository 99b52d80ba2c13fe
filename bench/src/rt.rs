//! Runtimes for the generator's and the backends' threads: io_uring, or epoll when io_uring
//! is denied, so the harness runs wherever the proxy does.

use std::future::Future;
use std::io;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Which I/O driver the generator's and backends' threads use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Driver {
    /// io_uring, or epoll when io_uring is denied.
    #[default]
    Auto,
    Uring,
    Epoll,
}

/// Runs the future `f(epoll)` makes on a new runtime on this thread; `epoll` says whether
/// the runtime is epoll (sockets handed to it must then be non-blocking).
pub fn block_on<F, Fut>(driver: Driver, f: F) -> io::Result<Fut::Output>
where
    F: FnOnce(bool) -> Fut,
    Fut: Future,
{
    if driver == Driver::Epoll {
        let mut rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?;
        return Ok(rt.block_on(f(true)));
    }
    // COOP_TASKRUN: completions wait for the thread's next kernel entry instead of
    // interrupting it (see uring-proxy's driver.rs).
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    match RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder(ring)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => Ok(rt.block_on(f(false))),
        Err(e) if driver == Driver::Uring => Err(e),
        Err(_) => {
            let mut rt = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(rt.block_on(f(true)))
        }
    }
}

/// Binds `count` SO_REUSEPORT TCP listeners on `addr`, one per server thread (port 0 picks
/// one port for all of them).
pub fn reuseport_listeners(
    addr: std::net::SocketAddr,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    (0..count.max(1))
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(false)?;
            }
            s.bind(&addr.into())?;
            s.listen(4096)?;
            if addr.port() == 0
                && let Some(bound) = s.local_addr()?.as_socket()
            {
                addr = bound;
            }
            Ok(s.into())
        })
        .collect()
}
