//! agent-client: the agent's end of agent-tunnel.
//!
//! An [`AgentClient`] dials the control plane over WebSocket (`ws://`, or
//! `wss://` with rustls), proves the shared secret without sending it, checks
//! that the server knows it too, and keeps the name the server gives it (with
//! its token) in a [`NameStore`]. It serves the server's calls with hooks and
//! calls the server's hooks with [`AgentClient::send`]; when the link drops it
//! reconnects with exponential backoff and full jitter and comes back under
//! the same name (or takes a new one, [`ClientEvent::Renamed`], when the
//! server lost its names). It gives up only on refusals it can trust: a
//! `reject` the server proved, or anything received over `wss://`.
//!
//! # Layout
//!
//! * [`config`]: the builder and its defaults.
//! * `client`: the handle and the supervisor task that owns the lifecycle.
//! * `dial`: one connection attempt (TCP, TLS, upgrade, handshake).
//! * [`Backoff`]: reconnect delays.
//! * `identity`: the stored name and token.
//! * `verdict`: which failed attempts are retried, which are final, and
//!   when a stale identity is dropped for a new one.
//! * [`ServerHandle`]: what hooks receive as their peer.
//!
//! ```no_run
//! use agent_client::{AgentClient, ClientEvent, HookError};
//! use tokio::sync::broadcast::error::RecvError;
//!
//! # async fn demo() -> Result<(), agent_client::Error> {
//! let client = AgentClient::builder("ws://control-plane:7800", "s3cret")
//!     .on_hook("restart", |service: String, _call| async move {
//!         // ... restart it ...
//!         Ok::<_, HookError>(format!("{service} restarted"))
//!     })
//!     .connect()
//!     .await?;
//! let mut events = client.events();
//! loop {
//!     match events.recv().await {
//!         Ok(ClientEvent::Reconnected { name }) => tracing::info!(%name, "back online"),
//!         Ok(_) => {}
//!         // A receiver that fell behind skipped some events; it goes on.
//!         Err(RecvError::Lagged(skipped)) => tracing::warn!(skipped, "events skipped"),
//!         Err(RecvError::Closed) => break,
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backoff;
mod client;
pub mod config;
mod dial;
mod events;
mod identity;
mod peer;
mod stats;
mod tls;
mod verdict;

pub use backoff::Backoff;
pub use client::AgentClient;
pub use config::ClientBuilder;
pub use events::ClientEvent;
pub use peer::ServerHandle;
pub use stats::ClientStats;

pub use agent_protocol::store::{StoreError, StoreFuture};

pub use agent_protocol::{
    close, codes, Call, CallHandle, Canceller, Caps, CloseReason, Error, FileStore, Handler,
    HookError, Hooks, LinkConfig, MemoryStore, NameStore, Secret,
};
/// The rustls crate this crate's TLS builders take (`ServerConfig`,
/// `ClientConfig`, certificate types), re-exported so a hand-built TLS
/// configuration always matches the version in use.
pub use tokio_rustls::rustls;
