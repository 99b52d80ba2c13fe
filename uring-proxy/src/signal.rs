//! A one-shot, worker-local signal (drain started, drain deadline passed) that any number of
//! tasks on the same worker can await. No lock and no atomic: it never leaves its thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Debug, Default)]
pub(crate) struct LocalSignal {
    fired: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl LocalSignal {
    /// Fires the signal and wakes every waiter; later waits complete at once.
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.waiters.borrow_mut().drain().collect();
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            key: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Wait<'a> {
    signal: &'a LocalSignal,
    key: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.key.and_then(|k| waiters.get_mut(k)) {
            Some(w) => w.clone_from(cx.waker()),
            None => {
                let key = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        // Once fired the slab is empty and never refilled, so a stale key removes nothing.
        if let Some(k) = self.key {
            self.signal.waiters.borrow_mut().try_remove(k);
        }
    }
}
