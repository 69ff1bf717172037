//! `/metrics`: Prometheus text exposition with vLLM's metric names and types, label
//! `model_name`, every labelled series present from start-up; plus ferrolm's HTTP counter,
//! and the per-request timer that feeds the latency histograms.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ferrolm_engine::engine::{EngineStats, RequestOutput};

use super::request_trace::{FinishedTimings, RequestTrace};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub num_requests_running: Gauge,
    pub num_requests_waiting: Gauge,
    pub kv_cache_usage_perc: Gauge,
    /// The same value under vLLM's former name, which endpoint pickers v1.0-v1.2 read.
    gpu_cache_usage_perc: Gauge,
    /// vLLM's `cache_config_info`: the KV cache's settings as labels (value 1), set once
    /// the engine has sized the cache.
    cache_config_info: GaugeVec,
    prefix_cache_queries: IntCounter,
    prefix_cache_hits: IntCounter,
    num_preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    pub request_success: IntCounterVec,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    pub iteration_tokens: Histogram,
    /// Seconds per structured-output token mask (ours: vLLM has no such metric).
    pub structured_mask_seconds: Histogram,
    pub http_requests: IntCounterVec,
    _info: GaugeVec,
}

fn token_buckets() -> Vec<f64> {
    // vLLM's 1-2-5 series up to the context length.
    let mut b = Vec::new();
    let mut m = 1.0;
    while m <= 1e6 {
        for x in [1.0, 2.0, 5.0] {
            b.push(x * m);
        }
        m *= 10.0;
    }
    b
}

