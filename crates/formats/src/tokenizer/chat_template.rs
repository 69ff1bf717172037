//! Chat templates (Jinja) rendered as Hugging Face transformers renders them
//! (`apply_chat_template(tokenize=False)`): trim_blocks, lstrip_blocks, loop controls, Python
//! string and dict methods, `raise_exception`, `strftime_now`, transformers' `tojson`
//! (Python's `json.dumps`), maps in their keys' order, and the context transformers gives:
//! `messages`, `tools` (`none` when absent), `documents` (`none`), `add_generation_prompt`,
//! the tokenizer's special tokens and the caller's extra variables (`enable_thinking`, ...).
//!
//! A template comes from a model file, so every render is bounded ([`RenderLimits`]): its
//! instructions (minijinja's fuel), its nesting and the size of its output.

use std::io::Write;

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

use crate::error::{Error, Result};

/// One message of a conversation, its content already flattened to text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How far one render may go. Budgets grow with the conversation, so a long one is never
/// refused for its length, while a template that loops or repeats itself stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// Template instructions (minijinja fuel) for any render...
    pub fuel: u64,
    /// ... plus this many per message.
    pub fuel_per_message: u64,
    /// Output bytes for any render...
    pub output_bytes: usize,
    /// ... plus this many per byte of the messages (roles and contents).
    pub output_per_input_byte: usize,
    /// Nested macro calls, includes and recursive loops.
    pub recursion: usize,
}

impl Default for RenderLimits {
    fn default() -> Self {
        // Real templates take tens to hundreds of instructions per message and add a few
        // hundred bytes of markup around the messages; these leave ample room.
        Self {
            fuel: 1_000_000,
            fuel_per_message: 2_000,
            output_bytes: 1 << 20,
            output_per_input_byte: 4,
            recursion: 100,
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template's text, as given.
    source: String,
    /// The special tokens in the context (`bos_token`, `eos_token`, ...), by name.
    special_tokens: Vec<(String, String)>,
    limits: RenderLimits,
}

/// The variables the renderer itself sets, which extra variables may not replace
/// (transformers passes them as keyword arguments: Python refuses a second value).
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

pub use crate::hf::SPECIAL_TOKEN_NAMES;

const TEMPLATE_NAME: &str = "chat";

/// The source of `raise_exception`'s error, which tells it from the renderer's own errors.
#[derive(Debug, thiserror::Error)]
#[error("raise_exception")]
struct Raised;

/// The render's output, refusing to grow past its limit.
struct CappedOutput {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// The template with the tokenizer's BOS and EOS pieces as `bos_token`/`eos_token`.
    pub fn for_tokenizer(source: &str, tokenizer: &super::Tokenizer) -> Result<Self> {
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.piece(i)).unwrap_or("");
        Self::new(source, name(tokenizer.bos_id), name(tokenizer.eos_id))
    }

    /// The template with `bos_token` and `eos_token` (both always defined, maybe empty).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::with_special_tokens(source, [("bos_token", bos_token), ("eos_token", eos_token)])
    }

