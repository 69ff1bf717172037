use candle_core::{DType, Device, Tensor};
use half::f16;

use super::backend::*;
use super::llama_cpp::*;
use super::reference::*;
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::kv_cache::KvCacheLayout;

/// Dense causal attention over contiguous K/V: the textbook formula.
fn dense(q: &[f32], k: &[f32], v: &[f32], n: usize, nh: usize, nkv: usize, hd: usize) -> Vec<f32> {
    dense_windowed((q, k, v), n, (nh, nkv, hd), n, 1.0 / (hd as f32).sqrt())
}

/// Random q, k, v for `n` tokens from `seed`, and their dense attention.
#[allow(clippy::type_complexity)]
fn dense_case(
    seed: u64,
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (q, k, v) = random_qkv(seed, n, nh, nkv, hd);
    let want = dense(&q, &k, &v, n, nh, nkv, hd);
    (q, k, v, want)
}

/// Random q, k, v for `n` tokens from `seed`.
fn random_qkv(
    seed: u64,
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut seed = seed;
    let q = crate::lcg::lcg_uniform(n * nh * hd, &mut seed);
    let k = crate::lcg::lcg_uniform(n * nkv * hd, &mut seed);
    let v = crate::lcg::lcg_uniform(n * nkv * hd, &mut seed);
    (q, k, v)
}

/// A one-layer cache of `num_blocks` blocks.
fn one_layer(num_blocks: usize, bs: usize, nkv: usize, hd: usize) -> KvCacheLayout {
    KvCacheLayout {
        num_layers: 1,
        num_blocks,
        block_size: bs,
        num_kv_heads: nkv,
        head_dim: hd,
    }
}

#[test]
fn paged_equals_dense_with_scattered_blocks_and_chunks() {
    let (nh, nkv, hd, bs) = (6, 2, 8, 4);
    let n = 11; // three blocks, last one partial
    let (q, k, v, want) = dense_case(7, n, nh, nkv, hd);
    let layout = one_layer(8, bs, nkv, hd);
    let table = vec![5u32, 1, 6];
    // The prompt in two chunks (7 then 4 tokens) must equal the dense result.
    let mut attn = CpuPagedAttention::new(layout, nh);
    let mut got = Vec::new();
    for (start, end) in [(0usize, 7usize), (7, 11)] {
        let mut b = FlatBatch::default();
        b.push_seq(
            &vec![0; end - start],
            start,
            &table,
            bs,
            crate::batch::LogitsWanted::Last,
        );
        let kt = Tensor::from_slice(
            &k[start * nkv * hd..end * nkv * hd],
            (end - start, nkv * hd),
            &Device::Cpu,
        )
        .unwrap();
        let vt = Tensor::from_slice(
            &v[start * nkv * hd..end * nkv * hd],
            (end - start, nkv * hd),
            &Device::Cpu,
        )
        .unwrap();
        let qt = Tensor::from_slice(
            &q[start * nh * hd..end * nh * hd],
            (end - start, nh * hd),
            &Device::Cpu,
        )
        .unwrap();
        attn.write_kv(0, &kt, &vt, &b).unwrap();
        let o = attn.attend(0, &qt, &b).unwrap();
        got.extend(o.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    // f16 K, V and probabilities: within a few f16 ulp of the f32 formula.
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 4e-3 * (1.0 + b.abs()),
            "element {i}: {a} vs {b}"
        );
    }
}

/// llama.cpp's attention for one (row, head) written the plain way (every step of
/// `ggml_vec_dot_f16`, `ggml_soft_max` and the f16 roundings, over the positions in
/// order): the fast kernel must give the same bits.
fn ggml_reference(
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    scale: f32,
    prompt_order: bool,
) -> Vec<f32> {
    use crate::ops::ggml_arith::{dot_f16_tiled, expf, reduce16};
    let dot_f16 = |x: &[f32], y: &[f32]| {
        if prompt_order {
            dot_f16_tiled(x, y)
        } else {
            crate::ops::ggml_arith::dot_f16(x, y)
        }
    };
    let r = |x: f32| f16::from_f32(x).to_f32();
    let qh: Vec<f32> = q.iter().map(|&x| r(x)).collect();
    let kh: Vec<Vec<f32>> = keys
        .iter()
        .map(|k| k.iter().map(|&x| r(x)).collect())
        .collect();
    let w: Vec<f32> = kh.iter().map(|k| dot_f16(k, &qh) * scale).collect();
    let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    // Padded to whole 64-wide steps with masked keys (probability 0), as llama.cpp's
    // KV cache is.
    let n_kv = w.len().div_ceil(64) * 64;
    let mut e: Vec<f32> = w.iter().map(|&x| expf(x - max)).collect();
    e.resize(n_kv, 0.0);
    let sum: f64 = e
        .chunks(16)
        .map(|c| reduce16(&std::array::from_fn(|i| c[i])) as f64)
        .sum();
    let inv = (1.0 / sum) as f32;
    let p: Vec<f32> = e.iter().map(|&x| r(x * inv)).collect();
    (0..q.len())
        .map(|d| {
            let mut col: Vec<f32> = values.iter().map(|v| r(v[d])).collect();
            col.resize(n_kv, 0.0);
            dot_f16(&col, &p)
        })
        .collect()
}

