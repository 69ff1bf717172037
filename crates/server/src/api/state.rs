//! What every handler shares: the loaded model, admission (429 beyond the limit), and the
//! engine requests of one HTTP request (aborted when it goes away).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::StatusCode;
use ferrolm_engine::engine::{EngineHandle, RequestOutput};
use ferrolm_engine::loader::GenerationDefaults;
use ferrolm_engine::request::{RequestId, ValidRequest};
use ferrolm_engine::tokenizer::ChatTemplate;
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::{from_engine, ApiError};
use super::metrics::{Metrics, RequestTimer};
use super::request_trace::{RequestTrace, Tracer};

/// What handlers need once the model is loaded.
pub struct Loaded {
    pub engine: EngineHandle,
    pub chat_template: Option<ChatTemplate>,
    /// Sampling defaults for fields a request leaves out (`--generation-config auto`).
    pub generation_defaults: GenerationDefaults,
}

pub struct AppState {
    pub served_model_name: String,
    /// Keys accepted as `Authorization: Bearer KEY` (none: no key needed).
    pub api_keys: Vec<String>,
    /// Whether /metrics needs a key too.
    pub metrics_require_api_key: bool,
    /// Whether `/tokenizer_info` is served (vLLM's `--enable-tokenizer-info-endpoint`).
    pub enable_tokenizer_info: bool,
    /// How `tool_choice: auto` output is read for calls (`--tool-call-parser`, with
    /// `--enable-auto-tool-choice`); `None`: `auto` is refused.
    pub tool_parser: Option<ferrolm_protocol::tool_parsers::ToolParser>,
    /// How `<think>` output is split into `reasoning` (`--reasoning-parser`).
    pub reasoning_parser: Option<ferrolm_protocol::reasoning::ReasoningParser>,
    /// Bounds on a request's tools.
    pub tool_limits: ferrolm_protocol::tools::ToolLimits,
    /// Stored Responses API answers (bounded).
    pub responses: std::sync::Mutex<super::response_store::ResponseStore>,
    /// Set once the model is loaded and the engine runs; until then /health and /v1 say 503.
    pub loaded: OnceLock<Loaded>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    /// Requests accepted and not yet finished (engine requests).
    pub in_flight: AtomicUsize,
    /// `max_num_seqs + max_queue_len`: beyond it new requests get 429.
    pub admission_limit: usize,
    pub max_body_bytes: usize,
    pub max_n: usize,
    /// HTTP requests whose response has not been written to its end (a stream until its
    /// last event): a drain waits for these.
    pub active_http: AtomicUsize,
    /// Set when the drain timeout expires: open streams end with an error event.
    pub drain_expired: tokio::sync::watch::Sender<bool>,
    /// The span exporter (`--otlp-traces-endpoint`).
    pub tracer: Option<Arc<Tracer>>,
}

impl AppState {
    /// The trace of one HTTP request when spans are exported: a child of the incoming
    /// `traceparent`, saying `id` (the response's), the model and `params`.
    pub fn trace(
        &self,
        headers: &axum::http::HeaderMap,
        id: &str,
        params: &ferrolm_engine::sampling::SamplingParams,
        n: usize,
    ) -> Option<RequestTrace> {
        let tracer = self.tracer.clone()?;
        Some(RequestTrace::new(
            tracer,
            headers,
            id,
            &self.served_model_name,
            params,
            n,
        ))
    }

    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.loaded
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Reserves `n` admission slots or refuses: 400 if `n` is more than the server ever
    /// admits at once (retrying cannot help), else 429 while it is busy.
    pub fn admit(self: &Arc<Self>, n: usize) -> Result<Admission, ApiError> {
        if n > self.admission_limit {
            return Err(ApiError::bad_request(format!(
                "the request asks for {n} sequences (prompts × n); the server runs or queues at most {}",
                self.admission_limit
            )));
        }
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur + n > self.admission_limit {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "the server is at capacity ({} requests running or queued); retry later",
                        self.admission_limit
                    ),
                ));
            }
            match self
                .in_flight
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Admission {
                        state: self.clone(),
                        n,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.served_model_name => Err(ApiError::not_found(format!(
                "The model `{m}` does not exist."
            ))
            .with_param("model")),
            _ => Ok(()),
        }
    }
}

