//! A chat answer's message and stream deltas from the model's output: the thinking split off
//! by `--reasoning-parser`, then the tool calls — by the mode the request is in (no tools, a
//! call forced by `required` or a named function, or the model's choice read by
//! `--tool-call-parser`), with the constraint a forced call puts on the output.

use ferrolm_protocol::openai::{ChatDelta, ChatMessageOut, ChatRequest};
use ferrolm_protocol::reasoning::{ReasoningParser, StreamingReasoning};
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

/// The answer's message and finish reason for a whole output: the thinking split off, then
/// the tool calls.
pub fn message(
    mode: &ToolMode,
    reasoning: Option<ReasoningParser>,
    text: String,
    finish: Option<&'static str>,
) -> (ChatMessageOut, Option<&'static str>) {
    let (thinking, text) = match reasoning {
        Some(p) => {
            let s = p.split(&text);
            (s.reasoning, s.content)
        }
        None => (None, text),
    };
    let (mut m, finish) = tool_message(mode, text, finish);
    m.reasoning_content = thinking.clone();
    m.reasoning = thinking;
    (m, finish)
}

fn tool_message(
    mode: &ToolMode,
    text: String,
    finish: Option<&'static str>,
) -> (ChatMessageOut, Option<&'static str>) {
    let plain = |text: String| ChatMessageOut {
        content: Some(text),
        ..ChatMessageOut::assistant()
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
                        content: None,
                        tool_calls: calls,
                        ..ChatMessageOut::assistant()
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
                    content: parsed.content,
                    tool_calls: parsed.calls,
                    ..ChatMessageOut::assistant()
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
            content: (!content.is_empty()).then_some(content),
            tool_calls,
            ..ChatDelta::default()
        };
        match (&self.mode, &mut self.parser) {
            (ToolMode::Off, _) => (delta(text.to_string(), Vec::new()), finish),
            (ToolMode::Forced(_), _) => {
                self.held.push_str(text);
                if finish.is_none() {
                    return (delta(String::new(), Vec::new()), None);
                }
                let (m, reason) = tool_message(&self.mode, std::mem::take(&mut self.held), finish);
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

/// One choice's stream: thinking split off first (`--reasoning-parser`), the rest through its
/// tool mode.
pub struct ChoiceStream {
    reasoning: Option<StreamingReasoning>,
    tools: ToolStream,
}

impl ChoiceStream {
    pub fn new(mode: &ToolMode, reasoning: Option<ReasoningParser>) -> Self {
        Self {
            reasoning: reasoning.map(StreamingReasoning::new),
            tools: ToolStream::new(mode),
        }
    }

    /// The delta for a piece of output (and the finish reason when it is the last).
    pub fn push(
        &mut self,
        text: &str,
        finish: Option<&'static str>,
    ) -> (ChatDelta, Option<&'static str>) {
        let (thinking, content) = match &mut self.reasoning {
            Some(r) => {
                let (mut a, mut b) = r.push(text);
                if finish.is_some() {
                    let (c, d) = r.finish();
                    a += &c;
                    b += &d;
                }
                (a, b)
            }
            None => (String::new(), text.to_string()),
        };
        let (mut delta, finish) = self.tools.push(&content, finish);
        if !thinking.is_empty() {
            delta.reasoning_content = Some(thinking.clone());
            delta.reasoning = Some(thinking);
        }
        (delta, finish)
    }
}
