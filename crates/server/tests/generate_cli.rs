//! `ferrolm generate` as a user runs it.

mod common;

use common::{ferrolm, run_ok};

#[test]
fn generate_answers_paris_and_prints_timing() {
    let out = run_ok(ferrolm().args([
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Paris"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompt tokens") && err.contains("tok/s decode"),
        "{err}"
    );
}

#[test]
fn generate_chat_runs_the_template_and_times_it() {
    let out = run_ok(ferrolm().args([
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "12",
    ]));
    // llama.cpp's greedy answer to this chat prompt on this model begins "L'Étoile" (golden
    // record 6): the chat path must reproduce it (37 prompt tokens through the template).
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("L'Étoile"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[37 prompt tokens"), "{err}");
}

#[test]
fn generate_reports_bad_input_clearly() {
    let out = ferrolm()
        .args(["generate", "--prompt", "hi", "--model", "/nonexistent.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = ferrolm()
        .args(["generate", "--prompt", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty") && !err.contains("panicked"), "{err}");
}
