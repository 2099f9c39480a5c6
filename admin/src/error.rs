//! Errors of the API: a JSON body `{"error": {"code", "message"}}` with the
//! stable code, and an HTTP status chosen by that code.
//!
//! | code | status |
//! |---|---|
//! | `UNAUTHORIZED` (no or wrong token) | 401 |
//! | `FORBIDDEN` (read-only token, changing route) | 403 |
//! | `BAD_REQUEST` (query, selector or path not understood), `INVALID_MESSAGE` (body not JSON) | 400 |
//! | `NOT_FOUND` (no such route), `UNKNOWN_AGENT`, `NO_CONNECTED_AGENTS` | 404 |
//! | `METHOD_NOT_ALLOWED` | 405 |
//! | `AGENT_NOT_CONNECTED` | 409 |
//! | `REVOKED` | 410 |
//! | `PAYLOAD_TOO_LARGE` | 413 |
//! | `BUSY` | 429 |
//! | the agent's own error, with `"remote": true` | 502 |
//! | `CONNECTION_CLOSED` (the agent left during the call) | 502 |
//! | `UNSUPPORTED` (the agent does not take notifications) | 501 |
//! | `SHUTDOWN` | 503 |
//! | `TIMEOUT` | 504 |
//! | `STORE`, `INTERNAL_ERROR` and anything else | 500 |

use agent_protocol::{codes, Error};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Codes of the API's own errors, beside those of [`agent_protocol::codes`].
pub mod api_codes {
    /// No token, or a wrong one.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// A read-only token on a route that changes something.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// A query parameter or path segment that is not understood.
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// No such route.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The route exists, not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    /// The request body is larger than the limit.
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
}

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// True when the agent itself answered with this error.
    pub remote: bool,
    /// The data of an agent's error, if any.
    pub data: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            remote: false,
            data: None,
        }
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            api_codes::UNAUTHORIZED,
            "a valid bearer token is required",
        )
    }

    pub(crate) fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            api_codes::FORBIDDEN,
            "this token may only read",
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, api_codes::BAD_REQUEST, message)
    }

    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, api_codes::NOT_FOUND, "no such route")
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            api_codes::METHOD_NOT_ALLOWED,
            "this route does not take that method",
        )
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            api_codes::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes"),
        )
    }

    /// The error object as it appears in bodies and in per-agent results.
    pub fn body(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if self.remote {
            e["remote"] = Value::Bool(true);
        }
        if let Some(data) = &self.data {
            e["data"] = data.clone();
        }
        e
    }
}

/// The HTTP status of a library error code.
pub fn status_of(err: &Error) -> StatusCode {
    if let Error::Remote(e) = err {
        // Busy is the agent's link refusing more work, not the hook's answer.
        return if e.code == codes::BUSY {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::BAD_GATEWAY
        };
    }
    match err.code() {
        codes::INVALID_MESSAGE => StatusCode::BAD_REQUEST,
        codes::UNKNOWN_AGENT | codes::NO_CONNECTED_AGENTS => StatusCode::NOT_FOUND,
        codes::AGENT_NOT_CONNECTED => StatusCode::CONFLICT,
        codes::REVOKED => StatusCode::GONE,
        codes::BUSY => StatusCode::TOO_MANY_REQUESTS,
        codes::CONNECTION_CLOSED => StatusCode::BAD_GATEWAY,
        codes::SHUTDOWN => StatusCode::SERVICE_UNAVAILABLE,
        codes::UNSUPPORTED => StatusCode::NOT_IMPLEMENTED,
        codes::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = status_of(&err);
        match err {
            Error::Remote(e) => ApiError {
                status,
                code: e.code,
                message: e.message,
                remote: true,
                data: e.data,
            },
            other => ApiError::new(status, other.code(), other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.body() }))).into_response()
    }
}
