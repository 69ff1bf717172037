//! A request's output constraint as the API states it: OpenAI's `response_format`
//! (`json_object`, `json_schema`), vLLM's `structured_outputs` (`json`, `regex`, `choice`,
//! `grammar` in Lark, `json_object`, with `disable_any_whitespace` and
//! `whitespace_pattern`), and the older `guided_*` fields vLLM removed in 0.12 (kept here as
//! aliases). One constraint per request; what is not implemented is a 400 naming it.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// JSON valid under this schema.
    Json(Value),
    /// Any JSON object.
    JsonObject,
    Regex(String),
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Grammar(String),
}

/// A constraint and the field that stated it (errors name that field).
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredRequest {
    pub constraint: Constraint,
    pub param: &'static str,
    /// No free whitespace in JSON (`disable_any_whitespace`).
    pub compact: bool,
    /// The whitespace JSON may carry between tokens, as a regex.
    pub whitespace_pattern: Option<String>,
}

/// The request's constraint, if any, from its raw body.
pub fn structured_request(body: &Value) -> Result<Option<StructuredRequest>, ApiError> {
    let Some(obj) = body.as_object() else {
        return Ok(None);
    };
    let mut found: Vec<StructuredRequest> = Vec::new();
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) {
        if let Some(c) = response_format(rf)? {
            found.push(plain(c, "response_format"));
        }
    }
    if let Some(so) = obj.get("structured_outputs").filter(|v| !v.is_null()) {
        if let Some(r) = structured_outputs(so)? {
            found.push(r);
        }
    }
    for r in guided_fields(obj)? {
        found.push(r);
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(ApiError::invalid_field(
            found[1].param,
            format!(
                "`{}` and `{}` both constrain the output: send one",
                found[0].param, found[1].param
            ),
        )),
    }
}