impl Metrics {
    pub fn new(model_name: &str, max_model_len: usize) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let labels = || {
            let mut h = std::collections::HashMap::new();
            h.insert("model_name".to_string(), model_name.to_string());
            h
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let g = Gauge::with_opts(Opts::new(name, help).const_labels(labels()))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help).const_labels(labels()))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_labels(labels())
                    .buckets(buckets),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let mut tok = token_buckets();
        tok.retain(|&b| b <= (max_model_len as f64).max(10.0) * 2.0);
        // vLLM's buckets for whole-request times (end to end, and queued).
        let request_secs = vec![
            0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
            120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
        ];
        let request_success = IntCounterVec::new(
            Opts::new(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
            )
            .const_labels(labels()),
            &["finished_reason"],
        )?;
        registry.register(Box::new(request_success.clone()))?;
        for r in ["stop", "length", "abort"] {
            request_success.with_label_values(&[r]);
        }
        let http_requests = IntCounterVec::new(
            Opts::new(
                "ferrolm_http_requests_total",
                "HTTP requests by route and status.",
            )
            // The served model, as on vllm:* series: two deployments in one namespace
            // stay apart in the error-rate rules too.
            .const_labels(labels()),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let info = GaugeVec::new(
            Opts::new("ferrolm_build_info", "ferrolm's version (value 1)."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        registry.register(Box::new(info.clone()))?;
        let cache_config_info = GaugeVec::new(
            Opts::new(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
            )
            .const_labels(labels()),
            &[
                "block_size",
                "num_gpu_blocks",
                "cache_dtype",
                "enable_prefix_caching",
                "gpu_memory_utilization",
            ],
        )?;
        registry.register(Box::new(cache_config_info.clone()))?;
        Ok(Self {
            gpu_cache_usage_perc: gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage (vLLM's former name of vllm:kv_cache_usage_perc).",
            )?,
            cache_config_info,
            num_requests_running: gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            )?,
            num_requests_waiting: gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            )?,
            kv_cache_usage_perc: gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            )?,
            prefix_cache_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_cache_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            )?,
            num_preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
            )?,
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
            )?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            )?,
            request_success,
            ttft: hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                vec![
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
                ],
            )?,
            itl: hist(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                vec![
                    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0,
                ],
            )?,
            e2e: hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                request_secs.clone(),
            )?,
            queue_time: hist(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                request_secs,
            )?,
            request_prompt_tokens: hist(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                tok.clone(),
            )?,
            request_generation_tokens: hist(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                tok.clone(),
            )?,
            iteration_tokens: hist(
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                vec![
                    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
                    8192.0, 16384.0,
                ],
            )?,
            structured_mask_seconds: hist(
                "ferrolm:structured_output_mask_seconds",
                "Seconds to compute one structured-output token mask.",
                vec![
                    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                    0.1, 0.25, 1.0,
                ],
            )?,
            http_requests,
            _info: info,
            registry,
        })
    }

    /// The KV cache's settings, once the engine has sized it (`vllm:cache_config_info`).
    pub fn set_cache_config(
        &self,
        block_size: usize,
        num_blocks: usize,
        enable_prefix_caching: bool,
        gpu_memory_utilization: f64,
    ) {
        let (b, n, p, u) = (
            block_size.to_string(),
            num_blocks.to_string(),
            if enable_prefix_caching {
                "True"
            } else {
                "False"
            },
            gpu_memory_utilization.to_string(),
        );
        self.cache_config_info
            .with_label_values(&[b.as_str(), n.as_str(), "auto", p, u.as_str()])
            .set(1.0);
    }

    /// Brings engine-side values into the registry and renders the exposition.
    pub fn render(&self, stats: Option<&Arc<EngineStats>>) -> String {
        if let Some(s) = stats {
            self.num_requests_running.set(s.get(&s.num_running) as f64);
            self.num_requests_waiting.set(s.get(&s.num_waiting) as f64);
            self.kv_cache_usage_perc.set(s.kv_usage());
            self.gpu_cache_usage_perc.set(s.kv_usage());
            let sync = |c: &IntCounter, v: u64| {
                let cur = c.get();
                if v > cur {
                    c.inc_by(v - cur);
                }
            };
            sync(&self.prefix_cache_queries, s.get(&s.prefix_cache_queries));
            sync(&self.prefix_cache_hits, s.get(&s.prefix_cache_hits));
            sync(&self.num_preemptions, s.get(&s.num_preemptions));
            sync(&self.prompt_tokens, s.get(&s.prompt_tokens));
            sync(&self.generation_tokens, s.get(&s.generation_tokens));
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Per engine request: timings for the latency histograms, a log line and its span.
pub struct RequestTimer {
    pub started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    queue_secs: Option<f64>,
    /// The request's trace, this engine request's index and how many it has.
    trace: Option<(Arc<RequestTrace>, usize, usize)>,
}

impl RequestTimer {
    pub fn new(started: Instant, trace: Option<(Arc<RequestTrace>, usize, usize)>) -> Self {
        Self {
            started,
            first: None,
            last: None,
            queue_secs: None,
            trace,
        }
    }

    pub fn on_output(&mut self, m: &Metrics, o: &RequestOutput) {
        let now = Instant::now();
        if o.queue_secs.is_some() {
            self.queue_secs = o.queue_secs;
        }
        if !o.new_token_ids.is_empty() {
            match self.last {
                None => m.ttft.observe((now - self.started).as_secs_f64()),
                Some(prev) => m.itl.observe((now - prev).as_secs_f64()),
            }
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
        if let Some(f) = o.finished {
            // Measured once: the histogram, the log line and the span say the same.
            let e2e = now - self.started;
            let ttft = self.first.map(|t| (t - self.started).as_secs_f64());
            m.e2e.observe(e2e.as_secs_f64());
            if let Some(q) = self.queue_secs {
                m.queue_time.observe(q);
            }
            m.request_prompt_tokens
                .observe(o.usage.prompt_tokens as f64);
            m.request_generation_tokens
                .observe(o.usage.completion_tokens as f64);
            m.request_success.with_label_values(&[f.as_str()]).inc();
            tracing::info!(
                request_id = o.id,
                prompt_tokens = o.usage.prompt_tokens,
                generated_tokens = o.usage.completion_tokens,
                cached_tokens = o.usage.cached_tokens,
                ttft_s = ttft.unwrap_or(0.0),
                total_s = e2e.as_secs_f64(),
                finish_reason = f.as_str(),
                "request finished"
            );
            if let Some((trace, index, count)) = &self.trace {
                trace.record(
                    *index,
                    *count,
                    &FinishedTimings {
                        arrived: SystemTime::now() - e2e,
                        queue: self.queue_secs,
                        ttft,
                        e2e: e2e.as_secs_f64(),
                        prompt_tokens: o.usage.prompt_tokens,
                        completion_tokens: o.usage.completion_tokens,
                        finish_reason: f.as_str(),
                    },
                );
            }
        }
    }
}
