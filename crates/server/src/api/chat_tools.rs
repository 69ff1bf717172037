//! Chat's tool calling: the mode a request is in (no tools, a call forced by `required` or a
//! named function, or the model's choice read by `--tool-call-parser`), the constraint a
//! forced call puts on the output, and the answer's message and stream deltas.

use ferrolm_protocol::openai::{ChatDelta, ChatMessageOut, ChatRequest};
use ferrolm_protocol::structured::{Constraint, StructuredRequest};
use ferrolm_protocol::tool_parsers::{StreamingToolParser, ToolParser};
use ferrolm_protocol::tools::{ToolCallDelta, ToolChoice, ToolsRequest};

use super::error::ApiError;
use super::state::AppState;

/// How a request's tools shape its answer.
#[derive(Clone)]
pub enum ToolMode {
    Off,
    /// `required` or a named function: the output is the call(s), by grammar.
    Forced(ToolsRequest),
    /// `auto`: the model's output, read for calls.
    Auto(ToolParser),
}

/// The request's tool mode and the constraint on its output (a forced call's, or the
/// request's own `response_format`/`structured_outputs`).
pub fn tool_mode(
    state: &AppState,
    req: &ChatRequest,
) -> Result<(ToolMode, Option<StructuredRequest>), ApiError> {
    let structured = req.common.structured.clone();
    let Some(t) = &req.common.tool_request else {
        return Ok((ToolMode::Off, structured));
    };
    match &t.choice {
        ToolChoice::None => Ok((ToolMode::Off, structured)),
        ToolChoice::Auto => match state.tool_parser {
            Some(p) => Ok((ToolMode::Auto(p), structured)),
            None => Err(ApiError::invalid_field(
                "tool_choice",
                "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
            )),
        },
        ToolChoice::Required | ToolChoice::Named(_) => {
            if let Some(s) = &structured {
                return Err(ApiError::invalid_field(
                    "tool_choice",
                    format!(
                        "a forced `tool_choice` and `{}` both constrain the output: send one",
                        s.param
                    ),
                ));
            }
            let schema = t.forced_schema().ok_or_else(|| {
                ApiError::invalid_field("tool_choice", "`tool_choice` names no tool")
            })?;
            Ok((
                ToolMode::Forced(t.clone()),
                Some(StructuredRequest {
                    constraint: Constraint::Json(schema),
                    param: "tool_choice",
                    compact: false,
                    whitespace_pattern: None,
                }),
            ))
        }
    }
}

/// The answer's message and finish reason for a whole output.
pub fn message(
    mode: &ToolMode,
    text: String,
    finish: Option<&'static str>,
) -> (ChatMessageOut, Option<&'static str>) {
    let plain = |text: String| ChatMessageOut {
        role: "assistant",
        content: Some(text),
        tool_calls: Vec::new(),
    };
    match mode {
        ToolMode::Off => (plain(text), finish),
        // A forced call cut short (length, abort) is no call: its text is returned as is.
        ToolMode::Forced(t) if finish == Some("stop") => match t.forced_calls(&text) {
            Ok(calls) if !calls.is_empty() => {
                let reason = match t.choice {
                    ToolChoice::Required => "tool_calls",
                    _ => "stop",
                };
                (
                    ChatMessageOut {
                        role: "assistant",
                        content: None,
                        tool_calls: calls,
                    },
                    Some(reason),
                )
            }
            _ => (plain(text), finish),
        },
        ToolMode::Forced(_) => (plain(text), finish),
        ToolMode::Auto(p) => {
            let parsed = p.parse(&text);
            let called = !parsed.calls.is_empty() && finish == Some("stop");
            (
                ChatMessageOut {
                    role: "assistant",
                    content: parsed.content,
                    tool_calls: parsed.calls,
                },
                if called { Some("tool_calls") } else { finish },
            )
        }
    }
}

/// One choice's stream through its tool mode: plain text passes; a forced call is sent
/// whole at the end; `auto` output goes through the streaming parser.
pub struct ToolStream {
    mode: ToolMode,
    held: String,
    parser: Option<StreamingToolParser>,
}

impl ToolStream {
    pub fn new(mode: &ToolMode) -> Self {
        Self {
            parser: match mode {
                ToolMode::Auto(p) => Some(StreamingToolParser::new(*p)),
                _ => None,
            },
            mode: mode.clone(),
            held: String::new(),
        }
    }

    /// The delta for a piece of text (and the finish reason when it is the last).
    pub fn push(
        &mut self,
        text: &str,
        finish: Option<&'static str>,
    ) -> (ChatDelta, Option<&'static str>) {
        let delta = |content: String, tool_calls: Vec<ToolCallDelta>| ChatDelta {
            role: None,
            content: (!content.is_empty()).then_some(content),
            tool_calls,
        };
        match (&self.mode, &mut self.parser) {
            (ToolMode::Off, _) => (delta(text.to_string(), Vec::new()), finish),
            (ToolMode::Forced(_), _) => {
                self.held.push_str(text);
                if finish.is_none() {
                    return (delta(String::new(), Vec::new()), None);
                }
                let (m, reason) = message(&self.mode, std::mem::take(&mut self.held), finish);
                let calls = m
                    .tool_calls
                    .into_iter()
                    .enumerate()
                    .map(|(index, call)| ToolCallDelta { index, call })
                    .collect();
                (delta(m.content.unwrap_or_default(), calls), reason)
            }
            (ToolMode::Auto(_), Some(p)) => {
                let mut d = p.push(text);
                if finish.is_none() {
                    return (delta(d.content, d.calls), None);
                }
                let end = p.finish();
                d.content += &end.content;
                d.calls.extend(end.calls);
                let reason = if !d.calls.is_empty() && finish == Some("stop") {
                    Some("tool_calls")
                } else {
                    finish
                };
                (delta(d.content, d.calls), reason)
            }
            (ToolMode::Auto(_), None) => (delta(text.to_string(), Vec::new()), finish),
        }
    }
}