impl AppState {
    /// A guard counting one HTTP request in [`AppState::active_http`] until dropped.
    pub fn active_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_http.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    /// Whether no HTTP request is being answered and no engine request is admitted.
    pub fn is_idle(&self) -> bool {
        self.active_http.load(Ordering::Acquire) == 0 && self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// One HTTP request being answered (see [`AppState::active_request`]).
pub struct ActiveRequest(Arc<AppState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_http.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admission slots held by a request; released when it is dropped.
pub struct Admission {
    state: Arc<AppState>,
    n: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Engine requests of one HTTP request; every one not finished is aborted when this drops
/// (a client that disconnects drops the handler's future or the stream that owns it).
pub struct Submission {
    pub engine_ids: Vec<RequestId>,
    finished: Vec<bool>,
    state: Arc<AppState>,
    admission: Option<Admission>,
    /// Where the engine requests' spans go (`--otlp-traces-endpoint`).
    trace: Option<Arc<RequestTrace>>,
}

impl Submission {
    /// The timer of engine request `i`, started with the HTTP request.
    pub fn timer(&self, i: usize, started: Instant) -> RequestTimer {
        let trace = self.trace.clone().map(|t| (t, i, self.engine_ids.len()));
        RequestTimer::new(started, trace)
    }

    pub fn mark_finished(&mut self, choice: usize) {
        if let Some(f) = self.finished.get_mut(choice) {
            *f = true;
        }
    }

    /// The engine is done with every request: their admission slots go back now, even if
    /// the client has not read all of the answer yet.
    pub fn release_admission(&mut self) {
        self.admission = None;
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if let Some(l) = self.state.loaded.get() {
            for (id, done) in self.engine_ids.iter().zip(&self.finished) {
                if !done {
                    l.engine.abort(*id);
                    self.state
                        .metrics
                        .request_success
                        .with_label_values(&["abort"])
                        .inc();
                }
            }
        }
    }
}

/// Submits `requests × n` engine requests (choice index = request * n + i; seeds offset by i).
pub fn submit(
    state: &Arc<AppState>,
    engine: &EngineHandle,
    requests: &[ValidRequest],
    n: usize,
    trace: Option<RequestTrace>,
) -> Result<(Submission, Vec<UnboundedReceiver<RequestOutput>>), ApiError> {
    let admission = state.admit(requests.len() * n)?;
    let mut sub = Submission {
        engine_ids: Vec::new(),
        finished: Vec::new(),
        state: state.clone(),
        admission: Some(admission),
        trace: trace.map(Arc::new),
    };
    let mut rxs = Vec::new();
    for r in requests {
        for i in 0..n {
            let (id, rx) = engine
                .submit(r.with_seed_offset(i as u64))
                .map_err(from_engine)?;
            sub.engine_ids.push(id);
            sub.finished.push(false);
            rxs.push(rx);
        }
    }
    Ok((sub, rxs))
}

#[cfg(test)]
pub mod test_support {
    use super::*;

    /// A state with no model loaded and `admission_limit` slots.
    pub fn state(admission_limit: usize) -> Arc<AppState> {
        Arc::new(AppState {
            served_model_name: "m".into(),
            api_keys: Vec::new(),
            metrics_require_api_key: false,
            enable_tokenizer_info: false,
            tool_parser: None,
            reasoning_parser: None,
            tool_limits: Default::default(),
            responses: Default::default(),
            loaded: OnceLock::new(),
            metrics: Metrics::new("m", 64).expect("metrics"),
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            admission_limit,
            max_body_bytes: 1 << 20,
            max_n: 4,
            active_http: AtomicUsize::new(0),
            drain_expired: tokio::sync::watch::channel(false).0,
            tracer: None,
        })
    }

    /// A submission of `n` admitted engine requests (ids 0..n).
    pub fn submission(state: &Arc<AppState>, n: usize) -> Submission {
        let admission = state.admit(n).expect("admitted");
        Submission {
            engine_ids: (0..n as u64).collect(),
            finished: vec![false; n],
            state: state.clone(),
            admission: Some(admission),
            trace: None,
        }
    }
}