    /// The template with these special tokens (name, text) in its context and no others, as
    /// transformers passes a tokenizer's `special_tokens_map` (only the tokens that are set;
    /// [`SPECIAL_TOKEN_NAMES`]).
    pub fn with_special_tokens<'a>(
        source: &str,
        special_tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let limits = RenderLimits::default();
        let mut env = Environment::new();
        // Errors read the same in debug and release builds (debug mode adds VM dumps).
        env.set_debug(false);
        env.set_recursion_limit(limits.recursion);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python's str methods (pycompat) and the filters, bounded where an argument sizes them.
        super::template_bounds::install(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg).with_source(Raised))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::ChatTemplate(format!("does not compile: {e}")))?;
        let special_tokens = special_tokens
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Self {
            env,
            source: source.to_string(),
            special_tokens,
            limits,
        })
    }

    /// The template's text, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The same template under other limits.
    pub fn with_limits(mut self, limits: RenderLimits) -> Self {
        self.env.set_recursion_limit(limits.recursion);
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> RenderLimits {
        self.limits
    }

    /// The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages = serde_json::to_value(messages)
            .map_err(|e| Error::ChatTemplate(format!("messages: {e}")))?;
        self.render_json(
            &messages,
            None,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// The prompt text for a conversation as OpenAI's and transformers' JSON gives it: a
    /// list of message objects (`role`, `content`, `tool_calls`, `tool_call_id`, `name`, ...
    /// as the template reads them), the tools' JSON schemas (`None`: the template sees
    /// `tools` as `none`, as transformers passes it), and `extra` variables
    /// (`enable_thinking`, `date_string`, ...; they may replace a special token, not
    /// `messages`, `tools`, `documents` or `add_generation_prompt`). Objects keep their keys'
    /// order. Bounded as [`RenderLimits`] says, each message and tool counting as a message
    /// and their JSON values' text as the input bytes.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let Some(list) = messages.as_array() else {
            return Err(Error::ChatTemplate("messages must be a list".into()));
        };
        if let Some(name) = RESERVED.iter().find(|k| extra.contains_key(**k)) {
            return Err(Error::ChatTemplate(format!(
                "{name} is set by the renderer, not an extra variable"
            )));
        }
        let l = &self.limits;
        // The messages' fields (not their names: those are markup), the tools and the extra
        // variables as the text they hold.
        let input = list
            .iter()
            .map(|m| match m.as_object() {
                Some(fields) => fields
                    .values()
                    .map(json_bytes)
                    .fold(0, usize::saturating_add),
                None => json_bytes(m),
            })
            .chain(tools.map(json_bytes))
            .chain(extra.values().map(json_bytes))
            .fold(0, usize::saturating_add);
        let limit = l
            .output_bytes
            .saturating_add(input.saturating_mul(l.output_per_input_byte));
        let items = list
            .len()
            .saturating_add(tools.and_then(|t| t.as_array()).map_or(0, Vec::len));
        let fuel = l
            .fuel
            .saturating_add(l.fuel_per_message.saturating_mul(items as u64));
        // The fuel is the environment's; a clone (templates and functions are shared) carries
        // this render's.
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        // As transformers: the special tokens, the caller's kwargs over them, then its own
        // arguments (tools and documents are None when not given).
        let mut ctx: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        for (k, v) in extra {
            let v = Value::from_serialize(v);
            match ctx.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v,
                None => ctx.push((k.clone(), v)),
            }
        }
        ctx.push(("messages".into(), Value::from_serialize(messages)));
        ctx.push((
            "tools".into(),
            tools.map_or(Value::from(()), Value::from_serialize),
        ));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx: Value = ctx.into_iter().collect();
        let mut out = CappedOutput {
            buf: Vec::new(),
            limit,
            over: false,
        };
        let rendered = tmpl.render_captured_to(ctx, &mut out);
        if out.over {
            return Err(Error::TemplateLimit(format!(
                "the output passed {limit} bytes"
            )));
        }
        if let Err(e) = rendered {
            return Err(match e.kind() {
                ErrorKind::OutOfFuel => {
                    Error::TemplateLimit(format!("the render passed {fuel} instructions"))
                }
                // raise_exception from the template is the template rejecting the conversation.
                _ if raised(&e) => Error::TemplateRejected(e.detail().unwrap_or("").to_string()),
                _ => Error::ChatTemplate(format!("render failed: {e}")),
            });
        }
        String::from_utf8(out.buf)
            .map_err(|e| Error::ChatTemplate(format!("render gave invalid UTF-8: {e}")))
    }
}

/// The text a JSON value holds: its strings (object keys too) and its scalars' digits.
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    match v {
        J::Null => 0,
        J::Bool(_) => 5,
        J::Number(n) => n.to_string().len(),
        J::String(s) => s.len(),
        J::Array(a) => a.iter().map(json_bytes).fold(0, usize::saturating_add),
        J::Object(o) => o
            .iter()
            .map(|(k, v)| k.len().saturating_add(json_bytes(v)))
            .fold(0, usize::saturating_add),
    }
}

/// The local time in `fmt` (strftime). A format chrono cannot read is the template's error:
/// `to_string` would panic on it.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot read the format {fmt:?}"),
        )
    })?;
    Ok(out)
}

