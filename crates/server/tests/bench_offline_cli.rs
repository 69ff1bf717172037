//! `ferrolm bench throughput` / `bench latency` as a user runs them, on the CPU with dummy
//! weights shaped by a shipped config.json (the GPU runs are in scripts/gpu-check.sh).

use std::process::Command;

fn ferrolm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrolm"))
}

fn tiny_config() -> String {
    format!(
        "{}/../../models/configs/tiny-llama.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn json_out(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ferrolm-{name}-{}.json", std::process::id()))
}

#[test]
fn bench_throughput_counts_every_token() {
    let out_json = json_out("throughput");
    let out = ferrolm()
        .args([
            "bench",
            "throughput",
            "--model",
            &tiny_config(),
            "--load-format",
            "dummy",
        ])
        .args([
            "--device",
            "cpu",
            "--num-prompts",
            "12",
            "--input-len",
            "20",
        ])
        .args([
            "--output-len",
            "6",
            "--max-num-batched-tokens",
            "64",
            "--output-json",
        ])
        .arg(&out_json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Throughput:") && text.contains("output tokens/s"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    std::fs::remove_file(&out_json).ok();
    assert_eq!(v["num_requests"], 12);
    let secs = v["elapsed_time"].as_f64().unwrap();
    let out_tps = v["output_tokens_per_second"].as_f64().unwrap();
    let total_tps = v["tokens_per_second"].as_f64().unwrap();
    // 12 x 6 output tokens and 12 x (20 + 6) tokens in all, over the same time.
    assert!((out_tps * secs - 72.0).abs() < 0.5, "{v}");
    assert!((total_tps * secs - 312.0).abs() < 0.5, "{v}");
    // A 64-token budget cannot take 240 prompt tokens in one step: chunked prefill ran.
    assert!(v["num_steps"].as_u64().unwrap() >= 6 + 3, "{v}");
}

#[test]
fn bench_latency_reports_prefill_and_decode() {
    let out_json = json_out("latency");
    let out = ferrolm()
        .args([
            "bench",
            "latency",
            "--model",
            &tiny_config(),
            "--device",
            "cpu",
        ])
        .args([
            "--batch-size",
            "2",
            "--input-len",
            "8",
            "--output-len",
            "5",
            "--num-iters",
            "2",
        ])
        .arg("--output-json")
        .arg(&out_json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    std::fs::remove_file(&out_json).ok();
    assert_eq!(v["latencies"].as_array().unwrap().len(), 2);
    assert!(v["prefill_secs"].as_f64().unwrap() > 0.0);
    assert!(v["decode_ms_per_step"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_refuses_what_it_cannot_run() {
    for (args, want) in [
        (vec!["--device", "tpu"], "--device"),
        (vec!["--load-format", "safetensors"], "--load-format"),
        (vec!["--dtype", "int8"], "--dtype"),
        (vec!["--input-len", "5000"], "exceeds the model length"),
    ] {
        let out = ferrolm()
            .args([
                "bench",
                "throughput",
                "--model",
                &tiny_config(),
                "--num-prompts",
                "1",
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
