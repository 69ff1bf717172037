//! The API key check on the `/v1` routes: `Authorization: Bearer <key>` when the server has a
//! key, else 401 as OpenAI's error JSON.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;

pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !state.api_keys.is_empty() {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        if !any_key_matches(given.as_bytes(), &state.api_keys) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key")
                .into_response();
        }
    }
    next.run(req).await
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Whether `given` is one of `keys`, every key compared in full (no early exit).
fn any_key_matches(given: &[u8], keys: &[String]) -> bool {
    keys.iter()
        .fold(false, |hit, k| constant_time_eq(given, k.as_bytes()) | hit)
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::{any_key_matches, bearer_token, constant_time_eq};

    #[test]
    fn bearer_scheme_is_case_insensitive_and_any_key_matches() {
        for v in ["Bearer k1", "bearer k1", "BEARER k1", "Bearer  k1"] {
            assert_eq!(bearer_token(v), Some("k1"), "{v}");
        }
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearerk1"), None);
        let keys = vec!["k1".to_string(), "second".to_string()];
        assert!(any_key_matches(b"k1", &keys));
        assert!(any_key_matches(b"second", &keys));
        assert!(!any_key_matches(b"k", &keys));
        assert!(!any_key_matches(b"", &keys));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
