//! `gpu-check` rows for what a layer adds to attention (Gemma 3): the decode and prefill
//! kernels with a sliding window and a custom scale, and the head sizes only such models
//! have (32, 256), against the f32 CPU reference kernel with the same mask.

use super::checks::rel_err;
use super::kernels::{gqa_kernel_built, CudaKernels, DecodeKernel, DecodeShape, PagedKv};
use crate::attention::split::plan_prefill_tiles;
use crate::attention::{paged_attention_cpu, LayerAttention, PagedAttentionShape, StepRows};
use crate::cuda::{CudaResult, KernelType};
use crate::instrument::CheckRow;

/// One case: heads, head size, block size, each sequence's (context, new tokens) and the
/// layer's window and scale.
struct Case {
    heads: (usize, usize),
    head_dim: usize,
    block_size: usize,
    seqs: &'static [(usize, usize)],
    layer: LayerAttention,
}

const fn layer(window: Option<usize>, scale: Option<f32>) -> LayerAttention {
    LayerAttention { scale, window }
}

/// Decode steps (one new token per sequence) and mixed prefill steps, with windows below,
/// at and beyond the contexts, over block boundaries and split-K partitions.
const CASES: &[Case] = &[
    // The Gemma fixture's shape: d32, 4 heads over 1, window 8.
    Case {
        heads: (4, 1),
        head_dim: 32,
        block_size: 16,
        seqs: &[(1, 1), (8, 1), (9, 1), (50, 1), (97, 1)],
        layer: layer(Some(8), Some(0.3)),
    },
    Case {
        heads: (4, 1),
        head_dim: 32,
        block_size: 16,
        seqs: &[(40, 40), (70, 30), (21, 1), (9, 9)],
        layer: layer(Some(8), Some(0.3)),
    },
    // Gemma 3 270M's: d256, 4 heads over 1; a window past one split-K partition.
    Case {
        heads: (4, 1),
        head_dim: 256,
        block_size: 16,
        seqs: &[(1500, 1), (700, 1), (3, 1)],
        layer: layer(Some(700), Some(0.0625)),
    },
    Case {
        heads: (4, 1),
        head_dim: 256,
        block_size: 16,
        seqs: &[(100, 100), (530, 18), (600, 1)],
        layer: layer(Some(512), None),
    },
    Case {
        heads: (4, 1),
        head_dim: 256,
        block_size: 16,
        seqs: &[(100, 100), (60, 17)],
        layer: layer(None, None),
    },
    // A Llama shape with a window (GQA kernel, split-K) and without (prefill regression).
    Case {
        heads: (32, 8),
        head_dim: 128,
        block_size: 16,
        seqs: &[(3000, 1), (1000, 1), (999, 1), (17, 1)],
        layer: layer(Some(1000), None),
    },
    Case {
        heads: (32, 8),
        head_dim: 128,
        block_size: 16,
        seqs: &[(300, 300), (90, 33), (50, 1)],
        layer: layer(None, None),
    },
    Case {
        heads: (9, 3),
        head_dim: 64,
        block_size: 16,
        seqs: &[(300, 300), (90, 33), (50, 1)],
        layer: layer(Some(37), Some(0.2)),
    },
];

/// Runs every case in `T`: decode cases through `paged_attention` (the kernels' decode
/// kernel), the others through `prefill_attention`.
pub fn check_layer_kernels<T: KernelType>(k: &CudaKernels, tol: f64) -> Vec<CheckRow> {
    CASES
        .iter()
        .map(|c| {
            let decode = c.seqs.iter().all(|&(_, new)| new == 1);
            let (nh, nkv) = c.heads;
            let kind = match (decode, k.decode_kernel) {
                (false, _) => "prefill",
                (true, DecodeKernel::Gqa) if gqa_kernel_built(c.head_dim, nh / nkv) => "gqa",
                (true, _) => "per-head",
            };
            let name = format!(
                "attention {kind} {} h{nh}/{nkv} d{} window {} scale {}",
                T::SUFFIX,
                c.head_dim,
                c.layer.window.map_or("none".into(), |w| w.to_string()),
                c.layer.scale.map_or("1/sqrt(d)".into(), |s| s.to_string()),
            );
            match run_case::<T>(k, c, decode) {
                Ok(e) => CheckRow {
                    name,
                    ok: e <= tol,
                    detail: format!("rel err {e:.1e} (limit {tol:.0e})"),
                },
                Err(e) => CheckRow {
                    name,
                    ok: false,
                    detail: format!("error: {e}"),
                },
            }
        })
        .collect()
}

