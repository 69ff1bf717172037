//! What every handler shares: the loaded model, admission (429 beyond the limit), and the
//! engine requests of one HTTP request (aborted when it goes away).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use ferrolm_engine::engine::{EngineHandle, RequestOutput};
use ferrolm_engine::request::{RequestId, ValidRequest};
use ferrolm_engine::tokenizer::ChatTemplate;
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::metrics::Metrics;

/// What handlers need once the model is loaded.
pub struct Loaded {
    pub engine: EngineHandle,
    pub chat_template: Option<ChatTemplate>,
}

pub struct AppState {
    pub served_model_name: String,
    pub api_key: Option<String>,
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
}

impl AppState {
    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.loaded
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Reserves `n` admission slots or refuses with 429.
    pub fn admit(self: &Arc<Self>, n: usize) -> Result<Admission, ApiError> {
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
    _admission: Admission,
}

impl Submission {
    pub fn mark_finished(&mut self, choice: usize) {
        if let Some(f) = self.finished.get_mut(choice) {
            *f = true;
        }
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
) -> Result<(Submission, Vec<UnboundedReceiver<RequestOutput>>), ApiError> {
    let admission = state.admit(requests.len() * n)?;
    let mut sub = Submission {
        engine_ids: Vec::new(),
        finished: Vec::new(),
        state: state.clone(),
        _admission: admission,
    };
    let mut rxs = Vec::new();
    for r in requests {
        for i in 0..n {
            let (id, rx) = engine.submit(r.with_seed_offset(i as u64))?;
            sub.engine_ids.push(id);
            sub.finished.push(false);
            rxs.push(rx);
        }
    }
    Ok((sub, rxs))
}
