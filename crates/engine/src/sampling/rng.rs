//! Per-request random draws that depend only on (seed, position): the same seed gives the
//! same tokens alone, in any batch, and after a preemption.

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) for the `step`-th generated token of a request seeded `seed`.
pub fn draw_uniform(seed: u64, step: u64) -> f64 {
    let x =
        mix(mix(seed ^ 0x9e37_79b9_7f4a_7c15)
            .wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    // 53 random bits into the mantissa.
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_and_deterministic() {
        assert_eq!(draw_uniform(7, 3), draw_uniform(7, 3));
        assert_ne!(draw_uniform(7, 3), draw_uniform(7, 4));
        assert_ne!(draw_uniform(7, 3), draw_uniform(8, 3));
        let n = 20_000;
        let mean: f64 = (0..n).map(|i| draw_uniform(1, i)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&draw_uniform(2, i))));
    }
}
