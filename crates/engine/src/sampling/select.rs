//! The device sampler's algorithm (kernels/sampling.cu), here on the CPU: the CPU sampler's
//! processing, cuts and draw (`sampler.rs`) without sorting the vocabulary.
//!
//! - The logits processing becomes one entry per touched token (bias, repetition, frequency
//!   and presence, the min_tokens mask), applied in the CPU sampler's order: the same f32
//!   operations, so the processed row is bit for bit the CPU's.
//! - Every best-first prefix the CPU sampler walks (top-k, top-p, min-p, the draw) is a
//!   threshold on one 64-bit order key (higher logit first, then lower id: the CPU sampler's
//!   order), found by a radix-16 search: each pass sums (count, probability) of the
//!   candidates in 16 buckets of the next 4 key bits, and the first bucket where the running
//!   sum meets the condition fixes those bits; a bucket holding one candidate ends it.
//!
//! Sums run in any order (on a GPU, in parallel), so a draw can differ from the CPU
//! sampler's only when it falls within ~1e-15 of a cut or a token boundary.

use super::logprobs::{top_logprobs, TokenLogprob};
use super::params::SamplingParams;

/// A token's place in the sampler's order as one u64, smaller first: the logit's bits
/// mapped to an order that descends with the logit (f32 `total_cmp`), then the id.
pub fn order_key(logit: f32, id: u32) -> u64 {
    let b = logit.to_bits();
    let ascending = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    ((!ascending as u64) << 32) | id as u64
}

/// The id in an order key.
pub fn key_id(key: u64) -> u32 {
    key as u32
}

/// One touched token's processing, applied in this order: `+ bias`, the repetition penalty
/// (positive logits divided, others multiplied), `- sub` (frequency * count + presence),
/// then masked to -inf (a stop token before min_tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenAdjust {
    pub token: u32,
    pub bias: Option<f32>,
    pub repetition: Option<f32>,
    pub sub: Option<f32>,
    pub mask: bool,
}

/// The entries `sample_token` would apply to a row of `vocab` logits: one per token it
/// touches, in token order (tokens outside the vocabulary are dropped, as it drops them).
pub fn token_adjustments(
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    stop_ids: &[u32],
    vocab: usize,
) -> Vec<TokenAdjust> {
    use std::collections::BTreeMap;
    fn entry(m: &mut BTreeMap<u32, TokenAdjust>, t: u32) -> &mut TokenAdjust {
        m.entry(t).or_insert(TokenAdjust {
            token: t,
            bias: None,
            repetition: None,
            sub: None,
            mask: false,
        })
    }
    let mut m: BTreeMap<u32, TokenAdjust> = BTreeMap::new();
    for &(t, b) in &p.logit_bias {
        let e = entry(&mut m, t);
        // Several biases for one token (only from keys like "7" and "07" of one JSON map)
        // are summed first: the CPU adds them one by one, which may differ in the last bit.
        e.bias = Some(e.bias.map_or(b, |x| x + b));
    }
    if p.repetition_penalty != 1.0 {
        for &t in prompt.iter().chain(output) {
            entry(&mut m, t).repetition = Some(p.repetition_penalty);
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            entry(&mut m, t).sub = Some(p.frequency_penalty * c as f32 + p.presence_penalty);
        }
    }
    if output.len() < p.min_tokens {
        for &t in stop_ids.iter().chain(&p.stop_token_ids) {
            entry(&mut m, t).mask = true;
        }
    }
    m.into_values()
        .filter(|e| (e.token as usize) < vocab)
        .collect()
}

/// One token's logit after its entry (the kernel's `adjust`).
pub fn adjust_logit(mut l: f32, a: &TokenAdjust) -> f32 {
    if let Some(b) = a.bias {
        l += b;
    }
    if let Some(r) = a.repetition {
        l = if l > 0.0 { l / r } else { l * r };
    }
    if let Some(s) = a.sub {
        l -= s;
    }
    if a.mask {
        l = f32::NEG_INFINITY;
    }
    l
}

/// A row's draw parameters: temperature (0: greedy), top-k (0: none), top-p, min-p, and the
/// request's uniform draw for this step (`draw_uniform(seed, step)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowDraw {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub u: f64,
}

/// One logits row to sample away from the host's copy of it: its draw and its
/// processing entries.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub draw: RowDraw,
    pub adjust: Vec<TokenAdjust>,
    /// Log-probs of the chosen token and this many alternatives, from the raw row.
    pub logprobs: Option<usize>,
}

impl SampleSpec {
    /// What `sample_token(row, p, prompt, output, stop_ids, seed)` does to a row of `vocab`.
    pub fn new(
        p: &SamplingParams,
        (prompt, output): (&[u32], &[u32]),
        stop_ids: &[u32],
        seed: u64,
        vocab: usize,
    ) -> Self {
        Self {
            draw: RowDraw {
                temperature: if p.is_greedy() { 0.0 } else { p.temperature },
                top_k: p.top_k.min(u32::MAX as usize) as u32,
                top_p: p.top_p,
                min_p: p.min_p,
                u: super::draw_uniform(seed, output.len() as u64),
            },
            adjust: token_adjustments(p, prompt, output, stop_ids, vocab),
            logprobs: p.logprobs,
        }
    }

