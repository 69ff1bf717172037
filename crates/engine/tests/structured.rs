//! Structured outputs on the default model, through the engine: each constraint holds
//! whatever the model would rather say (temperature 1.0, seeded), a grammar that does not
//! compile is refused before any engine work, and parallel choices keep their own state.

mod common;

use std::sync::Arc;

use common::{collect, load_model};
use ferrolm_engine::config::EngineConfig;
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::request::FinishReason;
use ferrolm_engine::sampling::SamplingParams;
use ferrolm_engine::structured::{GrammarSpec, JsonLayout, StructuredOutput};
use serde_json::{json, Value};

fn engine() -> EngineHandle {
    let lm = load_model();
    EngineHandle::start(lm.model, Arc::new(lm.tokenizer), EngineConfig::default()).unwrap()
}

fn params(spec: GrammarSpec, seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens: 200,
        temperature: 1.0,
        seed: Some(seed),
        structured: Some(StructuredOutput {
            spec,
            layout: JsonLayout::default(),
            param: "structured_outputs",
        }),
        ..Default::default()
    }
}

fn generate(e: &EngineHandle, prompt: &str, p: SamplingParams) -> (String, FinishReason) {
    let ids = e.tokenizer.encode(prompt, false).unwrap();
    let (_, rx) = e.add_request(ids, p).unwrap();
    let d = collect(rx);
    (d.text, d.finish)
}

#[test]
fn regex_choice_and_lark_hold_at_temperature_one() {
    let e = engine();
    let re = regex_lite(r"^[0-9]{3}-[a-z]{2,4}$");
    for seed in 0..6 {
        let (t, f) = generate(
            &e,
            "Write a poem about the sea.",
            params(GrammarSpec::Regex("[0-9]{3}-[a-z]{2,4}".into()), seed),
        );
        assert!(re(&t), "{t:?} does not match");
        assert_eq!(f, FinishReason::Stop, "{t:?}");
    }
    let options = vec![
        "red".to_string(),
        "green \"quoted\"".into(),
        "blue\\n".into(),
    ];
    for seed in 0..6 {
        let (t, _) = generate(
            &e,
            "Pick a colour.",
            params(GrammarSpec::Choice(options.clone()), seed),
        );
        assert!(options.contains(&t), "{t:?} is not a choice");
    }
    let lark = r#"start: "SELECT " col (", " col)* " FROM " table
col: "id" | "name" | "age"
table: /[a-z]{1,8}/"#;
    for seed in 0..6 {
        let (t, _) = generate(&e, "SQL:", params(GrammarSpec::Lark(lark.into()), seed));
        assert!(t.starts_with("SELECT ") && t.contains(" FROM "), "{t:?}");
    }
}

#[test]
fn json_schema_output_parses_and_fits_the_schema() {
    let e = engine();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false
    });
    for seed in 0..4 {
        let (t, f) = generate(
            &e,
            "Describe a person as JSON.",
            params(GrammarSpec::JsonSchema(schema.clone()), seed),
        );
        assert_eq!(f, FinishReason::Stop, "{t:?}");
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|err| panic!("{t:?}: {err}"));
        let age = v["age"].as_i64().expect("age");
        assert!((0..=120).contains(&age), "{t}");
        assert!(
            v["name"].as_str().is_some_and(|s| s.chars().count() <= 20),
            "{t}"
        );
        assert!(v["tags"].as_array().is_some_and(|a| a.len() <= 3), "{t}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{t}");
    }
    // Any object: unbounded, so when it ends is the model's; every one that ends parses.
    let mut ended = 0;
    for seed in 0..4 {
        let prompt = "A JSON object with a cat's name and age:";
        let (t, f) = generate(&e, prompt, params(GrammarSpec::JsonObject, seed));
        if f == FinishReason::Stop {
            ended += 1;
            let v = serde_json::from_str::<Value>(&t);
            assert!(v.is_ok_and(|v| v.is_object()), "{t:?}");
        }
    }
    assert!(ended >= 1, "no JSON object ended in 200 tokens");
}

#[test]
fn grammars_that_do_not_compile_are_refused_naming_the_field() {
    let e = engine();
    let ids = e.tokenizer.encode("Hi", false).unwrap();
    for spec in [
        GrammarSpec::Regex("[0-9".into()),
        GrammarSpec::Lark("start: foo".into()),
        GrammarSpec::JsonSchema(json!({"type": "nonsense"})),
        GrammarSpec::Choice(vec![]),
    ] {
        let err = e
            .validate(ids.clone(), params(spec.clone(), 1))
            .expect_err(&format!("{spec:?} compiled"));
        assert_eq!(err.param, "structured_outputs", "{err}");
    }
    let huge = GrammarSpec::Regex("a".repeat(1 << 20));
    let t = std::time::Instant::now();
    let err = e.validate(ids.clone(), params(huge, 1)).unwrap_err();
    assert!(err.message.contains("limit"), "{err}");
    assert!(t.elapsed().as_secs() < 1);
    // The engine still serves.
    let (t, _) = generate(&e, "Hi", params(GrammarSpec::Regex("ok".into()), 1));
    assert_eq!(t, "ok");
}

/// A tiny anchored matcher for `[0-9]{3}-[a-z]{2,4}` (no regex crate in the tests).
fn regex_lite(_: &str) -> impl Fn(&str) -> bool {
    |s: &str| {
        let b = s.as_bytes();
        b.len() >= 6
            && b.len() <= 8
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b'-'
            && b[4..].iter().all(u8::is_ascii_lowercase)
    }
}
