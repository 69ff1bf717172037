//! OpenAI request and response types (the fields vLLM accepts), and the `id` and `created`
//! every response carries. Unknown request fields are ignored.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by completions and chat.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<i64>,
    pub ignore_eos: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub min_tokens: Option<i64>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub prompt_logprobs: Option<i64>,
    pub skip_special_tokens: Option<bool>,
    /// Accepted as OpenAI defines it; not used.
    #[allow(dead_code)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    // Known but unsupported: refused by name rather than ignored.
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    /// Read with the other structured-output fields into `structured`.
    pub response_format: Option<serde_json::Value>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    /// The output's constraint (`response_format`, `structured_outputs`, `guided_*`), read
    /// from the raw body by [`crate::structured::structured_request`].
    #[serde(skip)]
    pub structured: Option<crate::structured::StructuredRequest>,
    /// Chat's tools, checked from the raw body by [`crate::tools::tools_request`].
    #[serde(skip)]
    pub tool_request: Option<crate::tools::ToolsRequest>,
}

impl CommonParams {
    /// `stream_options.include_usage`: a final chunk with the usage.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// An endpoint's request type: its own fields plus the shared sampling fields, which are read
/// from the same JSON separately (see `CommonParams`).
pub trait WithCommon: DeserializeOwned {
    /// Chat completions (else completions): which fields mean what differs.
    const IS_CHAT: bool;
    fn common(&self) -> &CommonParams;
    fn set_common(&mut self, c: CommonParams);
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Option<Prompt>,
    /// Completions: an integer, the number of alternatives.
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    /// Read from the same body separately (flatten would hide field names in errors).
    #[serde(skip)]
    pub common: CommonParams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: Option<MessageContent>,
    /// An assistant's earlier calls (`[{id, type, function: {name, arguments}}]`).
    pub tool_calls: Option<serde_json::Value>,
    /// A tool message's answer to this call.
    pub tool_call_id: Option<String>,
    /// An assistant's earlier thinking (vLLM's `reasoning`, or its former name).
    pub reasoning: Option<String>,
    pub reasoning_content: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
    pub max_completion_tokens: Option<i64>,
    /// Chat: a bool; `top_logprobs` says how many alternatives.
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub add_generation_prompt: Option<bool>,
    /// Extra variables for the chat template (`enable_thinking`...).
    pub chat_template_kwargs: Option<serde_json::Value>,
    // vLLM's chat-template fields, known and not implemented yet: refused by name.
    pub continue_final_message: Option<bool>,
    pub documents: Option<serde_json::Value>,
    pub chat_template: Option<String>,
    pub add_special_tokens: Option<bool>,
    #[serde(skip)]
    pub common: CommonParams,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageOut {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl UsageOut {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CompletionLogprobs {
    pub text_offset: Vec<usize>,
    pub token_logprobs: Vec<Option<f32>>,
    pub tokens: Vec<String>,
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// vLLM's `prompt_logprobs`, when asked for: per prompt token `null` (the first) or
    /// `{"<id>": {"logprob", "rank", "decoded_token"}}` for the token and the top alternatives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<serde_json::Value>,
}

/// Every completions and chat answer, and every chunk of their streams: the request's id,
/// the object's name, `created`, the model, the choices, and the usage where there is one
/// (a non-streamed answer always has one).
#[derive(Debug, Clone, Serialize)]
pub struct ChoicesResponse<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    /// Chat: vLLM's `prompt_logprobs`, at the top level as vLLM puts it there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<serde_json::Value>,
}

pub type CompletionResponse = ChoicesResponse<CompletionChoice>;

/// A token in chat log-probs: the token, its log-prob and its bytes.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A generated token in chat log-probs: its `token`, `logprob` and `bytes` (flattened: the
/// same JSON as with the three fields here) and its alternatives.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    #[serde(flatten)]
    pub chosen: TopLogprobOut,
    pub top_logprobs: Vec<TopLogprobOut>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// None when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCall>,
    /// The model's thinking (`--reasoning-parser`; vLLM's field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The same, under the field's former name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessageOut {
    /// An empty assistant message.
    pub fn assistant() -> Self {
        Self {
            role: "assistant",
            content: None,
            tool_calls: Vec::new(),
            reasoning: None,
            reasoning_content: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

pub type ChatResponse = ChoicesResponse<ChatChoice>;

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCallDelta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// A choice of a chat stream's chunk (a `ChoicesResponse<ChatChunkChoice>`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `WithCommon` for request types that keep the shared fields in their `common` field.
macro_rules! with_common {
    ($($request:ty: $chat:expr),*) => {$(
        impl WithCommon for $request {
            const IS_CHAT: bool = $chat;
            fn common(&self) -> &CommonParams {
                &self.common
            }
            fn set_common(&mut self, c: CommonParams) {
                self.common = c;
            }
        }
    )*};
}

with_common!(CompletionRequest: false, ChatRequest: true);

/// A response's `created`: seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response's `id`: `prefix-` and a fresh UUID.
pub fn request_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
