//! Hugging Face checkpoints as a user runs them: `ferrolm serve FOLDER` answering chat with
//! the checkpoint's template and generation defaults, `ferrolm inspect`, and one clear error
//! line (exit code 1, no panic) for each broken checkpoint.

mod common;

use std::path::{Path, PathBuf};

use common::{ferrolm, post, run_ok, Server};
use serde_json::json;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(rel)
}

/// A scratch copy of a fixture folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(name: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrolm-ckpt-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(fixture(&format!("hf/{name}"))).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        Self(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// `ferrolm generate` on `model`, which must fail: its stderr.
fn load_fails(model: &str, env: &[(&str, &str)]) -> String {
    let out = ferrolm()
        .args([
            "generate",
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--model",
            model,
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    err
}

#[test]
fn broken_checkpoints_are_one_clear_error_each() {
    let missing = Scratch::copy_of("llama3", "missing");
    std::fs::remove_file(missing.path("model-00002-of-00002.safetensors")).unwrap();
    let err = load_fails(&missing.arg(), &[]);
    assert!(
        err.contains("shard model-00002-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );

    let shape = Scratch::copy_of("qwen3", "shape");
    let cfg = std::fs::read_to_string(shape.path("config.json")).unwrap();
    std::fs::write(
        shape.path("config.json"),
        cfg.replace("\"intermediate_size\": 192", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let err = load_fails(&shape.arg(), &[]);
    assert!(
        err.contains("mlp.") && err.contains("has shape [192, 64], expected [100, 64]"),
        "{err}"
    );

    let cut = Scratch::copy_of("qwen3", "cut");
    let bytes = std::fs::read(cut.path("model.safetensors")).unwrap();
    std::fs::write(cut.path("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let err = load_fails(&cut.arg(), &[]);
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );

    let arch = Scratch::copy_of("qwen3", "arch");
    let cfg = std::fs::read_to_string(arch.path("config.json")).unwrap();
    std::fs::write(
        arch.path("config.json"),
        cfg.replace("\"model_type\": \"qwen3\"", "\"model_type\": \"gpt_neox\""),
    )
    .unwrap();
    let err = load_fails(&arch.arg(), &[]);
    assert!(
        err.contains("gpt_neox") && err.contains("supported: llama, mistral, qwen2, qwen3"),
        "{err}"
    );

    let cache = std::env::temp_dir().join(format!("ferrolm-empty-hub-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let cache_s = cache.to_string_lossy().into_owned();
    let err = load_fails(
        "Qwen/Qwen3-0.6B",
        &[("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", &cache_s)],
    );
    assert!(
        err.contains("Qwen/Qwen3-0.6B") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn a_hub_id_is_found_in_the_cache() {
    // The cache layout huggingface_hub writes: refs/main names the snapshot.
    let cache = std::env::temp_dir().join(format!("ferrolm-hub-{}", std::process::id()));
    let snap = cache.join("models--Tiny--Qwen3/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.join("models--Tiny--Qwen3/refs")).unwrap();
    std::fs::write(cache.join("models--Tiny--Qwen3/refs/main"), "0123abcd").unwrap();
    for e in std::fs::read_dir(fixture("hf/qwen3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
    }
    let out = run_ok(
        ferrolm()
            .args(["inspect", "Tiny/Qwen3"])
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &cache),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("architecture: qwen3") && text.contains("supported: yes"),
        "{text}"
    );
    assert!(
        text.contains("per-head Q/K norm") && text.contains("BF16 [32] × 2"),
        "{text}"
    );
    std::fs::remove_dir_all(&cache).ok();

    let out = run_ok(ferrolm().args(["inspect"]).arg(fixture("gguf/qwen2.gguf")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("format: GGUF v3") && text.contains("architecture: qwen2"),
        "{text}"
    );
    assert!(text.contains("blk.*.attn_q.bias: F32"), "{text}");
}

#[tokio::test]
async fn serve_a_checkpoint_folder_with_its_template_and_defaults() {
    let folder = fixture("hf/qwen3").to_string_lossy().into_owned();
    let s = Server::start(&[&folder]).await;
    let models: serde_json::Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], folder.trim_end_matches('/'));
    let chat = |extra: serde_json::Value| {
        let mut body = json!({
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 12, "seed": 7, "ignore_eos": true,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // generation_config.json's temperature 0.6, top_p 0.95, top_k 20 apply when left out:
    // the same text as asking for them, with the same seed.
    let (code, defaults) = post(&s, "/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(code, 200, "{defaults}");
    let explicit = chat(json!({"temperature": 0.6, "top_p": 0.95, "top_k": 20}));
    let (_, same) = post(&s, "/v1/chat/completions", &explicit).await;
    let text = |v: &serde_json::Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&defaults), text(&same));
    assert_eq!(defaults["usage"]["completion_tokens"], 12);
    // The Qwen3 template rendered the prompt (its <|im_start|> markers are tokens 1).
    let (_, tok) = post(
        &s,
        "/tokenize",
        &json!({"messages": [{"role": "user", "content": "Hello there"}]}),
    )
    .await;
    assert_eq!(tok["tokens"][0], 1, "{tok}");
    assert_eq!(defaults["usage"]["prompt_tokens"], tok["count"]);
}

/// A stand-in for the Hugging Face hub on loopback (no hub is reachable from our machines):
/// the two routes `hf-hub` uses, the repository info and `resolve` with byte ranges, serving
/// the qwen3 fixture's files as repository `Tiny/Qwen3` at commit `SHA`.
async fn stand_in_hub() -> (String, tokio::task::JoinHandle<()>) {
    use axum::extract::Path as UrlPath;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    let dir = fixture("hf/qwen3");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .chain(["README.md".to_string()])
        .collect();
    let info = json!({
        "sha": SHA,
        "siblings": files.iter().map(|f| json!({"rfilename": f})).collect::<Vec<_>>(),
    });
    let app = axum::Router::new()
        .route(
            "/api/models/Tiny/Qwen3/revision/main",
            get(move || {
                let info = info.clone();
                async move { axum::Json(info) }
            }),
        )
        .route(
            "/Tiny/Qwen3/resolve/main/{file}",
            get(move |UrlPath(file): UrlPath<String>, headers: HeaderMap| {
                let dir = dir.clone();
                async move {
                    let Ok(bytes) = std::fs::read(dir.join(&file)) else {
                        return (StatusCode::NOT_FOUND, HeaderMap::new(), Vec::new());
                    };
                    let total = bytes.len();
                    let range = headers
                        .get("range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|r| r.strip_prefix("bytes="))
                        .unwrap_or("0-");
                    let (a, b) = range.split_once('-').unwrap();
                    let start: usize = a.parse().unwrap();
                    let end: usize = b.parse().unwrap_or(total.saturating_sub(1)).min(total - 1);
                    let mut h = HeaderMap::new();
                    h.insert("etag", format!("\"{file}-{total}\"").parse().unwrap());
                    h.insert("x-repo-commit", SHA.parse().unwrap());
                    h.insert(
                        "content-range",
                        format!("bytes {start}-{end}/{total}").parse().unwrap(),
                    );
                    (StatusCode::PARTIAL_CONTENT, h, bytes[start..=end].to_vec())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_downloads_a_hub_id_that_is_not_cached() {
    let (endpoint, hub) = stand_in_hub().await;
    let cache = std::env::temp_dir().join(format!("ferrolm-download-{}", std::process::id()));
    std::fs::remove_dir_all(&cache).ok();
    let cache_s = cache.to_string_lossy().into_owned();
    let s = Server::start_with(
        &["Tiny/Qwen3"],
        None,
        &[("HF_ENDPOINT", &endpoint), ("HF_HUB_CACHE", &cache_s)],
    )
    .await;
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 3}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"], "Tiny/Qwen3");
    drop(s);
    hub.abort();
    // The cache now holds it the way huggingface_hub lays it out: offline, it loads.
    let snap = cache.join("models--Tiny--Qwen3/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert!(snap.join("model.safetensors").exists() && !snap.join("README.md").exists());
    let out = run_ok(
        ferrolm()
            .args(["inspect", "Tiny/Qwen3"])
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &cache),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("supported: yes"));
    std::fs::remove_dir_all(&cache).ok();
}
