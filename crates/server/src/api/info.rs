//! Read-only routes vLLM serves beside the generation endpoints: one model by id (the SDKs'
//! `models.retrieve`), the server's load, and (behind `--enable-tokenizer-info-endpoint`,
//! as vLLM) the tokenizer's description.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use ferrolm_protocol::openai::unix_now;

use super::error::ApiError;
use super::state::AppState;

/// `GET /v1/models/{id}`: the served model, or 404 for any other id (ids may hold slashes).
pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let loaded = state.loaded()?;
    if id != state.served_model_name {
        return Err(ApiError::not_found(format!(
            "The model `{id}` does not exist."
        )));
    }
    Ok(Json(model_object(&state, loaded.engine.max_model_len)))
}

/// The served model as OpenAI's model object (vLLM's extra fields included).
pub fn model_object(state: &AppState, max_model_len: usize) -> serde_json::Value {
    serde_json::json!({
        "id": state.served_model_name,
        "object": "model",
        "created": unix_now(),
        "owned_by": "ferrolm",
        "root": state.served_model_name,
        "parent": null,
        "max_model_len": max_model_len,
    })
}

/// `GET /load`: requests being served (vLLM's `server_load`).
pub async fn load(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "server_load": state.in_flight.load(Ordering::Acquire),
    }))
}

/// `GET /tokenizer_info`: what a client needs to tokenize as the server does (the class,
/// special tokens, BOS handling, vocabulary size, context, chat template).
pub async fn tokenizer_info(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let loaded = state.loaded()?;
    let tok = &loaded.engine.tokenizer;
    let text =
        |id: Option<u32>| id.map(|i| String::from_utf8_lossy(tok.token_bytes(i)).into_owned());
    Ok(Json(serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(tok.bos_id),
        "eos_token": text(tok.eos_id),
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "add_bos_token": tok.add_bos,
        "vocab_size": tok.vocab_size(),
        "model_max_length": loaded.engine.max_model_len,
        "chat_template": loaded.chat_template.as_ref().map(|t| t.source().to_string()),
    })))
}
