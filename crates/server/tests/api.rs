//! The real server, used as a client uses it: completions and chat, streamed and not, n,
//! stop strings, log-probs, usage, and a table of bad inputs.

mod common;

use common::{get_json, post, sse, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn tokenize(s: &Server, text: &str) -> usize {
    let (st, v) = post(s, "/tokenize", &json!({"prompt": text})).await;
    assert_eq!(st, 200);
    v["count"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_streaming_n_stop_logprobs_usage() {
    let s = Server::start(&[]).await;

    // Non-streamed completion, greedy: the golden continuation.
    let body = json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    let (st, v) = post(&s, "/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(" Paris."), "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"]["prompt_tokens"],
        tokenize(&s, "The capital of France is").await
    );
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 8
    );

    // Streamed text equals non-streamed text for the same seed (sampling, not greedy).
    let sampled =
        json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "seed": 42});
    let (_, whole) = post(&s, "/v1/completions", &sampled).await;
    let mut streamed = sampled.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = sse(&s, "/v1/completions", &streamed).await;
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["text"].as_str()))
        .collect();
    assert_eq!(joined, whole["choices"][0]["text"].as_str().unwrap());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert!(
        chunks.iter().all(|c| c["id"] == chunks[0]["id"]),
        "one id per stream"
    );
    assert_eq!(usage["usage"], whole["usage"]);

    // Chat, streamed and not, same seed.
    let chat = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me a joke."}]}], "max_tokens": 20, "temperature": 0.7, "seed": 7});
    let (st, cv) = post(&s, "/v1/chat/completions", &chat).await;
    assert_eq!(st, 200, "{cv}");
    assert_eq!(cv["object"], "chat.completion");
    assert_eq!(cv["choices"][0]["message"]["role"], "assistant");
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    let chunks = sse(&s, "/v1/chat/completions", &chat_stream).await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        joined,
        cv["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // n = 2: two choices, indexed, each with its own text; usage counts both.
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 1, "ignore_eos": true})).await;
    assert_eq!(st, 200);
    let ch = v["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!(
        (ch[0]["index"].as_u64(), ch[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(v["usage"]["completion_tokens"], 12);

    // Stop strings: "\n\n" spans two tokens and is cut.
    let (_, v) = post(&s, "/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "stop": "\n\n"})).await;
    assert_eq!(v["choices"][0]["text"], " Paris.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // vLLM's include_stop_str_in_output keeps it.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "stop": "\n\n", "include_stop_str_in_output": true});
    let (_, v) = post(&s, "/v1/completions", &body).await;
    assert_eq!(v["choices"][0]["text"], " Paris.\n\n");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Log-probs: completions (integer) and chat (bool + top_logprobs).
    let (_, v) = post(&s, "/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 3})).await;
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["tokens"][0], " Paris");
    let first = lp["token_logprobs"][0].as_f64().unwrap();
    assert!(first < 0.0 && first > -1.0, "{first}");
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() >= 3);
    assert_eq!(
        lp["tokens"].as_array().unwrap().concat_str(),
        v["choices"][0]["text"].as_str().unwrap()
    );
    let (_, v) = post(&s, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2})).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);

    // Echo with logprobs (the lm-eval-harness path): prompt tokens come back scored.
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1})).await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert!(lp["token_logprobs"][0].is_null());
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("The capital of France is"));

    // Token-id prompts and lists of prompts.
    let (st, v) = post(&s, "/v1/completions", &json!({"prompt": [[504, 3575, 282, 4649, 314], [504, 3575]], "max_tokens": 2, "temperature": 0})).await;
    assert_eq!(st, 200);
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(" Paris"));

    // Models, version, detokenize.
    let v = get_json(&s, "/v1/models").await;
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let v = get_json(&s, "/version").await;
    assert!(v["version"].is_string());
    let (_, v) = post(
        &s,
        "/detokenize",
        &json!({"tokens": [504, 3575, 282, 4649, 314]}),
    )
    .await;
    assert_eq!(v["prompt"], "The capital of France is");
}

