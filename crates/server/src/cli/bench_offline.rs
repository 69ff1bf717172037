//! `ferrolm bench throughput` and `ferrolm bench latency`: offline runs over token ids, as
//! vLLM's `vllm bench throughput` / `vllm bench latency` (random prompts, EOS ignored, every
//! request to its output length), on either device. Greedy: the GPU peer (HF generate) is
//! greedy too.

use std::path::PathBuf;
use std::time::Instant;

use ferrolm_engine::config::EngineConfig;
use ferrolm_engine::engine::{
    generate_offline, kv_blocks, random_prompts, OfflineReport, OfflineSampling,
};
use ferrolm_engine::env::Switches;
use ferrolm_engine::loader::default_model_path;
use ferrolm_engine::loader::load_bench_model;
use ferrolm_engine::scheduler::SchedulerConfig;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, or (with --load-format dummy) a config.json or a folder holding one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, gguf or dummy (random weights shaped by config.json, as vLLM's).
    #[arg(long, default_value = "auto")]
    pub load_format: String,
    /// auto (bf16 on a GPU, f32 on the CPU), float32, float16, bfloat16 (dummy weights).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// In-situ quantization of the float linear layers at load: q8_0, q4_0 or q4_k (ggml's
    /// reference quantizers; CPU kernels' layouts, or GGUF blocks for the CUDA kernels on a
    /// GPU, where dummy weights take random blocks; a quantized GGUF keeps its own blocks).
    #[arg(long, short = 'q')]
    pub quantization: Option<ferrolm_engine::quant::InSituType>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Default: 1024 on a GPU, 256 on the CPU (vLLM's offline defaults for large GPUs).
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Default: 16384 on a GPU, 2048 on the CPU.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    #[arg(long)]
    pub num_gpu_blocks_override: Option<usize>,
    /// No CUDA graphs for decode steps (vLLM's flag).
    #[arg(long)]
    pub enforce_eager: bool,
    /// KV cache bytes on the CPU.
    #[arg(long, default_value_t = 1 << 30)]
    pub kv_cache_memory_bytes: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Sample every request at this temperature (each seeded by its index; 0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 32)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    #[arg(long, default_value_t = 1)]
    pub num_iters_warmup: usize,
    #[arg(long, default_value_t = 3)]
    pub num_iters: usize,
}

#[derive(Serialize)]
struct ThroughputResult {
    device: String,
    model: String,
    num_requests: usize,
    input_len: usize,
    output_len: usize,
    elapsed_time: f64,
    requests_per_second: f64,
    tokens_per_second: f64,
    output_tokens_per_second: f64,
    num_steps: usize,
    preemptions: usize,
    kv_blocks: usize,
    weight_bytes: usize,
    load_secs: f64,
}

#[derive(Serialize)]
struct LatencyResult {
    device: String,
    model: String,
    batch_size: usize,
    input_len: usize,
    output_len: usize,
    avg_latency: f64,
    latencies: Vec<f64>,
    percentiles: Vec<(u32, f64)>,
    /// Mean seconds of the first step (the whole batch's prefill and first token).
    prefill_secs: f64,
    /// Mean milliseconds of a decode step (one token for each of batch_size requests).
    decode_ms_per_step: f64,
    weight_bytes: usize,
}

struct Setup {
    model: ferrolm_engine::model::LlamaModel,
    sched: SchedulerConfig,
    num_blocks: usize,
    enforce_eager: bool,
    device: String,
    name: String,
    load_secs: f64,
}

fn setup(a: &ModelArgs, needed_len: usize, switches: &Switches) -> anyhow::Result<Setup> {
    let path = a
        .model
        .clone()
        .unwrap_or_else(|| default_model_path(&switches.model_dir));
    let t = Instant::now();
    let model = load_bench_model(
        &path,
        &a.load_format,
        &a.dtype,
        &a.device,
        a.max_model_len,
        a.quantization,
        &switches.model,
    )?;
    let load_secs = t.elapsed().as_secs_f64();
    let device = model.device().clone();
    let gpu = !device.is_cpu();
    let max_num_seqs = a.max_num_seqs.unwrap_or(if gpu { 1024 } else { 256 });
    let max_num_batched_tokens = a
        .max_num_batched_tokens
        .unwrap_or(if gpu { 16384 } else { 2048 });
    let max_model_len = a
        .max_model_len
        .unwrap_or(model.config.max_position_embeddings);
    anyhow::ensure!(
        needed_len <= max_model_len,
        "input + output ({needed_len}) exceeds the model length {max_model_len}"
    );
    let engine_cfg = EngineConfig {
        max_num_seqs,
        max_num_batched_tokens: Some(max_num_batched_tokens),
        block_size: a.block_size,
        kv_cache_memory_bytes: a.kv_cache_memory_bytes,
        num_blocks_override: a.num_gpu_blocks_override,
        gpu_memory_utilization: a.gpu_memory_utilization,
        enforce_eager: a.enforce_eager,
        switches: switches.engine,
        ..EngineConfig::default()
    };
    let (num_blocks, how) = kv_blocks(&model, &engine_cfg)?;
    if let Some(how) = how {
        eprintln!("kv cache: {how}");
    }
    anyhow::ensure!(
        num_blocks * a.block_size >= needed_len,
        "the KV cache ({num_blocks} blocks) cannot hold one request of {needed_len} tokens"
    );
    let name = format!(
        "{} · {:?} · {:.2} GB of weights",
        path.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model.dtype(),
        model.weight_bytes() as f64 / 1e9
    );
    eprintln!(
        "model {name} loaded in {load_secs:.1} s on {device:?}; {num_blocks} KV blocks of {}; max_num_seqs {max_num_seqs}, max_num_batched_tokens {max_num_batched_tokens}",
        a.block_size
    );
    Ok(Setup {
        model,
        sched: SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            max_batch_prefill_tokens: None,
        },
        num_blocks,
        enforce_eager: engine_cfg.enforce_eager(),
        device: if gpu { "cuda".into() } else { "cpu".into() },
        name,
        load_secs,
    })
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, v: &T) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(v)?)?;
    }
    Ok(())
}

