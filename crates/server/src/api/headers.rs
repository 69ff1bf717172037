//! Headers every response carries: the request's id (`x-request-id`: the client's, if it
//! sent a usable one, else a new one; also in the log lines of the request's span) and, on
//! 429 and 503, `Retry-After` (the client should come back; one second is the shortest
//! wait a queue could drain in).

use axum::extract::Request;
use axum::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's id is echoed when it is short visible ASCII (it goes into headers and logs).
fn usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

pub async fn request_id_and_retry_after(req: Request, next: Next) -> Response {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if usable(v) => v.clone(),
        _ => HeaderValue::from_str(&ferrolm_protocol::openai::request_id("req"))
            .unwrap_or_else(|_| HeaderValue::from_static("req")),
    };
    let span = tracing::info_span!(
        "http",
        request_id = %String::from_utf8_lossy(id.as_bytes()),
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "answered"));
    let headers = resp.headers_mut();
    headers.insert(X_REQUEST_ID, id);
    let busy = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    if busy && !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
