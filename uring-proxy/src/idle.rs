//! Idle timeouts without a timer per connection.
//!
//! A monoio timer future is 640 bytes; an idle connection should cost little more than its
//! two sockets. So each connection keeps a small shared [`Activity`] record (last byte moved,
//! its timeout, a waker), and one sweeper task per worker checks them all every tick and
//! wakes the expired ones. A tick is an eighth of the configured idle timeout (5 ms to 1 s),
//! so a connection is closed between 1 and 1.125 timeouts after its last byte.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// One connection's activity. Times are milliseconds since the tracker's epoch, to keep the
/// record small: there is one per open connection.
#[derive(Debug)]
pub(crate) struct Activity {
    last_ms: Cell<u64>,
    timeout_ms: u64,
    expired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Milliseconds from `epoch` to `t` (the activity records' clock).
fn ms_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// The worker's registry of connections' activity.
#[derive(Debug)]
pub(crate) struct IdleTracker {
    epoch: Instant,
    entries: RefCell<Slab<Rc<Activity>>>,
}

impl Default for IdleTracker {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            entries: RefCell::default(),
        }
    }
}

impl IdleTracker {
    fn ms(&self, t: Instant) -> u64 {
        ms_since(self.epoch, t)
    }

    /// Registers a connection; it is unregistered when the handle drops.
    pub(crate) fn register(&self, timeout: Duration) -> IdleHandle<'_> {
        let activity = Rc::new(Activity {
            last_ms: Cell::new(self.ms(Instant::now())),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            expired: Cell::new(false),
            waker: RefCell::new(None),
        });
        let key = self.entries.borrow_mut().insert(activity.clone());
        IdleHandle {
            tracker: self,
            key,
            activity,
        }
    }

    /// Marks and wakes every connection idle for its timeout as of `now`.
    pub(crate) fn sweep(&self, now: Instant) {
        let now = self.ms(now);
        let mut woken = Vec::new();
        for (_, a) in self.entries.borrow().iter() {
            if !a.expired.get() && now.saturating_sub(a.last_ms.get()) >= a.timeout_ms {
                a.expired.set(true);
                if let Some(w) = a.waker.borrow_mut().take() {
                    woken.push(w);
                }
            }
        }
        for w in woken {
            w.wake();
        }
    }

    /// The sweep period for an idle timeout.
    pub(crate) fn tick(idle: Duration) -> Duration {
        (idle / 8).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }
}

/// A connection's registration.
#[derive(Debug)]
pub(crate) struct IdleHandle<'a> {
    tracker: &'a IdleTracker,
    key: usize,
    activity: Rc<Activity>,
}

impl IdleHandle<'_> {
    /// Records that bytes moved now.
    #[inline]
    pub(crate) fn touch(&self) {
        self.activity.last_ms.set(self.tracker.ms(Instant::now()));
    }

    /// A copy of the touch for code that outlives no borrow of the tracker (the owned ring's
    /// completions, reaped by another task).
    pub(crate) fn toucher(&self) -> Toucher {
        Toucher {
            epoch: self.tracker.epoch,
            activity: self.activity.clone(),
        }
    }

    /// Completes once the connection has been idle for its timeout.
    pub(crate) fn expired(&self) -> Expired<'_> {
        Expired {
            activity: &self.activity,
        }
    }
}

/// Records activity on one connection, like [`IdleHandle::touch`].
#[derive(Debug)]
pub(crate) struct Toucher {
    epoch: Instant,
    activity: Rc<Activity>,
}

impl Toucher {
    #[inline]
    pub(crate) fn touch(&self) {
        self.activity
            .last_ms
            .set(ms_since(self.epoch, Instant::now()));
    }
}

impl Drop for IdleHandle<'_> {
    fn drop(&mut self) {
        self.tracker.entries.borrow_mut().try_remove(self.key);
    }
}

#[derive(Debug)]
pub(crate) struct Expired<'a> {
    activity: &'a Activity,
}

impl Future for Expired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.activity.expired.get() {
            return Poll::Ready(());
        }
        let mut slot = self.activity.waker.borrow_mut();
        match slot.as_mut() {
            Some(w) => w.clone_from(cx.waker()),
            None => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_expires_only_idle_connections() {
        let t = IdleTracker::default();
        let quiet = t.register(Duration::from_millis(100));
        let busy = t.register(Duration::from_millis(100));
        let start = t.epoch;
        busy.activity
            .last_ms
            .set(t.ms(start + Duration::from_millis(80)));
        t.sweep(start + Duration::from_millis(99));
        assert!(!quiet.activity.expired.get());
        t.sweep(start + Duration::from_millis(150));
        assert!(quiet.activity.expired.get());
        assert!(!busy.activity.expired.get(), "moved a byte 70 ms ago");
        t.sweep(start + Duration::from_millis(200));
        assert!(busy.activity.expired.get());
        drop(quiet);
        drop(busy);
        assert!(t.entries.borrow().is_empty());
    }

    #[test]
    fn tick_is_an_eighth_within_bounds() {
        assert_eq!(
            IdleTracker::tick(Duration::from_secs(1)),
            Duration::from_millis(125)
        );
        assert_eq!(
            IdleTracker::tick(Duration::from_millis(1)),
            Duration::from_millis(5)
        );
        assert_eq!(
            IdleTracker::tick(Duration::from_secs(3600)),
            Duration::from_secs(1)
        );
    }
}
