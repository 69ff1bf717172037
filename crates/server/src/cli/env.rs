//! The server's own environment variables, read here only (the engine's are in
//! `ferrolm_engine::env`).

/// The log filter (`info` by default; e.g. `FERROLM_LOG=debug`).
pub const LOG_VAR: &str = "FERROLM_LOG";

/// The API key when `--api-key` is not given: `VLLM_API_KEY`, else `FERROLM_API_KEY`.
pub fn api_key() -> Option<String> {
    std::env::var("VLLM_API_KEY")
        .ok()
        .or_else(|| std::env::var("FERROLM_API_KEY").ok())
}

/// The script `serve` runs to fetch the default model when it is missing
/// (`FERROLM_FETCH_SCRIPT`, default `models/fetch-default.sh`).
pub fn fetch_script() -> String {
    std::env::var("FERROLM_FETCH_SCRIPT").unwrap_or_else(|_| "models/fetch-default.sh".into())
}

/// The Hugging Face token for downloads (`HF_TOKEN`), as huggingface_hub reads it.
pub fn hf_token() -> Option<String> {
    std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty())
}

/// Another hub endpoint (`HF_ENDPOINT`, e.g. a mirror), as huggingface_hub reads it.
pub fn hf_endpoint() -> Option<String> {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty())
}