    /// A row nobody samples (a prompt row in the step): its argmax, unprocessed.
    pub fn unused() -> Self {
        Self {
            draw: RowDraw {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                u: 0.0,
            },
            adjust: Vec::new(),
            logprobs: None,
        }
    }

    /// The row's token (and its log-probs, if asked), computed here: the CPU form of the
    /// device sampler.
    pub fn select(&self, logits: &mut [f32]) -> (u32, Option<TokenLogprob>) {
        let raw = self.logprobs.map(|_| logits.to_vec());
        for a in &self.adjust {
            if let Some(l) = logits.get_mut(a.token as usize) {
                *l = adjust_logit(*l, a);
            }
        }
        let tok = select_token(logits, &self.draw);
        let lp = raw
            .zip(self.logprobs)
            .map(|(r, k)| top_logprobs(&r, tok, k));
        (tok, lp)
    }
}

/// Whether a request's tokens can be drawn away from the host (on the GPU): nothing in it
/// needs the logits rows there (prompt log-probs, a grammar's mask).
pub fn device_samplable(p: &SamplingParams) -> bool {
    p.prompt_logprobs.is_none() && p.structured.is_none()
}

/// The minimal key `t <= bound` among `cands` (key, probability) whose best-first prefix
/// (every candidate with key <= t) has a (count, mass) meeting `pred` (monotone in t);
/// `None` when even the whole prefix up to `bound` does not.
pub fn search(cands: &[(u64, f64)], bound: u64, pred: impl Fn(u64, f64) -> bool) -> Option<u64> {
    let (mut prefix, mut shift) = (0u64, 64u32);
    let (mut base_c, mut base_m) = (0u64, 0f64);
    while shift > 0 {
        shift -= 4;
        let mut cnt = [0u64; 16];
        let mut mass = [0f64; 16];
        let mut min_key = [u64::MAX; 16];
        for &(k, w) in cands {
            if k > bound || (shift < 60 && k >> (shift + 4) != prefix) {
                continue;
            }
            let b = ((k >> shift) & 15) as usize;
            cnt[b] += 1;
            mass[b] += w;
            min_key[b] = min_key[b].min(k);
        }
        let mut found = None;
        for b in 0..16 {
            if cnt[b] == 0 {
                continue;
            }
            let (c, m) = (base_c + cnt[b], base_m + mass[b]);
            if pred(c, m) {
                found = Some(b);
                break;
            }
            (base_c, base_m) = (c, m);
        }
        let b = found?;
        if cnt[b] == 1 {
            return Some(min_key[b]);
        }
        prefix = (prefix << 4) | b as u64;
    }
    Some(prefix)
}