trait ConcatStr {
    fn concat_str(&self) -> String;
}
impl ConcatStr for Vec<Value> {
    fn concat_str(&self) -> String {
        self.iter().filter_map(|v| v.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_openai_errors_and_the_server_keeps_serving() {
    let s = Server::start(&["--api-key", "sekret", "--max-body-bytes", "100000"]).await;
    let c = reqwest::Client::new();
    let auth = "Bearer sekret";
    let long_prompt = "hello ".repeat(1100);
    let big_body = format!("{{\"prompt\": \"{}\"}}", "a".repeat(200_000));
    // (name, path, body bytes, auth header, expected status, expected param or None)
    let cases: Vec<(&str, &str, Vec<u8>, Option<&str>, u16, Option<&str>)> = vec![
        ("malformed json", "/v1/completions", b"{\"prompt\": ".to_vec(), Some(auth), 400, None),
        ("not an object", "/v1/completions", b"[1,2]".to_vec(), Some(auth), 400, None),
        ("prompt wrong type", "/v1/completions", br#"{"prompt": 5}"#.to_vec(), Some(auth), 400, Some("prompt")),
        ("missing prompt", "/v1/completions", br#"{"max_tokens": 5}"#.to_vec(), Some(auth), 400, Some("prompt")),
        ("max_tokens string", "/v1/completions", br#"{"prompt": "a", "max_tokens": "five"}"#.to_vec(), Some(auth), 400, Some("max_tokens")),
        ("max_tokens negative", "/v1/completions", br#"{"prompt": "a", "max_tokens": -3}"#.to_vec(), Some(auth), 400, Some("max_tokens")),
        ("max_tokens huge", "/v1/completions", br#"{"prompt": "a", "max_tokens": 1000000000}"#.to_vec(), Some(auth), 400, Some("max_tokens")),
        ("temperature negative", "/v1/completions", br#"{"prompt": "a", "temperature": -1}"#.to_vec(), Some(auth), 400, Some("temperature")),
        ("temperature string", "/v1/completions", br#"{"prompt": "a", "temperature": "hot"}"#.to_vec(), Some(auth), 400, Some("temperature")),
        ("top_p zero", "/v1/completions", br#"{"prompt": "a", "top_p": 0}"#.to_vec(), Some(auth), 400, Some("top_p")),
        ("top_k below -1", "/v1/completions", br#"{"prompt": "a", "top_k": -5}"#.to_vec(), Some(auth), 400, Some("top_k")),
        ("presence_penalty huge", "/v1/completions", br#"{"prompt": "a", "presence_penalty": 9}"#.to_vec(), Some(auth), 400, Some("presence_penalty")),
        ("n zero", "/v1/completions", br#"{"prompt": "a", "n": 0}"#.to_vec(), Some(auth), 400, Some("n")),
        ("n over limit", "/v1/completions", br#"{"prompt": "a", "n": 1000}"#.to_vec(), Some(auth), 400, Some("n")),
        ("logprobs too many", "/v1/completions", br#"{"prompt": "a", "logprobs": 50}"#.to_vec(), Some(auth), 400, Some("logprobs")),
        ("min_p out of range", "/v1/completions", br#"{"prompt": "a", "min_p": 2}"#.to_vec(), Some(auth), 400, Some("min_p")),
        ("min_tokens over max_tokens", "/v1/completions", br#"{"prompt": "a", "max_tokens": 2, "min_tokens": 5}"#.to_vec(), Some(auth), 400, Some("min_tokens")),
        ("stop token out of vocab", "/v1/completions", br#"{"prompt": "a", "stop_token_ids": [999999]}"#.to_vec(), Some(auth), 400, Some("stop_token_ids")),
        ("top_logprobs too many", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 25}"#.to_vec(), Some(auth), 400, Some("top_logprobs")),
        ("logit_bias bad key", "/v1/completions", br#"{"prompt": "a", "logit_bias": {"abc": 1}}"#.to_vec(), Some(auth), 400, Some("logit_bias")),
        ("token id out of vocab", "/v1/completions", br#"{"prompt": [999999999]}"#.to_vec(), Some(auth), 400, Some("prompt")),
        ("empty prompt list", "/v1/completions", br#"{"prompt": []}"#.to_vec(), Some(auth), 400, Some("prompt")),
        ("empty stop string", "/v1/completions", br#"{"prompt": "a", "stop": [""]}"#.to_vec(), Some(auth), 400, Some("stop")),
        ("unknown model", "/v1/completions", br#"{"model": "gpt-7", "prompt": "a"}"#.to_vec(), Some(auth), 404, Some("model")),
        ("prompt over context", "/v1/completions", format!("{{\"prompt\": \"{long_prompt}\"}}").into_bytes(), Some(auth), 400, Some("max_tokens")),
        ("invalid utf-8", "/v1/completions", b"{\"prompt\": \"\xff\xfe\"}".to_vec(), Some(auth), 400, None),
        ("oversized body", "/v1/completions", big_body.into_bytes(), Some(auth), 413, None),
        ("missing api key", "/v1/completions", br#"{"prompt": "a"}"#.to_vec(), None, 401, None),
        ("wrong api key", "/v1/completions", br#"{"prompt": "a"}"#.to_vec(), Some("Bearer nope"), 401, None),
        ("empty messages", "/v1/chat/completions", br#"{"messages": []}"#.to_vec(), Some(auth), 400, Some("messages")),
        ("messages wrong type", "/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), Some(auth), 400, Some("messages")),
        ("bad role", "/v1/chat/completions", br#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_vec(), Some(auth), 400, Some("messages[0].role")),
        ("image content", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#.to_vec(), Some(auth), 400, Some("messages[0].content")),
        ("auto tools without a parser", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}"#.to_vec(), Some(auth), 400, Some("tool_choice")),
        ("tool_choice without tools", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}"#.to_vec(), Some(auth), 400, Some("tool_choice")),
        ("tool_choice not in tools", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}"#.to_vec(), Some(auth), 400, Some("tool_choice")),
        ("response_format bad schema", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}"#.to_vec(), Some(auth), 400, Some("response_format")),
        ("guided_choice empty", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "guided_choice": []}"#.to_vec(), Some(auth), 400, Some("guided_choice")),
        ("structured_outputs bad regex", "/v1/completions", br#"{"prompt": "x", "structured_outputs": {"regex": "a+("}}"#.to_vec(), Some(auth), 400, Some("structured_outputs")),
        ("two constraints", "/v1/completions", br#"{"prompt": "x", "structured_outputs": {"regex": "a+"}, "guided_choice": ["a"]}"#.to_vec(), Some(auth), 400, Some("guided_choice")),
        ("prompt_logprobs streamed", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 1, "stream": true}"#.to_vec(), Some(auth), 400, Some("prompt_logprobs")),
        ("top_logprobs without logprobs", "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#.to_vec(), Some(auth), 400, Some("top_logprobs")),
        ("unknown route", "/v1/embeddings", br#"{}"#.to_vec(), Some(auth), 404, None),
    ];
    assert!(cases.len() >= 25);
    for (name, path, body, key, want, param) in &cases {
        let mut rb = c
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(k) = key {
            rb = rb.header("authorization", *k);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, *want, "{name}: {v}");
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {v}"
        );
        assert!(
            err["type"].is_string() && err["code"].as_u64() == Some(*want as u64),
            "{name}: {v}"
        );
        assert!(err.get("param").is_some(), "{name}: {v}");
        if let Some(p) = param {
            assert_eq!(err["param"], *p, "{name}: {v}");
        }
    }
    // Probes and scrapes need no key; /v1 with the key still answers correctly.
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/metrics")).send().await.unwrap().status(), 200);
    let r = c
        .post(s.url("/v1/completions"))
        .header("authorization", auth)
        .json(&json!({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(" Paris"));
    // Nothing leaked by the failures.
    assert_eq!(s.metric("vllm:num_requests_running").await, 0.0);
    assert_eq!(s.metric("vllm:kv_cache_usage_perc").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chunks_arrive_incrementally() {
    let s = Server::start(&[]).await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 30, "temperature": 0, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut pieces = 0;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        pieces += String::from_utf8_lossy(&b).matches("data: ").count();
    }
    assert!(pieces >= 30, "{pieces} SSE events");
}

/// The `data:` JSON events of a streamed completion.
async fn stream_events(s: &Server, body: serde_json::Value) -> Vec<serde_json::Value> {
    let text = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_only_scores_the_prompt_and_streamed_logprobs_carry_offsets() {
    let s = Server::start(&[]).await;
    let prompt = "The capital of France is";
    let n_prompt = tokenize(&s, prompt).await;
    // vLLM's echo-only form: max_tokens 0 with echo scores the prompt, generates nothing.
    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt);
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(c["logprobs"]["tokens"].as_array().unwrap().len(), n_prompt);
    assert!(c["logprobs"]["token_logprobs"][0].is_null());
    assert!(c["logprobs"]["token_logprobs"][1].as_f64().unwrap() < 0.0);
    assert_eq!(v["usage"]["completion_tokens"], 0);
    // max_tokens 0 without echo stays an error.
    let (status, _) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 0}),
    )
    .await;
    assert_eq!(status, 400);

    // Streamed log-probs: the offsets run on across chunks, as the non-streamed ones do,
    // and with echo the first chunk carries the prompt's log-probs.
    let body =
        json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1, "echo": true});
    let (_, whole) = post(&s, "/v1/completions", &body).await;
    let want: Vec<u64> = whole["choices"][0]["logprobs"]["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = stream_events(&s, stream_body).await;
    let mut got = Vec::new();
    let mut text = String::new();
    for e in &events {
        for c in e["choices"].as_array().unwrap() {
            text.push_str(c["text"].as_str().unwrap());
            if let Some(offs) = c["logprobs"]["text_offset"].as_array() {
                got.extend(offs.iter().map(|x| x.as_u64().unwrap()));
            }
        }
    }
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(got, want);
    assert_eq!(got.len(), n_prompt + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_are_returned_as_vllm_returns_them() {
    let s = Server::start(&[]).await;
    let prompt = "The capital of France is";
    let n_prompt = tokenize(&s, prompt).await;
    // Completions: in each choice; one entry per prompt token, the first null.
    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let pl = v["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(pl.len(), n_prompt);
    assert!(pl[0].is_null());
    for e in &pl[1..] {
        let m = e.as_object().unwrap();
        // The prompt token itself plus the 2 best (fewer when it is one of them).
        assert!((2..=3).contains(&m.len()), "{e}");
        let ranks: Vec<u64> = m.values().map(|x| x["rank"].as_u64().unwrap()).collect();
        assert!(ranks.contains(&1), "{e}");
        for x in m.values() {
            assert!(x["logprob"].as_f64().unwrap() <= 0.0);
            assert!(x["decoded_token"].is_string());
        }
    }
    // The same log-probs as echo's (the prompt's own token, entry by entry).
    let (_, e) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2}),
    )
    .await;
    let echo_lp = e["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<u64> = {
        let (_, t) = post(&s, "/tokenize", &json!({"prompt": prompt})).await;
        t["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    for j in 1..n_prompt {
        let own = pl[j][ids[j].to_string()]["logprob"].as_f64().unwrap();
        assert!(
            (own - echo_lp[j].as_f64().unwrap()).abs() < 1e-6,
            "token {j}"
        );
    }
    // Chat: at the top level.
    let (status, v) = post(&s, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "prompt_logprobs": 0})).await;
    assert_eq!(status, 200, "{v}");
    let pl = v["prompt_logprobs"].as_array().unwrap();
    assert!(
        pl.len() > 3 && pl[0].is_null() && pl[1].as_object().unwrap().len() == 1,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_by_id_load_tokenizer_info_request_ids_and_retry_after() {
    let s = Server::start(&[
        "--max-num-seqs",
        "1",
        "--max-queue-len",
        "0",
        "--enable-tokenizer-info-endpoint",
    ])
    .await;
    let c = reqwest::Client::new();
    let get = |path: &str| c.get(s.url(path)).send();
    // The SDKs' models.retrieve.
    let models: serde_json::Value = get("/v1/models").await.unwrap().json().await.unwrap();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    let r = get(&format!("/v1/models/{id}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some(id.as_str()), Some("model"))
    );
    let r = get("/v1/models/not-this-one").await.unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not-this-one"));
    // vLLM's tokenizer_info (behind its flag, given here).
    let t: serde_json::Value = get("/tokenizer_info").await.unwrap().json().await.unwrap();
    assert_eq!(t["eos_token"], "<|im_end|>");
    assert_eq!(t["vocab_size"], 49152);
    assert!(t["chat_template"].as_str().unwrap().contains("im_start"));
    // Request ids: the client's echoed, else a new one.
    let r = c
        .get(s.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = get("/health").await.unwrap();
    let fresh = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!fresh.is_empty() && fresh != "abc-123");
    // /load counts requests being served; with room for one, a second gets 429 with
    // Retry-After (ordered by /load, not by timing).
    let load = || async {
        get("/load")
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["server_load"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(load().await, 0);
    let long = tokio::spawn({
        let url = s.url("/v1/completions");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"prompt": "Count:", "max_tokens": 400, "ignore_eos": true, "temperature": 0}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    while load().await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = c
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(long.await.unwrap(), 200);
    assert_eq!(load().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_final_message_continues_the_assistants_text() {
    let s = Server::start(&[]).await;
    let msgs = json!([
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"}
    ]);
    let (status, v) = post(&s, "/v1/chat/completions", &json!({"messages": msgs, "max_tokens": 3, "temperature": 0, "continue_final_message": true, "add_generation_prompt": false})).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
    // The same prompt as a completion of the cut template: the same tokens.
    let (_, t) = post(
        &s,
        "/tokenize",
        &json!({"messages": msgs, "add_generation_prompt": false}),
    )
    .await;
    let full = t["count"].as_u64().unwrap();
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() < full,
        "the end-of-turn markup is cut"
    );
    // Both flags, or no assistant message to continue: 400 naming it.
    let (status, e) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": msgs, "continue_final_message": true, "add_generation_prompt": true}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("continue_final_message"))
    );
    let (status, e) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "continue_final_message": true}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("continue_final_message"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_checks_like_the_other_endpoints() {
    let s = Server::start(&[]).await;
    for (body, param) in [
        (json!({"input": "Hi", "n": 2}), "n"),
        (
            json!({"input": "Hi", "max_output_tokens": 1_000_000}),
            "max_output_tokens",
        ),
        (json!({"input": "Hi", "best_of": 3}), "best_of"),
        (
            json!({"input": "Hi", "prompt_logprobs": 1}),
            "prompt_logprobs",
        ),
        (
            json!({"input": "Hi", "previous_response_id": "resp_nope"}),
            "previous_response_id",
        ),
    ] {
        let (status, e) = post(&s, "/v1/responses", &body).await;
        assert!(matches!(status, 400 | 404), "{body}: {status} {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    // A completed answer is stored and retrievable; its conversation carries on.
    let (status, r) = post(
        &s,
        "/v1/responses",
        &json!({"input": "Hi", "max_output_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let id = r["id"].as_str().unwrap();
    let got: serde_json::Value = reqwest::get(s.url(&format!("/v1/responses/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["output"], r["output"]);
}
