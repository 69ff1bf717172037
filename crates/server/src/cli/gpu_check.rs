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
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let mut k = CudaKernels::new(0).map_err(|e| anyhow::anyhow!("CUDA context: {e}"))?;
    let mut rows: Vec<CheckRow> = Vec::new();
    if !args.kernels_only {
        match ferrolm_engine::model::LlamaConfig::from_hf_json(&args.model_config) {
            Ok(cfg) => rows.extend(ferrolm_engine::model_check::model_checks(&cfg)),
            Err(e) => rows.push(CheckRow {
                name: "model checks".into(),
                ok: false,
                detail: format!("error: {e}"),
            }),
        }
    }
    // Both decode kernels: the per-head one and the GQA one the engine uses by default.
    for kind in [DecodeKernel::PerHead, DecodeKernel::Gqa] {
        k.decode_kernel = kind;
        rows.extend(check_kernels::<f32>(&k, 1e-4));
        rows.extend(check_kernels::<half::f16>(&k, 1e-2));
        rows.extend(check_kernels::<half::bf16>(&k, 1e-2));
    }
    for kind in [DecodeKernel::PerHead, DecodeKernel::Gqa] {
        k.decode_kernel = kind;
        match time_decode_attention(&k) {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(CheckRow {
                name: "timings".into(),
                ok: false,
                detail: format!("error: {e}"),
            }),
        }
    }
    println!("\n{:<58} {:<5} detail", "check", "ok");
    for r in &rows {
        println!(
            "{:<58} {:<5} {}",
            r.name,
            if r.ok { "PASS" } else { "FAIL" },
            r.detail
        );
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
