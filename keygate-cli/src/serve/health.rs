//! `/healthz` (the process answers) and `/readyz` (the store answers too).

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate::ListQuery;

use super::App;

/// Liveness: `200 ok` while the process serves requests. It reads nothing.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: `200` when the store answers a one-record list within the store timeout;
/// `503` with `Retry-After` when it fails or takes longer. The store is read directly,
/// never through the cache.
pub(crate) async fn readyz(State(app): State<App>) -> Response {
    let query = ListQuery::new().limit(1);
    let probe = app.store().list(&query);
    let problem = match tokio::time::timeout(app.probe_timeout(), probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let Some(problem) = problem else {
        return json(StatusCode::OK, r#"{"status":"ready"}"#);
    };
    tracing::warn!(problem = %problem, "not ready: the store does not answer");
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"status":"unavailable","error":"temporarily_unavailable","error_description":"The key store does not answer"}"#,
    );
    response.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(keygate::http::RETRY_AFTER_SECS),
    );
    response
}

fn json(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
