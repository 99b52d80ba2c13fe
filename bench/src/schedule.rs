//! Open-loop timing, as pure arithmetic: when each request of each connection is due.
//!
//! Latency is measured from the time a request was *due*, not from when it was finally sent:
//! a stalled proxy delays the sends behind the stall, and those delays are counted (the
//! "coordinated omission" correction of wrk2 and HdrHistogram). Time is passed in, in
//! nanoseconds since the run began.

/// One connection's share of a fixed arrival rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Nanoseconds between this connection's requests.
    interval_ns: u64,
    /// When this connection's first request is due; connections are staggered across one
    /// interval so that N connections do not fire in bursts of N.
    offset_ns: u64,
}

impl Schedule {
    /// The schedule of connection `index` of `connections` sharing `rate` requests/second.
    pub fn new(rate: u64, connections: u64, index: u64) -> Self {
        let rate = rate.max(1);
        let connections = connections.max(1);
        // Each connection sends rate/connections per second.
        let interval_ns = (1_000_000_000u128 * u128::from(connections) / u128::from(rate)) as u64;
        let interval_ns = interval_ns.max(1);
        let offset_ns = interval_ns / connections * (index % connections);
        Self {
            interval_ns,
            offset_ns,
        }
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// When request number `k` (from 0) is due.
    pub fn due(&self, k: u64) -> u64 {
        self.offset_ns + k.saturating_mul(self.interval_ns)
    }
}

/// The latency to record for a request due at `due_ns` whose response completed at `done_ns`:
/// from when it was due, however late it was sent.
pub fn corrected_latency(due_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(due_ns)
}

/// Where a request's latency starts.
///
/// If the previous response on this connection was still outstanding when the request fell
/// due, the target held the send back: count from the due time (the coordinated-omission
/// correction). If the connection was idle at the due time, any lateness is only our own
/// timer's (monoio's timer wheel ticks in milliseconds), which the target had no part in:
/// count from the actual send, so timer jitter is not charged to the contender.
pub fn latency_start(due_ns: u64, prev_done_ns: u64, sent_ns: u64) -> u64 {
    if prev_done_ns > due_ns {
        due_ns
    } else {
        sent_ns.max(due_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_shared_evenly() {
        // 5,000 req/s over 32 connections: each sends every 6.4 ms.
        let s = Schedule::new(5_000, 32, 0);
        assert_eq!(s.interval_ns(), 6_400_000);
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(10), 64_000_000);
    }

    #[test]
    fn connections_are_staggered_within_one_interval() {
        let dues: Vec<u64> = (0..4).map(|i| Schedule::new(1_000, 4, i).due(0)).collect();
        assert_eq!(dues, [0, 1_000_000, 2_000_000, 3_000_000]);
        let all: Vec<u64> = (0..4)
            .flat_map(|i| (0..3).map(move |k| Schedule::new(1_000, 4, i).due(k)))
            .collect();
        // Over the run the arrivals are exactly 1 ms apart.
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[1] - w[0] == 1_000_000),
            "{sorted:?}"
        );
    }

    #[test]
    fn a_stall_is_charged_to_every_request_behind_it() {
        // 1 ms interval; the server stalls 50 ms on request 0, then answers in 0.1 ms.
        let s = Schedule::new(1_000, 1, 0);
        let mut now = 0;
        let mut lat = Vec::new();
        for k in 0..5 {
            let due = s.due(k);
            let send = now.max(due);
            let done = send + if k == 0 { 50_000_000 } else { 100_000 };
            lat.push(corrected_latency(due, done));
            now = done;
        }
        // Sent late, each still counts from when it was due: 50 ms, ~49 ms, ~48 ms, ...
        assert_eq!(lat[0], 50_000_000);
        assert_eq!(lat[1], 50_000_000 + 100_000 - 1_000_000);
        assert!(lat.windows(2).all(|w| w[1] < w[0]));
        assert!(
            lat[4] > 45_000_000,
            "a naive measurement would say 0.1 ms: {lat:?}"
        );
    }

    #[test]
    fn timer_lateness_is_not_charged_but_backpressure_is() {
        // Idle connection, timer woke 700 µs late: count from the send.
        assert_eq!(latency_start(1_000_000, 500_000, 1_700_000), 1_700_000);
        // Previous response still outstanding at the due time: count from due.
        assert_eq!(latency_start(1_000_000, 3_000_000, 3_000_000), 1_000_000);
        // Never earlier than due.
        assert_eq!(latency_start(1_000_000, 0, 900_000), 1_000_000);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        assert_eq!(Schedule::new(0, 0, 5).due(0), 0);
        assert!(Schedule::new(u64::MAX, 1, 0).interval_ns() >= 1);
        assert_eq!(corrected_latency(10, 5), 0);
    }
}