pub fn throughput(a: ThroughputArgs, switches: &Switches) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.num_prompts > 0 && a.input_len > 0 && a.output_len > 0,
        "lengths and counts must be positive"
    );
    let s = setup(&a.model, a.input_len + a.output_len, switches)?;
    let vocab = s.model.config.vocab_size as u32;
    // Drawn by the device sampler on a GPU (FERROLM_DEVICE_SAMPLER=0: on the host).
    let sampling = (a.temperature > 0.0).then_some(OfflineSampling {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_p: a.min_p,
        device_sampler: switches
            .engine
            .device_sampler_on(!s.model.device().is_cpu()),
    });
    let prompts = random_prompts(
        a.num_prompts,
        a.input_len,
        5.min(vocab - 1),
        vocab,
        a.model.seed,
    );
    // A short warm-up run, so kernel loading and allocator growth are not timed.
    let warm = random_prompts(
        4.min(a.num_prompts),
        a.input_len,
        5.min(vocab - 1),
        vocab,
        99,
    );
    generate_offline(
        &s.model,
        s.sched.clone(),
        s.num_blocks,
        a.model.block_size,
        &warm,
        4,
        s.enforce_eager,
        sampling,
    )?;
    let (r, _) = generate_offline(
        &s.model,
        s.sched.clone(),
        s.num_blocks,
        a.model.block_size,
        &prompts,
        a.output_len,
        s.enforce_eager,
        sampling,
    )?;
    let res = ThroughputResult {
        device: s.device.clone(),
        model: s.name.clone(),
        num_requests: r.num_requests,
        input_len: a.input_len,
        output_len: a.output_len,
        elapsed_time: r.secs,
        requests_per_second: r.num_requests as f64 / r.secs,
        tokens_per_second: r.total_tok_per_s(),
        output_tokens_per_second: r.output_tok_per_s(),
        num_steps: r.step_secs.len(),
        preemptions: r.preemptions,
        kv_blocks: s.num_blocks,
        weight_bytes: s.model.weight_bytes(),
        load_secs: s.load_secs,
    };
    println!(
        "Throughput: {:.2} requests/s, {:.2} total tokens/s, {:.2} output tokens/s ({} x {}/{} on {}, {:.1} s, {} steps, {} preemptions)",
        res.requests_per_second,
        res.tokens_per_second,
        res.output_tokens_per_second,
        a.num_prompts,
        a.input_len,
        a.output_len,
        res.device,
        r.secs,
        res.num_steps,
        r.preemptions
    );
    let [d, p] = r.phase_split();
    println!(
        "Steps: {} decode steps {:.2} s ({:.1} ms each, {:.0} requests on average) · {} steps with prompt tokens {:.2} s ({:.1} ms each)",
        d.0,
        d.1,
        1e3 * d.1 / d.0.max(1) as f64,
        d.2,
        p.0,
        p.1,
        1e3 * p.1 / p.0.max(1) as f64
    );
    write_json(&a.model.output_json, &res)
}