fn plain(constraint: Constraint, param: &'static str) -> StructuredRequest {
    StructuredRequest {
        constraint,
        param,
        compact: false,
        whitespace_pattern: None,
    }
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_field(param, message)
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object`, `json_schema`.
fn response_format(rf: &Value) -> Result<Option<Constraint>, ApiError> {
    const P: &str = "response_format";
    let kind = rf
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(P, "`response_format.type` must be a string"))?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let js = rf
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(P, "`response_format.json_schema` must be an object"))?;
            match js.get("schema") {
                Some(s) if s.is_object() || s.is_boolean() => Ok(Some(Constraint::Json(s.clone()))),
                Some(_) => Err(bad(P, "`response_format.json_schema.schema` must be a JSON schema object")),
                // OpenAI allows a format without a schema: any JSON object then.
                None => Ok(Some(Constraint::JsonObject)),
            }
        }
        other => Err(bad(
            P,
            format!("`response_format` of type {other:?} is not supported (text, json_object or json_schema)"),
        )),
    }
}

/// vLLM's `structured_outputs` object.
fn structured_outputs(so: &Value) -> Result<Option<StructuredRequest>, ApiError> {
    const P: &str = "structured_outputs";
    let o = so
        .as_object()
        .ok_or_else(|| bad(P, "`structured_outputs` must be an object"))?;
    let set = |k: &str| {
        o.get(k)
            .filter(|v| !v.is_null() && *v != &Value::Bool(false))
    };
    for k in ["structural_tag", "disable_additional_properties"] {
        if set(k).is_some() {
            return Err(bad(
                P,
                format!("`structured_outputs.{k}` is not supported yet"),
            ));
        }
    }
    let known = [
        "json",
        "regex",
        "choice",
        "grammar",
        "json_object",
        "structural_tag",
        "disable_fallback",
        "disable_any_whitespace",
        "disable_additional_properties",
        "whitespace_pattern",
        "backend",
        "_backend",
        "_backend_was_auto",
    ];
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(P, format!("unknown field `structured_outputs.{k}`")));
    }
    let mut kinds: Vec<Constraint> = Vec::new();
    if let Some(j) = set("json") {
        kinds.push(Constraint::Json(json_schema(j, P)?));
    }
    if let Some(r) = set("regex") {
        kinds.push(Constraint::Regex(string(r, P, "regex")?));
    }
    if let Some(c) = set("choice") {
        kinds.push(Constraint::Choice(choices(c, P)?));
    }
    if let Some(g) = set("grammar") {
        kinds.push(Constraint::Grammar(grammar(g, P)?));
    }
    if set("json_object").is_some() {
        kinds.push(Constraint::JsonObject);
    }
    let compact = match o.get("disable_any_whitespace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                P,
                "`structured_outputs.disable_any_whitespace` must be a boolean",
            ))
        }
    };
    let whitespace_pattern = match o.get("whitespace_pattern") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, P, "whitespace_pattern")?),
    };
    match kinds.len() {
        0 => Err(bad(
            P,
            "`structured_outputs` names no constraint (json, regex, choice, grammar or json_object)",
        )),
        1 => Ok(Some(StructuredRequest {
            constraint: kinds.remove(0),
            param: P,
            compact,
            whitespace_pattern,
        })),
        _ => Err(bad(P, "`structured_outputs` may name only one constraint")),
    }
}

/// The `guided_*` fields (vLLM before 0.12): aliases of `structured_outputs`' keys.
fn guided_fields(obj: &Map<String, Value>) -> Result<Vec<StructuredRequest>, ApiError> {
    let set = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let mut out = Vec::new();
    if let Some(j) = set("guided_json") {
        out.push(plain(
            Constraint::Json(json_schema(j, "guided_json")?),
            "guided_json",
        ));
    }
    if let Some(r) = set("guided_regex") {
        out.push(plain(
            Constraint::Regex(string(r, "guided_regex", "guided_regex")?),
            "guided_regex",
        ));
    }
    if let Some(c) = set("guided_choice") {
        out.push(plain(
            Constraint::Choice(choices(c, "guided_choice")?),
            "guided_choice",
        ));
    }
    if let Some(g) = set("guided_grammar") {
        out.push(plain(
            Constraint::Grammar(grammar(g, "guided_grammar")?),
            "guided_grammar",
        ));
    }
    if let Some(w) = set("guided_whitespace_pattern") {
        let w = string(w, "guided_whitespace_pattern", "guided_whitespace_pattern")?;
        match out.first_mut() {
            Some(r) => r.whitespace_pattern = Some(w),
            None => {
                return Err(bad(
                    "guided_whitespace_pattern",
                    "`guided_whitespace_pattern` without a guided_json constraint",
                ))
            }
        }
    }
    Ok(out)
}

fn string(v: &Value, param: &str, what: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(param, format!("`{what}` must be a string")))
}

/// A schema as an object, or as JSON text (vLLM accepts both).
fn json_schema(v: &Value, param: &str) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(|s| s.is_object() || s.is_boolean())
            .ok_or_else(|| bad(param, "the JSON schema is not valid JSON")),
        _ => Err(bad(param, "the JSON schema must be an object")),
    }
}

fn choices(v: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    let a = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad(param, "the choices must be a non-empty array of strings"))?;
    a.iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(param, "the choices must be strings"))
        })
        .collect()
}

/// A Lark grammar; GBNF (`::=` rules) is refused, as it would not parse as Lark.
fn grammar(v: &Value, param: &str) -> Result<String, ApiError> {
    let g = string(v, param, "grammar")?;
    if g.contains("::=") {
        return Err(bad(
            param,
            "GBNF grammars are not supported: write the grammar in Lark syntax (rule: expansion)",
        ));
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(body: Value) -> Result<Option<StructuredRequest>, ApiError> {
        structured_request(&body)
    }

    #[test]
    fn each_field_maps_to_its_constraint() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(Constraint::JsonObject),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some(Constraint::Json(schema.clone())),
            ),
            (
                json!({"structured_outputs": {"regex": "a+"}}),
                Some(Constraint::Regex("a+".into())),
            ),
            (
                json!({"structured_outputs": {"choice": ["a", "b"]}}),
                Some(Constraint::Choice(vec!["a".into(), "b".into()])),
            ),
            (
                json!({"structured_outputs": {"json": schema.to_string()}}),
                Some(Constraint::Json(schema.clone())),
            ),
            (
                json!({"structured_outputs": {"grammar": "start: \"x\""}}),
                Some(Constraint::Grammar("start: \"x\"".into())),
            ),
            (
                json!({"guided_regex": "b"}),
                Some(Constraint::Regex("b".into())),
            ),
            (
                json!({"guided_choice": ["y"]}),
                Some(Constraint::Choice(vec!["y".into()])),
            ),
            (json!({}), None),
        ];
        for (body, want) in cases {
            let got = one(body.clone()).unwrap().map(|r| r.constraint);
            assert_eq!(got, want, "{body}");
        }
        let r = one(
            json!({"structured_outputs": {"json_object": true, "disable_any_whitespace": true}}),
        )
        .unwrap()
        .unwrap();
        assert!(r.compact && r.param == "structured_outputs");
    }

    #[test]
    fn conflicts_and_unsupported_shapes_name_the_field() {
        let cases = [
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "guided_regex",
            ),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "structured_outputs",
            ),
            (json!({"structured_outputs": {}}), "structured_outputs"),
            (
                json!({"structured_outputs": {"structural_tag": "{}"}}),
                "structured_outputs",
            ),
            (
                json!({"structured_outputs": {"regex": "a", "colour": 1}}),
                "structured_outputs",
            ),
            (
                json!({"structured_outputs": {"grammar": "root ::= \"a\""}}),
                "structured_outputs",
            ),
            (
                json!({"guided_grammar": "root ::= \"a\""}),
                "guided_grammar",
            ),
            (
                json!({"response_format": {"type": "structural_tag"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_json": "{not json"}), "guided_json"),
        ];
        for (body, field) in cases {
            let e = one(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {e:?}");
        }
    }
}
