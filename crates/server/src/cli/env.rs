//! The program's environment, read once by [`Environment::from_env`] in `cli::run` and
//! passed down: the engine's switches (`ferrolm_engine::env::Switches`) and the server's
//! own variables. Nothing else in the program reads the environment.

use ferrolm_engine::env::Switches;

/// Everything the program takes from its environment.
#[derive(Clone)]
pub struct Environment {
    /// The engine's switches (model, engine loop, model folder, hub cache).
    pub switches: Switches,
    /// The log filter, `FERROLM_LOG` (`info` when unset or unparsable; e.g. `debug`).
    pub log_filter: Option<String>,
    /// The API key when no `--api-key` flag names one: `VLLM_API_KEY`, else `FERROLM_API_KEY`.
    pub api_key: Option<String>,
    /// The script `serve` runs to fetch the default model when it is missing
    /// (`FERROLM_FETCH_SCRIPT`, default `models/fetch-default.sh`).
    pub fetch_script: String,
    /// How hub downloads authenticate and where they go (`HF_TOKEN`, `HF_ENDPOINT`).
    pub hub_client: HubClient,
    /// The service name of exported spans, `OTEL_SERVICE_NAME` (default `ferrolm`).
    pub otel_service_name: String,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: only `http/protobuf` is exported.
    pub otlp_traces_protocol: Option<String>,
}

/// The Hugging Face hub client's settings, as huggingface_hub reads them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HubClient {
    /// `HF_TOKEN` (empty = none).
    pub token: Option<String>,
    /// `HF_ENDPOINT`, another hub (e.g. a mirror; empty = the default).
    pub endpoint: Option<String>,
}

// The token never reaches a log line.
impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("switches", &self.switches)
            .field("log_filter", &self.log_filter)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("fetch_script", &self.fetch_script)
            .field("hub_client", &self.hub_client)
            .field("otel_service_name", &self.otel_service_name)
            .field("otlp_traces_protocol", &self.otlp_traces_protocol)
            .finish()
    }
}

impl Environment {
    /// Reads the process environment: `cli::run` calls this once, at start.
    pub fn from_env() -> Self {
        Self::from_lookup(ferrolm_engine::env::process_var)
    }

    /// Reads the variables from `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        Self {
            switches: Switches::from_lookup(&var),
            log_filter: non_empty("FERROLM_LOG"),
            api_key: var("VLLM_API_KEY").or_else(|| var("FERROLM_API_KEY")),
            fetch_script: var("FERROLM_FETCH_SCRIPT")
                .unwrap_or_else(|| "models/fetch-default.sh".into()),
            hub_client: HubClient {
                token: non_empty("HF_TOKEN"),
                endpoint: non_empty("HF_ENDPOINT"),
            },
            otel_service_name: non_empty("OTEL_SERVICE_NAME").unwrap_or_else(|| "ferrolm".into()),
            otlp_traces_protocol: non_empty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults() {
        let e = env(&[]);
        assert_eq!(e.log_filter, None);
        assert_eq!(e.api_key, None);
        assert_eq!(e.fetch_script, "models/fetch-default.sh");
        assert_eq!(e.hub_client, HubClient::default());
    }

    #[test]
    fn vllm_api_key_wins_and_empty_hub_values_are_unset() {
        let e = env(&[
            ("VLLM_API_KEY", "a"),
            ("FERROLM_API_KEY", "b"),
            ("HF_TOKEN", ""),
            ("HF_ENDPOINT", "https://mirror.example"),
            ("FERROLM_LOG", "debug"),
            ("FERROLM_FETCH_SCRIPT", "/x.sh"),
        ]);
        assert_eq!(e.api_key.as_deref(), Some("a"));
        assert_eq!(e.hub_client.token, None);
        assert_eq!(
            e.hub_client.endpoint.as_deref(),
            Some("https://mirror.example")
        );
        assert_eq!(e.log_filter.as_deref(), Some("debug"));
        assert_eq!(e.fetch_script, "/x.sh");
        assert_eq!(
            env(&[("FERROLM_API_KEY", "b")]).api_key.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let e = env(&[("VLLM_API_KEY", "sk-secret"), ("HF_TOKEN", "hf_secret")]);
        let shown = format!("{e:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
