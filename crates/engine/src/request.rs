//! A request as the engine holds it: its id, tokens, sampling parameters, how many tokens
//! are in the KV cache, and why it finished. One definition each, shared by every layer above.

use std::sync::{Arc, Mutex};

use crate::kv_cache::BlockId;

pub type RequestId = u64;

use crate::sampling::select::SampleSpec;
use crate::sampling::SamplingParams;
use crate::structured::GrammarMatcher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Preempted: its blocks were freed; it recomputes from the start when readmitted.
    Preempted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-generation or stop token (or, later, a stop string).
    Stop,
    /// `max_tokens` or the model's context length.
    Length,
    Abort,
    /// The engine failed while processing this request (the others go on).
    Error,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

/// A prompt and its parameters as [`crate::engine::EngineHandle::validate`] accepted them:
/// parameters in range, a non-empty prompt of known tokens shorter than the context. The only
/// way into the engine; nothing past the handle checks a request again (the scheduler keeps
/// its own invariant that a queued prompt fits).
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: SamplingParams,
    /// `params.structured` compiled (each copy has its own state).
    pub(crate) grammar: Option<GrammarMatcher>,
}

impl ValidRequest {
    /// The same request with its seed (if any) moved on by `i`: choice `i` of `n` parallel
    /// samples. A seed never makes a request invalid.
    pub fn with_seed_offset(&self, i: u64) -> Self {
        let mut r = self.clone();
        r.params.seed = r.params.seed.map(|s| s.wrapping_add(i));
        r
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    /// Prompt tokens served from the prefix cache at admission.
    pub num_cached_tokens: usize,
    pub params: SamplingParams,
    /// The seed of this request's draws (the user's, or one picked at random).
    pub seed: u64,
    pub status: RequestStatus,
    pub num_preemptions: u32,
    /// Blocks found in the prefix cache, adopted when admitted.
    pub(crate) pending_cached: Vec<BlockId>,
    /// The output's grammar at the current token: locked by the one thread that samples
    /// this request in a step.
    pub(crate) grammar: Option<Arc<Mutex<GrammarMatcher>>>,
}

impl Request {
    pub fn new(id: RequestId, prompt: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            num_cached_tokens: 0,
            seed: params.seed.unwrap_or_else(random_seed),
            params,
            status: RequestStatus::Waiting,
            num_preemptions: 0,
            pending_cached: Vec::new(),
            grammar: None,
        }
    }

    /// A checked request as the engine queues it.
    pub fn from_valid(id: RequestId, v: ValidRequest) -> Self {
        let mut r = Self::new(id, v.prompt, v.params);
        r.grammar = v.grammar.map(|g| Arc::new(Mutex::new(g)));
        r
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn num_output(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// This step's draw for the device sampler: what `sample_token` would do with its
    /// prompt, output, `stop_ids` and seed to a row of `vocab` logits.
    pub fn sample_spec(&self, stop_ids: &[u32], vocab: usize) -> SampleSpec {
        let (prompt, output) = self.tokens.split_at(self.prompt_len);
        SampleSpec::new(&self.params, (prompt, output), stop_ids, self.seed, vocab)
    }
}

/// A seed for requests that bring none: time and a process-wide counter, mixed.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
