//! `ferrolm bench serve`: a load generator for any OpenAI-compatible server (ours, vLLM,
//! llama-server), reporting what `vllm bench serve` reports: request and token throughput,
//! TTFT, TPOT, ITL and end-to-end latency (mean, median, p99), as a table and as JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrolm_engine::env::Switches;
use ferrolm_engine::gguf::GgufFile;
use ferrolm_engine::loader::default_model_path;
use ferrolm_engine::tokenizer::Tokenizer;
use futures_util::StreamExt;
use serde::Serialize;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Load-test a running OpenAI-compatible server.
    Serve(ServeBenchArgs),
    /// Offline throughput: N random prompts of --input-len, each to --output-len.
    Throughput(super::bench_offline::ThroughputArgs),
    /// Offline latency of one batch: prefill and decode step times.
    Latency(super::bench_offline::LatencyArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeBenchArgs {
    /// Base URL of the server (without /v1).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name to send.
    #[arg(long)]
    pub model: String,
    /// GGUF whose tokenizer makes the prompts (default: the default model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature of every request (0: greedy), as vLLM's `bench serve`.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus cut of every request (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Requests in flight at most (default: all).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Requests per second (Poisson arrivals; `inf` sends all at once).
    #[arg(long, default_value = "inf")]
    pub request_rate: String,
    /// Gamma shape of inter-arrival times: 1 is Poisson, lower is burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_s: u64,
    /// Fail a request whose response sends nothing for this many seconds.
    #[arg(long, default_value_t = 120)]
    pub read_timeout_s: u64,
    /// Optional API key (Bearer).
    #[arg(long, env = "OPENAI_API_KEY")]
    pub api_key: Option<String>,
    /// A JSON schema file: every request's output follows it (`response_format`
    /// json_schema), to measure structured outputs' cost.
    #[arg(long = "structured-json-schema", value_parser = read_schema)]
    pub structured: Option<serde_json::Value>,
}

/// Public-domain English prose the prompts are cut from (Mary Shelley, Frankenstein, 1818).
fn read_schema(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

const CORPUS: &str = "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise which you have regarded with such evil forebodings. I arrived here yesterday, and my first task is to assure my dear sister of my welfare and increasing confidence in the success of my undertaking. I am already far north of London, and as I walk in the streets of Petersburgh, I feel a cold northern breeze play upon my cheeks, which braces my nerves and fills me with delight. Do you understand this feeling? This breeze, which has travelled from the regions towards which I am advancing, gives me a foretaste of those icy climes. Inspirited by this wind of promise, my daydreams become more fervent and vivid. I try in vain to be persuaded that the pole is the seat of frost and desolation; it ever presents itself to my imagination as the region of beauty and delight. There, Margaret, the sun is for ever visible, its broad disk just skirting the horizon and diffusing a perpetual splendour. There, for with your leave, my sister, I will put some trust in preceding navigators, there snow and frost are banished; and, sailing over a calm sea, we may be wafted to a land surpassing in wonders and in beauty every region hitherto discovered on the habitable globe. Its productions and features may be without example, as the phenomena of the heavenly bodies undoubtedly are in those undiscovered solitudes. What may not be expected in a country of eternal light? I may there discover the wondrous power which attracts the needle and may regulate a thousand celestial observations that require only this voyage to render their seeming eccentricities consistent for ever.";

#[derive(Debug, Clone, Default, Serialize)]
struct RequestResult {
    ok: bool,
    error: Option<String>,
    prompt_len: usize,
    output_tokens: usize,
    ttft_s: f64,
    e2e_s: f64,
    itl_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub date: String,
    pub url: String,
    pub model: String,
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub max_concurrency: Option<usize>,
    pub request_rate: String,
    pub completed: usize,
    pub failed: usize,
    pub duration: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub mean_ttft_ms: f64,
    pub median_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    pub mean_tpot_ms: f64,
    pub median_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub mean_itl_ms: f64,
    pub median_itl_ms: f64,
    pub p99_itl_ms: f64,
    pub mean_e2el_ms: f64,
    pub median_e2el_ms: f64,
    pub p99_e2el_ms: f64,
    /// Each completed request's time to first token, seconds, in the order the requests were
    /// sent (as vLLM's result file lists them).
    pub ttfts: Vec<f64>,
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang), from the deterministic uniform stream.
fn gamma_draw(shape: f64, seed: u64, i: u64) -> f64 {
    use ferrolm_engine::sampling::draw_uniform;
    let u = |j: u64| draw_uniform(seed, i.wrapping_mul(1 << 20).wrapping_add(j)).max(1e-300);
    if shape < 1.0 {
        return gamma_draw(shape + 1.0, seed, i) * u(999_999).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    for j in 0..1000u64 {
        // Box-Muller normal.
        let z = (-2.0 * u(4 * j).ln()).sqrt() * (2.0 * std::f64::consts::PI * u(4 * j + 1)).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        if u(4 * j + 2).ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
    shape
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Linear interpolation, as numpy's default.
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn stats_ms(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    (
        mean * 1e3,
        percentile(&v, 50.0) * 1e3,
        percentile(&v, 99.0) * 1e3,
    )
}

/// Prompts of exactly `len` tokens: windows of the corpus's token stream at different offsets.
fn make_prompts(tok: &Tokenizer, n: usize, len: usize, seed: u64) -> anyhow::Result<Vec<Vec<u32>>> {
    let ids = tok.encode(CORPUS, false)?;
    anyhow::ensure!(!ids.is_empty(), "the tokenizer made no tokens");
    let mut out = Vec::with_capacity(n);
    // Distinct start offsets (stride 37): prompts share no prefix, so no server's prompt
    // cache turns a prefill into a lookup.
    let base = (ferrolm_engine::sampling::draw_uniform(seed, 0) * ids.len() as f64) as usize;
    for i in 0..n {
        let start = (base + i * 37) % ids.len();
        out.push((0..len).map(|j| ids[(start + j) % ids.len()]).collect());
    }
    Ok(out)
}

async fn one_request(
    client: &reqwest::Client,
    args: &ServeBenchArgs,
    prompt: Vec<u32>,
) -> RequestResult {
    let mut r = RequestResult {
        prompt_len: prompt.len(),
        ..Default::default()
    };
    let body = serde_json::json!({
        "model": args.model,
        "prompt": prompt,
        "max_tokens": args.output_len,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "ignore_eos": args.ignore_eos,
        "response_format": args.structured.as_ref().map(|schema| serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": "bench", "schema": schema},
        })),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let t0 = Instant::now();
    let mut req = client
        .post(format!("{}/v1/completions", args.url.trim_end_matches('/')))
        .json(&body);
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    if !resp.status().is_success() {
        r.error = Some(format!("HTTP {}", resp.status()));
        return r;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut last: Option<Instant> = None;
    let mut chunks_with_text = 0;
    let mut usage_tokens = None;
    while let Some(b) = stream.next().await {
        let Ok(b) = b else {
            r.error = Some("stream broke".into());
            return r;
        };
        buf.push_str(&String::from_utf8_lossy(&b));
        while let Some(pos) = buf.find("\n\n") {
            let event: String = buf.drain(..pos + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage_tokens = Some(n as usize);
                }
                let text = v["choices"]
                    .get(0)
                    .and_then(|c| c["text"].as_str())
                    .unwrap_or("");
                if !text.is_empty() {
                    let now = Instant::now();
                    match last {
                        None => r.ttft_s = (now - t0).as_secs_f64(),
                        Some(prev) => r.itl_s.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks_with_text += 1;
                }
            }
        }
    }
    r.e2e_s = t0.elapsed().as_secs_f64();
    r.output_tokens = usage_tokens.unwrap_or(chunks_with_text);
    r.ok = last.is_some();
    if !r.ok {
        r.error = Some("no tokens received".into());
    }
    r
}

pub fn run(cmd: BenchCommand, env: &Switches) -> anyhow::Result<()> {
    let args = match cmd {
        BenchCommand::Serve(a) => a,
        BenchCommand::Throughput(a) => return super::bench_offline::throughput(a, env),
        BenchCommand::Latency(a) => return super::bench_offline::latency(a, env),
    };
    let path = args
        .tokenizer
        .clone()
        .unwrap_or_else(|| default_model_path(&env.model_dir));
    let gguf =
        GgufFile::open(&path).with_context(|| format!("tokenizer from {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    let prompts = make_prompts(&tok, args.num_prompts, args.input_len, args.seed)?;
    let rate: f64 = if args.request_rate == "inf" {
        f64::INFINITY
    } else {
        args.request_rate
            .parse()
            .context("--request-rate: a number or inf")?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result_file = args.result_file.clone();
    let report = rt.block_on(async move {
        // A stream silent for --read-timeout-s fails its request (recorded as an error)
        // instead of holding the run until --timeout-s.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .read_timeout(Duration::from_secs(args.read_timeout_s))
            .build()?;
        let limit = Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrency.unwrap_or(usize::MAX >> 4),
        ));
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(prompts.len());
        let total = prompts.len();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (i, p) in prompts.into_iter().enumerate() {
            if rate.is_finite() && i > 0 {
                // Gamma(shape = burstiness, scale = 1 / (rate * burstiness)) gaps: mean 1 / rate;
                // shape 1 is Poisson arrivals, smaller shapes are burstier (as vLLM's bench).
                let k = args.burstiness.max(0.01);
                let gap = gamma_draw(k, args.seed ^ 0x5eed, i as u64) / (rate * k);
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
            let permit = limit.clone().acquire_owned().await?;
            let client = client.clone();
            let a = args.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let r = one_request(&client, &a, p).await;
                drop(permit);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprint!("\r{n}/{total} requests done");
                r
            }));
        }
        let deadline = Duration::from_secs(args.timeout_s);
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            let left = deadline.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, t).await {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => results.push(RequestResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                }),
                Err(_) => results.push(RequestResult {
                    error: Some("timed out".into()),
                    ..Default::default()
                }),
            }
        }
        eprintln!();
        let duration = t0.elapsed().as_secs_f64();
        let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok).collect();
        let total_in: usize = ok.iter().map(|r| r.prompt_len).sum();
        let total_out: usize = ok.iter().map(|r| r.output_tokens).sum();
        let ttft = stats_ms(ok.iter().map(|r| r.ttft_s).collect());
        let tpot = stats_ms(
            ok.iter()
                .filter(|r| r.output_tokens > 1)
                .map(|r| (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) as f64)
                .collect(),
        );
        let itl = stats_ms(ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect());
        let e2e = stats_ms(ok.iter().map(|r| r.e2e_s).collect());
        if let Some(e) = results.iter().find_map(|r| r.error.clone()) {
            eprintln!("first error: {e}");
        }
        anyhow::Ok(BenchReport {
            date: chrono::Utc::now().to_rfc3339(),
            url: args.url.clone(),
            model: args.model.clone(),
            num_prompts: args.num_prompts,
            input_len: args.input_len,
            output_len: args.output_len,
            max_concurrency: args.max_concurrency,
            request_rate: args.request_rate.clone(),
            completed: ok.len(),
            failed: results.len() - ok.len(),
            duration,
            total_input_tokens: total_in,
            total_output_tokens: total_out,
            request_throughput: ok.len() as f64 / duration,
            output_throughput: total_out as f64 / duration,
            total_token_throughput: (total_in + total_out) as f64 / duration,
            mean_ttft_ms: ttft.0,
            median_ttft_ms: ttft.1,
            p99_ttft_ms: ttft.2,
            mean_tpot_ms: tpot.0,
            median_tpot_ms: tpot.1,
            p99_tpot_ms: tpot.2,
            mean_itl_ms: itl.0,
            median_itl_ms: itl.1,
            p99_itl_ms: itl.2,
            mean_e2el_ms: e2e.0,
            median_e2el_ms: e2e.1,
            p99_e2el_ms: e2e.2,
            ttfts: ok.iter().map(|r| r.ttft_s).collect(),
        })
    })?;
    print_report(&report);
    if let Some(p) = &result_file {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    anyhow::ensure!(report.completed > 0, "no request completed");
    Ok(())
}

fn print_report(r: &BenchReport) {
    let line = |k: &str, v: String| println!("{k:<40}{v:>12}");
    println!("{:=^52}", " Serving Benchmark Result ");
    line("Successful requests:", r.completed.to_string());
    line("Failed requests:", r.failed.to_string());
    line("Benchmark duration (s):", format!("{:.2}", r.duration));
    line("Total input tokens:", r.total_input_tokens.to_string());
    line("Total generated tokens:", r.total_output_tokens.to_string());
    line(
        "Request throughput (req/s):",
        format!("{:.2}", r.request_throughput),
    );
    line(
        "Output token throughput (tok/s):",
        format!("{:.2}", r.output_throughput),
    );
    line(
        "Total Token throughput (tok/s):",
        format!("{:.2}", r.total_token_throughput),
    );
    // The latency sections, in vLLM's order: title, short name, and mean, median, p99.
    let latencies = [
        ("Time to First Token", "TTFT"),
        ("Time per Output Token (excl. 1st token)", "TPOT"),
        ("Inter-token Latency", "ITL"),
        ("End-to-end Latency", "E2EL"),
    ];
    let stats = [
        [r.mean_ttft_ms, r.median_ttft_ms, r.p99_ttft_ms],
        [r.mean_tpot_ms, r.median_tpot_ms, r.p99_tpot_ms],
        [r.mean_itl_ms, r.median_itl_ms, r.p99_itl_ms],
        [r.mean_e2el_ms, r.median_e2el_ms, r.p99_e2el_ms],
    ];
    for ((title, name), ms) in latencies.into_iter().zip(stats) {
        println!("{:-^52}", title);
        for (stat, v) in ["Mean", "Median", "P99"].into_iter().zip(ms) {
            line(&format!("{stat} {name} (ms):"), format!("{v:.2}"));
        }
    }
    println!("{}", "=".repeat(52));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_gaps_have_the_right_mean() {
        for shape in [0.5, 1.0, 3.0] {
            let n = 20_000;
            let mean: f64 = (0..n).map(|i| gamma_draw(shape, 7, i)).sum::<f64>() / n as f64;
            assert!(
                (mean - shape).abs() < 0.05 * shape.max(1.0),
                "shape {shape}: mean {mean}"
            );
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-9);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        let (mean, med, p99) = stats_ms(vec![0.001, 0.003, 0.002]);
        assert!((mean - 2.0).abs() < 1e-9 && (med - 2.0).abs() < 1e-9 && p99 <= 3.0);
    }
}
