//! The OpenAI-compatible HTTP API. Its modules, each using only those listed before it:
//! `error` (the error JSON), `protocol` (OpenAI's request and response types), `metrics`
//! (the Prometheus registry and per-request timer), `state` (shared state, admission, engine
//! submissions), `validate` (request checks to `SamplingParams`), `stream` (SSE, collecting
//! and rendering answers), `auth` (the API key), the handlers `completions`, `chat` and
//! `misc`; and here the router.

mod auth;
mod chat;
mod completions;
pub mod error;
pub mod metrics;
mod misc;
pub mod protocol;
mod state;
mod stream;
mod validate;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use misc::{model_query, DetokenizeRequest, TokenizeRequest};

pub use state::{AppState, Loaded};

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(misc::models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/version", get(misc::version))
        .route("/tokenize", post(model_query::<TokenizeRequest>))
        .route("/detokenize", post(model_query::<DetokenizeRequest>))
        .fallback(misc::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            misc::count_http,
        ))
        // Bodies are read by the handlers with our own limit (413 as OpenAI JSON).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