pub fn latency(a: LatencyArgs, switches: &Switches) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch_size > 0 && a.input_len > 0 && a.output_len > 0 && a.num_iters > 0,
        "lengths and counts must be positive"
    );
    let mut m = a.model.clone();
    // One step holds the whole batch, as vLLM's latency bench.
    m.max_num_seqs = Some(m.max_num_seqs.unwrap_or(a.batch_size).max(a.batch_size));
    m.max_num_batched_tokens = Some(
        m.max_num_batched_tokens
            .unwrap_or(a.batch_size * a.input_len)
            .max(a.batch_size * a.input_len),
    );
    let s = setup(&m, a.input_len + a.output_len, switches)?;
    let vocab = s.model.config.vocab_size as u32;
    let prompts = random_prompts(a.batch_size, a.input_len, 5.min(vocab - 1), vocab, m.seed);
    let run = || -> anyhow::Result<OfflineReport> {
        Ok(generate_offline(
            &s.model,
            s.sched.clone(),
            s.num_blocks,
            m.block_size,
            &prompts,
            a.output_len,
            s.enforce_eager,
            None,
        )?
        .0)
    };
    for _ in 0..a.num_iters_warmup {
        run()?;
    }
    ferrolm_engine::instrument::profile::take();
    let mut lat = Vec::new();
    let (mut prefill, mut decode) = (0.0, 0.0);
    for _ in 0..a.num_iters {
        let r = run()?;
        lat.push(r.secs);
        prefill += r.step_secs.first().copied().unwrap_or(0.0);
        decode += r.mean_decode_step_secs(a.batch_size).unwrap_or(0.0);
    }
    let n = a.num_iters as f64;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: u32| sorted[((p as f64 / 100.0) * (sorted.len() - 1) as f64).round() as usize];
    let res = LatencyResult {
        device: s.device.clone(),
        model: s.name.clone(),
        batch_size: a.batch_size,
        input_len: a.input_len,
        output_len: a.output_len,
        avg_latency: lat.iter().sum::<f64>() / n,
        percentiles: [10, 25, 50, 75, 90, 99]
            .iter()
            .map(|&p| (p, pct(p)))
            .collect(),
        latencies: lat,
        prefill_secs: prefill / n,
        decode_ms_per_step: 1e3 * decode / n,
        weight_bytes: s.model.weight_bytes(),
    };
    println!(
        "Avg latency: {:.4} seconds (batch {} x {}/{} on {}); prefill {:.4} s; decode {:.3} ms/step",
        res.avg_latency, a.batch_size, a.input_len, a.output_len, res.device, res.prefill_secs, res.decode_ms_per_step
    );
    for line in ferrolm_engine::instrument::profile::report() {
        println!("{line}");
    }
    write_json(&m.output_json, &res)
}
