//! Every variable the program reads from its environment, read once, here (as vLLM's
//! `envs.py`): the engine's run-time switches, and the server's own variables
//! ([`ServerSwitches`]), which the server takes from [`Switches::server`]. Flags belong in
//! [`crate::config::EngineConfig`]; these are for A/B runs, debugging and fallbacks. README
//! lists them all. The build's one (FERROLM_CUDA_ARCHS) arrives as [`CUDA_ARCHS_BUILT`].
use std::path::PathBuf;

pub use ferrolm_formats::hf::hub::HubSettings;
use ferrolm_formats::model_dir::model_dir_from_vars;

/// The engine's environment switches, read once by the program ([`Switches::from_env`]) and
/// passed down: the model and its device take [`ModelSwitches`] (in
/// [`crate::loader::LoadOptions`]), the engine loop [`EngineSwitches`] (in
/// [`crate::config::EngineConfig`]), the server [`ServerSwitches`]. Nothing else reads the
/// environment.
#[derive(Debug, Clone)]
pub struct Switches {
    pub model: ModelSwitches,
    pub engine: EngineSwitches,
    pub server: ServerSwitches,
    /// FERROLM_MODEL_DIR (else $XDG_CACHE_HOME/ferrolm/models, else ~/.cache/ferrolm/models):
    /// where the default model is.
    pub model_dir: PathBuf,
    /// HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub) and HF_HUB_OFFLINE:
    /// where hub ids are looked up, and whether they may be downloaded.
    pub hub: HubSettings,
}

/// How the model's forward pass and its device run (A/B runs, debugging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSwitches {
    /// FERROLM_NO_FUSED (set): candle's separate ops instead of our fused CUDA kernels.
    pub fused_ops: bool,
    /// FERROLM_GEMV=0: every dense matmul to cuBLAS (no skinny decode kernel).
    pub gemv: bool,
    /// FERROLM_F32_RESIDUAL=0: a half-precision model rounds its residual stream to its type.
    pub f32_residual: bool,
    /// FERROLM_STACK_PROJ=1/0: stack Q/K/V and gate/up weights (default: on a GPU only).
    pub stack_projections: Option<bool>,
    /// FERROLM_DECODE_KERNEL=per-head: the per-query-head decode kernel instead of GQA's.
    pub decode_kernel_per_head: bool,
    /// FERROLM_POOL_KEEP=1: the CUDA memory pool keeps freed memory.
    pub pool_keep: bool,
    /// FERROLM_CPU_ISA=avx2: the AVX2 matmul even where AVX-512 VNNI passed its probe.
    pub cpu_isa_avx2: bool,
    /// FERROLM_PROFILE=1: time each stage of eager steps (a device sync per stage).
    pub profile: bool,
    /// FERROLM_DUMP_DIR: write each layer's output there (llama.cpp's tensor names).
    pub dump_dir: Option<PathBuf>,
}

impl Default for ModelSwitches {
    /// Every switch unset.
    fn default() -> Self {
        Self {
            fused_ops: true,
            gemv: true,
            f32_residual: true,
            stack_projections: None,
            decode_kernel_per_head: false,
            pool_keep: false,
            cpu_isa_avx2: false,
            profile: false,
            dump_dir: None,
        }
    }
}

/// How the engine loop runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSwitches {
    /// FERROLM_ENFORCE_EAGER=1: no CUDA graphs, as `--enforce-eager`.
    pub enforce_eager: bool,
    /// FERROLM_FAULT_INJECT (tests only): `sample:SEED` panics while sampling a request with
    /// that seed, `step:SEED` panics in the step that schedules one (the engine thread dies).
    pub fault_inject: Option<FaultInject>,
    /// FERROLM_DEVICE_SAMPLER: steps with sampled requests (no prompt log-probs, no grammar)
    /// draw their tokens on the device, only ids crossing to the host. Unset: on a GPU
    /// (checked against the CPU sampler on an H200, 2026-12-04), off on the CPU; `1` also on
    /// the CPU (the same algorithm over the step's rows), `0` never.
    pub device_sampler: Option<bool>,
}

impl EngineSwitches {
    /// Whether sampled steps use the device sampler on a model `on_gpu` or not.
    pub fn device_sampler_on(&self, on_gpu: bool) -> bool {
        self.device_sampler.unwrap_or(on_gpu)
    }
}

/// A fault the engine injects for the tests of its fault handling (`FERROLM_FAULT_INJECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultInject {
    /// Panic while sampling a request whose seed is this.
    Sample(u64),
    /// Panic in a step that schedules a request whose seed is this.
    Step(u64),
}

impl FaultInject {
    fn parse(v: &str) -> Option<Self> {
        let (kind, seed) = v.split_once(':')?;
        let seed = seed.trim().parse().ok()?;
        match kind.trim() {
            "sample" => Some(Self::Sample(seed)),
            "step" => Some(Self::Step(seed)),
            _ => None,
        }
    }
}

/// The CUDA architectures this build's kernels were compiled for (`"80;89;90"`): the build
/// script's reading of FERROLM_CUDA_ARCHS.
#[cfg(feature = "cuda")]
pub const CUDA_ARCHS_BUILT: &str = env!("FERROLM_CUDA_ARCHS_BUILT");

/// The server's own variables.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSwitches {
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

