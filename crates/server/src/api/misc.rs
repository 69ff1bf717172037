//! `/health`, `/metrics`, `/version`, `/v1/models`, `/tokenize`, `/detokenize`; the 404
//! fallback and the HTTP request counter every route passes through.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{from_engine, ApiError};
use super::state::{AppState, Loaded};
use super::validate::parse_body;
use ferrolm_protocol::messages::flatten_messages;
use ferrolm_protocol::openai::ChatMessageIn;

/// 200 once the model is loaded and while the engine thread runs; 503 while loading,
/// draining, or once the engine has died (so Kubernetes restarts the pod).
pub async fn health(State(state): State<Arc<AppState>>) -> Result<StatusCode, ApiError> {
    if !state.loaded()?.engine.is_alive() {
        return Err(ApiError::unavailable("the engine has stopped"));
    }
    Ok(StatusCode::OK)
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.loaded.get().map(|l| &l.engine.stats);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(stats),
    )
        .into_response()
}

pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn models(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let loaded = state.loaded()?;
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": [super::info::model_object(&state, loaded.engine.max_model_len)],
    })))
}

/// A body of /tokenize or /detokenize: the model it may name and its answer.
pub trait ModelQuery: DeserializeOwned {
    fn model(&self) -> Option<&str>;
    fn answer(self, loaded: &Loaded) -> Result<serde_json::Value, ApiError>;
}

/// The handler of every `ModelQuery`, so all check in one order: 503 while the model loads,
/// then the body (413, 400), then the model it names.
pub async fn model_query<T: ModelQuery + Send + 'static>(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.loaded()?;
    let req: T = parse_body(&state, body)?;
    state.check_model(req.model())?;
    // Tokenizing megabytes of text takes seconds of CPU: on the blocking pool, so that the
    // async runtime (and every other request on it) never waits for it.
    let st = state.clone();
    let answer = tokio::task::spawn_blocking(move || req.answer(st.loaded()?))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("answering failed: {e}"),
            )
        })??;
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessageIn>>,
    add_special_tokens: Option<bool>,
}

impl ModelQuery for TokenizeRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn answer(self, loaded: &Loaded) -> Result<serde_json::Value, ApiError> {
        let text = match (self.prompt, self.messages) {
            (Some(p), None) => p,
            (None, Some(m)) => {
                let t = loaded
                    .chat_template
                    .as_ref()
                    .ok_or_else(|| ApiError::bad_request("the model has no chat template"))?;
                let msgs = flatten_messages(&m)?;
                t.render(&msgs, true).map_err(from_engine)?
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `prompt` and `messages`",
                ))
            }
        };
        let add_special = self.add_special_tokens.unwrap_or(true);
        let tokens = loaded
            .engine
            .tokenizer
            .encode(&text, add_special)
            .map_err(from_engine)?;
        Ok(serde_json::json!({
            "count": tokens.len(),
            "max_model_len": loaded.engine.max_model_len,
            "tokens": tokens,
        }))
    }
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

impl ModelQuery for DetokenizeRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn answer(self, loaded: &Loaded) -> Result<serde_json::Value, ApiError> {
        let tok = &loaded.engine.tokenizer;
        let vocab = tok.vocab_size();
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid_field(
                "tokens",
                format!("token id {bad} is outside the vocabulary"),
            ));
        }
        Ok(serde_json::json!({ "prompt": tok.decode(&self.tokens, false) }))
    }
}

/// 404 for a route that does not exist, as OpenAI's error JSON.
pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::not_found(format!(
        "route {} {} does not exist",
        req.method(),
        req.uri().path()
    ))
}

/// 405 for a route that exists under other methods, as OpenAI's error JSON.
pub async fn method_not_allowed(req: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("route {} does not take {}", req.uri().path(), req.method()),
    )
}

/// Request-line and header bytes answered with OpenAI's 431 JSON (nginx's default buffers
/// hold 32 KiB). Beyond hyper's read buffer (~400 KiB) hyper itself answers 431, without a body.
const MAX_HEADER_BYTES: usize = 32 << 10;

/// 431 for headers over [`MAX_HEADER_BYTES`]; 413 for a body whose declared length is over
/// `--max-body-bytes`, before reading it.
pub async fn refuse_oversized(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let header_bytes: usize = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request's headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
            ),
        )
        .into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > state.max_body_bytes as u64) {
        let refusal = super::validate::body_too_large(len, state.max_body_bytes).into_response();
        // A client already sending a body a few times the limit gets it read and dropped
        // first (bounded time by the body timeout, no memory kept), so it hears the 413
        // instead of a reset; one waiting on `Expect: 100-continue` or declaring more is
        // answered at once.
        let expects = req.headers().contains_key(header::EXPECT);
        if !expects && len <= LINGER_BODIES * state.max_body_bytes as u64 {
            let mut body = req.into_body();
            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
        }
        return refusal;
    }
    next.run(req).await
}

/// Declared bodies up to this many times `--max-body-bytes` are read (and dropped) before
/// their 413 is sent.
const LINGER_BODIES: u64 = 4;

/// Counts every HTTP request by its route pattern and status.
pub async fn count_http(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let active = state.active_request();
    let resp = next.run(req).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    // Counted until the body is written to its end (a stream's last event) or dropped.
    resp.map(|body| {
        Body::new(CountedBody {
            body,
            _active: active,
        })
    })
}

/// A response body that keeps its request counted in `active_http` until it is written or
/// dropped; its length (and so `Content-Length`) is the inner body's.
struct CountedBody {
    body: Body,
    _active: super::state::ActiveRequest,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What a connection beyond `--max-connections` gets for anything but the probes.
pub async fn over_connection_limit() -> ApiError {
    ApiError::unavailable("the server is at its connection limit; retry later")
}
