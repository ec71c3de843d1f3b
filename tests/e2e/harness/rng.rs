//! Seeded randomness for the fault tests: a run's choices are replayed from
//! its printed seed.

/// SplitMix64, one stream per (seed, stream index), so that each thread's
/// draws depend on the seed and its index alone.
pub struct Rng(u64);

impl Rng {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(Self::mix(
            seed ^ Self::mix(stream.wrapping_add(Self::GOLDEN)),
        ))
    }

    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GOLDEN);
        Self::mix(self.0)
    }

    /// 0 to 99.
    pub fn percent(&mut self) -> u64 {
        self.next() % 100
    }

    /// 0 to `n - 1`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The seed in the environment variable `var` (decimal or `0x` hex), else
/// `default`.
pub fn seed_from(var: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(var) else {
        return default;
    };
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{var}={v:?} is not a number: {e}"))
}
