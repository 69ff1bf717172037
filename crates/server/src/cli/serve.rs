//! `ferrolm serve`: the OpenAI-compatible server, with vLLM's flag names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use ferrolm_engine::config::{
    EngineConfig, MaskObserver, PartialPrefills, PrefillCap, StepObserver,
};
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::env::EngineSwitches;
use ferrolm_engine::env::Switches;
use ferrolm_engine::loader::{LoadOptions, LoadedModel};
use ferrolm_protocol::reasoning::ReasoningParser;
use ferrolm_protocol::tool_parsers::ToolParser;
use ferrolm_protocol::tools::ToolLimits;

use super::http::{fit_connections_to_descriptors, serve_http};
use super::limits::LimitArgs;
use super::model_args::{default_served_name, ModelArgs};
use crate::api::metrics::Metrics;
use crate::api::request_trace::Tracer;
use crate::api::{probes_router, router, AppState, Loaded};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampling defaults where a request leaves a field out: `auto` takes the checkpoint's
    /// generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty,
    /// max_new_tokens), `vllm` the API's own defaults (vLLM's flag).
    #[arg(long, default_value = "auto", value_parser = ["auto", "vllm"])]
    pub generation_config: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send (default: the file's stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one engine step. Default: 256 on the CPU (prompts are prefilled in
    /// turns while running requests keep decoding; on a CPU a 256-row step costs as much per
    /// token as a bigger one, and shorter steps cut the time new prompts wait: see
    /// BENCHMARKS.md), 8192 on a GPU (vLLM's API-server default on large GPUs).
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Prompt tokens per engine step across requests, decode tokens not counted (TGI's flag).
    /// Default: 128 on the CPU (a running request's decode never waits for more than one
    /// 128-token prompt chunk, and a new prompt is not split just because decodes share its
    /// step: TTFT p50 at 16 clients 1.5 -> 0.7 s, see BENCHMARKS.md), none on a GPU.
    #[arg(long)]
    pub max_batch_prefill_tokens: Option<usize>,
    /// Prompts part-way through their prefill at once (vLLM's flag; vLLM's default is 1). A
    /// short prompt passes a long one instead of waiting for all of its chunks.
    #[arg(long, default_value_t = PartialPrefills::default().max_num_partial_prefills)]
    pub max_num_partial_prefills: usize,
    /// Of those, long prompts (vLLM's flag).
    #[arg(long, default_value_t = PartialPrefills::default().max_long_partial_prefills)]
    pub max_long_partial_prefills: usize,
    /// Prompt tokens that make a prompt long (vLLM's flag). Default: half the step's
    /// prompt-token cap (64 on the CPU).
    #[arg(long)]
    pub long_prefill_token_threshold: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// A Jinja chat template: a file path or the template text.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Share of the GPU's memory for weights, activations and the KV cache (--device cuda).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// No CUDA graphs: every decode step is launched eagerly (vLLM's flag).
    #[arg(long)]
    pub enforce_eager: bool,
    /// KV cache size in bytes (CPU).
    #[arg(long, default_value_t = 1 << 30)]
    pub kv_cache_memory_bytes: usize,
    /// Fixes the number of KV cache blocks.
    #[arg(long)]
    pub num_gpu_blocks_override: Option<usize>,
    /// Requests that may wait beyond the running ones; more get 429.
    #[arg(long, default_value_t = 1024)]
    pub max_queue_len: usize,
    /// Largest `n` a request may ask for.
    #[arg(long, default_value_t = 16)]
    pub max_n: usize,
    /// Seconds in-flight requests get to finish after SIGTERM (streams still open then end
    /// with an error event).
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Serve `/tokenizer_info` (vLLM's flag; off by default, as there).
    #[arg(long)]
    pub enable_tokenizer_info_endpoint: bool,
    /// Lets the model decide when to call tools (`tool_choice: auto`, the default with
    /// tools), its output read by `--tool-call-parser` (vLLM's flags).
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// How tool calls are read from the model's output: hermes (Qwen2.5, Qwen3, SmolLM3,
    /// Hermes), llama3_json (Llama 3.1+), mistral.
    #[arg(long, value_parser = ToolParser::NAMES)]
    pub tool_call_parser: Option<String>,
    /// Splits `<think>…</think>` thinking into `reasoning`: qwen3, deepseek_r1 (vLLM's flag).
    #[arg(long, value_parser = ReasoningParser::NAMES)]
    pub reasoning_parser: Option<String>,
    /// Tools in one request (400 beyond).
    #[arg(long, default_value_t = ToolLimits::default().max_tools)]
    pub max_tools: usize,
    /// Sends a span per request (vLLM's `llm_request`, with its attributes) to this OTLP/HTTP
    /// receiver (`http://collector:4318`; gRPC is not supported), child of the request's
    /// `traceparent` (vLLM's flag). The service name is `OTEL_SERVICE_NAME` (default ferrolm).
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl ServeArgs {
    /// The auto tool-call parser, as vLLM checks its two flags.
    fn tool_parser(&self) -> anyhow::Result<Option<ToolParser>> {
        match (self.enable_auto_tool_choice, &self.tool_call_parser) {
            (false, _) => Ok(None),
            (true, None) => anyhow::bail!("--enable-auto-tool-choice needs --tool-call-parser"),
            (true, Some(name)) => Ok(ToolParser::from_name(name)),
        }
    }
}

pub fn run(args: ServeArgs, env: &Switches) -> anyhow::Result<()> {
    // Checked before anything else, so a wrong --device fails at once.
    ferrolm_engine::device::resolve_device(&args.device, env.model.pool_keep)?;
    let load = args.model.load_options(&args.device, env)?;
    let served = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| default_served_name(&load.model));
    let api_keys = args.limits.api_keys(env.server.api_key.as_deref())?;
    // Built before the async runtime: the exporter's HTTP client is a blocking one.
    let tracer = match &args.otlp_traces_endpoint {
        Some(endpoint) => {
            anyhow::ensure!(
                env.server.otlp_traces_protocol.as_deref().is_none_or(|p| p == "http/protobuf"),
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL={}: ferrolm exports traces over http/protobuf only (an OTLP/HTTP receiver, port 4318)",
                env.server.otlp_traces_protocol.as_deref().unwrap_or_default()
            );
            Some(Arc::new(Tracer::otlp_http(
                endpoint,
                &env.server.otel_service_name,
            )?))
        }
        None => None,
    };
    let metrics =
        Metrics::new(&served, args.max_model_len.unwrap_or(8192)).context("metrics registry")?;
    let state = Arc::new(AppState {
        served_model_name: served,
        api_keys,
        metrics_require_api_key: args.limits.metrics_require_api_key,
        enable_tokenizer_info: args.enable_tokenizer_info_endpoint,
        tool_parser: args.tool_parser()?,
        reasoning_parser: args
            .reasoning_parser
            .as_deref()
            .and_then(ReasoningParser::from_name),
        tool_limits: ToolLimits {
            max_tools: args.max_tools,
        },
        responses: Default::default(),
        loaded: OnceLock::new(),
        metrics,
        shutting_down: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        admission_limit: args.max_num_seqs + args.max_queue_len,
        max_body_bytes: args.limits.max_body_bytes,
        max_n: args.max_n,
        active_http: AtomicUsize::new(0),
        drain_expired: tokio::sync::watch::channel(false).0,
        tracer: tracer.clone(),
    });
    // Tokio gets a small share: the engine thread and its compute pool need the cores.
    let workers = ferrolm_engine::worker::available_cores().clamp(1, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(args, load, env.engine, state));
    // The spans still buffered go out before the process ends.
    if let Some(t) = tracer {
        t.shutdown();
    }
    served
}

async fn serve(
    args: ServeArgs,
    load: LoadOptions,
    engine_switches: EngineSwitches,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", args.host, args.port))?;
    // Listen before loading: probes see 503 until the model is ready.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "listening; loading {}", load.model);

    let load_state = state.clone();
    let load_args = args.clone();
    let loader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut lm = LoadedModel::load_with(&load)?;
        if let Some(t) = &load_args.chat_template {
            lm.set_chat_template(t)?;
        }
        let describe = lm.model.describe();
        let hist = load_state.metrics.iteration_tokens.clone();
        let mask_hist = load_state.metrics.structured_mask_seconds.clone();
        let chat_template = lm.chat_template;
        let generation_defaults = if load_args.generation_config == "auto" {
            lm.generation_defaults
        } else {
            Default::default()
        };
        if !generation_defaults.is_empty() {
            tracing::info!(
                ?generation_defaults,
                "sampling defaults from the model's generation_config.json (--generation-config vllm to ignore them)"
            );
        }
        let engine = EngineHandle::start(
            lm.model,
            Arc::new(lm.tokenizer),
            EngineConfig {
                max_num_seqs: load_args.max_num_seqs,
                max_num_batched_tokens: load_args.max_num_batched_tokens,
                max_batch_prefill_tokens: load_args
                    .max_batch_prefill_tokens
                    .map_or(PrefillCap::DeviceDefault, PrefillCap::Tokens),
                max_model_len: load_args.max_model_len,
                block_size: load_args.block_size,
                enable_prefix_caching: !load_args.no_enable_prefix_caching,
                kv_cache_memory_bytes: load_args.kv_cache_memory_bytes,
                num_blocks_override: load_args.num_gpu_blocks_override,
                gpu_memory_utilization: load_args.gpu_memory_utilization,
                enforce_eager: load_args.enforce_eager,
                switches: engine_switches,
                step_observer: Some(StepObserver(Arc::new(move |n| hist.observe(n as f64)))),
                mask_observer: Some(MaskObserver(Arc::new(move |s| mask_hist.observe(s)))),
                request_limits: load_args.limits.request_limits(),
                grammar_limits: load_args.limits.grammar_limits(),
                partial_prefills: PartialPrefills {
                    max_num_partial_prefills: load_args.max_num_partial_prefills,
                    max_long_partial_prefills: load_args.max_long_partial_prefills,
                    long_prefill_token_threshold: load_args.long_prefill_token_threshold,
                },
            },
        )?;
        tracing::info!(model = %describe, kv_blocks = engine.num_blocks, max_model_len = engine.max_model_len, "model loaded");
        load_state.metrics.set_cache_config(
            load_args.block_size,
            engine.num_blocks,
            !load_args.no_enable_prefix_caching,
            load_args.gpu_memory_utilization,
        );
        let _ = load_state.loaded.set(Loaded {
            engine,
            chat_template,
            generation_defaults,
        });
        Ok(())
    });

    let mut http_limits = args.limits.http()?;
    http_limits.max_connections = fit_connections_to_descriptors(http_limits.max_connections);
    let app = router(state.clone());
    let probes = probes_router(state.clone());
    let server = tokio::spawn(serve_http(listener, app, probes, http_limits));

    // A model that fails to load ends the process with its error (as does a signal first).
    tokio::select! {
        loaded = loader => match loaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => anyhow::bail!("model loading panicked: {e}"),
        },
        _ = shutdown_signal() => {
            tracing::info!("stopped while loading");
            return Ok(());
        }
    }
    shutdown_signal().await;

    // Drain: new requests get 503 (connections are still accepted), in-flight ones get
    // `--drain-timeout` to finish; streams still open then end with an error event.
    tracing::info!("shutting down: finishing in-flight requests");
    state.shutting_down.store(true, Ordering::SeqCst);
    let drain = Duration::from_secs(args.drain_timeout);
    if tokio::time::timeout(drain, until_idle(&state))
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout of {}s reached; cutting what is left",
            args.drain_timeout
        );
        state.drain_expired.send_replace(true);
        // The cut streams' error events are queued; let them reach their clients.
        let _ = tokio::time::timeout(CUT_STREAMS_GRACE, until_idle(&state)).await;
    }
    server.abort();
    if let Some(l) = state.loaded.get() {
        l.engine.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long streams cut at the drain timeout get to deliver their error event.
const CUT_STREAMS_GRACE: Duration = Duration::from_secs(2);

/// Resolves once nothing is being answered.
async fn until_idle(state: &AppState) {
    while !state.is_idle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
