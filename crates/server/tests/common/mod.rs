//! Starts the real `ferrolm serve` on a free port with the real default model, as a client
//! would find it, and stops it when dropped.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let port = free_port();
        let mut args = vec![
            "serve".to_string(),
            "--port".into(),
            port.to_string(),
            "--max-model-len".into(),
            "1024".into(),
            "--kv-cache-memory-bytes".into(),
            (96u64 << 20).to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Ok(m) = std::env::var("FERROLM_TEST_MODEL") {
            args.insert(1, m);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
            .args(&args)
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
