//! Command-line interface: `ferrolm generate`, `ferrolm serve`, ...

mod bench;
mod bench_offline;
mod env;
mod generate;
#[cfg(feature = "cuda")]
mod gpu_check;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferrolm",
    version,
    about = "OpenAI-compatible LLM inference server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a completion for one prompt (greedy), without HTTP.
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-compatible API.
    Serve(serve::ServeArgs),
    /// Benchmarks (`bench serve`: load-test any OpenAI-compatible server).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check our CUDA kernels against their CPU references and time them (GPU hosts).
    #[cfg(feature = "cuda")]
    GpuCheck(gpu_check::GpuCheckArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(b) => bench::run(b),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(a) => gpu_check::run(a),
    }
}
