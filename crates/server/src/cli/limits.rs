//! `serve`'s limits against hostile or broken clients: how much one request may send and
//! ask for, how many connections are served, how long a client may take over a header, a
//! body or a write, and the API keys.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferrolm_engine::config::RequestLimits;
use ferrolm_engine::structured::GrammarLimits;

use super::http::HttpLimits;

#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Required as `Authorization: Bearer KEY` on every route but /health, /ping (and
    /// /metrics); repeat it for several keys (also VLLM_API_KEY, FERROLM_API_KEY).
    #[arg(long)]
    pub api_key: Vec<String>,
    /// A file of API keys, one a line (blank lines and lines starting with # ignored).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// /metrics needs the API key too (by default it stays open for Prometheus).
    #[arg(long)]
    pub metrics_require_api_key: bool,
    /// Largest request body in bytes: a declared length over it is refused before the body
    /// is read, a chunked body is cut at it (413).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Stop strings in one request (400 beyond).
    #[arg(long, default_value_t = RequestLimits::default().max_stop_strings)]
    pub max_stop_strings: usize,
    /// Bytes of one request's stop strings together (400 beyond).
    #[arg(long, default_value_t = RequestLimits::default().max_stop_bytes)]
    pub max_stop_bytes: usize,
    /// Bytes of one request's JSON schema, regex, grammar or choices (structured outputs;
    /// 400 beyond).
    #[arg(long, default_value_t = GrammarLimits::default().max_bytes)]
    pub max_grammar_bytes: usize,
    /// Compiled grammars kept for requests that repeat them.
    #[arg(long, default_value_t = GrammarLimits::default().cache_entries)]
    pub grammar_cache_size: usize,
    /// HTTP connections served at once (lowered to fit the open-file limit). Beyond it a
    /// connection gets /health and /ping answered, and 503 for anything else.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open.
    #[arg(long, default_value_t = 15.0)]
    pub header_read_timeout: f64,
    /// Seconds a request body may pause between two of its pieces (408 beyond).
    #[arg(long, default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Seconds one write to a client may wait (a client that stops reading is dropped, and
    /// its requests aborted).
    #[arg(long, default_value_t = 60.0)]
    pub write_timeout: f64,
}

impl LimitArgs {
    /// The keys from `--api-key`, `--api-key-file` and the environment (when no flag names
    /// any); empty keys are ignored.
    pub fn api_keys(&self, env_key: Option<&str>) -> anyhow::Result<Vec<String>> {
        let mut keys = self.api_key.clone();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        if keys.is_empty() {
            keys.extend(env_key.map(str::to_string));
        }
        keys.retain(|k| !k.is_empty());
        Ok(keys)
    }

    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_stop_strings: self.max_stop_strings,
            max_stop_bytes: self.max_stop_bytes,
        }
    }

    pub fn grammar_limits(&self) -> GrammarLimits {
        GrammarLimits {
            max_bytes: self.max_grammar_bytes,
            cache_entries: self.grammar_cache_size,
            ..GrammarLimits::default()
        }
    }

    pub fn http(&self) -> anyhow::Result<HttpLimits> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{name} {v}: must be a positive number of seconds"))
        };
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be positive"
        );
        Ok(HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: secs("header-read-timeout", self.header_read_timeout)?,
            body_read_timeout: secs("body-read-timeout", self.body_read_timeout)?,
            write_timeout: secs("write-timeout", self.write_timeout)?,
        })
    }
}