/// Whether `e` came from the template's `raise_exception`.
fn raised(e: &minijinja::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<Raised>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm_template_adds_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "S"),
                    ChatMessage::new("user", "U"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_trim_and_raise_work() {
        let src = "{% for m in messages %}\n  {{ m.content.strip().upper() }}{% if m.role.startswith('us') %}!{% endif %}\n{% endfor %}{% if messages|length > 2 %}{{ raise_exception('too many') }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "  hi ")], false)
            .unwrap();
        // As jinja2 with trim_blocks + lstrip_blocks: newlines after block tags go, the
        // indentation before a {{ }} expression stays.
        assert_eq!(out, "  HI!");
        let many = vec![ChatMessage::new("user", "a"); 3];
        match t.render(&many, false) {
            Err(Error::TemplateRejected(m)) => assert!(m.contains("too many"), "{m}"),
            other => panic!("expected the template's exception, got {other:?}"),
        }
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    fn render_json(src: &str, messages: &str, tools: Option<&str>, extra: &str) -> Result<String> {
        let t = ChatTemplate::with_special_tokens(src, [("eos_token", "</s>")]).unwrap();
        let extra = json(extra);
        let tools = tools.map(json);
        t.render_json(
            &json(messages),
            tools.as_ref(),
            false,
            extra.as_object().unwrap(),
        )
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let msgs = r#"[{"role": "user", "content": "é<&>'\"\n\u0001", "z": 1, "a": [1.0, 1e-7, 2, null, true, {}, []]}]"#;
        let out = |src: &str| render_json(src, msgs, None, "{}").unwrap();
        // Key order kept, Python's separators, nothing HTML-escaped, non-ASCII as is.
        assert_eq!(
            out("{{ messages[0] | tojson }}"),
            r#"{"role": "user", "content": "é<&>'\"\n\u0001", "z": 1, "a": [1.0, 1e-07, 2, null, true, {}, []]}"#
        );
        assert_eq!(
            out("{{ messages[0].a[:3] | tojson(indent=2) }}"),
            "[\n  1.0,\n  1e-07,\n  2\n]"
        );
        assert_eq!(
            out("{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}"),
            r#"{"a":[1.0,1e-07,2,null,true,{},[]],"content":"\u00e9<&>'\"\n\u0001","role":"user","z":1}"#
        );
        // Positional arguments are transformers': ensure_ascii, indent, separators, sort_keys.
        assert_eq!(
            out("{{ {'b': 'é', 'a': 1} | tojson(false, 1) }}"),
            "{\n \"b\": \"é\",\n \"a\": 1\n}"
        );
        for bad in [
            "{{ undefined_thing | tojson }}",
            "{{ 1 | tojson(colour=1) }}",
            "{% set ns = namespace(x=1) %}{% set ns.x = ns %}{{ ns | tojson }}",
        ] {
            assert!(
                matches!(
                    render_json(bad, msgs, None, "{}"),
                    Err(Error::ChatTemplate(_))
                ),
                "{bad}"
            );
        }
        // Python dicts keep their order in templates too.
        assert_eq!(
            out("{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}{% endfor %}"),
            "ba"
        );
    }

    #[test]
    fn the_context_is_transformers() {
        let src = "{{ tools is none }}|{{ documents is none }}|{{ bos_token is defined }}|{{ eos_token }}|{{ enable_thinking is false }}|{{ messages[0].tool_calls[0].function.arguments | tojson }}";
        let msgs = r#"[{"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {"y": 1, "x": "2"}}}]}]"#;
        assert_eq!(
            render_json(src, msgs, None, r#"{"enable_thinking": false}"#).unwrap(),
            r#"True|True|False|</s>|True|{"y": 1, "x": "2"}"#
        );
        let tools = r#"[{"type": "function", "function": {"name": "f"}}]"#;
        assert_eq!(
            render_json(
                "{% if tools %}{{ tools[0] | tojson }}{% endif %}",
                msgs,
                Some(tools),
                "{}"
            )
            .unwrap(),
            tools[1..tools.len() - 1]
        );
        // Extra variables may replace a special token, not the renderer's own variables.
        assert_eq!(
            render_json("{{ eos_token }}", msgs, None, r#"{"eos_token": "<eos>"}"#).unwrap(),
            "<eos>"
        );
        assert!(matches!(
            render_json("{{ tools }}", msgs, None, r#"{"tools": []}"#),
            Err(Error::ChatTemplate(_))
        ));
        assert!(matches!(
            render_json("x", r#"{"role": "user"}"#, None, "{}"),
            Err(Error::ChatTemplate(_))
        ));
    }

    #[test]
    fn broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn strftime_now_renders_a_date() {
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let year = t.render(&[], false).unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.chars().all(|c| c.is_ascii_digit()));
    }

    /// Found by fuzz/chat_template (crash-e2f790d1): chrono panicked on an unknown
    /// specifier when the date was turned into a string.
    #[test]
    fn strftime_now_with_a_bad_format_is_an_error() {
        for fmt in ["%]-%m-%d", "%", "%Q%"] {
            let src = format!("{{{{ strftime_now('{fmt}') }}}}");
            let t = ChatTemplate::new(&src, "", "").unwrap();
            match t.render(&[], false) {
                Err(Error::ChatTemplate(m)) => assert!(m.contains("strftime_now"), "{m}"),
                other => panic!("{fmt}: expected a template error, got {other:?}"),
            }
        }
    }

    /// Found by fuzz/chat_template (crash-b632a0e7): minijinja's format parser panicked on
    /// a non-ASCII `%(key)`; widths and precisions past `MAX_WIDTH` allocate gigabytes.
    #[test]
    fn format_strings_are_checked_before_minijinja_reads_them() {
        for src in [
            "{{ '%(é)s' | format({'é': 1}) }}",
            "{{ '{0[é]}'.format([1]) }}",
            "{{ '%.999999999f' | format(1.5) }}",
            "{{ '{:>999999999}'.format(1) }}",
            "{{ 'x' | indent(99999999999) }}",
            "{{ [1] | tojson(indent=99999) }}",
            "{{ [1] | batch(999999999, 'x') | list }}",
        ] {
            let t = ChatTemplate::new(src, "", "").unwrap();
            assert!(
                matches!(t.render(&[], false), Err(Error::ChatTemplate(_))),
                "{src}"
            );
        }
        let src = "{{ '%5.1f' | format(2.5) }}|{{ '%(k)s' | format({'k': 'v'}) }}|{{ '{:>4}'.format(7) }}|{{ 'a\nb' | indent(2) }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "  2.5|v|   7|a\n  b");
    }

    #[test]
    fn a_rejection_inside_a_macro_is_still_a_rejection() {
        let src = "{% macro check(m) %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{% endmacro %}{% for m in messages %}{{ check(m) }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        match t.render(&[ChatMessage::new("tool", "x")], false) {
            Err(Error::TemplateRejected(m)) => assert_eq!(m, "no tools"),
            other => panic!("expected the template's exception, got {other:?}"),
        }
        // The renderer's own invalid operations are not the template's verdict.
        let t = ChatTemplate::new("{{ 'ab' * 100000000 }}", "", "").unwrap();
        assert!(matches!(t.render(&[], false), Err(Error::ChatTemplate(_))));
    }

    #[test]
    fn renders_are_bounded_in_instructions_output_and_nesting() {
        let small = RenderLimits {
            fuel: 1_000,
            fuel_per_message: 10,
            output_bytes: 100,
            output_per_input_byte: 2,
            recursion: 5,
        };
        let new = |src: &str| ChatTemplate::new(src, "", "").unwrap().with_limits(small);
        let endless =
            new("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
        match endless.render(&[], false) {
            Err(Error::TemplateLimit(m)) => assert!(m.contains("1000 instructions"), "{m}"),
            other => panic!("expected the fuel limit, got {other:?}"),
        }
        // 100 bytes plus 2 per input byte: 10 bytes of messages allow 120.
        let echo = new("{% for m in messages %}{{ m.content }}{% endfor %}{{ 'x' * 110 }}");
        let msgs = [ChatMessage::new("user", "abcdef")];
        assert_eq!(echo.render(&msgs, false).unwrap().len(), 116);
        let over = new("{{ 'x' * 121 }}");
        match over.render(&msgs, false) {
            Err(Error::TemplateLimit(m)) => assert!(m.contains("120 bytes"), "{m}"),
            other => panic!("expected the output limit, got {other:?}"),
        }
        let deep = new("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(deep.render(&[], false).is_err());
        // The default limits leave a long conversation with a real template alone.
        let t = ChatTemplate::new(SMOLLM, "", "").unwrap();
        let long = vec![ChatMessage::new("user", "hello there"); 20_000];
        assert!(t.render(&long, true).unwrap().len() > 20_000 * 30);
    }
}
