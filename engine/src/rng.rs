//! The engine's only source of randomness: a small seeded generator (SplitMix64), so a
//! run is reproducible from its seed (TigerBeetle's choice over a global RNG).

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and statistically good enough to
/// spread election timeouts; not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi)`.
    ///
    /// # Panics
    /// If `lo >= hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "Rng::range: empty range [{lo}, {hi})");
        // Lemire's multiply-shift; the bias for spans far below 2^64 is negligible here.
        lo + ((u128::from(self.next_u64()) * u128::from(hi - lo)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_range_is_respected() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.range(10, 20);
            assert_eq!(x, b.range(10, 20));
            assert!((10..20).contains(&x));
        }
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[(a.range(10, 20) - 10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "every value in a small range shows up");
    }
}
