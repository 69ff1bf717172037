//! `ferrolm gpu-check`: our CUDA kernels against their CPU references on fresh random inputs,
//! then timings; ends with a compact table. Exit 1 if a check fails.

use ferrolm_engine::attention::cuda::{
    check_kernels, time_decode_attention, CheckRow, CudaKernels, DecodeKernel,
};

#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// The small model (config.json, dummy weights) of the end-to-end GPU-vs-CPU checks.
    #[arg(long, default_value = "models/configs/tiny-llama.json")]
    pub model_config: std::path::PathBuf,
    /// Only the kernel checks and timings.
    #[arg(long)]
    pub kernels_only: bool,
    /// Only the end-to-end model checks.
    #[arg(long)]
    pub model_only: bool,
    /// Decode kernels to check and time: per-head, gqa or both.
    #[arg(long, default_value = "both")]
    pub decode_kernel: String,
}

/// Prints a row as soon as it is known (a run cut short keeps what it printed).
fn print_row(r: &CheckRow) {
    println!(
        "{:<58} {:<5} {}",
        r.name,
        if r.ok { "PASS" } else { "FAIL" },
        r.detail
    );
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let mut k = CudaKernels::new(0).map_err(|e| anyhow::anyhow!("CUDA context: {e}"))?;
    let kinds: Vec<DecodeKernel> = match args.decode_kernel.as_str() {
        "per-head" | "v1" => vec![DecodeKernel::PerHead],
        "gqa" => vec![DecodeKernel::Gqa],
        "both" => vec![DecodeKernel::PerHead, DecodeKernel::Gqa],
        other => anyhow::bail!("--decode-kernel {other:?}: per-head, gqa or both"),
    };
    let mut rows: Vec<CheckRow> = Vec::new();
    println!("\n{:<58} {:<5} detail", "check", "ok");
    let add = |new: Vec<CheckRow>, rows: &mut Vec<CheckRow>| {
        for r in new {
            print_row(&r);
            rows.push(r);
        }
    };
    if !args.kernels_only {
        // The engine's decode kernel in the model checks is FERROLM_DECODE_KERNEL's.
        match ferrolm_engine::model::LlamaConfig::from_hf_json(&args.model_config) {
            Ok(cfg) => add(ferrolm_engine::model_check::model_checks(&cfg), &mut rows),
            Err(e) => add(
                vec![CheckRow {
                    name: "model checks".into(),
                    ok: false,
                    detail: format!("error: {e}"),
                }],
                &mut rows,
            ),
        }
    }
    if !args.model_only {
        match ferrolm_engine::attention::cuda::model_device(0) {
            Ok(dev) => add(ferrolm_engine::ops::gemv_checks(&dev), &mut rows),
            Err(e) => add(
                vec![CheckRow {
                    name: "gemv checks".into(),
                    ok: false,
                    detail: format!("error: {e}"),
                }],
                &mut rows,
            ),
        }
    }
    let kinds = if args.model_only { Vec::new() } else { kinds };
    for &kind in &kinds {
        k.decode_kernel = kind;
        add(check_kernels::<f32>(&k, 1e-4), &mut rows);
        add(check_kernels::<half::f16>(&k, 1e-2), &mut rows);
        add(check_kernels::<half::bf16>(&k, 1e-2), &mut rows);
    }
    for &kind in &kinds {
        k.decode_kernel = kind;
        match time_decode_attention(&k) {
            Ok(r) => add(r, &mut rows),
            Err(e) => add(
                vec![CheckRow {
                    name: "timings".into(),
                    ok: false,
                    detail: format!("error: {e}"),
                }],
                &mut rows,
            ),
        }
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "gpu-check: {} passed, {} failed",
        rows.len() - failed,
        failed
    );
    anyhow::ensure!(failed == 0, "{failed} GPU checks failed");
    Ok(())
}
