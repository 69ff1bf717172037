//! `ferrolm gpu-check`: our CUDA kernels against their CPU references on fresh random inputs,
//! then timings; ends with a compact table. Exit 1 if a check fails.

use ferrolm_engine::diagnostics::{run_gpu_checks, GpuCheckOptions};

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
    /// Only these groups, comma-separated: model, gemv, quant, sampling, attention, timings.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    println!("\n{:<58} {:<5} detail", "check", "ok");
    let opts = GpuCheckOptions {
        model_config: args.model_config,
        kernels_only: args.kernels_only,
        model_only: args.model_only,
        decode_kernel: args.decode_kernel,
        only: args.only,
    };
    // Each row is printed as soon as it is known (a run cut short keeps what it printed).
    let rows = run_gpu_checks(&opts, |r| {
        println!(
            "{:<58} {:<5} {}",
            r.name,
            if r.ok { "PASS" } else { "FAIL" },
            r.detail
        )
    })?;
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "gpu-check: {} passed, {} failed",
        rows.len() - failed,
        failed
    );
    anyhow::ensure!(failed == 0, "{failed} GPU checks failed");
    Ok(())
}
