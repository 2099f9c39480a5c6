//! Bearer tokens: which requests may pass, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::State;

/// An API token. `Debug` never shows it.
///
/// Kept as its SHA-256 digest, so comparing takes the same time whatever
/// the length or content of the token a request presents.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    /// The token of this text.
    pub fn new(token: &str) -> Self {
        Token(Sha256::digest(token.as_bytes()).into())
    }

    /// True when `presented` is this token, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl From<&str> for Token {
    fn from(t: &str) -> Self {
        Token::new(t)
    }
}

impl From<String> for Token {
    fn from(t: String) -> Self {
        Token::new(&t)
    }
}

/// What a request's token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Full,
    ReadOnly,
}

/// Middleware: 401 `UNAUTHORIZED` without a valid token, 403 `FORBIDDEN`
/// for a read-only token on a route that changes something.
pub(crate) async fn require_token(
    AxState(state): AxState<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let access = presented.and_then(|t| {
        let config = &state.config;
        // Both compared whatever the first gave, so timing shows nothing.
        let full = config.token.matches(t);
        let read = config
            .read_only_token
            .as_ref()
            .is_some_and(|r| r.matches(t));
        match (full, read) {
            (true, _) => Some(Access::Full),
            (false, true) => Some(Access::ReadOnly),
            _ => None,
        }
    });
    match access {
        None => ApiError::unauthorized().into_response(),
        Some(Access::ReadOnly) if req.method() != Method::GET => {
            ApiError::forbidden().into_response()
        }
        Some(_) => next.run(req).await,
    }
}
