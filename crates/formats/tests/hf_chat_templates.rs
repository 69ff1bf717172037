//! The chat templates of the Hugging Face fixtures (models/fixtures/hf/<model>/) render each
//! conversation of their `chat_renders.json` exactly as transformers'
//! `apply_chat_template(tokenize=False)` did.

use std::path::PathBuf;

use ferrolm_formats::hf::HfFolder;
use ferrolm_formats::tokenizer::ChatTemplate;
use serde_json::Value;

const MODELS: [&str; 5] = ["llama2", "llama3", "mistral", "qwen2", "qwen3"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/hf")
}

/// Where `got` first differs from `want`, with some text of each around it.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, g), w)| g != w)
        .map(|((i, _), _)| i)
        .unwrap_or(got.len().min(want.len()));
    let around = |s: &str| {
        let start = s.floor_char_boundary_compat(at.saturating_sub(60));
        let end = s.floor_char_boundary_compat((at + 60).min(s.len()));
        format!("{:?}", &s[start..end])
    };
    format!(
        "first difference at byte {at} (lengths: got {}, want {})\n  got:  ...{}...\n  want: ...{}...",
        got.len(),
        want.len(),
        around(got),
        around(want)
    )
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[test]
fn fixture_templates_render_as_transformers_does() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for model in MODELS {
        let dir = fixtures().join(model);
        let folder = HfFolder::open(&dir).unwrap_or_else(|e| panic!("{model}: {e}"));
        let source = folder
            .chat_template()
            .unwrap()
            .unwrap_or_else(|| panic!("{model}: no chat template"));
        let tokens = folder.special_tokens();
        let template = ChatTemplate::with_special_tokens(
            &source,
            tokens.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_else(|e| panic!("{model}: {e}"));
        let renders: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("chat_renders.json")).unwrap())
                .unwrap();
        let renders = renders.as_array().expect("chat_renders.json is a list");
        assert!(!renders.is_empty(), "{model}: no conversations");
        for (i, case) in renders.iter().enumerate() {
            let tools = case.get("tools").filter(|t| !t.is_null());
            let kwargs = case["kwargs"].as_object().cloned().unwrap_or_default();
            let want = case["rendered"].as_str().expect("rendered is a string");
            let add = case["add_generation_prompt"].as_bool().unwrap();
            checked += 1;
            match template.render_json(&case["messages"], tools, add, &kwargs) {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!(
                    "{model} #{i}: {}\n  got:  {got:?}\n  want: {want:?}",
                    first_difference(&got, want)
                )),
                Err(e) => failures.push(format!("{model} #{i}: render failed: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} renders differ from transformers':\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
