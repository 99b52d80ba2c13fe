//! Choosing the I/O driver: io_uring, or epoll when io_uring is denied (Docker's and
//! containerd's default seccomp profiles, `kernel.io_uring_disabled`). monoio's own fusion
//! driver falls back silently; this one says why, and the metrics show which is in use.

use std::future::Future;
use std::io;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring, falling back to epoll (with the reason logged) when io_uring is denied.
    #[default]
    Auto,
    /// io_uring or nothing.
    Uring,
    /// epoll.
    Epoll,
}

/// The driver in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// The outcome of choosing: the driver, and why it is not io_uring when it is not.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kind: DriverKind,
    pub fallback_reason: Option<String>,
}

/// io_uring ring size per worker.
const RING_ENTRIES: u32 = 4096;

/// The ring's setup flags. COOP_TASKRUN: completions are delivered when the worker next
/// enters the kernel (which it does all the time) instead of by an inter-processor interrupt
/// that stops it mid-work; without it, a third of a loaded worker's time went to those
/// interrupts and the request rate was a third (perf/ANALYSIS.md). A worker is the ring's
/// only user, hence SINGLE_ISSUER. DEFER_TASKRUN was measured too: 3% less CPU per request,
/// tail latency within noise, so not worth its starvation caveats under monoio's loop.
fn ring_builder() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_single_issuer();
    b
}

/// Decides the driver, probing io_uring by building a ring.
pub fn resolve(choice: DriverChoice) -> Result<Resolved, String> {
    match choice {
        DriverChoice::Epoll => Ok(Resolved {
            kind: DriverKind::Epoll,
            fallback_reason: None,
        }),
        DriverChoice::Uring => probe_uring()
            .map(|()| Resolved {
                kind: DriverKind::IoUring,
                fallback_reason: None,
            })
            .map_err(|why| {
                format!(
                    "--driver uring, but io_uring is unavailable: {why}; use --driver auto or \
                     --driver epoll, or allow io_uring (seccomp profile, \
                     sysctl kernel.io_uring_disabled=0)"
                )
            }),
        DriverChoice::Auto => Ok(match probe_uring() {
            Ok(()) => Resolved {
                kind: DriverKind::IoUring,
                fallback_reason: None,
            },
            Err(why) => {
                tracing::warn!(reason = %why, "io_uring is unavailable; falling back to epoll");
                Resolved {
                    kind: DriverKind::Epoll,
                    fallback_reason: Some(why),
                }
            }
        }),
    }
}

fn probe_uring() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && v.trim() == "2"
    {
        return Err("sysctl kernel.io_uring_disabled=2".into());
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(ring_builder())
        .build()
        .map(drop)
        .map_err(|e| format!("io_uring_setup: {e}"))
}

/// Runs `f`'s future to completion on a fresh runtime of the given driver, on this thread.
pub(crate) fn block_on<F, Fut>(kind: DriverKind, f: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match kind {
        DriverKind::IoUring => {
            let mut rt = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .uring_builder(ring_builder())
                .enable_timer()
                .build()?;
            Ok(rt.block_on(f()))
        }
        DriverKind::Epoll => {
            let mut rt = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(rt.block_on(f()))
        }
    }
}
