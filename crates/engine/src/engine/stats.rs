//! Counters the server exports (vLLM's metrics), written by the engine thread.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct EngineStats {
    pub num_running: AtomicU64,
    pub num_waiting: AtomicU64,
    /// KV cache usage as f64 bits (0.0 ..= 1.0).
    kv_usage_bits: AtomicU64,
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub num_preemptions: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub num_steps: AtomicU64,
    /// Tokens computed in all steps (per-step counts go to the step observer).
    pub step_tokens: AtomicU64,
}

impl EngineStats {
    pub fn kv_usage(&self) -> f64 {
        f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed))
    }
    pub fn set_kv_usage(&self, v: f64) {
        self.kv_usage_bits.store(v.to_bits(), Ordering::Relaxed)
    }
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
