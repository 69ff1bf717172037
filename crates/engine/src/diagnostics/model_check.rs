//! End-to-end GPU checks (`ferrolm gpu-check`): a small dummy model on the GPU against the
//! same weights on the CPU, teacher-forced through a plan of steps that mixes prefill
//! chunks, mixed prefill+decode steps and pure decode steps (so both attention kernels, the
//! fused ops and the KV writes are all in the path), and the GPU against itself with each
//! sequence alone (batch invariance).

use candle_core::{DType, Device};

use crate::batch::{FlatBatch, LogitsWanted};
use crate::engine::random_prompts;
use crate::error::{EngineError, Result};
use crate::instrument::CheckRow;
use crate::model::{LlamaConfig, LlamaModel};
use crate::worker::ModelRunner;

/// Per step: (sequence, new tokens).
type Plan = Vec<Vec<(usize, usize)>>;

/// Chunked prefill, a mixed step, then one token per sequence per step to the end.
fn mixed_plan(lens: &[usize]) -> Plan {
    let mut plan: Plan = vec![
        vec![(0, 40), (1, 20)],
        vec![(0, 1), (1, 30)],
        vec![(0, 1), (1, 1), (2, 35)],
    ];
    let mut done = [42usize, 51, 35];
    while (0..3).any(|s| done[s] < lens[s]) {
        let step: Vec<(usize, usize)> = (0..3)
            .filter(|&s| done[s] < lens[s])
            .map(|s| (s, 1))
            .collect();
        for &(s, _) in &step {
            done[s] += 1;
        }
        plan.push(step);
    }
    plan
}

fn alone_plan(lens: &[usize]) -> Plan {
    (0..lens.len()).map(|s| vec![(s, lens[s])]).collect()
}

/// Logits rows `[seq][position]` from running `plan` over `seqs`.
fn run_plan(model: &LlamaModel, seqs: &[Vec<u32>], plan: &Plan) -> Result<Vec<Vec<Vec<f32>>>> {
    Ok(run_plan_with(model, seqs, plan, false)?.0)
}

/// [`run_plan`], its decode steps replayed from CUDA graphs when `graphs` is set; also
/// returns how many steps were replayed.
fn run_plan_with(
    model: &LlamaModel,
    seqs: &[Vec<u32>],
    plan: &Plan,
    graphs: bool,
) -> Result<(Vec<Vec<Vec<f32>>>, u64)> {
    let bs = 16;
    let mut tables = Vec::new();
    let mut next = 0u32;
    for s in seqs {
        let nb = s.len().div_ceil(bs) as u32;
        tables.push((next..next + nb).collect::<Vec<u32>>());
        next += nb;
    }
    // On the CPU these runs are the GPU's reference: f32 attention, not llama.cpp's f16.
    let mut runner = if model.device().is_cpu() {
        ModelRunner::new_cpu_reference(model, next as usize, bs)
    } else {
        ModelRunner::new(model, next as usize, bs)?
    };
    if graphs {
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(1);
        runner
            .capture_decode_graphs(seqs.len(), longest, false)?
            .ok_or_else(|| EngineError::Cuda("no CUDA graphs captured".into()))?;
    }
    let mut done = vec![0usize; seqs.len()];
    let mut out = vec![Vec::new(); seqs.len()];
    for step in plan {
        let mut batch = FlatBatch::default();
        for &(s, k) in step {
            batch.push_seq(
                &seqs[s][done[s]..done[s] + k],
                done[s],
                &tables[s],
                bs,
                LogitsWanted::All,
            );
            done[s] += k;
        }
        let logits = runner.execute(&batch)?.to_vec2::<f32>()?;
        let mut r = 0;
        for &(s, k) in step {
            out[s].extend(logits[r..r + k].iter().cloned());
            r += k;
        }
    }
    let replays = runner.graphs.as_ref().map_or(0, |g| g.replays);
    Ok((out, replays))
}

fn top2(row: &[f32]) -> (usize, f32) {
    let mut best = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v, best.1);
        } else if v > best.2 {
            best.2 = v;
        }
    }
    (best.0, best.1 - best.2)
}

/// Worst relative (to the row's largest |logit|) and absolute difference, and argmax
/// changes among rows whose reference top-1/top-2 margin is at least `margin`.
fn compare(want: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>], margin: f32) -> (f32, f32, usize, usize) {
    let (mut rel, mut abs, mut flips, mut checked) = (0f32, 0f32, 0, 0);
    for (ws, gs) in want.iter().zip(got) {
        for (w, g) in ws.iter().zip(gs) {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            for (a, b) in w.iter().zip(g) {
                let d = if b.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                };
                abs = abs.max(d);
                rel = rel.max(d / scale);
            }
            let (wa, m) = top2(w);
            if m >= margin {
                checked += 1;
                if top2(g).0 != wa {
                    flips += 1;
                }
            }
        }
    }
    (rel, abs, flips, checked)
}

