//! `--otlp-traces-endpoint`: a request's `llm_request` span reaches an OTLP/HTTP receiver
//! started here (protobuf decoded with the OpenTelemetry protocol's own types), child of the
//! request's `traceparent`, with vLLM's attributes and the response's own numbers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::Server;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A bound against hangs, not a measure: the exporter sends every second.
const ARRIVAL_BOUND: Duration = Duration::from_secs(60);

/// An OTLP/HTTP receiver on a free port: every span it gets, with its service name.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone());
                    let service = match service {
                        Some(AnyValue::StringValue(s)) => s,
                        _ => String::new(),
                    };
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            let _ = tx.send((service.clone(), span));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

/// The next span of `trace_id` (hex), skipping others.
async fn span_of(
    rx: &mut mpsc::UnboundedReceiver<(String, Span)>,
    trace_id: &str,
) -> (String, Span) {
    tokio::time::timeout(ARRIVAL_BOUND, async {
        loop {
            let (service, span) = rx.recv().await.expect("the receiver is up");
            if hex(&span.trace_id) == trace_id {
                return (service, span);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no span of trace {trace_id} within {ARRIVAL_BOUND:?}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, AnyValue> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?)))
        .collect()
}

fn int(a: &HashMap<String, AnyValue>, k: &str) -> i64 {
    match a.get(k) {
        Some(AnyValue::IntValue(v)) => *v,
        other => panic!("{k}: {other:?}"),
    }
}

fn float(a: &HashMap<String, AnyValue>, k: &str) -> f64 {
    match a.get(k) {
        Some(AnyValue::DoubleValue(v)) => *v,
        other => panic!("{k}: {other:?}"),
    }
}

fn string(a: &HashMap<String, AnyValue>, k: &str) -> String {
    match a.get(k) {
        Some(AnyValue::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    }
}

async fn post_traced(s: &Server, path: &str, body: &Value, traceparent: Option<&str>) -> Value {
    let mut req = reqwest::Client::new().post(s.url(path)).json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_span_reaches_the_collector_under_its_traceparent() {
    let (endpoint, mut spans) = receiver().await;
    let s = Server::start_with(
        &["--otlp-traces-endpoint", &endpoint],
        None,
        &[("OTEL_SERVICE_NAME", "ferrolm-test")],
    )
    .await;
    let model = common::get_json(&s, "/v1/models").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A completion under a caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9});
    let r = post_traced(
        &s,
        "/v1/completions",
        &body,
        Some(&format!("00-{trace_id}-{parent}-01")),
    )
    .await;
    let (service, span) = span_of(&mut spans, trace_id).await;
    assert_eq!(service, "ferrolm-test");
    assert_eq!(span.name, "llm_request");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.parent_span_id), parent);
    assert!(span.start_time_unix_nano > 0 && span.start_time_unix_nano <= span.end_time_unix_nano);
    let a = attributes(&span);
    assert_eq!(string(&a, "gen_ai.request.id"), r["id"].as_str().unwrap());
    assert_eq!(string(&a, "gen_ai.response.model"), model);
    assert_eq!(int(&a, "gen_ai.request.max_tokens"), 8);
    assert_eq!(int(&a, "gen_ai.request.n"), 1);
    assert!((float(&a, "gen_ai.request.temperature") - 0.5).abs() < 1e-6);
    assert!((float(&a, "gen_ai.request.top_p") - 0.9).abs() < 1e-6);
    assert_eq!(
        int(&a, "gen_ai.usage.prompt_tokens"),
        r["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(&a, "gen_ai.usage.completion_tokens"),
        r["usage"]["completion_tokens"].as_i64().unwrap()
    );
    let (queue, ttft, e2e) = (
        float(&a, "gen_ai.latency.time_in_queue"),
        float(&a, "gen_ai.latency.time_to_first_token"),
        float(&a, "gen_ai.latency.e2e"),
    );
    assert!(
        0.0 <= queue && queue <= ttft && ttft <= e2e,
        "{queue} {ttft} {e2e}"
    );
    let (prefill, decode, inference) = (
        float(&a, "gen_ai.latency.time_in_model_prefill"),
        float(&a, "gen_ai.latency.time_in_model_decode"),
        float(&a, "gen_ai.latency.time_in_model_inference"),
    );
    assert!((prefill + decode - inference).abs() < 1e-9);
    let span_secs = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9;
    assert!((span_secs - e2e).abs() < 1e-3, "{span_secs} vs {e2e}");

    // A streamed chat with n = 2 under another trace: one span per choice.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "n": 2, "stream": true});
    let resp = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let id = text
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l.strip_prefix("data: ")?).ok())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = vec![];
    for _ in 0..2 {
        let (_, span) = span_of(&mut spans, trace_id).await;
        let a = attributes(&span);
        assert_eq!(int(&a, "gen_ai.request.n"), 2);
        ids.push(string(&a, "gen_ai.request.id"));
    }
    ids.sort();
    assert_eq!(ids, [format!("{id}-0"), format!("{id}-1")]);

    // No traceparent: a root span of a trace of its own.
    let r = post_traced(
        &s,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2}),
        None,
    )
    .await;
    let (_, span) = tokio::time::timeout(ARRIVAL_BOUND, async {
        loop {
            let (svc, span) = spans.recv().await.unwrap();
            if string(&attributes(&span), "gen_ai.request.id") == r["id"].as_str().unwrap() {
                return (svc, span);
            }
        }
    })
    .await
    .expect("the root span arrives");
    assert!(span.parent_span_id.is_empty());
    assert_eq!(span.trace_id.len(), 16);
}

#[test]
fn a_grpc_protocol_is_refused_at_start() {
    let out = common::ferrolm()
        .args([
            "serve",
            "--port",
            "1",
            "--otlp-traces-endpoint",
            "http://127.0.0.1:4317",
        ])
        .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http/protobuf only"), "{err}");
}

/// `--log-format json`: every line the server logs is one JSON object (the request's line
/// with its fields), and no colour codes reach a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_colour() {
    let port = common::free_port();
    let mut cmd = common::ferrolm();
    cmd.args(["serve", "--port", &port.to_string(), "--log-format", "json"])
        .args([
            "--max-model-len",
            "512",
            "--kv-cache-memory-bytes",
            &(32u64 << 20).to_string(),
        ])
        .env("FERROLM_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(m) = common::test_model() {
        cmd.arg(m);
    }
    let child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    tokio::time::timeout(ARRIVAL_BOUND, async {
        while !c
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the server becomes healthy");
    let r: Value = c
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains('\x1b'), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let finished = lines
        .iter()
        .find(|l| l["message"] == "request finished")
        .unwrap_or_else(|| panic!("no request line in {stdout}"));
    assert_eq!(
        finished["generated_tokens"].as_u64(),
        r["usage"]["completion_tokens"].as_u64()
    );
}
