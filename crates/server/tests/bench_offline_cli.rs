//! `ferrolm bench throughput` / `bench latency` as a user runs them, on the CPU with dummy
//! weights shaped by a shipped config.json (the GPU runs are in scripts/gpu-check.sh).

mod common;

use std::process::Command;

use common::{ferrolm, json_out, run_ok, take_json};

fn tiny_config() -> String {
    format!(
        "{}/../../models/configs/tiny-llama.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `ferrolm bench <kind> --model <the tiny config>`: the CLI's first words in every test.
fn bench(kind: &str) -> Command {
    let mut cmd = ferrolm();
    cmd.args(["bench", kind, "--model", &tiny_config()]);
    cmd
}

#[test]
fn bench_throughput_counts_every_token() {
    let out_json = json_out("throughput");
    let out = run_ok(
        bench("throughput")
            .args(["--load-format", "dummy"])
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
            .arg(&out_json),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Throughput:") && text.contains("output tokens/s"),
        "{text}"
    );
    let v = take_json(&out_json);
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
    run_ok(
        bench("latency")
            .args(["--device", "cpu"])
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
            .arg(&out_json),
    );
    let v = take_json(&out_json);
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
        let out = bench("throughput")
            .args(["--num-prompts", "1"])
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
