//! The one mapping of engine errors onto the API's error (OpenAI's error JSON with the right
//! status; the type itself lives in ferrolm-protocol).

use axum::http::StatusCode;
use ferrolm_engine::EngineError;
pub use ferrolm_protocol::ApiError;

pub fn from_engine(e: EngineError) -> ApiError {
    match &e {
        EngineError::InvalidRequest(_) | EngineError::PromptTooLong { .. } => {
            ApiError::bad_request(e.to_string())
        }
        EngineError::EngineStopped => ApiError::unavailable("the engine is shutting down"),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