fn run_case<T: KernelType>(k: &CudaKernels, c: &Case, decode: bool) -> CudaResult<f64> {
    let (nh, nkv) = c.heads;
    let (hd, bs) = (c.head_dim, c.block_size);
    let ns = c.seqs.len();
    let max_ctx = c.seqs.iter().map(|s| s.0).max().unwrap_or(1);
    let max_blocks = max_ctx.div_ceil(bs);
    let num_blocks = ns * max_blocks + 5;
    let width = nkv * hd;
    let mut seed = (hd * 131 + ns * 7 + nh) as u64;
    // Inputs rounded through T, so the reference reads exactly what the GPU reads.
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| T::from_f32(x).to_f32()).collect() };
    let mut qsl = vec![0usize];
    for &(_, new) in c.seqs {
        qsl.push(qsl[qsl.len() - 1] + new);
    }
    let tokens = qsl[ns];
    let q = round(crate::lcg::lcg_uniform(tokens * nh * hd, &mut seed));
    let kc = round(crate::lcg::lcg_uniform(num_blocks * bs * width, &mut seed));
    let vc = round(crate::lcg::lcg_uniform(num_blocks * bs * width, &mut seed));
    // Each sequence's blocks scattered over the cache.
    let tables: Vec<Vec<u32>> = (0..ns)
        .map(|s| {
            (0..max_blocks)
                .map(|b| ((b * ns + s) * 7919 % num_blocks) as u32)
                .collect()
        })
        .collect();
    let context_lens: Vec<usize> = c.seqs.iter().map(|s| s.0).collect();
    let shape = PagedAttentionShape::new(nh, nkv, hd, bs).for_layer(c.layer);
    let mut want = vec![0f32; tokens * nh * hd];
    let rows = StepRows {
        query_start_loc: &qsl,
        context_lens: &context_lens,
        prompt_lens: &[],
        block_tables: &tables,
    };
    paged_attention_cpu(shape, (&q, &kc, &vc), rows, &mut want);

    let st = &k.stream;
    let to_t = |v: &[f32]| -> Vec<T> { v.iter().map(|&x| T::from_f32(x)).collect() };
    let flat_tables: Vec<i32> = tables.iter().flatten().map(|&b| b as i32).collect();
    let ctx_i32: Vec<i32> = context_lens.iter().map(|&c| c as i32).collect();
    let (dk, dv, dq) = (
        st.clone_htod(&to_t(&kc))?,
        st.clone_htod(&to_t(&vc))?,
        st.clone_htod(&to_t(&q))?,
    );
    let (dt, dc) = (st.clone_htod(&flat_tables)?, st.clone_htod(&ctx_i32)?);
    let mut dout = st.clone_htod(&vec![T::from_f32(f32::NAN); tokens * nh * hd])?;
    let kv = PagedKv::new(
        (&dk, &dv),
        (&dt, &dc),
        DecodeShape::new((ns, nh, nkv, hd), bs, max_ctx),
    )
    .for_layer(c.layer);
    if decode {
        k.paged_attention(&mut dout.as_view_mut(), &dq.as_view(), kv, &mut None)?;
    } else {
        let tiles = plan_prefill_tiles(&qsl);
        let dtiles = st.clone_htod(&tiles)?;
        let qsl_i32: Vec<i32> = qsl.iter().map(|&x| x as i32).collect();
        let dqsl = st.clone_htod(&qsl_i32)?;
        let n_tiles = tiles.len() / 3;
        k.prefill_attention(
            &mut dout.as_view_mut(),
            &dq.as_view(),
            kv,
            &dqsl,
            (&dtiles, n_tiles),
        )?;
    }
    let got: Vec<f32> = st.clone_dtoh(&dout)?.into_iter().map(T::to_f32).collect();
    Ok(rel_err(&got, &want))
}
