//! Command-line interface: `ferrolm generate`, `ferrolm serve`, ...

mod bench;
mod bench_offline;
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
use ferrolm_engine::env::Switches;

#[derive(Parser, Debug)]
#[command(
    name = "ferrolm",
    version,
    about = "OpenAI-compatible LLM inference server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text or as one JSON object each (for log collectors). Colour codes only
    /// on a terminal.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
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
    // The environment, read once, here; passed down from now on.
    let env = Switches::from_env();
    // The server logs to stdout (one line per request); the other commands keep stdout for
    // their results and log the engine's lines (CUDA graphs, KV cache sizing) to stderr.
    init_tracing(
        matches!(cli.command, Command::Serve(_)),
        env.server.log_filter.as_deref(),
        cli.log_format == "json",
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

fn init_tracing(to_stdout: bool, log_filter: Option<&str>, json: bool) {
    use std::io::IsTerminal;
    let filter = log_filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let ansi = if to_stdout {
        std::io::stdout().is_terminal()
    } else {
        std::io::stderr().is_terminal()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi && !json);
    let _ = match (json, to_stdout) {
        (false, true) => builder.try_init(),
        (false, false) => builder.with_writer(std::io::stderr).try_init(),
        (true, true) => builder.json().flatten_event(true).try_init(),
        (true, false) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}
