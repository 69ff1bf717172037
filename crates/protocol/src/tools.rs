//! Tool calling as OpenAI and vLLM take it: the request's `tools` (function definitions with
//! JSON-schema parameters), `tool_choice` (`none`, `auto`, `required`, or one function by
//! name) and `parallel_tool_calls`, checked into a [`ToolsRequest`]; the JSON schema that
//! constrains `required` and named choices (vLLM's); and the answer's `tool_calls` built from
//! the constrained output.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    /// Its arguments' JSON schema (`{"type": "object", "properties": {}}` when none is given).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolsRequest {
    pub tools: Vec<FunctionTool>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call per answer.
    pub parallel: bool,
    /// The tools as sent, for the chat template (`tools` in its context, as transformers
    /// passes them).
    pub template_tools: Value,
}

/// Bounds on a request's tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// Tools in one request (`--max-tools`).
    pub max_tools: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self { max_tools: 128 }
    }
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_field(param, message)
}

/// The request's `tools`, `tool_choice` and `parallel_tool_calls` from its raw body; `None`
/// when it names no tools and no choice other than `none`.
pub fn tools_request(body: &Value, limits: &ToolLimits) -> Result<Option<ToolsRequest>, ApiError> {
    let empty = Vec::new();
    let raw_tools = match body.get("tools") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("tools", "`tools` must be an array")),
    };
    if raw_tools.len() > limits.max_tools {
        return Err(bad(
            "tools",
            format!(
                "{} tools; the limit is {} (--max-tools)",
                raw_tools.len(),
                limits.max_tools
            ),
        ));
    }
    let tools = raw_tools
        .iter()
        .enumerate()
        .map(|(i, t)| function_tool(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(bad(
                &format!("tools[{i}].function.name"),
                format!("two tools are named {:?}", t.name),
            ));
        }
    }
    // OpenAI's default: `auto` with tools, `none` without.
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) if tools.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` {other:?}: expected none, auto, required or a function"),
                ))
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        "`tool_choice` must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not in `tools`"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "`tool_choice` must be a string or an object",
            ))
        }
    };
    if tools.is_empty() && choice != ToolChoice::None {
        return Err(bad("tool_choice", "`tool_choice` needs `tools`"));
    }
    let parallel = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean",
            ))
        }
    };
    if tools.is_empty() {
        return Ok(None);
    }
    Ok(Some(ToolsRequest {
        tools,
        choice,
        parallel,
        template_tools: Value::Array(raw_tools.clone()),
    }))
}

fn function_tool(i: usize, t: &Value) -> Result<FunctionTool, ApiError> {
    let p = format!("tools[{i}]");
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad(&p, "only tools of type \"function\" are supported"));
    }
    let f = t
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(&p, "a tool needs a `function` object"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            bad(
                &format!("{p}.function.name"),
                "a function's name must be 1 to 64 letters, digits, _ or -",
            )
        })?;
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(bad(
                &format!("{p}.function.parameters"),
                "`parameters` must be a JSON schema object",
            ))
        }
    };
    Ok(FunctionTool {
        name: name.to_string(),
        parameters,
    })
}

impl ToolsRequest {
    /// The JSON schema the output must follow, for `required` and named choices (vLLM's):
    /// named, the function's arguments; required, a list of `{"name", "parameters"}` calls
    /// (one at most without `parallel_tool_calls`). `None` for `auto` and `none`.
    pub fn forced_schema(&self) -> Option<Value> {
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => None,
            ToolChoice::Named(name) => self
                .tools
                .iter()
                .find(|t| &t.name == name)
                .map(|t| t.parameters.clone()),
            ToolChoice::Required => {
                // Each tool's `$defs` move to the top, where its `$ref`s point.
                let mut defs = Map::new();
                let alternatives: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| {
                        let mut params = t.parameters.clone();
                        if let Some(d) = params.as_object_mut().and_then(|o| o.remove("$defs")) {
                            if let Some(d) = d.as_object() {
                                defs.extend(d.clone());
                            }
                        }
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "enum": [t.name]},
                                "parameters": params
                            },
                            "required": ["name", "parameters"],
                            "additionalProperties": false
                        })
                    })
                    .collect();
                let mut schema = json!({
                    "type": "array",
                    "minItems": 1,
                    "items": {"anyOf": alternatives}
                });
                if !self.parallel {
                    schema["maxItems"] = json!(1);
                }
                if !defs.is_empty() {
                    schema["$defs"] = Value::Object(defs);
                }
                Some(schema)
            }
        }
    }

    /// The answer's tool calls from the constrained output of a `required` or named choice.
    pub fn forced_calls(&self, output: &str) -> Result<Vec<ToolCall>, String> {
        match &self.choice {
            ToolChoice::Named(name) => Ok(vec![ToolCall::new(name, output.to_string())]),
            ToolChoice::Required => {
                let v: Value = serde_json::from_str(output)
                    .map_err(|e| format!("the tool calls are not JSON: {e}"))?;
                v.as_array()
                    .ok_or("the tool calls are not a list")?
                    .iter()
                    .map(|c| {
                        let name = c["name"].as_str().ok_or("a tool call has no name")?;
                        Ok(ToolCall::new(name, c["parameters"].to_string()))
                    })
                    .collect()
            }
            ToolChoice::None | ToolChoice::Auto => Ok(Vec::new()),
        }
    }
}

/// One call in an answer (`message.tool_calls[i]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON string, as OpenAI sends them.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(name: &str, arguments: String) -> Self {
        Self {
            id: format!("chatcmpl-tool-{}", uuid::Uuid::new_v4().simple()),
            kind: "function",
            function: FunctionCall {
                name: name.to_string(),
                arguments,
            },
        }
    }
}

/// A streamed tool call (`delta.tool_calls[i]`): the whole call at once, with its index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCall,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn choices_and_their_schemas() {
        let body =
            json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": false});
        let t = tools_request(&body, &ToolLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, ToolChoice::Required);
        let s = t.forced_schema().unwrap();
        assert_eq!(s["maxItems"], 1);
        assert_eq!(
            s["items"]["anyOf"][0]["properties"]["name"]["enum"][0],
            "get_weather"
        );
        let calls = t
            .forced_calls(r#"[{"name": "get_weather", "parameters": {"city": "Paris"}}]"#)
            .unwrap();
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
        let named = json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
        let t = tools_request(&named, &ToolLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(t.forced_schema().unwrap()["required"][0], "city");
        let auto = tools_request(&json!({"tools": [weather()]}), &ToolLimits::default()).unwrap();
        assert_eq!(auto.unwrap().choice, ToolChoice::Auto);
        assert_eq!(
            tools_request(&json!({}), &ToolLimits::default()).unwrap(),
            None
        );
    }

    #[test]
    fn bad_tools_name_the_field() {
        let many: Vec<Value> = (0..10_000)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
            .collect();
        let cases = [
            (
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tools": many}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0]"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [weather(), weather()]}),
                "tools[1].function.name",
            ),
            (
                json!({"tools": [weather()], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
        ];
        for (body, field) in cases {
            let e = tools_request(&body, &ToolLimits::default()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{e:?}");
        }
    }
}
