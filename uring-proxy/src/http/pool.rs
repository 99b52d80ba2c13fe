//! Upstream HTTP connections kept per worker and per endpoint (and the identity that must
//! answer there), so a client that opens a connection per request does not cost one upstream
//! connection, or one mTLS handshake, per request. An HTTP/1.1 connection carries one
//! exchange at a time and is taken out while it does; an HTTP/2 one multiplexes, so it stays
//! in the pool and every request to its endpoint shares it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use ringmesh_core::SpiffeId;

use super::Wire;

/// Which upstream connections are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub workload: usize,
    pub target: SocketAddr,
    pub identity: Option<SpiffeId>,
    pub wire: Wire,
}

/// One upstream connection's request handle.
pub(crate) enum Sender {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

impl Sender {
    /// Sends `req`; a connection that closed before it went out gives it back.
    pub async fn send(
        &mut self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Incoming>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Free for another request now.
    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }
}

struct Idle {
    sender: Sender,
    /// Since it last finished (HTTP/1) or was last handed out (HTTP/2).
    since: Instant,
}

impl Idle {
    fn alive(&self, now: Instant, max_idle: Duration) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) <= max_idle
    }
}

/// One worker's upstream connections.
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
    /// A connection to `key` that is still open, ready for a request and used within
    /// `max_idle`, newest first (the likeliest to be alive). Closed and expired ones are
    /// dropped on the way. An HTTP/2 connection is shared, not taken.
    pub fn take(&self, key: &PoolKey, max_idle: Duration) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        // Busy HTTP/1 ones (an exchange still streaming) stay for later.
        list.retain(|c| c.alive(now, max_idle));
        let found = list.iter().rposition(|c| c.sender.is_ready());
        let found = match (found, key.wire) {
            (Some(i), Wire::H2) => {
                let c = &mut list[i];
                c.since = now;
                match &c.sender {
                    Sender::H2(s) => Some(Sender::H2(s.clone())),
                    Sender::H1(_) => None,
                }
            }
            (Some(i), Wire::H1) => Some(list.swap_remove(i).sender),
            (None, _) => None,
        };
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Keeps `sender` for the next request to `key`, unless `max` are kept already (then it
    /// is dropped, which closes its connection once its exchange is done). An HTTP/2
    /// connection is put once, when new (`take` leaves it in); a second one to the same
    /// endpoint (two requests that both found none) is kept while there is room.
    pub fn put(&self, key: PoolKey, sender: Sender, max: usize) {
        if max == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        let now = Instant::now();
        list.retain(|c| !c.sender.is_closed());
        if list.len() < max {
            list.push(Idle { sender, since: now });
        }
    }

    /// Drops every connection idle longer than `max_idle` (the worker's sweep).
    pub fn sweep(&self, max_idle: Duration) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| c.alive(now, max_idle));
            !list.is_empty()
        });
    }

    /// Closes everything (the drain).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
