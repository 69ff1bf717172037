//! Sampling a batch on the GPU (kernels/sampling.cu, the algorithm of `select.rs`): the
//! logits stay on the device; each row's touched tokens and draw parameters go up, its
//! sampled id comes back.

use candle_core::{DType, Storage, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::select::SampleSpec;
use crate::cuda::{contiguous_view, launch_config, sampling_module};
use crate::error::{EngineError, Result};

/// The chosen id of each row of `logits` (`[rows, vocab]`, any float type, on a CUDA
/// device); `rows` has one entry per logits row.
pub fn sample_on_device(logits: &Tensor, rows: &[SampleSpec]) -> Result<Vec<u32>> {
    let (n, vocab) = logits.dims2()?;
    if rows.len() != n || n == 0 {
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
    // A copy the processing may change (the logits tensor stays as it was).
    let src = contiguous_view::<f32>(cs, layout)?;
    let mut work: CudaSlice<f32> = unsafe { stream.alloc(n * vocab) }.map_err(e)?;
    stream.memcpy_dtod(&src, &mut work).map_err(e)?;
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
    if entries > 0 {
        let up_i = |v: &[i32]| stream.clone_htod(v).map_err(e);
        let up_f = |v: &[f32]| stream.clone_htod(v).map_err(e);
        let (dr, dt, df) = (up_i(&cols.0)?, up_i(&cols.1)?, up_i(&cols.2)?);
        let (db, dp, ds) = (up_f(&vals.0)?, up_f(&vals.1)?, up_f(&vals.2)?);
        let f = module.load_function("sampling_adjust").map_err(e)?;
        let (v_i, n_i) = (vocab as i32, entries as i32);
        let mut args = stream.launch_builder(&f);
        args.arg(&mut work)
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
    args.arg(&work)
        .arg(&v_i)
        .arg(&dtemp)
        .arg(&dk)
        .arg(&dp)
        .arg(&dm)
        .arg(&du)
        .arg(&mut out);
    // SAFETY: one CTA per row of `work`; every parameter array has `n` entries.
    unsafe { args.launch(launch_config((n as u32, 1, 1), 512)) }.map_err(e)?;
    let ids = stream.clone_dtoh(&out).map_err(e)?;
    Ok(ids.into_iter().map(|i| i as u32).collect())
}
