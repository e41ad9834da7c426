//! Redial delays: capped exponential backoff with jitter, so that after a partition the
//! nodes of a cluster do not all redial in lockstep, and a dead peer costs a bounded
//! number of connection attempts per second.

use std::time::Duration;

/// First redial delay after a failure. Short: a peer that restarts should be back within
/// a heartbeat interval or two.
pub const REDIAL_BACKOFF_INITIAL_MS: u64 = 50;
/// Longest redial delay. Below a typical election timeout (1 s in OVS, 10 ticks of
/// 100 ms in etcd) times a few, so a healed partition is noticed before an operator is.
pub const REDIAL_BACKOFF_MAX_MS: u64 = 2_000;

const _: () = assert!(REDIAL_BACKOFF_INITIAL_MS > 0);
const _: () = assert!(REDIAL_BACKOFF_INITIAL_MS <= REDIAL_BACKOFF_MAX_MS);

/// Backoff state for one peer. "Equal jitter": each delay is uniform in
/// [ceiling / 2, ceiling], and the ceiling doubles up to the cap; a success resets it.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    ceiling_ms: u64,
    rng: u64,
}

impl Backoff {
    /// A backoff between `initial_ms` and `max_ms`, jittered from `seed` (mix in the node
    /// and peer ids so peers differ).
    ///
    /// # Panics
    /// If `initial_ms` is 0 or above `max_ms`.
    pub fn new(initial_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        assert!(
            initial_ms > 0 && initial_ms <= max_ms,
            "backoff bounds must satisfy 0 < initial ({initial_ms}) <= max ({max_ms})"
        );
        Backoff { initial_ms, max_ms, ceiling_ms: initial_ms, rng: seed }
    }

    /// The delay before the next attempt; grows the ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.ceiling_ms / 2;
        let jitter = self.next_random() % (self.ceiling_ms - half + 1);
        self.ceiling_ms = (self.ceiling_ms.saturating_mul(2)).min(self.max_ms);
        Duration::from_millis(half + jitter)
    }

    /// Back to the initial delay after a connection succeeded.
    pub fn reset(&mut self) {
        self.ceiling_ms = self.initial_ms;
    }

    /// splitmix64: tiny, seedable, and plenty for spreading redials.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::new(50, 2_000, 7);
        let mut ceiling = 50u64;
        for _ in 0..20 {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= ceiling / 2 && d <= ceiling, "{d} outside [{}, {ceiling}]", ceiling / 2);
            ceiling = (ceiling * 2).min(2_000);
        }
        b.reset();
        assert!(b.next_delay().as_millis() <= 50);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let seq = |seed| {
            let mut b = Backoff::new(1_000, 1_000, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(seq(1), seq(2));
        assert_eq!(seq(3), seq(3), "deterministic for a seed");
    }
}
