//! `tool_choice: auto`: the model decides, and its output is read for calls by a parser per
//! model family, as vLLM's `--tool-call-parser`: `hermes` (Qwen2.5/Qwen3/SmolLM-style
//! `<tool_call>{"name", "arguments"}</tool_call>`), `llama3_json` (an output that is a JSON
//! call `{"name", "parameters"}`, or several joined by `; `, after an optional
//! `<|python_tag|>`), `mistral` (`[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`).
//! Output that does not parse as calls stays content, as vLLM's parsers leave it. The
//! streaming form gives the same content and calls as the whole output's, however the text
//! is split.

use serde_json::Value;

use crate::tools::{ToolCall, ToolCallDelta};

/// A `--tool-call-parser`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolParser {
    Hermes,
    Llama3Json,
    Mistral,
}

impl ToolParser {
    pub const NAMES: [&'static str; 3] = ["hermes", "llama3_json", "mistral"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// Where calls may begin: the text that opens them.
    fn marker(self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>",
            Self::Mistral => "[TOOL_CALLS]",
            Self::Llama3Json => "<|python_tag|>",
        }
    }

    /// The content and calls of a whole output.
    pub fn parse(self, text: &str) -> Parsed {
        let content_only = || Parsed {
            content: (!text.is_empty()).then(|| text.to_string()),
            calls: Vec::new(),
        };
        let calls = match self {
            Self::Hermes => hermes_calls(text),
            Self::Mistral => mistral_calls(text),
            Self::Llama3Json => llama3_calls(text),
        };
        match calls {
            Some((before, calls)) if !calls.is_empty() => Parsed {
                content: (!before.is_empty()).then(|| before.to_string()),
                calls,
            },
            _ => content_only(),
        }
    }
}

/// What an output holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

fn call_from(v: &Value, args_key: &[&str]) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    let args = args_key
        .iter()
        .find_map(|k| v.get(*k))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ToolCall::new(name, arguments))
}

fn hermes_calls(text: &str) -> Option<(&str, Vec<ToolCall>)> {
    let start = text.find("<tool_call>")?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(open) = rest.find("<tool_call>") {
        let body = &rest[open + "<tool_call>".len()..];
        // An unclosed last call runs to the end (the model may stop right after its JSON).
        let (json, next) = match body.find("</tool_call>") {
            Some(close) => (&body[..close], &body[close + "</tool_call>".len()..]),
            None => (body, ""),
        };
        let v: Value = serde_json::from_str(json.trim()).ok()?;
        calls.push(call_from(&v, &["arguments", "parameters"])?);
        rest = next;
    }
    Some((&text[..start], calls))
}

fn mistral_calls(text: &str) -> Option<(&str, Vec<ToolCall>)> {
    let start = text.find("[TOOL_CALLS]")?;
    let v: Value = serde_json::from_str(text[start + "[TOOL_CALLS]".len()..].trim()).ok()?;
    let list = match v {
        Value::Array(a) => a,
        one @ Value::Object(_) => vec![one],
        _ => return None,
    };
    let calls = list
        .iter()
        .map(|c| call_from(c, &["arguments", "parameters"]))
        .collect::<Option<Vec<_>>>()?;
    Some((&text[..start], calls))
}

fn llama3_calls(text: &str) -> Option<(&str, Vec<ToolCall>)> {
    let body = text.strip_prefix("<|python_tag|>").unwrap_or(text).trim();
    if !body.starts_with('{') {
        return None;
    }
    // `{...}; {...}` (Llama 3.1's separator), else one or more objects back to back.
    let by_separator = || {
        body.split("; ")
            .map(|part| {
                let v: Value = serde_json::from_str(part.trim().trim_end_matches(';')).ok()?;
                call_from(&v, &["parameters", "arguments"])
            })
            .collect::<Option<Vec<_>>>()
    };
    let back_to_back = || {
        serde_json::Deserializer::from_str(body)
            .into_iter::<Value>()
            .map(|v| call_from(&v.ok()?, &["parameters", "arguments"]))
            .collect::<Option<Vec<_>>>()
    };
    let calls = by_separator().or_else(back_to_back)?;
    Some(("", calls))
}

/// What one piece of a stream adds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamDelta {
    pub content: String,
    pub calls: Vec<ToolCallDelta>,
}

/// The parser over a stream: content is passed on as soon as it cannot be the start of a
/// call; calls are sent whole, each when the output is complete (their JSON is only known
/// then). The pieces add up to [`ToolParser::parse`] of the whole output.
pub struct StreamingToolParser {
    parser: ToolParser,
    text: String,
    /// Bytes of `text` sent as content.
    sent: usize,
    /// Calls may have begun: nothing more is sent before the end.
    holding: bool,
}

impl StreamingToolParser {
    pub fn new(parser: ToolParser) -> Self {
        Self {
            parser,
            text: String::new(),
            sent: 0,
            holding: false,
        }
    }

