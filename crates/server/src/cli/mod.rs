//! Command-line interface: `ferrolm generate`, `ferrolm serve`, ...

mod bench;
mod bench_offline;
mod env;
mod generate;
#[cfg(feature = "cuda")]
mod gpu_check;
mod http;
mod hub_download;
mod inspect;
mod limits;
mod model_args;
mod serve;

use clap::{Parser, Subcommand};
use env::Environment;

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
    /// What a GGUF file or a Hugging Face checkpoint holds, without loading the weights.
    Inspect(inspect::InspectArgs),
    /// Benchmarks (`bench serve`: load-test any OpenAI-compatible server).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check our CUDA kernels against their CPU references and time them (GPU hosts).
    #[cfg(feature = "cuda")]
    GpuCheck(gpu_check::GpuCheckArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // The server logs to stdout (one line per request); the other commands keep stdout for
    // their results and log the engine's lines (CUDA graphs, KV cache sizing) to stderr.
    // The environment, read once, here; passed down from now on.
    let env = Environment::from_env();
    init_tracing(
        matches!(cli.command, Command::Serve(_)),
        env.log_filter.as_deref(),
    );
    match cli.command {
        Command::Generate(a) => generate::run(a, &env),
        Command::Serve(a) => serve::run(a, &env),
        Command::Inspect(a) => inspect::run(a, &env),
        Command::Bench(b) => bench::run(b, &env),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(a) => gpu_check::run(a),
    }
}

fn init_tracing(to_stdout: bool, log_filter: Option<&str>) {
    let filter = log_filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if to_stdout {
        builder.try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
}
