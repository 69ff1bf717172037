//! The OpenAI-compatible HTTP API: state, router, API key check, HTTP metrics, errors.

mod chat;
mod completions;
pub mod error;
mod generation;
pub mod metrics;
mod misc;
pub mod types;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::tokenizer::ChatTemplate;

use error::ApiError;
use metrics::Metrics;

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

impl ApiError {
    pub fn with_param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
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

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key")
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

async fn count_http(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::not_found(format!(
        "route {} {} does not exist",
        req.method(),
        req.uri().path()
    ))
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(misc::models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/version", get(misc::version))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_http))
        // Bodies are read by the handlers with our own limit (413 as OpenAI JSON).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
