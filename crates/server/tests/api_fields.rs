//! Walks docs/api.md's table of vLLM's request fields (completions, chat, responses): each
//! field, on each endpoint that has it, sent with the table's value in a small request against
//! the real server; the status must be what the table says (implemented and no effect: 200;
//! refused: 400 naming the field).

mod common;

use common::Server;
use serde_json::{json, Value};

const TABLE: &str = include_str!("../../../docs/api.md");

/// (field, [(endpoint, status word, value)]) rows of the table.
fn rows() -> Vec<(String, Vec<(&'static str, String, Option<Value>)>)> {
    let begin = TABLE.find("<!-- fields:begin -->").expect("table start");
    let end = TABLE.find("<!-- fields:end -->").expect("table end");
    let cell_value = |c: &str| {
        let c = c.trim();
        (!c.is_empty()).then(|| {
            let c = c.trim_matches('`');
            serde_json::from_str::<Value>(c).unwrap_or_else(|e| panic!("value {c}: {e}"))
        })
    };
    TABLE[begin..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| field") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 7, "row {l}");
            let field = cells[0].trim().to_string();
            let ends = vec![
                (
                    "/v1/completions",
                    cells[1].trim().to_string(),
                    cell_value(cells[4]),
                ),
                (
                    "/v1/chat/completions",
                    cells[2].trim().to_string(),
                    cell_value(cells[5]),
                ),
                (
                    "/v1/responses",
                    cells[3].trim().to_string(),
                    cell_value(cells[6]),
                ),
            ];
            (field, ends)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vllm_request_field_does_what_docs_api_md_says() {
    let rows = rows();
    assert!(rows.len() >= 90, "{} rows", rows.len());
    // `auto` tool choice (the default with `tools`) needs a parser.
    let s = Server::start(&["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]).await;
    let served = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A stored response for `previous_response_id`.
    let stored = reqwest::Client::new()
        .post(s.url("/v1/responses"))
        .json(&json!({"input": "Hi", "max_output_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut failures = Vec::new();
    for (field, ends) in &rows {
        for (path, status, value) in ends {
            if status == "—" {
                assert!(
                    value.is_none(),
                    "{field} {path}: a value for a missing field"
                );
                continue;
            }
            let value = value
                .clone()
                .unwrap_or_else(|| panic!("{field} {path}: no value"));
            let value = match value {
                v if v == json!("SERVED") => json!(served),
                v if v == json!("STORED") => json!(stored),
                v => v,
            };
            let mut body = if path.contains("chat") {
                json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            } else if path.contains("responses") {
                json!({"input": "Hi", "max_output_tokens": 2})
            } else {
                json!({"prompt": "Hi", "max_tokens": 2})
            };
            // Fields that only mean something beside another one.
            match field.as_str() {
                "stream_options" => body["stream"] = json!(true),
                "top_logprobs" => body["logprobs"] = json!(true),
                "continue_final_message" => {
                    body["messages"] = json!([
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello, I"}
                    ])
                }
                _ => {}
            }
            body[field.as_str()] = value;
            let r = reqwest::Client::new()
                .post(s.url(path))
                .json(&body)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            let text = r.text().await.unwrap();
            let ok = match status.as_str() {
                "implemented" | "no effect" => code == 200,
                "refused" => {
                    let e: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    code == 400 && e["error"]["param"] == json!(field)
                }
                other => panic!("{field} {path}: unknown status {other:?}"),
            };
            if !ok {
                failures.push(format!(
                    "{field} on {path} ({status}): {code} {}",
                    &text[..text.len().min(200)]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fields differ from docs/api.md:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