/// The end-to-end rows of `gpu-check` for the model described by `config`.
pub fn model_checks(config: &LlamaConfig) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    let lens = [50usize, 60, 45];
    let seqs: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| random_prompts(1, n, 5, config.vocab_size as u32, 100 + i as u64).remove(0))
        .collect();
    let name = |s: &str| {
        format!(
            "model {s} ({} layers, d{})",
            config.num_layers, config.head_dim
        )
    };
    let mut push = |n: String, r: Result<(bool, String)>| rows.push(CheckRow::from_result(n, r));
    let gpu = match crate::cuda::model_device(0, false) {
        Ok(d) => d,
        Err(e) => {
            push(name("gpu"), Err(e.into()));
            return rows;
        }
    };
    let mixed = mixed_plan(&lens);
    let seed = 11;
    let cpu_ref = |round: Option<DType>| -> Result<Vec<Vec<Vec<f32>>>> {
        let m = LlamaModel::dummy_rounded(config.clone(), DType::F32, round, &Device::Cpu, seed)?;
        run_plan(&m, &seqs, &mixed)
    };
    // f32: GPU vs CPU, then the GPU with each sequence alone.
    let f32_rows = (|| -> Result<(Vec<Vec<Vec<f32>>>, Vec<Vec<Vec<f32>>>)> {
        let g = LlamaModel::dummy(config.clone(), DType::F32, &gpu, seed)?;
        Ok((
            run_plan(&g, &seqs, &mixed)?,
            run_plan(&g, &seqs, &alone_plan(&lens))?,
        ))
    })();
    let want = cpu_ref(None);
    match (&want, &f32_rows) {
        (Ok(want), Ok((got, alone))) => {
            // Within 1e-3 (relative) and no argmax flips, in f32.
            let close = |want: &[Vec<Vec<f32>>],
                         got: &[Vec<Vec<f32>>],
                         (before, after): (&str, &str)|
             -> Result<(bool, String)> {
                let (rel, abs, flips, checked) = compare(want, got, 1e-3);
                Ok((
                    rel <= 1e-3 && flips == 0,
                    format!("{before}max rel {rel:.1e}{after} · max abs {abs:.1e} · argmax {flips}/{checked} differ"),
                ))
            };
            push(
                name("f32 GPU vs CPU"),
                close(want, got, ("", " (limit 1e-3)")),
            );
            let invariance = close(got, alone, ("mixed vs alone: ", ""));
            push(name("f32 GPU batch invariance"), invariance);
        }
        (Err(e), _) | (_, Err(e)) => push(name("f32"), Err(EngineError::Check(e.to_string()))),
    }
    // bf16: the GPU in bf16 against the CPU in f32 on the same (bf16-rounded) weights. Each
    // layer rounds the residual stream and its activations to bf16 again, so the error grows
    // with depth: 1.25e-2 of logit per layer (H200: 4-layer Llama shape 3.7e-2, 6-layer
    // Gemma 3 shape 6.3e-2, i.e. ~1e-2 a layer for both).
    let bf16_limit = 1.25e-2 * config.num_layers as f32;
    let bf = (|| -> Result<(bool, String)> {
        let want = cpu_ref(Some(DType::BF16))?;
        let g = LlamaModel::dummy(config.clone(), DType::BF16, &gpu, seed)?;
        let got = run_plan(&g, &seqs, &mixed)?;
        let (rel, abs, flips, checked) = compare(&want, &got, 1e-3);
        Ok((
            abs <= bf16_limit,
            format!("max abs {abs:.1e} (limit {bf16_limit:.1e}) · max rel {rel:.1e} · argmax {flips}/{checked} differ"),
        ))
    })();
    push(name("bf16 GPU vs CPU f32"), bf);
    // CUDA graphs: the decode steps replayed from graphs (3 sequences padded to 4 rows)
    // against the eager steps, in f32; then bf16 with graphs against the CPU.
    let graphs = (|| -> Result<(bool, String)> {
        let g = LlamaModel::dummy(config.clone(), DType::F32, &gpu, seed)?;
        let eager = run_plan(&g, &seqs, &mixed)?;
        let (got, replays) = run_plan_with(&g, &seqs, &mixed, true)?;
        let (rel, abs, flips, checked) = compare(&eager, &got, 1e-3);
        Ok((
            replays > 0 && rel <= 1e-3 && flips == 0,
            format!("{replays} steps replayed · max rel {rel:.1e} · max abs {abs:.1e} · argmax {flips}/{checked} differ"),
        ))
    })();
    push(name("f32 cuda graphs vs eager"), graphs);
    // Stacked Q/K/V and gate/up projections (one matmul each, the rope_split_qkv and
    // silu_mul_packed kernels) against the CPU's split ones, in f32.
    let stacked = (|| -> Result<(bool, String)> {
        let want = cpu_ref(None)?;
        let mut g = LlamaModel::dummy(config.clone(), DType::F32, &gpu, seed)?;
        g.stack_projections()?;
        let got = run_plan(&g, &seqs, &mixed)?;
        let (rel, abs, flips, checked) = compare(&want, &got, 1e-3);
        Ok((
            rel <= 1e-3 && flips == 0,
            format!("max rel {rel:.1e} (limit 1e-3) · max abs {abs:.1e} · argmax {flips}/{checked} differ"),
        ))
    })();
    push(name("f32 stacked proj GPU vs CPU"), stacked);
    let bf_graphs = (|| -> Result<(bool, String)> {
        let want = cpu_ref(Some(DType::BF16))?;
        let g = LlamaModel::dummy(config.clone(), DType::BF16, &gpu, seed)?;
        let (got, replays) = run_plan_with(&g, &seqs, &mixed, true)?;
        let (rel, abs, flips, checked) = compare(&want, &got, 1e-3);
        Ok((
            replays > 0 && abs <= bf16_limit,
            format!("{replays} replayed · max abs {abs:.1e} (limit {bf16_limit:.1e}) · max rel {rel:.1e} · argmax {flips}/{checked} differ"),
        ))
    })();
    push(name("bf16 cuda graphs vs CPU f32"), bf_graphs);
    rows
}
