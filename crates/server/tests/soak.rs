//! A soak of the real server above its capacity: mixed streaming and non-streaming requests
//! from more clients than it admits, 20% of them hanging up at a random point, 10% malformed,
//! slow readers, a KV cache small enough to force preemption, random `n`, stop strings and
//! log-probs. Every accepted request must come back complete and equal to the same request
//! run alone (greedy, or seeded sampling), or be refused (4xx/503): none lost, none doubled.
//! Afterwards nothing runs or waits, the KV cache is empty and RSS is within 10% of what it
//! was after warm-up. `FERROLM_SOAK_SECS` sets the load's length (default 60; BENCHMARKS.md
//! has a 30-minute run).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_value, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Requests the clients draw from: each has one right answer, computed alone first.
const SPECS: usize = 24;
/// Clients at once: more than the server admits (8 running + 8 queued).
const CLIENTS: usize = 24;

/// The one generator of the soak's choices (an LCG: the same run every time for a seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Request `i` of the pool: its prompt, length, `n`, sampling, stop and log-probs vary.
fn spec(i: usize) -> Value {
    let mut r = Rng(1000 + i as u64);
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "List three colors:",
        "def fibonacci(n):",
        "The best way to learn a language is",
        "Q: What is 2 + 2?\nA:",
    ];
    let mut body = json!({
        "prompt": prompts[i % prompts.len()],
        "max_tokens": 8 + r.below(40),
        "n": 1 + r.below(3),
    });
    if r.below(2) == 0 {
        body["temperature"] = json!(0);
    } else {
        body["temperature"] = json!(0.8);
        body["seed"] = json!(r.below(1000));
    }
    if r.below(3) == 0 {
        body["stop"] = json!([".", "\n\n"]);
    }
    if r.below(3) == 0 {
        body["logprobs"] = json!(2);
    }
    body
}

/// Each choice's text and finish reason, by index.
type Answer = Vec<(String, Value)>;

fn answer_of_json(v: &Value) -> Answer {
    let mut out: Vec<(usize, String, Value)> = v["choices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let i = c["index"].as_u64().unwrap_or(0) as usize;
                    let text = c["text"].as_str().unwrap_or("").to_string();
                    (i, text, c["finish_reason"].clone())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|c| c.0);
    out.into_iter().map(|(_, t, f)| (t, f)).collect()
}

/// What one client request came to.
enum Outcome {
    Completed,
    Refused,
    Malformed,
    HungUp,
    /// Accepted but wrong or incomplete: what went wrong.
    Lost(String),
}

async fn streamed(
    resp: reqwest::Response,
    hang_up_after: Option<usize>,
    slow: bool,
) -> Result<Option<Answer>, String> {
    let mut texts: HashMap<usize, (String, Value)> = HashMap::new();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = 0;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("stream broke: {e}"))?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value =
                serde_json::from_str(data).map_err(|e| format!("bad event {data}: {e}"))?;
            if v.get("error").is_some() {
                return Err(format!("error event {v}"));
            }
            for c in v["choices"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().unwrap_or(0) as usize;
                let e = texts.entry(i).or_default();
                e.0.push_str(c["text"].as_str().unwrap_or(""));
                if !c["finish_reason"].is_null() {
                    e.1 = c["finish_reason"].clone();
                }
            }
            events += 1;
            if hang_up_after.is_some_and(|n| events >= n) {
                return Ok(None);
            }
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    if !done {
        return Err("the stream ended without [DONE]".into());
    }
    let mut out: Vec<(usize, (String, Value))> = texts.into_iter().collect();
    out.sort_by_key(|c| c.0);
    Ok(Some(out.into_iter().map(|(_, a)| a).collect()))
}