/// The token the CPU sampler draws from an already processed row (`sample_token` after
/// its penalties, bias and mask), found as the device sampler finds it.
pub fn select_token(logits: &[f32], d: &RowDraw) -> u32 {
    let best = |it: &mut dyn Iterator<Item = u64>| it.min().map(key_id);
    // Greedy (and a row without a finite logit): the first largest value, as `argmax`.
    let argmax = || {
        best(
            &mut logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| order_key(l, i as u32)),
        )
        .unwrap_or(0)
    };
    if d.temperature == 0.0 {
        return argmax();
    }
    let keys: Vec<(u64, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (order_key(l, i as u32), l))
        .collect();
    if keys.is_empty() {
        return argmax();
    }
    let n = keys.len() as u64;
    let ones: Vec<(u64, f64)> = keys.iter().map(|&(k, _)| (k, 1.0)).collect();
    // top-k: the k-th best key bounds the candidates.
    let k = d.top_k as u64;
    let bound = if k > 0 && k < n {
        search(&ones, u64::MAX, |c, _| c >= k).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    // Softmax at temperature T over the candidates, in f64 (the best logit is the max).
    let max = keys.iter().min_by_key(|x| x.0).map_or(0.0, |x| x.1) as f64;
    let inv_t = 1.0 / d.temperature as f64;
    let w = |l: f32| ((l as f64 - max) * inv_t).exp();
    let z: f64 = keys.iter().filter(|x| x.0 <= bound).map(|x| w(x.1)).sum();
    let probs: Vec<(u64, f64)> = keys
        .iter()
        .filter(|x| x.0 <= bound)
        .map(|&(k, l)| (k, w(l) / z))
        .collect();
    let mut t = bound;
    if d.top_p < 1.0 {
        if let Some(tp) = search(&probs, bound, |_, m| m >= d.top_p as f64) {
            t = tp;
        }
    }
    if d.min_p > 0.0 {
        // The best token's probability is exp(0) / z.
        let floor = (1.0 / z) * d.min_p as f64;
        let count = probs.iter().filter(|x| x.1 >= floor).count().max(1) as u64;
        if let Some(tm) = search(&probs, bound, |c, _| c >= count) {
            t = t.min(tm);
        }
    }
    let mass = if d.top_p >= 1.0 && d.min_p <= 0.0 {
        1.0
    } else {
        probs.iter().filter(|x| x.0 <= t).map(|x| x.1).sum()
    };
    let target = d.u * mass;
    // Sums a few ulps short of the draw: the last kept candidate, as the CPU sampler takes.
    let last = || {
        probs
            .iter()
            .map(|x| x.0)
            .filter(|&k| k <= t)
            .max()
            .unwrap_or(t)
    };
    key_id(search(&probs, t, |_, m| m > target).unwrap_or_else(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{apply_penalties_and_bias, draw_uniform, sample_token};

    #[test]
    fn order_keys_follow_the_samplers_order() {
        let vals = [
            f32::NEG_INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-30,
            2.0,
            2.0,
            f32::INFINITY,
        ];
        for (i, &a) in vals.iter().enumerate() {
            for (j, &b) in vals.iter().enumerate() {
                let want = b.total_cmp(&a).then((i as u32).cmp(&(j as u32)));
                assert_eq!(
                    order_key(a, i as u32).cmp(&order_key(b, j as u32)),
                    want,
                    "{a} {b}"
                );
            }
        }
    }

    /// Logits with ties, -inf entries and the default model's kind of spread.
    fn row(vocab: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        crate::lcg::lcg_uniform(vocab, &mut s)
            .iter()
            .enumerate()
            .map(|(i, u)| match i % 211 {
                0 => f32::NEG_INFINITY,
                7 => 3.0,
                _ => u * 6.0 + if i % 97 == 0 { 8.0 } else { 0.0 },
            })
            .collect()
    }

    /// The same token as `sample_token` for every cut, seed and history (penalties, bias
    /// and the min_tokens mask through the per-token entries).
    #[test]
    fn draws_what_the_cpu_sampler_draws() {
        let vocab = 5000;
        let cases = [
            (0.0f32, 0usize, 1.0f32, 0.0f32),
            (1.0, 0, 1.0, 0.0),
            (0.8, 0, 0.95, 0.0),
            (1.2, 0, 0.5, 0.0),
            (1.0, 0, 1.0, 0.1),
            (0.7, 40, 0.95, 0.0),
            (1.0, 1, 1.0, 0.0),
            (0.5, 7, 0.3, 0.2),
            (1.0, 0, 0.99, 0.05),
            (2.0, 100000, 0.9, 0.0),
        ];
        let mut checked = 0;
        for (ci, (t, k, top_p, min_p)) in cases.into_iter().enumerate() {
            let p = SamplingParams {
                temperature: t,
                top_k: k,
                top_p,
                min_p,
                repetition_penalty: if ci % 2 == 0 { 1.3 } else { 1.0 },
                frequency_penalty: if ci % 3 == 0 { 0.4 } else { 0.0 },
                presence_penalty: if ci % 3 == 1 { 0.2 } else { 0.0 },
                logit_bias: vec![(7, 4.0), (20, -100.0), (999_999, 1.0)],
                min_tokens: 5,
                ..SamplingParams::default()
            };
            let prompt = [7u32, 11, 13, 11];
            for s in 0..120u64 {
                let logits = row(vocab, 100 + s);
                let out_len = (s % 8) as usize;
                let output: Vec<u32> = (0..out_len as u32).map(|i| (i * 31 + 7) % 97).collect();
                let stop = [2u32, 9];
                let want = sample_token(&mut logits.clone(), &p, &prompt, &output, &stop, s).token;
                let adj = token_adjustments(&p, &prompt, &output, &stop, vocab);
                let mut processed = logits.clone();
                for a in &adj {
                    processed[a.token as usize] = adjust_logit(processed[a.token as usize], a);
                }
                let d = RowDraw {
                    temperature: t,
                    top_k: k.min(u32::MAX as usize) as u32,
                    top_p,
                    min_p,
                    u: draw_uniform(s, out_len as u64),
                };
                assert_eq!(select_token(&processed, &d), want, "case {ci} seed {s}");
                checked += 1;
            }
        }
        assert_eq!(checked, 1200);
    }

    /// The entries give the CPU sampler's processed row bit for bit.
    #[test]
    fn adjustments_are_the_cpu_processing() {
        let p = SamplingParams {
            repetition_penalty: 1.7,
            frequency_penalty: 0.3,
            presence_penalty: -0.1,
            logit_bias: vec![(3, 2.5), (40, -1.0)],
            min_tokens: 3,
            stop_token_ids: vec![41],
            ..SamplingParams::default()
        };
        let logits = row(64, 5);
        let (prompt, output) = ([3u32, 5, 5, 60], [5u32, 6, 6, 70_000]);
        let mut want = logits.clone();
        apply_penalties_and_bias(&mut want, &p, &prompt, &output[..2]);
        for t in [2usize, 41] {
            want[t] = f32::NEG_INFINITY;
        }
        let mut got = logits.clone();
        for a in token_adjustments(&p, &prompt, &output[..2], &[2], 64) {
            got[a.token as usize] = adjust_logit(got[a.token as usize], &a);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }
}
