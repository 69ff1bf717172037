//! The engine's settings, named after vLLM's flags: scheduler, cache and device. The server
//! maps its flags onto this; every default that depends on the device is resolved by the
//! engine ([`EngineConfig::resolve`]), so the server sets no engine policy.

use std::sync::Arc;

use crate::env::EngineSwitches;
use crate::structured::GrammarLimits;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    /// Token budget of one step; `None`: the device's default ([`cpu_or_gpu`]: 256 on the
    /// CPU, where prompts are prefilled in turns while running requests keep decoding and a
    /// 256-row step costs as much per token as a bigger one; 8192 on a GPU, vLLM's default).
    pub max_num_batched_tokens: Option<usize>,
    /// Prompt tokens per step across requests (TGI's `--max-batch-prefill-tokens`; decode
    /// tokens do not count).
    pub max_batch_prefill_tokens: PrefillCap,
    /// Defaults to the model's context length.
    pub max_model_len: Option<usize>,
    pub block_size: usize,
    pub enable_prefix_caching: bool,
    /// KV cache size in bytes on the CPU (`--kv-cache-memory-bytes`).
    pub kv_cache_memory_bytes: usize,
    /// Fixes the number of KV blocks (`--num-gpu-blocks-override`).
    pub num_blocks_override: Option<usize>,
    /// Share of the GPU's memory for weights, activations and the KV cache.
    pub gpu_memory_utilization: f64,
    /// No CUDA graphs (`--enforce-eager`; also FERROLM_ENFORCE_EAGER=1, in `switches`).
    pub enforce_eager: bool,
    /// The engine's environment switches ([`crate::env::Switches::from_env`]).
    pub switches: EngineSwitches,
    /// Called on the engine thread with each step's token count (for histograms), before
    /// the step's outputs are sent.
    pub step_observer: Option<StepObserver>,
    /// Called with each grammar mask's time (structured outputs).
    pub mask_observer: Option<MaskObserver>,
    /// What one request may ask for beyond the model's limits.
    pub request_limits: RequestLimits,
    /// How prompts share a step's prompt tokens.
    pub partial_prefills: PartialPrefills,
    /// Bounds on requests' grammars (structured outputs).
    pub grammar_limits: GrammarLimits,
}

/// vLLM's partial-prefill settings (`--max-num-partial-prefills`,
/// `--max-long-partial-prefills`, `--long-prefill-token-threshold`), with defaults that share
/// (vLLM's default of one partial prefill does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialPrefills {
    /// Prompts part-way through their prefill at once; a long one gets at least 1/this of
    /// a step's prompt tokens. 1: one prompt at a time, oldest first, no passing (the
    /// scheduling before sharing).
    pub max_num_partial_prefills: usize,
    /// Of those, prompts with more than `long_prefill_token_threshold` tokens to compute.
    /// Further long prompts wait their turn (oldest first); shorter ones pass them.
    pub max_long_partial_prefills: usize,
    /// A prompt with more tokens than this to compute is long. `None`: half the step's
    /// prompt-token cap (`max_batch_prefill_tokens`, else `max_num_batched_tokens`): 64 with
    /// the CPU's 128, so no short prompt, nor a long one's last chunk, fills a step alone.
    pub long_prefill_token_threshold: Option<usize>,
}

impl Default for PartialPrefills {
    fn default() -> Self {
        Self {
            max_num_partial_prefills: 4,
            max_long_partial_prefills: 1,
            long_prefill_token_threshold: None,
        }
    }
}

/// Bounds on one request's asks that cost the server time or memory, refused with 400
/// beyond them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Stop strings in one request (OpenAI allows 4; vLLM sets no limit).
    pub max_stop_strings: usize,
    /// Bytes of one request's stop strings together.
    pub max_stop_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_stop_strings: 64,
            max_stop_bytes: 64 << 10,
        }
    }
}

/// The prompt-token cap of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillCap {
    /// Only `max_num_batched_tokens` bounds prompt tokens.
    Unlimited,
    /// At most this many prompt tokens per step.
    Tokens(usize),
    /// 128 on the CPU (a running request's decode never waits for more than one 128-token
    /// prompt chunk: TTFT p50 at 16 clients 1.5 -> 0.7 s, see BENCHMARKS.md), none on a GPU.
    DeviceDefault,
}

/// A callback for each engine step's token count.
#[derive(Clone)]
pub struct StepObserver(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for StepObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepObserver")
    }
}

/// A callback for the seconds each structured-output token mask took (called from the
/// sampling threads).
#[derive(Clone)]
pub struct MaskObserver(pub Arc<dyn Fn(f64) + Send + Sync>);

impl std::fmt::Debug for MaskObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskObserver")
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: Some(2048),
            max_batch_prefill_tokens: PrefillCap::Unlimited,
            max_model_len: None,
            block_size: 16,
            enable_prefix_caching: true,
            kv_cache_memory_bytes: 1 << 30,
            num_blocks_override: None,
            gpu_memory_utilization: 0.9,
            enforce_eager: false,
            switches: EngineSwitches::default(),
            step_observer: None,
            mask_observer: None,
            request_limits: RequestLimits::default(),
            partial_prefills: PartialPrefills::default(),
            grammar_limits: GrammarLimits::default(),
        }
    }
}

/// `cpu` on the CPU, else `gpu`.
pub fn cpu_or_gpu<T>(on_cpu: bool, cpu: T, gpu: T) -> T {
    if on_cpu {
        cpu
    } else {
        gpu
    }
}

impl EngineConfig {
    /// The step's token budget on this device.
    pub fn token_budget(&self, on_cpu: bool) -> usize {
        self.max_num_batched_tokens
            .unwrap_or(cpu_or_gpu(on_cpu, 256, 8192))
    }

    /// The step's prompt-token cap on this device (`None`: no cap).
    pub fn prefill_cap(&self, on_cpu: bool) -> Option<usize> {
        match self.max_batch_prefill_tokens {
            PrefillCap::Unlimited => None,
            PrefillCap::Tokens(n) => Some(n),
            PrefillCap::DeviceDefault => on_cpu.then_some(128),
        }
    }

    /// Whether decode steps may replay CUDA graphs.
    pub fn enforce_eager(&self) -> bool {
        self.enforce_eager || self.switches.enforce_eager
    }
}
