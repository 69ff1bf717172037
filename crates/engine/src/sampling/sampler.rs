//! From one row of logits to one token, as vLLM's sampler does it: logit bias, the
//! min_tokens mask, repetition / frequency / presence penalties, then greedy or
//! temperature with top-k, top-p and min-p, drawn with the request's own seeded stream.

use super::logits::argmax;
use super::params::SamplingParams;
use super::rng::draw_uniform;
use super::select::{key_id, order_key};

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
}

/// Logit bias, then penalties (OpenAI/vLLM definitions):
/// - repetition (over prompt and output tokens): positive logits divided by it, negative ones multiplied;
/// - frequency and presence (over output tokens): `logit -= frequency * count + presence * [count > 0]`.
pub fn apply_penalties_and_bias(
    logits: &mut [f32],
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
) {
    for &(t, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                if !*s {
                    *s = true;
                    let l = &mut logits[t as usize];
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// Picks the next token. `logits` is processed in place. `stop_ids` are masked while fewer
/// than `min_tokens` have been generated. `seed` and `output.len()` alone decide the draw.
pub fn sample_token(
    logits: &mut [f32],
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    stop_ids: &[u32],
    seed: u64,
) -> Sampled {
    apply_penalties_and_bias(logits, p, prompt, output);
    if output.len() < p.min_tokens {
        for &t in stop_ids.iter().chain(&p.stop_token_ids) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if p.is_greedy() {
        return Sampled {
            token: argmax(logits),
        };
    }
    // Candidates as order keys (best first: higher logit, then lower id), cut by top-k.
    let (keys, cut) = top_k_candidates(logits, p.top_k);
    if keys.is_empty() {
        return Sampled {
            token: argmax(logits),
        };
    }
    // Softmax at temperature T over the candidates (f64; the normaliser summed in id order).
    let inv_t = 1.0 / p.temperature as f64;
    let max = logits[key_id(keys.iter().copied().min().unwrap_or(0)) as usize] as f64;
    let weight = |k: u64| ((logits[key_id(k) as usize] as f64 - max) * inv_t).exp();
    let z: f64 = if cut {
        // The kept ones are exactly the finite logits keyed at most the k-th key.
        let kth = keys.iter().copied().max().unwrap_or(0);
        (0u32..)
            .zip(logits.iter())
            .filter(|&(i, &l)| l.is_finite() && order_key(l, i) <= kth)
            .map(|(i, &l)| weight(order_key(l, i)))
            .sum()
    } else {
        keys.iter().map(|&k| weight(k)).sum()
    };
    // Only as much of the candidates is sorted as the cuts and the draw reach (a full sort
    // of a 49k vocabulary cost ~2 ms a token): `head` grows best first in chunks, sorted as
    // plain u64 keys (a comparator reading the logits through the ids cost 3x as much).
    let mut head = SortedHead {
        idx: keys,
        sorted: 0,
        probs: Vec::new(),
    };
    let n = head.idx.len();
    // top-p: the smallest head whose mass reaches top_p.
    let mut keep = n;
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let mut i = 0;
        'grow: loop {
            head.extend(i + 1, &weight, z);
            while i < head.sorted {
                cum += head.probs[i];
                i += 1;
                if cum >= p.top_p as f64 {
                    keep = i;
                    break 'grow;
                }
            }
            if head.sorted == n {
                break;
            }
        }
    }
    // min-p: drop tokens below min_p times the best one.
    if p.min_p > 0.0 {
        head.extend(1, &weight, z);
        let floor = head.probs[0] * p.min_p as f64;
        let mut count = 0;
        while count < keep {
            head.extend(count + 1, &weight, z);
            if head.probs[count] < floor {
                break;
            }
            count += 1;
        }
        keep = keep.min(count.max(1));
    }
    // The draw walks the kept tokens best first.
    let mass: f64 = if keep == n && p.top_p >= 1.0 && p.min_p <= 0.0 {
        1.0
    } else {
        head.extend(keep, &weight, z);
        head.probs[..keep].iter().sum()
    };
    let u = draw_uniform(seed, output.len() as u64) * mass;
    let mut cum = 0.0;
    let mut i = 0;
    while i < keep {
        head.extend(i + 1, &weight, z);
        cum += head.probs[i];
        if u < cum {
            return Sampled {
                token: key_id(head.idx[i]),
            };
        }
        i += 1;
    }
    head.extend(keep, &weight, z);
    Sampled {
        token: key_id(head.idx[keep - 1]),
    }
}

/// Candidates (order keys) of which the first `sorted` are the best, in order, with their
/// probabilities.
struct SortedHead {
    idx: Vec<u64>,
    sorted: usize,
    probs: Vec<f64>,
}

impl SortedHead {
    /// Makes at least the first `want` sorted: the next chunk (64, then growing 4×) is
    /// selected from the unsorted rest and sorted.
    fn extend(&mut self, want: usize, weight: &impl Fn(u64) -> f64, z: f64) {
        let n = self.idx.len();
        while self.sorted < want.min(n) {
            let chunk = (self.sorted.max(16) * 4).min(n - self.sorted);
            let rest = &mut self.idx[self.sorted..];
            if chunk < rest.len() {
                rest.select_nth_unstable(chunk - 1);
            }
            rest[..chunk].sort_unstable();
            self.probs
                .extend(rest[..chunk].iter().map(|&i| weight(i) / z));
            self.sorted += chunk;
        }
    }
}

/// The finite logits' order keys in id order, or cut to the `top_k` best (unordered within
/// the cut); whether the cut was made.
fn top_k_candidates(logits: &[f32], top_k: usize) -> (Vec<u64>, bool) {
    let mut keys: Vec<u64> = logits
        .iter()
        .zip(0u32..)
        .filter(|(l, _)| l.is_finite())
        .map(|(&l, i)| order_key(l, i))
        .collect();
    let cut = top_k > 0 && top_k < keys.len();
    if cut {
        keys.select_nth_unstable(top_k - 1);
        keys.truncate(top_k);
    }
    (keys, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    /// Default parameters at temperature 1.
    fn hot() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            ..params()
        }
    }

    /// The token `p` draws from logits `l` (no history, no bias) with `seed`.
    fn draw(l: &[f32], p: &SamplingParams, seed: u64) -> u32 {
        sample_token(&mut l.to_vec(), p, &[], &[], &[], seed).token
    }

    #[test]
    fn penalties_and_bias_follow_the_definitions() {
        // Hand-computed: token 0 (logit 2.0) and token 1 (logit -1.0) appear; token 2 does not.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            logit_bias: vec![(3, 5.0), (2, -1.0)],
            ..params()
        };
        let mut l = vec![2.0f32, -1.0, 0.5, 0.0];
        // prompt has token 1; output has token 0 twice and token 1 once.
        apply_penalties_and_bias(&mut l, &p, &[1], &[0, 0, 1]);
        // token 0: 2.0 / 2 = 1.0, then - (0.5 * 2 + 0.25) = -0.25
        assert!((l[0] - -0.25).abs() < 1e-6, "{l:?}");
        // token 1: -1.0 * 2 = -2.0, then - (0.5 * 1 + 0.25) = -2.75
        assert!((l[1] - -2.75).abs() < 1e-6, "{l:?}");
        // token 2: bias only: 0.5 - 1.0
        assert!((l[2] - -0.5).abs() < 1e-6, "{l:?}");
        // token 3: bias only
        assert!((l[3] - 5.0).abs() < 1e-6, "{l:?}");
    }

    /// The sampler as it was with a full sort of the candidates (the reference).
    fn sample_full_sort(logits: &[f32], p: &SamplingParams, seed: u64, out_len: usize) -> u32 {
        let (mut keys, _) = top_k_candidates(logits, p.top_k);
        keys.sort_unstable();
        let idx: Vec<u32> = keys.iter().map(|&k| key_id(k)).collect();
        let inv_t = 1.0 / p.temperature as f64;
        let max = logits[idx[0] as usize] as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - max) * inv_t).exp())
            .collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let mass: f64 = probs[..keep].iter().sum();
        let u = draw_uniform(seed, out_len as u64) * mass;
        let mut cum = 0.0;
        for (i, &pr) in probs[..keep].iter().enumerate() {
            cum += pr;
            if u < cum {
                return idx[i];
            }
        }
        idx[keep - 1]
    }

    #[test]
    fn partial_sort_draws_what_the_full_sort_drew() {
        // Same seeds, same tokens, over a 49k vocabulary with the default model's kind of
        // spread and every cut (only the normaliser's summation order differs: a draw could
        // change only within ~1e-15 of a boundary).
        let mut seed = 9u64;
        let logits: Vec<f32> = crate::lcg::lcg_uniform(49152, &mut seed)
            .iter()
            .enumerate()
            .map(|(i, u)| u * 6.0 + if i % 97 == 0 { 8.0 } else { 0.0 })
            .collect();
        let cases = [
            (1.0f32, 0usize, 1.0f32, 0.0f32),
            (0.8, 0, 0.9, 0.0),
            (1.2, 0, 0.5, 0.0),
            (1.0, 0, 1.0, 0.1),
            (0.7, 40, 0.95, 0.0),
            (1.0, 0, 0.99, 0.05),
        ];
        for (t, k, top_p, min_p) in cases {
            let p = SamplingParams {
                temperature: t,
                top_k: k,
                top_p,
                min_p,
                ..params()
            };
            for s in 0..300 {
                let want = sample_full_sort(&logits, &p, s, 3);
                let got = sample_token(&mut logits.clone(), &p, &[], &[0, 0, 0], &[], s).token;
                assert_eq!(
                    got, want,
                    "t {t} top_k {k} top_p {top_p} min_p {min_p} seed {s}"
                );
            }
        }
    }

    #[test]
    fn greedy_top_k_one_and_temperature_zero_agree() {
        let l = vec![0.1f32, 2.5, 2.4, -3.0];
        let g = draw(&l, &params(), 1);
        assert_eq!(g, 1);
        let mut k1 = hot();
        k1.top_k = 1;
        for seed in 0..20 {
            assert_eq!(draw(&l, &k1, seed), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_cuts() {
        let l = vec![0.0f32, (2.0f32).ln(), (3.0f32).ln(), -50.0];
        let p = hot();
        let mut counts = [0usize; 4];
        let n = 30_000;
        for seed in 0..n {
            counts[draw(&l, &p, seed) as usize] += 1;
        }
        // Probabilities 1/6, 2/6, 3/6, ~0.
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
        // top_p 0.5 keeps only token 2 (mass 0.5); top_k 2 never picks token 0; min_p 0.5
        // keeps tokens with p >= 0.25, i.e. 1 and 2.
        let mut tp = hot();
        tp.top_p = 0.5;
        let mut tk = hot();
        tk.top_k = 2;
        let mut mp = hot();
        mp.min_p = 0.5;
        for seed in 0..500 {
            assert_eq!(draw(&l, &tp, seed), 2);
            assert_ne!(draw(&l, &tk, seed), 0);
            assert_ne!(draw(&l, &mp, seed), 0);
        }
    }

    #[test]
    fn min_tokens_masks_stop_ids() {
        let l = vec![0.0f32, 5.0, 1.0];
        let p = SamplingParams {
            min_tokens: 2,
            ..params()
        };
        assert_eq!(
            sample_token(&mut l.clone(), &p, &[], &[7], &[1], 0).token,
            2
        );
        assert_eq!(
            sample_token(&mut l.clone(), &p, &[], &[7, 7], &[1], 0).token,
            1
        );
    }
}
