//! The server against hostile and broken clients (issue 18's defects, one test each): huge
//! bodies, keys on every working route, connection floods and slow headers, drains that cut
//! streams, huge prompts, requests that can never be admitted, stop-string floods, and
//! error bodies. Timeouts are configured tiny and checked with wide margins; memory is read
//! from the server's own VmHWM.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{raw_exchange, Server};
use serde_json::{json, Value};

/// A bound against hangs, never a measure of speed (CI runs on a loaded 2-core machine).
const BOUND: Duration = Duration::from_secs(60);

/// These tests start servers and load the machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"))
}

fn json_body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("no JSON body in {response:?}"))
}

/// Item 1: a body over `--max-body-bytes` is refused before it is in memory: a declared
/// length at once (no `100 Continue`), a chunked body when it crosses the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_are_refused_while_they_stream_in() {
    let _serial = serial();
    let limit = 1usize << 20;
    let s = Server::start(&["--max-body-bytes", &limit.to_string()]).await;

    let declared = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        1u64 << 30
    );
    let r = raw_exchange(&s, declared.as_bytes(), BOUND);
    assert!(!r.contains("100 Continue"), "{r}");
    assert_eq!(status_of(&r), 413, "{r}");
    assert_eq!(json_body_of(&r)["error"]["code"], 413);

    // A 1 GiB chunked body, written while the answer is read.
    s.reset_peak_rss();
    let before = s.peak_rss_kib();
    let mut c = s.connect();
    c.set_read_timeout(Some(BOUND)).unwrap();
    let mut reader = c.try_clone().unwrap();
    let read = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = vec![b' '; 1 << 16];
    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
    let mut sent = 0usize;
    while sent < 1 << 30 {
        if c.write_all(&framed).is_err() {
            break; // the server answered and closed
        }
        sent += chunk.len();
    }
    let r = read.join().unwrap();
    assert_eq!(status_of(&r), 413, "{r}");
    let grew_kib = s.peak_rss_kib().saturating_sub(before);
    assert!(
        grew_kib < (2 * limit as u64 + (8 << 20)) / 1024,
        "peak RSS grew by {grew_kib} KiB for a body cut at {limit} bytes ({sent} sent)"
    );
    assert!(sent < 1 << 30, "the server read the whole body");
}

/// Items 2 and 10: every route that does work needs a key (any of several, scheme in any
/// case); the probes and /metrics stay open; 405 has OpenAI's error JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_working_route_needs_a_key_and_errors_are_json() {
    let _serial = serial();
    let s = Server::start(&["--api-key", "k1", "--api-key", "second"]).await;
    let c = reqwest::Client::new();
    let tokenize = json!({"prompt": "hello"});
    for (path, post) in [
        ("/tokenize", true),
        ("/detokenize", true),
        ("/v1/models", false),
        ("/version", false),
        ("/v1/completions", true),
    ] {
        let req = if post {
            c.post(s.url(path)).json(&tokenize)
        } else {
            c.get(s.url(path))
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a key");
    }
    for auth in ["Bearer k1", "bearer second", "BEARER k1"] {
        let r = c
            .post(s.url("/tokenize"))
            .header("Authorization", auth)
            .json(&tokenize)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{auth}");
    }
    let wrong = c
        .post(s.url("/tokenize"))
        .header("Authorization", "Bearer k2")
        .json(&tokenize)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    for path in ["/health", "/ping", "/metrics"] {
        assert_eq!(
            c.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    // 405 and 431 as OpenAI JSON.
    for (path, (name, value), want) in [
        (
            "/v1/completions",
            ("Authorization", "Bearer k1".to_string()),
            405,
        ),
        ("/health", ("X-Padding", "p".repeat(100 << 10)), 431),
    ] {
        let r = c.get(s.url(path)).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), want, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], want, "{v}");
    }
}

