//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_engine::engine::RequestOutput;
use ferrolm_protocol::messages::{
    cut_after_final_message, final_message_to_continue, flatten_messages, messages_json,
};
use ferrolm_protocol::validate::refuse_unsupported_chat;

use super::chat_output::{message, tool_mode, ChoiceStream};
use super::error::{from_engine, ApiError};
use super::state::{submit, AppState};
use super::stream::{
    build_choices, chat_logprobs, chunk_builder, collect_all, prompt_logprobs_json, stream_sse,
    usage_chunk,
};
use super::validate::{
    check_length, encode_prompt, logprobs_count, max_tokens_or, read_request, sampling_params,
    structured_output, validate_prompts,
};
use ferrolm_protocol::openai::{
    request_id, unix_now, ChatChoice, ChatChunkChoice, ChatDelta, ChatRequest, ChatResponse,
    UsageOut,
};
use ferrolm_protocol::reasoning::ReasoningParser;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (started, loaded, tok, req, n) = read_request::<ChatRequest>(&state, body)?;
    let template = loaded.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "the model has no chat template; use /v1/completions or --chat-template",
        )
    })?;
    refuse_unsupported_chat(&req)?;
    let messages = flatten_messages(&req.messages)?;
    let messages_json = messages_json(&req.messages)?;
    let (tool_mode, structured) = tool_mode(&state, &req)?;
    let tools = req
        .common
        .tool_request
        .as_ref()
        .map(|t| t.template_tools.clone());
    let extra = match &req.chat_template_kwargs {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "chat_template_kwargs",
                "`chat_template_kwargs` must be an object",
            ))
        }
    };
    let render = |msgs: &serde_json::Value, add_generation_prompt: bool| {
        template
            .render_json(msgs, tools.as_ref(), add_generation_prompt, &extra)
            .map_err(from_engine)
    };
    // vLLM's continue_final_message: the assistant's last message is continued, not closed.
    let continue_from = match req.continue_final_message {
        Some(true) => Some(final_message_to_continue(
            &messages,
            req.add_generation_prompt,
        )?),
        _ => None,
    };
    let add_generation_prompt =
        continue_from.is_none() && req.add_generation_prompt.unwrap_or(true);
    let text = render(&messages_json, add_generation_prompt)?;
    let text = match continue_from {
        Some(content) => {
            // Where the final message's turn opens: the other messages with a generation prompt.
            let opened = match messages.len() {
                1 => String::new(),
                n => {
                    let earlier = messages_json.as_array().map_or(&[][..], |a| &a[..n - 1]);
                    render(&serde_json::Value::Array(earlier.to_vec()), true)?
                }
            };
            let from = if text.starts_with(&opened) {
                opened.len()
            } else {
                0
            };
            cut_after_final_message(&text, content, from)?
        }
        None => text,
    };
    let engine = &loaded.engine;
    let max_model_len = engine.max_model_len;
    let prompt = encode_prompt(&tok, text, max_model_len, "messages").await?;
    let max_tokens = max_tokens_or(
        req.max_completion_tokens.or(req.common.max_tokens),
        max_model_len.saturating_sub(prompt.len()).max(1),
    )?;
    // generation_config.json's max_new_tokens caps what any request gets (vLLM's
    // `get_max_tokens`).
    let max_tokens = loaded
        .generation_defaults
        .max_tokens
        .map_or(max_tokens, |cap| max_tokens.min(cap.max(1)));
    check_length(prompt.len(), max_tokens, max_model_len)?;
    let top = logprobs_count("top_logprobs", req.top_logprobs)?;
    if top.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::invalid_field(
            "top_logprobs",
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    let logprobs = (req.logprobs == Some(true)).then_some(top.unwrap_or(0));
    let prompt_logprobs = logprobs_count("prompt_logprobs", req.common.prompt_logprobs)?;
    let mut params = sampling_params(&req.common, max_tokens, logprobs, prompt_logprobs)?;
    params.structured = structured.as_ref().map(structured_output);
    // Under a grammar the output thinks only where the grammar opens `<think>` itself: the
    // Qwen 3 rule (thinking only when the output opens with it) holds, DeepSeek R1's (thinking
    // from the start) does not.
    let reasoning = state
        .reasoning_parser
        .filter(|p| structured.is_none() || *p == ReasoningParser::Qwen3);
    // Chat names the alternatives' count `top_logprobs`.
    let valid = validate_prompts(
        engine,
        std::slice::from_ref(&prompt),
        &params,
        &[("logprobs", "top_logprobs")],
    )?;
    let id = request_id("chatcmpl");
    let trace = state.trace(&headers, &id, &params, n);
    let (mut sub, rxs) = submit(&state, engine, &valid, n, trace)?;
    let created = unix_now();
    let model = state.served_model_name.clone();

    if req.common.stream {
        let chunk = chunk_builder::<ChatChunkChoice>(
            id.clone(),
            "chat.completion.chunk",
            created,
            model.clone(),
        );
        let usage = usage_chunk(req.common.include_usage(), prompt.len(), chunk.clone());
        let mut choice_streams: Vec<ChoiceStream> = (0..n)
            .map(|_| ChoiceStream::new(&tool_mode, reasoning))
            .collect();
        let render = move |i: usize, o: &RequestOutput, first: bool| -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            if first {
                out.push(chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta: ChatDelta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                            ..ChatDelta::default()
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                ));
            }
            let (delta, finish_reason) =
                choice_streams[i].push(&o.text, o.finished.as_ref().map(|f| f.as_str()));
            if delta.content.is_some()
                || delta.reasoning.is_some()
                || !delta.tool_calls.is_empty()
                || finish_reason.is_some()
            {
                let lp = logprobs.map(|_| chat_logprobs(&tok, &o.logprobs));
                out.push(chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta,
                        logprobs: lp,
                        finish_reason,
                    }],
                    None,
                ));
            }
            out
        };
        return Ok(stream_sse(state.clone(), sub, rxs, started, render, usage));
    }

    let results = collect_all(&state, &mut sub, rxs, started).await;
    // vLLM's prompt_logprobs: the same for every choice, at the top level.
    let prompt_lp = match (prompt_logprobs, results.first()) {
        (Some(_), Some(Ok(r))) => Some(prompt_logprobs_json(
            &tok,
            &prompt,
            r.prompt_logprobs.as_deref().unwrap_or_default(),
        )),
        _ => None,
    };
    let (choices, completion_tokens) = build_choices(results, |i, r| {
        let (message, finish_reason) = message(&tool_mode, reasoning, r.text, r.finish);
        ChatChoice {
            index: i,
            message,
            logprobs: logprobs.map(|_| chat_logprobs(&tok, &r.logprobs)),
            finish_reason,
        }
    })?;
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: Some(UsageOut::new(prompt.len(), completion_tokens)),
        prompt_logprobs: prompt_lp,
    })
    .into_response())
}
