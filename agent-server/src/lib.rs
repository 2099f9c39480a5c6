//! agent-server: the control plane's end of agent-tunnel.
//!
//! An [`AgentServer`] listens for agents over WebSocket, authenticates each
//! with a challenge-response over a shared secret (the secret never crosses
//! the wire), gives it a name from a format such as `A####`, and from then on
//! either side calls the other's hooks: [`AgentServer::send_to`] one agent,
//! [`AgentServer::send_all`] every agent at once, each call ending in a
//! response, an error or its timeout.
//!
//! # Layout
//!
//! * [`config`]: the builder and its defaults.
//! * `server`: the accept loop, calls, events and shutdown.
//! * `connection`: one connection from upgrade to close, in its own task.
//! * `handshakes`: the bound on connections not authenticated yet, per
//!   source and in all, with fair eviction.
//! * `first_message`: the handshake's small message limit.
//! * `names`: which names were given, persisted in a [`NameStore`].
//! * `binds`: how a retried first-time grant is recognised.
//! * `registry`: the connected agents by name, with (under its lock):
//!   * `index`: the connected agents by label, for selectors;
//!   * `waiters`: the callers waiting for agents to connect.
//! * `admission`: the application's admission hook ([`AdmitInfo`]).
//! * [`Agent`]: the handle on one connected agent, with its labels.
//! * `selection`: calls to the agents a [`Selector`] selects
//!   ([`Selection`], [`CallEach`]).
//! * `online`: waiting for agents ([`AgentServer::wait_for`],
//!   [`CallBuilder::when_online`]).
//!
//! The request/response machinery itself is the Link of `agent-protocol`,
//! shared with `agent-client`.
//!
//! ```no_run
//! use agent_server::{AgentServer, HookError, ServerEvent};
//! use tokio::sync::broadcast::error::RecvError;
//!
//! # async fn demo() -> Result<(), agent_server::Error> {
//! let server = AgentServer::builder().secret("s3cret").start("0.0.0.0:7800").await?;
//! server.on_hook("hello", |who: String, call| async move {
//!     Ok::<_, HookError>(format!("hello {who}, you are {}", call.peer.name()))
//! });
//! let mut events = server.events();
//! loop {
//!     match events.recv().await {
//!         Ok(ServerEvent::AgentConnected(agent)) => {
//!             let up: u64 = agent.send("uptime", &()).await?;
//!             println!("{} is up for {up} s", agent.name());
//!         }
//!         Ok(_) => {}
//!         // A receiver that fell behind skipped some events; it goes on.
//!         Err(RecvError::Lagged(skipped)) => tracing::warn!(skipped, "events skipped"),
//!         Err(RecvError::Closed) => break,
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod admission;
mod agent;
mod binds;
pub mod config;
mod connection;
mod events;
mod first_message;
mod handshakes;
mod index;
mod names;
mod online;
mod registry;
mod selection;
mod server;
mod tls;
mod waiters;

pub use admission::{AdmitInfo, NotAdmitted};
pub use agent::Agent;
pub use config::ServerBuilder;
pub use events::{HandshakeFailure, ServerEvent};
pub use online::CallBuilder;
pub use selection::{CallEach, Selection};
pub use server::{AgentServer, ServerStats, Target};

pub use agent_protocol::store::{StoreError, StoreFuture};

pub use agent_protocol::{
    close, codes, Call, CallHandle, Canceller, Caps, CloseReason, Error, FileStore, Handler,
    HookError, Hooks, LabelError, Labels, LinkConfig, MemoryStore, NameStore, Secret, Selector,
    SelectorError,
};
/// The rustls crate this crate's TLS builders take (`ServerConfig`,
/// `ClientConfig`, certificate types), re-exported so a hand-built TLS
/// configuration always matches the version in use.
pub use tokio_rustls::rustls;

/// A DER certificate, as [`Agent::peer_certificates`] returns them.
pub use tokio_rustls::rustls::pki_types::CertificateDer;
