//! The OpenAI-compatible HTTP API over ferrolm-protocol (the request and response types, the
//! error JSON, the engine-free request checks, SSE framing). Its modules, each using only
//! those listed before it: `error` (engine errors to API errors), `metrics`
//! (the Prometheus registry and per-request timer), `state` (shared state, admission, engine
//! submissions), `validate` (request checks to `SamplingParams`), `stream` (SSE, collecting
//! and rendering answers), `auth` (the API key), `headers` (request ids, Retry-After), the
//! handlers `completions`, `chat`, `responses`, `info` and `misc`; and here the router.

mod auth;
mod chat;
mod chat_output;
mod completions;
pub mod error;
mod headers;
mod info;
pub mod metrics;
mod misc;
pub mod request_trace;
mod response_store;
mod responses;
mod state;
mod stream;
mod validate;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use misc::{model_query, DetokenizeRequest, TokenizeRequest};

pub use state::{AppState, Loaded};

/// What a connection beyond `--max-connections` is served: the probes, 503 for the rest.
pub fn probes_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(misc::health))
        .route("/ping", get(misc::health).post(misc::health))
        .fallback(misc::over_connection_limit)
        .layer(middleware::from_fn(headers::request_id_and_retry_after))
        .with_state(state)
}

pub fn router(state: Arc<AppState>) -> Router {
    // Every route that does work needs the key; only the probes (and /metrics unless
    // --metrics-require-api-key) stay open.
    let mut keyed = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get))
        .route("/v1/models", get(misc::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/load", get(info::load))
        .route("/version", get(misc::version))
        .route("/tokenize", post(model_query::<TokenizeRequest>))
        .route("/detokenize", post(model_query::<DetokenizeRequest>));
    let mut open = Router::new()
        .route("/health", get(misc::health))
        .route("/ping", get(misc::health).post(misc::health));
    if state.enable_tokenizer_info {
        keyed = keyed.route("/tokenizer_info", get(info::tokenizer_info));
    }
    if state.metrics_require_api_key {
        keyed = keyed.route("/metrics", get(misc::metrics));
    } else {
        open = open.route("/metrics", get(misc::metrics));
    }
    let keyed = keyed.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_api_key,
    ));
    Router::new()
        .merge(keyed)
        .merge(open)
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            misc::count_http,
        ))
        // The body limit while the body streams in: a declared length over it is refused
        // before any byte is read (so `Expect: 100-continue` gets 413, not 100), and a
        // chunked body is cut at the limit (the handlers answer 413 as OpenAI JSON).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            misc::refuse_oversized,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(headers::request_id_and_retry_after))
        .with_state(state)
}