    pub fn push(&mut self, piece: &str) -> StreamDelta {
        self.text.push_str(piece);
        if self.holding {
            return StreamDelta::default();
        }
        let marker = self.parser.marker();
        let rest = &self.text[self.sent..];
        // Llama 3 JSON: an output that opens with `{` may be a call.
        let opens_json = self.parser == ToolParser::Llama3Json && {
            let t = self.text.trim_start();
            t.starts_with('{') || (t.is_empty() && !self.text.is_empty())
        };
        if opens_json && self.sent == 0 {
            self.holding = self.text.trim_start().starts_with('{');
            return StreamDelta::default();
        }
        let safe = match rest.find(marker) {
            Some(at) => {
                self.holding = true;
                at
            }
            // Hold back a tail that could be the marker's beginning.
            None => (1..marker.len().min(rest.len() + 1))
                .rev()
                .find(|&k| {
                    rest.is_char_boundary(rest.len() - k)
                        && marker.starts_with(&rest[rest.len() - k..])
                })
                .map_or(rest.len(), |k| rest.len() - k),
        };
        let content = rest[..safe].to_string();
        self.sent += safe;
        StreamDelta {
            content,
            calls: Vec::new(),
        }
    }

    /// The end of the output: what is left of its content and its calls.
    pub fn finish(&mut self) -> StreamDelta {
        let whole = self.parser.parse(&self.text);
        let content = whole.content.unwrap_or_default();
        let left = content.get(self.sent..).unwrap_or_default().to_string();
        self.sent = self.text.len();
        StreamDelta {
            content: left,
            calls: whole
                .calls
                .into_iter()
                .enumerate()
                .map(|(index, call)| ToolCallDelta { index, call })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs as the models write them (recorded from Qwen2.5 / Llama 3.1 / Mistral chat
    /// formats), with the content and calls each parser must find.
    fn cases() -> Vec<(
        ToolParser,
        &'static str,
        Option<&'static str>,
        Vec<(&'static str, &'static str)>,
    )> {
        vec![
            (
                ToolParser::Hermes,
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                None,
                vec![("get_weather", r#"{"city":"Paris"}"#)],
            ),
            (
                ToolParser::Hermes,
                "Let me check. <tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}\n</tool_call>",
                Some("Let me check. "),
                vec![("a", "{}"), ("b", r#"{"x":1}"#)],
            ),
            (ToolParser::Hermes, "No tools needed: 2 < 3.", Some("No tools needed: 2 < 3."), vec![]),
            (
                ToolParser::Hermes,
                "<tool_call>{not json}</tool_call>",
                Some("<tool_call>{not json}</tool_call>"),
                vec![],
            ),
            (
                ToolParser::Llama3Json,
                "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
                None,
                vec![("get_weather", r#"{"city":"Rome"}"#)],
            ),
            (
                ToolParser::Llama3Json,
                "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"y\": \"z\"}}",
                None,
                vec![("a", "{}"), ("b", r#"{"y":"z"}"#)],
            ),
            (ToolParser::Llama3Json, "The weather is fine.", Some("The weather is fine."), vec![]),
            (
                ToolParser::Mistral,
                "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]",
                None,
                vec![("get_weather", r#"{"city":"Oslo"}"#)],
            ),
            (ToolParser::Mistral, "Sunny [today].", Some("Sunny [today]."), vec![]),
        ]
    }

    fn names_args(calls: &[ToolCall]) -> Vec<(String, String)> {
        calls
            .iter()
            .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
            .collect()
    }

    #[test]
    fn whole_outputs_parse_as_recorded() {
        for (p, text, content, calls) in cases() {
            let got = p.parse(text);
            assert_eq!(got.content.as_deref(), content, "{p:?} {text}");
            let want: Vec<(String, String)> = calls
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect();
            assert_eq!(names_args(&got.calls), want, "{p:?} {text}");
        }
    }

    #[test]
    fn streams_split_at_every_byte_add_up_to_the_whole() {
        for (p, text, _, _) in cases() {
            let whole = p.parse(text);
            // Every split point, and one byte at a time.
            let mut splits: Vec<Vec<&str>> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .map(|i| vec![&text[..i], &text[i..]])
                .collect();
            splits.push(
                text.char_indices()
                    .map(|(i, c)| &text[i..i + c.len_utf8()])
                    .collect(),
            );
            for pieces in splits {
                let mut s = StreamingToolParser::new(p);
                let (mut content, mut calls) = (String::new(), Vec::new());
                for piece in &pieces {
                    let d = s.push(piece);
                    content += &d.content;
                    calls.extend(d.calls.into_iter().map(|c| c.call));
                }
                let d = s.finish();
                content += &d.content;
                calls.extend(d.calls.into_iter().map(|c| c.call));
                assert_eq!(
                    (!content.is_empty()).then_some(content.as_str()),
                    whole.content.as_deref(),
                    "{p:?} {pieces:?}"
                );
                assert_eq!(
                    names_args(&calls),
                    names_args(&whole.calls),
                    "{p:?} {pieces:?}"
                );
            }
        }
    }
}
