//! What a request constrains its output to, as the API's fields say it (OpenAI's
//! `response_format`, vLLM's `structured_outputs` and the older `guided_*` fields all map
//! here), and the llguidance grammar for it.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

/// A request's output constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// JSON valid under this JSON schema.
    JsonSchema(Value),
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text matching a regular expression (Rust `regex` syntax, as vLLM's guidance backend).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A context-free grammar in llguidance's Lark dialect.
    Lark(String),
}

/// A request's constraint as the engine takes it: what, how JSON is laid out, and the
/// request field that asked for it (errors name it).
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredOutput {
    pub spec: GrammarSpec,
    pub layout: JsonLayout,
    pub param: &'static str,
}

/// The whitespace JSON may carry between two of its tokens unless the request says
/// otherwise: up to 20 spaces, tabs or newlines (enough for pretty-printing a few levels deep).
pub const DEFAULT_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,20}";

/// How JSON may be laid out between its tokens (vLLM's `disable_any_whitespace`,
/// `whitespace_pattern`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonLayout {
    /// Only `", "` and `": "` between items (no free whitespace).
    pub compact: bool,
    /// The whitespace allowed between tokens, as a regex (default: any).
    pub whitespace_pattern: Option<String>,
}

impl GrammarSpec {
    /// The field kind, for errors and the cache key.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonSchema(_) => "json",
            Self::JsonObject => "json_object",
            Self::Regex(_) => "regex",
            Self::Choice(_) => "choice",
            Self::Lark(_) => "grammar",
        }
    }

    /// The text that identifies this constraint (with its layout) in the compile cache.
    pub fn cache_key(&self, layout: &JsonLayout) -> String {
        let body = match self {
            Self::JsonSchema(v) => v.to_string(),
            Self::JsonObject => String::new(),
            Self::Regex(r) => r.clone(),
            Self::Choice(c) => Value::from(c.clone()).to_string(),
            Self::Lark(g) => g.clone(),
        };
        format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{body}",
            self.kind(),
            layout.compact,
            layout.whitespace_pattern
        )
    }

    /// The llguidance grammar.
    pub(crate) fn to_grammar(&self, layout: &JsonLayout) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_layout(schema.clone(), layout))
            }
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"}), layout))
            }
            Self::Regex(r) => TopLevelGrammar::from_regex(r),
            Self::Choice(options) => {
                // Lark string literals take JSON's escapes: each option exactly.
                let alts: Vec<String> = options
                    .iter()
                    .map(|o| Value::from(o.as_str()).to_string())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            Self::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// The schema with llguidance's layout options (its `x-guidance` key) set from `layout`;
/// a schema that already carries `x-guidance` keeps its own settings. A schema that is not
/// an object (`true`, say) is left as it is.
fn with_layout(mut schema: Value, layout: &JsonLayout) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        let mut opts = serde_json::Map::new();
        if layout.compact {
            opts.insert("whitespace_flexible".into(), false.into());
            opts.insert("item_separator".into(), ", ".into());
            opts.insert("key_separator".into(), ": ".into());
        } else {
            opts.insert("whitespace_flexible".into(), true.into());
        }
        // Free whitespace is bounded per gap (llguidance's default, `[ \n\r\t]+`, lets a
        // small model loop on newlines until max_tokens): with bounded strings and arrays, a
        // generation always ends.
        let pattern = match &layout.whitespace_pattern {
            Some(p) => Some(p.clone()),
            None if !layout.compact => Some(DEFAULT_WHITESPACE.to_string()),
            None => None,
        };
        if let Some(p) = pattern {
            opts.insert("whitespace_pattern".into(), p.into());
        }
        obj.entry("x-guidance").or_insert(Value::Object(opts));
    }
    schema
}
