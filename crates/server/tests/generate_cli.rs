//! `ferrolm generate` as a user runs it.

mod common;

use common::{ferrolm, run_ok};

/// `ferrolm generate ARGS`, which must succeed: its stdout and stderr.
fn generate(args: &[&str]) -> (String, String) {
    let out = run_ok(ferrolm().arg("generate").args(args));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ferrolm generate ARGS`, which must fail: its stderr.
fn generate_fails(args: &[&str]) -> String {
    let out = ferrolm().arg("generate").args(args).output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_answers_paris_and_prints_timing() {
    let (text, err) = generate(&["--prompt", "The capital of France is", "--max-tokens", "8"]);
    assert!(text.contains("Paris"), "{text}");
    assert!(
        err.contains("prompt tokens") && err.contains("tok/s decode"),
        "{err}"
    );
}

#[test]
fn generate_chat_runs_the_template_and_times_it() {
    let (text, err) = generate(&[
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "12",
    ]);
    // llama.cpp's greedy answer to this chat prompt on this model begins "L'Étoile" (golden
    // record 6): the chat path must reproduce it (37 prompt tokens through the template).
    assert!(text.starts_with("L'Étoile"), "{text}");
    assert!(err.contains("[37 prompt tokens"), "{err}");
}

#[test]
fn generate_reports_bad_input_clearly() {
    let err = generate_fails(&["--prompt", "hi", "--model", "/nonexistent.gguf"]);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let err = generate_fails(&["--prompt", ""]);
    assert!(err.contains("empty") && !err.contains("panicked"), "{err}");
}
