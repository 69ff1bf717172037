//! Sampling a batch on the GPU (kernels/sampling.cu, the algorithm of `select.rs`): the
//! logits stay on the device; each row's touched tokens and draw parameters go up, its
//! sampled id comes back.

use candle_core::{DType, Storage, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::select::SampleSpec;
use super::{TokenLogprob, MAX_LOGPROBS};
use crate::cuda::{contiguous_view, launch_config, sampling_module};
use crate::error::{EngineError, Result};

/// The chosen id of each row of `logits` (`[rows, vocab]`, any float type, on a CUDA
/// device), with its log-probs where the row's spec asks; `rows` has one entry per row.
pub fn sample_on_device(
    logits: &Tensor,
    rows: &[SampleSpec],
) -> Result<Vec<(u32, Option<TokenLogprob>)>> {
    let (n, vocab) = logits.dims2()?;
    if rows.len() == n && n == 0 {
        // A step of prefill chunks that end before their prompts: no row to sample.
        return Ok(Vec::new());
    }
    if rows.len() != n {
        return Err(EngineError::Shape(format!(
            "device sampling: {} rows of parameters for {n} logits rows",
            rows.len()
        )));
    }
    let l = logits.to_dtype(DType::F32)?.contiguous()?;
    let (st, layout) = l.storage_and_layout();
    let Storage::Cuda(cs) = &*st else {
        return Err(EngineError::Shape(
            "device sampling: logits are not on a GPU".into(),
        ));
    };
    let stream = cs.device.cuda_stream();
    let module = sampling_module(&stream)?;
    let e = EngineError::cuda;
    let src = contiguous_view::<f32>(cs, layout)?;
    // Processing entries, flattened over rows.
    let mut cols: (Vec<i32>, Vec<i32>, Vec<i32>) = Default::default();
    let mut vals: (Vec<f32>, Vec<f32>, Vec<f32>) = Default::default();
    for (r, row) in rows.iter().enumerate() {
        for a in row.adjust.iter().filter(|a| (a.token as usize) < vocab) {
            cols.0.push(r as i32);
            cols.1.push(a.token as i32);
            cols.2.push(
                i32::from(a.bias.is_some())
                    | (i32::from(a.repetition.is_some()) << 1)
                    | (i32::from(a.sub.is_some()) << 2)
                    | (i32::from(a.mask) << 3),
            );
            vals.0.push(a.bias.unwrap_or(0.0));
            vals.1.push(a.repetition.unwrap_or(1.0));
            vals.2.push(a.sub.unwrap_or(0.0));
        }
    }
    let entries = cols.0.len();
    // Rows with entries are processed in a copy (the logits tensor stays as it was, for the
    // raw log-probs); without entries the draw reads the logits themselves: no 4-bytes-a-
    // logit allocation and copy (513 MB at 1000 rows of 128k).
    let mut work: Option<CudaSlice<f32>> = None;
    if entries > 0 {
        // SAFETY: every element is written by the copy below before any read.
        let mut copy: CudaSlice<f32> = unsafe { stream.alloc(n * vocab) }.map_err(e)?;
        stream.memcpy_dtod(&src, &mut copy).map_err(e)?;
        let work = work.insert(copy);
        let up_i = |v: &[i32]| stream.clone_htod(v).map_err(e);
        let up_f = |v: &[f32]| stream.clone_htod(v).map_err(e);
        let (dr, dt, df) = (up_i(&cols.0)?, up_i(&cols.1)?, up_i(&cols.2)?);
        let (db, dp, ds) = (up_f(&vals.0)?, up_f(&vals.1)?, up_f(&vals.2)?);
        let f = module.load_function("sampling_adjust").map_err(e)?;
        let (v_i, n_i) = (vocab as i32, entries as i32);
        let mut args = stream.launch_builder(&f);
        args.arg(work)
            .arg(&v_i)
            .arg(&n_i)
            .arg(&dr)
            .arg(&dt)
            .arg(&df)
            .arg(&db)
            .arg(&dp)
            .arg(&ds);
        // SAFETY: one thread per entry; each entry's row and token lie inside `work`.
        unsafe { args.launch(launch_config((entries.div_ceil(256) as u32, 1, 1), 256)) }
            .map_err(e)?;
    }
    let temp: Vec<f32> = rows.iter().map(|r| r.draw.temperature).collect();
    let top_k: Vec<i32> = rows
        .iter()
        .map(|r| r.draw.top_k.min(i32::MAX as u32) as i32)
        .collect();
    let top_p: Vec<f32> = rows.iter().map(|r| r.draw.top_p).collect();
    let min_p: Vec<f32> = rows.iter().map(|r| r.draw.min_p).collect();
    let u: Vec<f64> = rows.iter().map(|r| r.draw.u).collect();
    let (dtemp, dk) = (
        stream.clone_htod(&temp).map_err(e)?,
        stream.clone_htod(&top_k).map_err(e)?,
    );
    let (dp, dm) = (
        stream.clone_htod(&top_p).map_err(e)?,
        stream.clone_htod(&min_p).map_err(e)?,
    );
    let du = stream.clone_htod(&u).map_err(e)?;
    let mut out: CudaSlice<i32> = stream.alloc_zeros(n).map_err(e)?;
    let f = module.load_function("sampling_select").map_err(e)?;
    let v_i = vocab as i32;
    let mut args = stream.launch_builder(&f);
    match &work {
        Some(w) => args.arg(w),
        None => args.arg(&src),
    };
    args.arg(&v_i)
        .arg(&dtemp)
        .arg(&dk)
        .arg(&dp)
        .arg(&dm)
        .arg(&du)
        .arg(&mut out);
    // SAFETY: one CTA per row of `work`; every parameter array has `n` entries.
    unsafe { args.launch(launch_config((n as u32, 1, 1), 512)) }.map_err(e)?;
    let logprobs = if rows.iter().any(|r| r.logprobs.is_some()) {
        logprobs_on_device(&src, vocab, rows, &out)?
    } else {
        vec![None; n]
    };
    let ids = stream.clone_dtoh(&out).map_err(e)?;
    Ok(ids.into_iter().map(|i| i as u32).zip(logprobs).collect())
}

/// The raw rows' log-probs for the rows that ask (`sampling_logprobs`): the chosen token's
/// log-prob and rank, and the best `k`, sorted here as `top_logprobs` sorts them.
fn logprobs_on_device(
    raw: &cudarc::driver::CudaView<'_, f32>,
    vocab: usize,
    rows: &[SampleSpec],
    chosen: &CudaSlice<i32>,
) -> Result<Vec<Option<TokenLogprob>>> {
    let n = rows.len();
    let stream = chosen.stream().clone();
    let e = EngineError::cuda;
    let kmax = MAX_LOGPROBS;
    let want: Vec<i32> = rows
        .iter()
        .map(|r| r.logprobs.map_or(-1, |k| k.min(kmax) as i32))
        .collect();
    let dwant = stream.clone_htod(&want).map_err(e)?;
    let mut clp: CudaSlice<f32> = stream.alloc_zeros(n).map_err(e)?;
    let mut rank: CudaSlice<i32> = stream.alloc_zeros(n).map_err(e)?;
    let mut ids: CudaSlice<i32> = stream.alloc_zeros(n * kmax).map_err(e)?;
    let mut lps: CudaSlice<f32> = stream.alloc_zeros(n * kmax).map_err(e)?;
    let mut count: CudaSlice<i32> = stream.alloc_zeros(n).map_err(e)?;
    let f = sampling_module(&stream)?
        .load_function("sampling_logprobs")
        .map_err(e)?;
    let (v_i, k_i) = (vocab as i32, kmax as i32);
    let mut args = stream.launch_builder(&f);
    args.arg(raw)
        .arg(&v_i)
        .arg(&dwant)
        .arg(chosen)
        .arg(&k_i)
        .arg(&mut clp)
        .arg(&mut rank)
        .arg(&mut ids)
        .arg(&mut lps)
        .arg(&mut count);
    // SAFETY: one CTA per row; the outputs hold `kmax` entries a row.
    unsafe { args.launch(launch_config((n as u32, 1, 1), 512)) }.map_err(e)?;
    let (tok, clp) = (
        stream.clone_dtoh(chosen).map_err(e)?,
        stream.clone_dtoh(&clp).map_err(e)?,
    );
    let rank = stream.clone_dtoh(&rank).map_err(e)?;
    let (ids, lps) = (
        stream.clone_dtoh(&ids).map_err(e)?,
        stream.clone_dtoh(&lps).map_err(e)?,
    );
    let count = stream.clone_dtoh(&count).map_err(e)?;
    Ok((0..n)
        .map(|r| {
            let k = rows[r].logprobs?;
            let got = count[r].max(0) as usize;
            let mut top: Vec<(u32, f32)> = (0..got)
                .map(|j| (ids[r * kmax + j] as u32, lps[r * kmax + j]))
                .collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(k);
            Some(TokenLogprob {
                token_id: tok[r] as u32,
                logprob: clp[r],
                rank: rank[r].max(1) as usize,
                top,
            })
        })
        .collect())
}