/// The paged kernel is llama.cpp's arithmetic: the same bits as [`ggml_reference`] for
/// decode rows and chunked prompts in both orders, one head or a whole group per task,
/// several block sizes, a head dim of two 64-wide steps and one with a tail.
#[test]
fn f16_attention_equals_llama_cpps_arithmetic_bit_for_bit() {
    for (nh, nkv, hd, bs) in [
        (9, 3, 64, 16),
        (8, 2, 128, 8),
        (6, 6, 16, 4),
        (12, 2, 80, 32),
        (10, 2, 64, 16), // groups of 5: heads in passes of 4 and 1
        (4, 2, 64, 8),   // groups of 2 in decode order
        (6, 2, 48, 16),  // groups of 3 with a partial value pass
        (4, 2, 12, 4),   // no whole SIMD steps: the scalar paths
    ] {
        let num_blocks = 24;
        let mut seed = 11;
        let k = crate::lcg::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
        let v = crate::lcg::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
        let mut k_t = vec![f16::ZERO; k.len()];
        for b in 0..num_blocks {
            for i in 0..bs {
                for h in 0..nkv {
                    for d in 0..hd {
                        k_t[((b * nkv + h) * hd + d) * bs + i] =
                            f16::from_f32(k[((b * bs + i) * nkv + h) * hd + d]);
                    }
                }
            }
        }
        let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        // Three sequences: a 5-token chunk of a longer prompt, one decode row deep in
        // its context (past 64 positions), a 2-token chunk from position 0.
        let tables: Vec<Vec<u32>> = vec![(0..8).rev().collect(), (8..20).collect(), vec![23, 21]];
        let context_lens = vec![(5 * bs / 2).min(8 * bs), 11 * bs + 3, 2];
        let qsl = vec![0, 5, 6, 8];
        // The first sequence's chunk straddles the end of its prompt (prompt order, then
        // decode order); the second is a decode row; the third all prompt.
        let prompt_lens = vec![context_lens[0] - 2, 4 * bs, 2];
        let shape = PagedAttentionShape::new(nh, nkv, hd, bs);
        let q: Vec<f32> = crate::lcg::lcg_uniform(8 * nh * hd, &mut seed)
            .iter()
            .map(|x| x * 4.0)
            .collect();
        let step = StepRows {
            query_start_loc: &qsl,
            context_lens: &context_lens,
            prompt_lens: &prompt_lens,
            block_tables: &tables,
        };
        let rows = step.positions();
        let mut want = vec![0f32; q.len()];
        for (row, &(s, pos)) in rows.iter().enumerate() {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let slot = |p: usize| tables[s][p / bs] as usize * bs + p % bs;
                let at = |c: &[f32], p: usize| c[(slot(p) * nkv + kvh) * hd..][..hd].to_vec();
                let keys: Vec<Vec<f32>> = (0..=pos).map(|p| at(&k, p)).collect();
                let values: Vec<Vec<f32>> = (0..=pos).map(|p| at(&v, p)).collect();
                let prompt_order = pos < prompt_lens[s] && hd % 16 == 0 && prompt_lens[s] > 1;
                let q = &q[(row * nh + h) * hd..][..hd];
                let o = ggml_reference(q, &keys, &values, shape.scale, prompt_order);
                want[(row * nh + h) * hd..][..hd].copy_from_slice(&o);
            }
        }
        for heads_per_task in [1, nh / nkv] {
            let mut got = vec![0f32; q.len()];
            attention_by_tasks(shape, heads_per_task, (&q, &k_t, &v16), step, &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "shape {nh}/{nkv}/{hd}/{bs}, {heads_per_task} heads per task, element {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn rows_alone_in_a_llama_cpp_ubatch_take_the_decode_order() {
    assert!(prompt_order(0, 5) && prompt_order(4, 5) && !prompt_order(5, 5));
    assert!(!prompt_order(0, 1), "a one-token prompt is a decode step");
    assert!(prompt_order(511, 513) && !prompt_order(512, 513));
    assert!(prompt_order(512, 514) && prompt_order(513, 514));
}

#[test]
fn reference_backend_equals_dense_attention() {
    let (nh, nkv, hd, bs) = (6, 2, 8, 4);
    let n = 11;
    let (q, k, v, want) = dense_case(3, n, nh, nkv, hd);
    let layout = one_layer(4, bs, nkv, hd);
    let mut attn = CpuReferenceAttention::new(layout, nh);
    let mut b = FlatBatch::default();
    b.push_seq(
        &vec![0; n],
        0,
        &[3, 0, 2],
        bs,
        crate::batch::LogitsWanted::Last,
    );
    let t = |x: &[f32], w: usize| Tensor::from_slice(x, (n, w), &Device::Cpu).unwrap();
    attn.write_kv(0, &t(&k, nkv * hd), &t(&v, nkv * hd), &b)
        .unwrap();
    let got: Vec<f32> = attn
        .attend(0, &t(&q, nh * hd), &b)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn slot_outside_the_cache_is_an_error() {
    let mut attn = CpuPagedAttention::new(one_layer(1, 4, 1, 2), 1);
    let mut b = FlatBatch::default();
    b.push_seq(&[1], 0, &[3], 4, crate::batch::LogitsWanted::Last);
    let t = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(attn.write_kv(0, &t, &t, &b).is_err());
}

/// Dense causal attention where a query at t sees only keys t - window + 1 ..= t, with
/// `scale`: the textbook formula with the sliding-window mask.
#[allow(clippy::too_many_arguments)]
fn dense_windowed(
    (q, k, v): (&[f32], &[f32], &[f32]),
    n: usize,
    (nh, nkv, hd): (usize, usize, usize),
    window: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; n * nh * hd];
    for t in 0..n {
        let first = (t + 1).saturating_sub(window);
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qv = &q[(t * nh + h) * hd..][..hd];
            let scores: Vec<f32> = (first..=t)
                .map(|j| {
                    let kv = &k[(j * nkv + kvh) * hd..][..hd];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for (i, j) in (first..=t).enumerate() {
                for d in 0..hd {
                    out[(t * nh + h) * hd + d] += e[i] / z * v[(j * nkv + kvh) * hd + d];
                }
            }
        }
    }
    out
}

/// Both CPU backends with a sliding window equal dense attention under the same mask:
/// windows below, at and beyond the context, over block boundaries, a prompt in chunks,
/// decode-order and prompt-order rows, and a scale of the layer's own.
#[test]
fn sliding_window_equals_the_dense_mask() {
    let (nh, nkv, bs, n) = (4, 2, 4, 13);
    for hd in [8, 16] {
        for window in [1, 3, 4, 5, 13, 20] {
            let (q, k, v) = random_qkv(11 + window as u64, n, nh, nkv, hd);
            let scale = 0.3;
            let want = dense_windowed((&q, &k, &v), n, (nh, nkv, hd), window, scale);
            let layer = LayerAttention {
                scale: Some(scale),
                window: Some(window),
            };
            let table = vec![3u32, 0, 6, 2];
            let run = |attn: &mut dyn AttentionBackend, prompt_len: usize| -> Vec<f32> {
                let mut got = Vec::new();
                for (start, end) in [(0usize, 6usize), (6, 9), (9, 10), (10, 13)] {
                    let mut b = FlatBatch::default();
                    b.push_seq(
                        &vec![0; end - start],
                        start,
                        &table,
                        bs,
                        crate::batch::LogitsWanted::Last,
                    );
                    b.set_prompt_len(prompt_len);
                    let t = |x: &[f32], w: usize| {
                        Tensor::from_slice(&x[start * w..end * w], (end - start, w), &Device::Cpu)
                            .unwrap()
                    };
                    attn.write_kv(0, &t(&k, nkv * hd), &t(&v, nkv * hd), &b)
                        .unwrap();
                    let o = attn.attend(0, &t(&q, nh * hd), &b).unwrap();
                    got.extend(o.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                got
            };
            let layout = one_layer(8, bs, nkv, hd);
            let mut reference = CpuReferenceAttention::new(layout, nh).with_layers(vec![layer]);
            let got = run(&mut reference, 0);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "f32, window {window}, hd {hd}, element {i}: {a} vs {b}"
                );
            }
            // The f16 kernel: decode order, then the first 9 rows as prompt rows.
            for prompt_len in [0, 9] {
                let mut f16 = CpuPagedAttention::new(layout, nh).with_layers(vec![layer]);
                let got = run(&mut f16, prompt_len);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 4e-3 * (1.0 + b.abs()),
                        "f16, window {window}, hd {hd}, prompt {prompt_len}, element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
