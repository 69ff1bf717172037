//! `ferrolm gpu-check`: the model checks, the skinny matmul's, then every attention kernel
//! against its CPU reference for each decode kernel, then timings. Each row is handed to
//! `report` as soon as it is known (a run cut short keeps what it printed).

use std::path::PathBuf;

use crate::attention::cuda::{
    check_kernels, check_layer_kernels, time_decode_attention, CudaKernels, DecodeKernel,
};
use crate::error::{EngineError, Result};
use crate::instrument::CheckRow;
use crate::model::LlamaConfig;

/// Which checks to run.
#[derive(Debug, Clone)]
pub struct GpuCheckOptions {
    /// The small model (config.json, dummy weights) of the end-to-end GPU-vs-CPU checks.
    pub model_config: PathBuf,
    pub kernels_only: bool,
    pub model_only: bool,
    /// Decode kernels to check and time: `per-head`, `gqa` or `both`.
    pub decode_kernel: String,
    /// Only these groups (empty: all): model, gemv, quant, sampling, attention, timings.
    pub only: Vec<String>,
}

/// The groups `--only` names.
pub const CHECK_GROUPS: [&str; 6] = ["model", "gemv", "quant", "sampling", "attention", "timings"];

/// Runs the checks; returns every row.
pub fn run_gpu_checks(
    opts: &GpuCheckOptions,
    mut report: impl FnMut(&CheckRow),
) -> Result<Vec<CheckRow>> {
    let mut k = CudaKernels::new(0).map_err(EngineError::cuda)?;
    let kinds: Vec<DecodeKernel> = match opts.decode_kernel.as_str() {
        "per-head" | "v1" => vec![DecodeKernel::PerHead],
        "gqa" => vec![DecodeKernel::Gqa],
        "both" => vec![DecodeKernel::PerHead, DecodeKernel::Gqa],
        other => {
            return Err(EngineError::Config(format!(
                "--decode-kernel {other:?}: per-head, gqa or both"
            )))
        }
    };
    if let Some(bad) = opts
        .only
        .iter()
        .find(|g| !CHECK_GROUPS.contains(&g.as_str()))
    {
        return Err(EngineError::Config(format!(
            "--only {bad:?}: one of {CHECK_GROUPS:?}"
        )));
    }
    let group = |g: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == g);
    let mut rows: Vec<CheckRow> = Vec::new();
    let mut add = |new: Vec<CheckRow>| {
        for r in new {
            report(&r);
            rows.push(r);
        }
    };
    let failed = |name: &str, e: &dyn std::fmt::Display| {
        vec![CheckRow::from_result::<&dyn std::fmt::Display>(
            name,
            Err(e),
        )]
    };
    if !opts.kernels_only && group("model") {
        // The engine's decode kernel in the model checks is FERROLM_DECODE_KERNEL's.
        match LlamaConfig::from_hf_json(&opts.model_config) {
            Ok(cfg) => add(super::model_check::model_checks(&cfg)),
            Err(e) => add(failed("model checks", &e)),
        }
    }
    if !opts.model_only {
        match crate::cuda::model_device(0, false) {
            Ok(dev) => {
                if group("gemv") {
                    add(crate::ops::gemv_checks(&dev));
                }
                if group("quant") {
                    add(crate::quant::device::quant_matmul_checks(&dev));
                }
                if group("sampling") {
                    add(crate::sampling::sampling_checks(&dev));
                }
            }
            Err(e) => add(failed("gemv checks", &e)),
        }
    }
    let kinds = if opts.model_only { Vec::new() } else { kinds };
    let checked = if group("attention") { &kinds[..] } else { &[] };
    for &kind in checked {
        k.decode_kernel = kind;
        add(check_kernels::<f32>(&k, 1e-4));
        add(check_kernels::<half::f16>(&k, 1e-2));
        add(check_kernels::<half::bf16>(&k, 1e-2));
        // Sliding windows, custom scales, head sizes 32 and 256 (decode and prefill).
        add(check_layer_kernels::<f32>(&k, 1e-4));
        add(check_layer_kernels::<half::bf16>(&k, 1e-2));
    }
    let timed = if group("timings") { &kinds[..] } else { &[] };
    for &kind in timed {
        k.decode_kernel = kind;
        match time_decode_attention(&k) {
            Ok(r) => add(r),
            Err(e) => add(failed("timings", &e)),
        }
    }
    Ok(rows)
}
