//! agent-tunnel-admin: the HTTP API of an agent-tunnel server, for operators
//! and for programs in any language.
//!
//! [`router`] returns an axum [`Router`](axum::Router) over an
//! [`AgentServer`]: mount it into your own axum
//! server, or run it with [`serve`]. The `agent-tunnel` binary does the
//! latter. Layout: [`auth`] (bearer tokens), [`error`] (JSON errors and
//! their HTTP statuses), `routes` (the handlers), [`metrics`] (Prometheus
//! text), `openapi` (the description at `/v1/openapi.json`), [`client`]
//! (a small client for this API, used by the binary).
//!
//! Every route but `/healthz` and `/readyz` requires
//! `Authorization: Bearer <token>`; a read-only token may use `GET` routes
//! only. JSON bodies of requests are limited to
//! [`AdminConfig::max_body_bytes`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_tunnel_admin::{router, AdminConfig};
//! let server = agent_server::AgentServer::builder().secret("s3cret").start("127.0.0.1:0").await?;
//! let app = router(server, AdminConfig::new("admin-token"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! agent_tunnel_admin::serve(listener, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod error;
pub mod metrics;
mod openapi;
mod routes;

use std::future::Future;
use std::sync::Arc;

use agent_server::AgentServer;

pub use auth::Token;
pub use error::ApiError;

/// Largest request body by default: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Settings of the HTTP API.
///
/// `Debug` never shows the tokens.
#[derive(Clone)]
#[must_use]
pub struct AdminConfig {
    pub(crate) token: Token,
    pub(crate) read_only_token: Option<Token>,
    pub(crate) max_body_bytes: usize,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field(
                "read_only_token",
                &self.read_only_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl AdminConfig {
    /// The API with `token` as the token of full access, no read-only token
    /// and the default body limit ([`DEFAULT_MAX_BODY_BYTES`]).
    pub fn new(token: impl Into<Token>) -> Self {
        AdminConfig {
            token: token.into(),
            read_only_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// A second token that may use the `GET` routes only (default: none).
    pub fn read_only_token(mut self, token: impl Into<Token>) -> Self {
        self.read_only_token = Some(token.into());
        self
    }

    /// Largest request body, in bytes (default [`DEFAULT_MAX_BODY_BYTES`]);
    /// a larger one is refused with 413 `PAYLOAD_TOO_LARGE`.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub(crate) server: AgentServer,
    pub(crate) config: AdminConfig,
    pub(crate) started: std::time::Instant,
}

/// The API's routes over `server`, ready to serve or to nest into another
/// axum router.
pub fn router(server: AgentServer, config: AdminConfig) -> axum::Router {
    routes::router(Arc::new(State {
        server,
        config,
        started: std::time::Instant::now(),
    }))
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
