//! Upstream HTTP/1.1 connections kept per worker and per endpoint (and the identity that must
//! answer there), so a client that opens a connection per request does not cost one upstream
//! connection, or one mTLS handshake, per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use ringmesh_core::SpiffeId;

/// Which upstream connections are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub workload: usize,
    pub target: SocketAddr,
    pub identity: Option<SpiffeId>,
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// One worker's idle upstream connections.
#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.borrow();
        f.debug_struct("Pool")
            .field("endpoints", &idle.len())
            .field("connections", &idle.values().map(Vec::len).sum::<usize>())
            .finish()
    }
}

impl Pool {
    /// An idle connection to `key` that is still open, ready for a request and younger than
    /// `max_idle`, newest first (the likeliest to be alive). Closed and expired ones are
    /// dropped on the way.
    pub fn take(&self, key: &PoolKey, max_idle: Duration) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        // Busy ones (an exchange still streaming) stay for later.
        list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) <= max_idle);
        let found = list
            .iter()
            .rposition(|c| c.sender.is_ready())
            .map(|i| list.swap_remove(i).sender);
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Keeps `sender` for the next request to `key`, unless `max` are kept already (then it
    /// is dropped, which closes its connection once its exchange is done).
    pub fn put(&self, key: PoolKey, sender: SendRequest<Incoming>, max: usize, max_idle: Duration) {
        if max == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        let now = Instant::now();
        list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) <= max_idle);
        if list.len() < max {
            list.push(Idle { sender, since: now });
        }
    }

    /// Drops every connection idle longer than `max_idle` (the worker's sweep).
    pub fn sweep(&self, max_idle: Duration) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) <= max_idle);
            !list.is_empty()
        });
    }

    /// Closes everything (the drain).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
