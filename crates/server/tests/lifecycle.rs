//! What happens around requests: clients that disconnect, overload, SIGTERM, and the
//! Prometheus exposition (checked with promtool).

mod common;

use std::time::{Duration, Instant};

use common::{ferrolm, json_out, metric_value, read_json, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// How long a test waits for something the server will do (become idle, run every request):
/// a bound against hangs, never a measure of speed (CI runs on a loaded 2-core machine).
const IDLE_BOUND: Duration = Duration::from_secs(60);

/// These tests measure latencies and load the machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn long_request(stream: bool) -> Value {
    json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": stream})
}

/// `n` completion requests at once, each in its own task (request `i` sends `body(i)`): each
/// task answers the status, the time the response took to arrive (from before its body was
/// made), and the JSON answer.
fn spawn_completions(
    s: &Server,
    n: usize,
    body: impl Fn(usize) -> Value + Clone + Send + 'static,
) -> Vec<tokio::task::JoinHandle<(u16, Duration, Value)>> {
    let c = reqwest::Client::new();
    (0..n)
        .map(|i| {
            let c = c.clone();
            let url = s.url("/v1/completions");
            let body = body.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let json = body(i);
                let r = c.post(url).json(&json).send().await.unwrap();
                let status = r.status().as_u16();
                let elapsed = t0.elapsed();
                let v: Value = r.json().await.unwrap();
                (status, elapsed, v)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnected_clients_free_everything() {
    let _serial = serial();
    // Few slots, so most requests queue.
    let s = Server::start(&["--max-num-seqs", "8"]).await;
    let c = reqwest::Client::new();
    // 20 streams dropped mid-stream (after their first chunk).
    let mut streams = Vec::new();
    for _ in 0..20 {
        let r = c
            .post(s.url("/v1/completions"))
            .json(&long_request(true))
            .send()
            .await
            .unwrap();
        streams.push(r.bytes_stream());
    }
    let mut read_some = 0;
    for st in streams.iter_mut().take(8) {
        if st.next().await.is_some() {
            read_some += 1;
        }
    }
    assert_eq!(read_some, 8);
    // 10 non-streaming requests dropped before their answer.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        let url = s.url("/v1/completions");
        pending.push(tokio::spawn(async move {
            c.post(url).json(&long_request(false)).send().await
        }));
    }
    // 5 more that are surely still queued (20 + 10 ahead of them, 8 slots).
    let mut queued = Vec::new();
    for _ in 0..5 {
        let c = c.clone();
        let url = s.url("/v1/chat/completions");
        queued.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "ignore_eos": true}))
                .send()
                .await
        }));
    }
    // Until the engine has all 35 (running, waiting or already finished). Polled, not slept
    // on: how long the requests take to arrive depends on the machine's load.
    let t0 = Instant::now();
    let m = loop {
        let m = s.metrics().await;
        let finished: f64 = ["stop", "length", "abort"]
            .iter()
            .map(|r| {
                let series = format!("vllm:request_success_total{{finished_reason=\"{r}\"");
                metric_value(&m, &series)
            })
            .sum();
        let seen = metric_value(&m, "vllm:num_requests_running")
            + metric_value(&m, "vllm:num_requests_waiting")
            + finished;
        if seen >= 35.0 {
            break m;
        }
        assert!(
            t0.elapsed() < IDLE_BOUND,
            "only {seen} of 35 requests reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metric_value(&m, "vllm:num_requests_running") > 0.0);
    assert!(
        metric_value(&m, "vllm:num_requests_waiting") > 0.0,
        "expected queued requests"
    );
    assert!(metric_value(&m, "vllm:kv_cache_usage_perc") > 0.0);
    // Everyone hangs up.
    drop(streams);
    for p in pending.iter().chain(queued.iter()) {
        p.abort();
    }
    for p in pending.into_iter().chain(queued) {
        let _ = p.await;
    }
    s.wait_idle(IDLE_BOUND).await;
    let m = s.metrics().await;
    let aborts = metric_value(&m, "vllm:request_success_total{finished_reason=\"abort\"");
    assert!(aborts >= 35.0, "{aborts} aborts counted");
    // The engine stopped them: run to their ends they would have made 13,500 tokens.
    let generated = metric_value(&m, "vllm:generation_tokens_total");
    assert!(
        generated < 13_500.0,
        "{generated} tokens: the hung-up requests ran to their end"
    );
    // And it still answers correctly.
    let paris = json!({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0});
    let (_, v) = common::post(&s, "/v1/completions", &paris).await;
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(" Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_early_with_429() {
    let _serial = serial();
    let s = Server::start(&["--max-num-seqs", "4", "--max-queue-len", "4"]).await;
    let tasks = spawn_completions(
        &s,
        40,
        |_| json!({"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0, "ignore_eos": true}),
    );
    let mut accepted = 0;
    let mut refused = 0;
    // Refused early: every 429 came back before the first accepted request finished (which
    // takes 24 decode steps); an ordering, so it holds however loaded the machine is.
    let mut first_accepted = Duration::MAX;
    let mut last_refused = Duration::ZERO;
    for t in tasks {
        let (status, elapsed, v) = t.await.unwrap();
        match status {
            200 => {
                accepted += 1;
                first_accepted = first_accepted.min(elapsed);
                assert!(v["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with(" Paris"));
                assert_eq!(v["usage"]["completion_tokens"], 24);
            }
            429 => {
                refused += 1;
                last_refused = last_refused.max(elapsed);
                assert_eq!(v["error"]["code"], 429);
                assert!(v["error"]["message"].is_string());
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(accepted <= 8, "{accepted} accepted");
    assert!(accepted >= 1);
    assert_eq!(accepted + refused, 40);
    assert!(
        refused == 0 || last_refused < first_accepted,
        "a 429 took {last_refused:?}, longer than an accepted request ({first_accepted:?})"
    );
    s.wait_idle(IDLE_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let _serial = serial();
    let mut s = Server::start(&[]).await;
    let tasks = spawn_completions(
        &s,
        8,
        |i| json!({"prompt": format!("Story {i}:"), "max_tokens": 48, "ignore_eos": true, "temperature": 0}),
    );
    // Let them all start, then ask the server to stop.
    let t0 = Instant::now();
    while s.metric("vllm:num_requests_running").await < 8.0 {
        assert!(t0.elapsed() < IDLE_BOUND, "the 8 requests never all ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.sigterm();
    for t in tasks {
        let (status, _, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 48);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    let status = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        std::mem::forget(s);
        st
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_exist_from_start_and_move() {
    let _serial = serial();
    let s = Server::start(&[]).await;
    let m0 = s.metrics().await;
    // Every labelled series exists before any request.
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prompt_tokens_count",
        "vllm:request_generation_tokens_count",
        "vllm:iteration_tokens_total_count",
    ] {
        assert_eq!(metric_value(&m0, name), 0.0, "{name}");
    }
    // vLLM's cache info: value 1, the settings as labels, once the cache is sized.
    let info = m0
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .expect("vllm:cache_config_info");
    assert!(
        info.ends_with(" 1")
            && info.contains("block_size=\"16\"")
            && info.contains("num_gpu_blocks=\""),
        "{info}"
    );
    for reason in ["stop", "length", "abort"] {
        assert!(
            m0.contains(&format!("vllm:request_success_total{{finished_reason=\"{reason}\",model_name=\"SmolLM2-135M-Instruct.Q4_1\"}} 0")),
            "no {reason} series at start:\n{m0}"
        );
    }
    assert!(m0.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    assert!(m0.contains("# TYPE vllm:num_requests_running gauge"));
    assert!(m0.contains("# TYPE vllm:prompt_tokens_total counter"));

    let c = reqwest::Client::new();
    for _ in 0..2 {
        let r = c
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m1 = s.metrics().await;
    assert_eq!(metric_value(&m1, "vllm:generation_tokens_total"), 10.0);
    assert!(metric_value(&m1, "vllm:prompt_tokens_total") > 0.0);
    for (name, want) in [
        ("vllm:e2e_request_latency_seconds_count", 2.0),
        ("vllm:time_to_first_token_seconds_count", 2.0),
        ("vllm:inter_token_latency_seconds_count", 8.0),
        ("vllm:request_generation_tokens_sum", 10.0),
    ] {
        assert_eq!(metric_value(&m1, name), want, "{name}");
    }
    assert!(
        metric_value(&m1, "vllm:prefix_cache_hits_total") > 0.0,
        "the second chat shares the system prompt"
    );
    assert!(metric_value(&m1, "vllm:iteration_tokens_total_count") >= 10.0);
    // The served model on the HTTP counter too (the default model's file stem).
    assert!(
        m1.lines().any(
            |l| l.starts_with("ferrolm_http_requests_total{model_name=\"")
                && l.ends_with(",route=\"/v1/chat/completions\",status=\"200\"} 2")
        ),
        "{m1}"
    );

    // promtool: the exposition is valid; only vLLM's naming lints are allowed.
    let promtool = which_promtool()
        .expect("promtool is needed (Debian package `prometheus`; make test installs it)");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m1.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        // Allowed: the ':' in vLLM's names, and `_total` on vLLM's histogram
        // vllm:iteration_tokens_total.
        let allowed = line.contains("metric names should not contain ':'")
            || (line.starts_with("vllm:iteration_tokens_total ") && line.contains("_total"));
        assert!(allowed, "promtool: {line}\nfull report:\n{report}");
    }
    // A failing status is only acceptable for the allowed lints above.
    if !out.status.success() {
        assert!(!report.trim().is_empty());
    }
}

fn which_promtool() -> Option<String> {
    std::env::var("PROMTOOL").ok().or_else(|| {
        ["/usr/bin/promtool", "/usr/local/bin/promtool"]
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| p.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_reports_vllm_fields() {
    let _serial = serial();
    let s = Server::start(&[]).await;
    let out = json_out("bench");
    let url = s.base.clone();
    let out2 = out.clone();
    let status = tokio::task::spawn_blocking(move || {
        ferrolm()
            .args([
                "bench",
                "serve",
                "--url",
                &url,
                "--model",
                "SmolLM2-135M-Instruct.Q4_1",
                "--num-prompts",
                "6",
            ])
            .args([
                "--input-len",
                "32",
                "--output-len",
                "8",
                "--ignore-eos",
                "--max-concurrency",
                "3",
                "--result-file",
            ])
            .arg(&out2)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let v = read_json(&out);
    assert_eq!(v["completed"], 6);
    assert_eq!(v["total_input_tokens"], 6 * 32);
    assert_eq!(v["total_output_tokens"], 6 * 8);
    for k in [
        "request_throughput",
        "output_throughput",
        "median_ttft_ms",
        "p99_itl_ms",
        "mean_tpot_ms",
        "median_e2el_ms",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    // The server saw exactly those tokens.
    assert_eq!(s.metric("vllm:generation_tokens_total").await, 48.0);
}
