//! Load balancing as pure functions: the caller owns the turn counter (one per worker and
//! service, so no state is shared between cores) and passes it in.

use std::num::NonZeroU32;

/// Weighted round robin over a fixed list of endpoints.
///
/// Turn `t` picks the endpoint whose cumulative weight range holds `t mod total`, so over any
/// `total` consecutive turns each endpoint is picked exactly `weight` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedRoundRobin {
    /// Running sums of the weights; the last one is the total.
    cumulative: Box<[u64]>,
}

impl WeightedRoundRobin {
    pub fn new(weights: impl IntoIterator<Item = NonZeroU32>) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w.get());
                sum
            })
            .collect();
        Self { cumulative }
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// The endpoint index for this turn, or `None` when there are no endpoints.
    pub fn pick(&self, turn: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let t = turn % total;
        Some(self.cumulative.partition_point(|&c| c <= t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(w: &[u32]) -> Vec<NonZeroU32> {
        w.iter().map(|&w| NonZeroU32::new(w).unwrap()).collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = WeightedRoundRobin::new(nz(&[1, 1, 1]));
        let picks: Vec<_> = (0..6).map(|t| rr.pick(t).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_honoured_per_cycle() {
        let rr = WeightedRoundRobin::new(nz(&[3, 1, 2]));
        let mut counts = [0; 3];
        for t in 100..106 {
            counts[rr.pick(t).unwrap()] += 1;
        }
        assert_eq!(counts, [3, 1, 2]);
    }

    #[test]
    fn empty_has_no_pick_and_wraps_safely() {
        assert_eq!(WeightedRoundRobin::new(nz(&[])).pick(7), None);
        let rr = WeightedRoundRobin::new(nz(&[2, 5]));
        assert!(rr.pick(u64::MAX).unwrap() < 2);
    }
}
