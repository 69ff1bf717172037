//! What the tests share: the `ferrolm` binary and its JSON output files; the real
//! `ferrolm serve` started on a free port with the real default model, as a client would find
//! it, and stopped when dropped; and requests to it (JSON, SSE streams, metrics).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The test knobs, read here only: `FERROLM_TEST_MODEL`, the GGUF the started servers load
/// (default: the server's own default model).
pub fn test_model() -> Option<String> {
    std::env::var("FERROLM_TEST_MODEL")
        .ok()
        .filter(|m| !m.is_empty())
}

/// `FERROLM_SOAK_SECS`: how long the soak loads the server (default 60).
pub fn soak_secs() -> u64 {
    std::env::var("FERROLM_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// The `ferrolm` binary under test.
pub fn ferrolm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrolm"))
}

/// Runs a command to its end and checks that it succeeded (showing its stderr if not).
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Where a command run by this test process writes its JSON report.
pub fn json_out(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferrolm-{name}-{}.json", std::process::id()))
}

/// A JSON file's contents.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A JSON file's contents; the file is removed.
pub fn take_json(path: &Path) -> Value {
    let v = read_json(path);
    std::fs::remove_file(path).ok();
    v
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// `extra`: flags after the defaults (a small KV cache and context for tests).
    pub async fn start(extra: &[&str]) -> Server {
        Self::start_with(extra, None, &[]).await
    }

    /// As [`Server::start`], under an open-file limit of `nofile` (soft and hard) if given,
    /// with `env` added to its environment.
    pub async fn start_with(extra: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut args = vec!["serve".to_string(), "--port".into(), port.to_string()];
        // The test defaults, unless `extra` sets them.
        for (flag, value) in [
            ("--max-model-len", "1024".to_string()),
            ("--kv-cache-memory-bytes", (96u64 << 20).to_string()),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(m) = test_model() {
            args.insert(1, m);
        }
        let mut cmd = match nofile {
            // `exec` keeps the pid: the child is ferrolm itself.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_ferrolm"));
                c
            }
            None => ferrolm(),
        };
        let child = cmd
            .args(&args)
            .envs(env.iter().copied())
            .env("FERROLM_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting ferrolm serve");
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
        };
        s.wait_healthy().await;
        s
    }

    async fn wait_healthy(&self) {
        let c = reqwest::Client::new();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = c.get(format!("{}/health", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a sample line such as `vllm:num_requests_running{model_name="m"}`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    pub fn sigterm(&self) {
        unsafe_kill(self.child.id() as i32, 15);
    }

    /// The server's peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Resets the server's peak resident memory to what it holds now (`clear_refs` 5).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// Waits until nothing runs or waits and the KV cache is empty (`within`: a bound
    /// against hangs); the metrics then.
    pub async fn wait_idle(&self, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let m = self.metrics().await;
            let running = metric_value(&m, "vllm:num_requests_running");
            let waiting = metric_value(&m, "vllm:num_requests_waiting");
            let kv = metric_value(&m, "vllm:kv_cache_usage_perc");
            if running == 0.0 && waiting == 0.0 && kv == 0.0 {
                return m;
            }
            assert!(
                t0.elapsed() < within,
                "not idle after {within:?}: running {running}, waiting {waiting}, kv {kv}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new raw TCP connection to the server.
    pub fn connect(&self) -> std::net::TcpStream {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap()
    }
}

/// Writes `request` on a new connection and reads the answer until the server closes the
/// connection or `bound` passes (a bound against hangs).
pub fn raw_exchange(s: &Server, request: &[u8], bound: Duration) -> String {
    use std::io::{Read, Write};
    let mut c = s.connect();
    c.set_read_timeout(Some(bound)).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || (name.ends_with('"') && l.starts_with(name)))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs a JSON body.
pub async fn send_json(s: &Server, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(s.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// GETs a path; its JSON answer.
pub async fn get_json(s: &Server, path: &str) -> Value {
    reqwest::get(s.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POSTs a JSON body; the status and the JSON answer (null if it is not JSON).
pub async fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = send_json(s, path, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Reads an SSE response into its JSON chunks; checks it ends with [DONE].
pub async fn sse(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let r = send_json(s, path, body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let datas: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect();
    assert_eq!(
        datas.last(),
        Some(&"[DONE]"),
        "stream did not end with [DONE]: {text}"
    );
    datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