async fn one_request(c: &reqwest::Client, url: &str, rng: &mut Rng, answers: &[Answer]) -> Outcome {
    let roll = rng.below(100);
    if roll < 10 {
        // Malformed: broken JSON, a wrong type, a field out of range.
        let bodies = [
            "{\"prompt\": \"Hi\", ".to_string(),
            json!({"prompt": "Hi", "max_tokens": "many"}).to_string(),
            json!({"prompt": "Hi", "temperature": -3}).to_string(),
        ];
        let body = bodies[rng.below(3) as usize].clone();
        let r = c
            .post(url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        return match r {
            Ok(r) if r.status() == 400 => Outcome::Malformed,
            Ok(r) => Outcome::Lost(format!("a malformed request got {}", r.status())),
            Err(e) => Outcome::Lost(format!("a malformed request failed: {e}")),
        };
    }
    let i = rng.below(SPECS as u64) as usize;
    let mut body = spec(i);
    let hang_up = roll < 30;
    let stream = hang_up || rng.below(2) == 0;
    body["stream"] = json!(stream);
    let send = c.post(url).json(&body).send();
    if hang_up && !stream {
        // Hang up before the answer: drop the request part-way.
        let _ = tokio::time::timeout(Duration::from_millis(rng.below(400)), send).await;
        return Outcome::HungUp;
    }
    let resp = match send.await {
        Ok(r) => r,
        Err(e) => return Outcome::Lost(format!("request failed: {e}")),
    };
    let status = resp.status().as_u16();
    if status == 429 || status == 503 {
        return Outcome::Refused;
    }
    if status != 200 {
        return Outcome::Lost(format!("status {status} for {body}"));
    }
    let got = if stream {
        let hang_up_after = hang_up.then(|| 1 + rng.below(6) as usize);
        match streamed(resp, hang_up_after, rng.below(5) == 0).await {
            Ok(Some(a)) => a,
            Ok(None) => return Outcome::HungUp,
            Err(e) => return Outcome::Lost(e),
        }
    } else {
        match resp.json::<Value>().await {
            Ok(v) => answer_of_json(&v),
            Err(e) => return Outcome::Lost(format!("bad JSON answer: {e}")),
        }
    };
    if got != answers[i] {
        return Outcome::Lost(format!(
            "request {i} ({body}) answered {got:?}, alone {:?}",
            answers[i]
        ));
    }
    Outcome::Completed
}

fn rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_above_capacity_loses_nothing() {
    let secs = common::soak_secs();
    // 8 running, 8 queued; a KV cache of 16 blocks of 16 tokens (one 256-token sequence),
    // while 8 sequences of up to ~60 tokens need up to 32: enough for each request alone,
    // too little for all at once.
    let s = Server::start(&[
        "--max-num-seqs",
        "8",
        "--max-queue-len",
        "8",
        "--max-model-len",
        "256",
        "--num-gpu-blocks-override",
        "16",
        "--max-n",
        "4",
    ])
    .await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    // Each request alone: the answers the load must reproduce.
    let mut answers = Vec::with_capacity(SPECS);
    for i in 0..SPECS {
        let (_, v) = common::post(&s, "/v1/completions", &spec(i)).await;
        assert!(v["choices"].is_array(), "spec {i} alone: {v}");
        answers.push(answer_of_json(&v));
    }
    let rss_warm = rss_kib(&s);
    let answers = Arc::new(answers);
    let counts: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let lost_examples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (c, url, answers) = (c.clone(), url.clone(), answers.clone());
            let (counts, lost_examples) = (counts.clone(), lost_examples.clone());
            tokio::spawn(async move {
                let mut rng = Rng(k as u64 * 7919 + 1);
                while Instant::now() < deadline {
                    let o = one_request(&c, &url, &mut rng, &answers).await;
                    // A client thinks a little between requests, and backs off when refused.
                    let pause = match o {
                        Outcome::Refused => 100 + rng.below(200),
                        _ => rng.below(50),
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let slot = match o {
                        Outcome::Completed => 1,
                        Outcome::Refused => 2,
                        Outcome::Malformed => 3,
                        Outcome::HungUp => 4,
                        Outcome::Lost(why) => {
                            lost_examples.lock().unwrap().push(why);
                            5
                        }
                    };
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in clients {
        t.await.unwrap();
    }
    // Quiet: nothing runs or waits, the KV cache is empty.
    let metrics = s.wait_idle(Duration::from_secs(60)).await;
    let rss_after = rss_kib(&s);
    let n = |i: usize| counts[i].load(Ordering::Relaxed);
    let preemptions = metric_value(&metrics, "vllm:num_preemptions_total");
    println!(
        "soak {secs} s: sent {} · completed {} · refused {} · lost {} · hang-ups {} · malformed {} · preemptions {preemptions} · RSS after warm-up {} MiB, after {} MiB",
        n(0), n(1), n(2), n(5), n(4), n(3), rss_warm / 1024, rss_after / 1024
    );
    let lost = lost_examples.lock().unwrap();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    assert!(
        n(1) > 0 && n(2) > 0 && n(3) > 0 && n(4) > 0,
        "the load did not cover every case"
    );
    assert!(preemptions > 0.0, "the KV cache never forced a preemption");
    assert!(
        (rss_after as f64) < rss_warm as f64 * 1.10,
        "RSS grew from {rss_warm} KiB after warm-up to {rss_after} KiB"
    );
}
