//! The one linear congruential generator behind every deterministic pseudo-random input:
//! kernel checks, dummy weights, random prompts and tests (the same seed gives the same
//! values on every machine). Sampling has its own counter-based generator (sampling/rng.rs).

/// Knuth's MMIX constants.
const MUL: u64 = 6364136223846793005;
const INC: u64 = 1442695040888963407;

/// One step of the generator: the next state.
#[inline]
pub fn lcg_next(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(MUL).wrapping_add(INC);
    *state
}

/// Deterministic pseudo-random values in [-1, 1) (kernel checks, benches and tests).
pub fn lcg_uniform(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| ((lcg_next(seed) >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
        .collect()
}