// The key never reaches a log line.
impl std::fmt::Debug for ServerSwitches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSwitches")
            .field("log_filter", &self.log_filter)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("fetch_script", &self.fetch_script)
            .field("hub_client", &self.hub_client)
            .field("otel_service_name", &self.otel_service_name)
            .field("otlp_traces_protocol", &self.otlp_traces_protocol)
            .finish()
    }
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

/// One variable of the process environment: the program's only read of it
/// ([`Switches::from_env`] looks up through this).
pub fn process_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into())
}

impl Switches {
    /// Reads the process environment: the program calls this once, at start.
    pub fn from_env() -> Self {
        Self::from_lookup(process_var)
    }

    /// Reads the switches from `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let is = |name: &str, v: &str| var(name).is_some_and(|x| x == v);
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let model_dir = model_dir_from_vars(
            var("FERROLM_MODEL_DIR").as_deref(),
            var("XDG_CACHE_HOME").as_deref(),
            var("HOME").as_deref(),
        );
        Self {
            model: ModelSwitches {
                fused_ops: var("FERROLM_NO_FUSED").is_none(),
                gemv: !is("FERROLM_GEMV", "0"),
                f32_residual: !is("FERROLM_F32_RESIDUAL", "0"),
                stack_projections: var("FERROLM_STACK_PROJ").map(|v| v == "1"),
                decode_kernel_per_head: matches!(
                    var("FERROLM_DECODE_KERNEL").as_deref(),
                    Some("per-head") | Some("v1")
                ),
                pool_keep: is("FERROLM_POOL_KEEP", "1"),
                cpu_isa_avx2: var("FERROLM_CPU_ISA")
                    .is_some_and(|v| v.eq_ignore_ascii_case("avx2")),
                profile: is("FERROLM_PROFILE", "1"),
                dump_dir: var("FERROLM_DUMP_DIR").map(PathBuf::from),
            },
            engine: EngineSwitches {
                enforce_eager: is("FERROLM_ENFORCE_EAGER", "1"),
                fault_inject: var("FERROLM_FAULT_INJECT").and_then(|v| FaultInject::parse(&v)),
                device_sampler: var("FERROLM_DEVICE_SAMPLER").map(|v| v == "1"),
            },
            server: ServerSwitches {
                log_filter: non_empty("FERROLM_LOG"),
                api_key: var("VLLM_API_KEY").or_else(|| var("FERROLM_API_KEY")),
                fetch_script: var("FERROLM_FETCH_SCRIPT")
                    .unwrap_or_else(|| "models/fetch-default.sh".into()),
                hub_client: HubClient {
                    token: non_empty("HF_TOKEN"),
                    endpoint: non_empty("HF_ENDPOINT"),
                },
                otel_service_name: non_empty("OTEL_SERVICE_NAME")
                    .unwrap_or_else(|| "ferrolm".into()),
                otlp_traces_protocol: non_empty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            },
            model_dir,
            hub: HubSettings::from_vars(
                var("HF_HUB_CACHE").as_deref(),
                var("HF_HOME").as_deref(),
                var("HOME").as_deref(),
                var("HF_HUB_OFFLINE").as_deref(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_settings() {
        let none = Switches::from_lookup(|_| None);
        assert_eq!(none.model, ModelSwitches::default());
        assert_eq!(none.engine, EngineSwitches::default());
        assert_eq!(none.model_dir, PathBuf::from("./.cache/ferrolm/models"));
        let set = Switches::from_lookup(|name| {
            Some(
                match name {
                    "FERROLM_ENFORCE_EAGER" | "FERROLM_STACK_PROJ" | "FERROLM_DEVICE_SAMPLER" => {
                        "1"
                    }
                    "FERROLM_GEMV" | "FERROLM_F32_RESIDUAL" => "0",
                    "FERROLM_DECODE_KERNEL" => "per-head",
                    "FERROLM_CPU_ISA" => "AVX2",
                    "FERROLM_MODEL_DIR" => "/m",
                    "FERROLM_NO_FUSED" => "",
                    _ => return None,
                }
                .into(),
            )
        });
        let m = &set.model;
        assert!(set.engine.enforce_eager && !m.gemv && !m.f32_residual && !m.fused_ops);
        assert_eq!(set.engine.device_sampler, Some(true));
        assert!(m.decode_kernel_per_head && m.cpu_isa_avx2);
        assert_eq!(m.stack_projections, Some(true));
        assert_eq!(set.model_dir, PathBuf::from("/m"));
    }

    fn server(vars: &[(&str, &str)]) -> ServerSwitches {
        Switches::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .server
    }

    #[test]
    fn server_defaults() {
        let e = server(&[]);
        assert_eq!(e.log_filter, None);
        assert_eq!(e.api_key, None);
        assert_eq!(e.fetch_script, "models/fetch-default.sh");
        assert_eq!(e.hub_client, HubClient::default());
    }

    #[test]
    fn vllm_api_key_wins_and_empty_hub_values_are_unset() {
        let e = server(&[
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
            server(&[("FERROLM_API_KEY", "b")]).api_key.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let vars = [("VLLM_API_KEY", "sk-secret"), ("HF_TOKEN", "hf_secret")];
        let all = Switches::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        });
        let shown = format!("{all:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