/// Item 4: idle and half-sent connections are closed after the header timeout; beyond the
/// connection cap the probes are still answered and other routes get 503; under a small
/// open-file limit a flood of idle connections does not starve /health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_and_slow_headers_are_bounded() {
    let _serial = serial();
    // The cap, with a header timeout far beyond the test's few requests.
    let s = Server::start(&["--max-connections", "4", "--header-read-timeout", "60"]).await;
    // Fill the cap with idle connections. A connection of the start-up health checks may
    // still hold a slot for a moment after its client closed it: add idle connections until
    // the API answers 503 (each 200 means a slot had just come free; no timing involved).
    let models = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut idle: Vec<std::net::TcpStream> = (0..4).map(|_| s.connect()).collect();
    let refused = (0..20).find_map(|_| {
        let r = raw_exchange(&s, models, BOUND);
        idle.push(s.connect());
        (status_of(&r) == 503).then_some(r)
    });
    let refused = refused.expect("the API never said 503 with the connection cap full");
    assert!(refused.contains("\"code\":503"), "{refused}");
    // ... telling the client when to come back, with the request's id.
    let head = refused.to_ascii_lowercase();
    assert!(head.contains("retry-after: 1\r\n"), "{refused}");
    assert!(head.contains("x-request-id: "), "{refused}");
    // At the cap, the probes are still answered.
    let probe = raw_exchange(
        &s,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        BOUND,
    );
    assert_eq!(status_of(&probe), 200, "{probe}");
    drop((idle, s));

    // The timeouts: idle and half-sent connections closed within 10x a 0.5 s header timeout,
    // which frees the cap.
    let s = Server::start(&["--max-connections", "4", "--header-read-timeout", "0.5"]).await;
    let idle: Vec<std::net::TcpStream> = (0..4).map(|_| s.connect()).collect();
    // Each idle connection is closed by the server within 10x the header timeout.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf);
        let closed = match &n {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        assert!(
            closed,
            "an idle connection was not closed within 5 s: {n:?}"
        );
    }
    let mut slow = s.connect();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    assert!(
        slow.read_to_end(&mut buf).is_ok(),
        "a half-sent header held its connection"
    );
    // With the cap free again, the API answers.
    let r = raw_exchange(
        &s,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        BOUND,
    );
    assert_eq!(status_of(&r), 200, "{r}");
    drop(s);

    // 300 idle connections against 256 descriptors: /health still answers (at the latest
    // once the overflow connections' short header timeout has passed).
    let s = Server::start_with(&[], Some(256), &[]).await;
    let flood: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).ok())
        .collect();
    let t0 = Instant::now();
    loop {
        let r = raw_exchange(
            &s,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            t0.elapsed() < BOUND,
            "/health never answered under the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(flood);
}

/// Item 5: after SIGTERM new connections get 503 rather than a refusal, a half-sent header
/// does not hold the exit, and a stream cut by the drain timeout ends with an error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_503_and_cut_streams_end_with_an_error() {
    let _serial = serial();
    let mut s = Server::start(&["--drain-timeout", "1", "--header-read-timeout", "120"]).await;
    let mut half = s.connect();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Four long streams: far longer than the 1 s drain.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 900, "n": 4, "ignore_eos": true, "stream": true});
    let mut r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    while !text.contains("data: ") {
        let chunk = r.chunk().await.unwrap().expect("the stream ended early");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    s.sigterm();
    let t0 = Instant::now();
    loop {
        let probe = reqwest::get(s.url("/health")).await;
        match probe {
            Ok(p) if p.status() == 503 => {
                assert_eq!(p.headers()["retry-after"], "1");
                break;
            }
            Ok(p) => assert_eq!(p.status(), 200),
            Err(e) => panic!("a connection during the drain was refused: {e}"),
        }
        assert!(t0.elapsed() < BOUND, "/health never said 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(chunk) = r.chunk().await.unwrap_or(None) {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last: Value = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .last()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    assert_eq!(
        last["error"]["code"], 503,
        "the cut stream ended with {last}"
    );
    assert!(!text.contains("[DONE]"));
    let status = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let st = s.child.wait().unwrap();
        (st, t0.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    assert!(
        status.1 < Duration::from_secs(30),
        "exit took {:?} with a half-sent header open (header timeout 120 s)",
        status.1
    );
    drop(half);
}

/// Items 6, 7 and 9: a prompt too long by its bytes alone is refused without tokenizing it
/// (memory flat), a request that can never be admitted is a 400 (not "retry later"), and
/// stop strings beyond their limits are a 400 naming `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_run_are_400s_that_cost_nothing() {
    let _serial = serial();
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    s.reset_peak_rss();
    let before = s.peak_rss_kib();
    let huge = "lorem ipsum dolor sit amet ".repeat(7 << 20 >> 5);
    let t0 = Instant::now();
    let r = c
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": huge, "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    let grew_mib = s.peak_rss_kib().saturating_sub(before) / 1024;
    // The body itself is held a few times over (bytes, JSON value, string): not the
    // tokenizer's ~550 MiB.
    assert!(grew_mib < 128, "peak RSS grew by {grew_mib} MiB");
    assert!(t0.elapsed() < BOUND);

    // (body, status, the param a 400 names)
    let stops = |n: usize| (0..n).map(|i| format!("stop{i}")).collect::<Vec<_>>();
    let cases = [
        // Never admissible: 2,000 prompts, or 100 prompts x 16 beyond the 1,280 sequences.
        (
            json!({"prompt": vec![vec![1, 2, 3]; 2000], "max_tokens": 1}),
            400,
            None,
        ),
        (
            json!({"prompt": vec![vec![1, 2, 3]; 100], "n": 16, "max_tokens": 1}),
            400,
            None,
        ),
        (
            json!({"prompt": "Hi", "max_tokens": 2, "stop": stops(65)}),
            400,
            Some("stop"),
        ),
        (
            json!({"prompt": "Hi", "max_tokens": 2, "stop": ["x".repeat(40 << 10), "y".repeat(40 << 10)]}),
            400,
            Some("stop"),
        ),
        (
            json!({"prompt": "Hi", "max_tokens": 2, "stop": stops(64)}),
            200,
            None,
        ),
    ];
    for (body, want, param) in cases {
        let (status, v) = common::post(&s, "/v1/completions", &body).await;
        assert_eq!(status, want, "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    }
}

/// Engine faults: a panic while sampling one request fails that request with a 500 and the
/// server goes on serving; a panic in a step stops the engine and /health fails (so
/// Kubernetes restarts the pod). The faults come from the test-only FERROLM_FAULT_INJECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_faults_fail_one_request_or_fail_health() {
    let _serial = serial();
    let s = Server::start_with(&[], None, &[("FERROLM_FAULT_INJECT", "sample:4242")]).await;
    let faulty = json!({"prompt": "Hi", "max_tokens": 4, "seed": 4242, "temperature": 0.5});
    let fine = json!({"prompt": "Hi", "max_tokens": 4, "seed": 7, "temperature": 0.5});
    let (status, v) = common::post(&s, "/v1/completions", &faulty).await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(v["error"]["code"], 500);
    let mut stream = faulty.clone();
    stream["stream"] = json!(true);
    let text = common::send_json(&s, "/v1/completions", &stream)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"code\":500") && !text.contains("[DONE]"),
        "{text}"
    );
    let (status, v) = common::post(&s, "/v1/completions", &fine).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(reqwest::get(s.url("/health")).await.unwrap().status(), 200);
    drop(s);

    let s = Server::start_with(&[], None, &[("FERROLM_FAULT_INJECT", "step:4343")]).await;
    let doomed = json!({"prompt": "Hi", "max_tokens": 4, "seed": 4343});
    let (status, v) = common::post(&s, "/v1/completions", &doomed).await;
    assert!(status == 500 || status == 503, "{status} {v}");
    let t0 = Instant::now();
    while reqwest::get(s.url("/health")).await.unwrap().status() != 503 {
        assert!(
            t0.elapsed() < BOUND,
            "/health kept saying 200 with the engine dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = common::post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 503);
}
