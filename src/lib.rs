//! agent-tunnel: a secured, promise-style command tunnel between a control
//! plane and many agents over WebSocket.
//!
//! This crate re-exports both sides: [`server`] (the `agent-server` crate, for
//! the control plane) and [`client`] (the `agent-client` crate, for agents),
//! plus [`protocol`] (`agent-protocol`, what both share). Depend on the side
//! you need directly, or on this crate for both.
//!
//! ```no_run
//! use agent_tunnel::client::AgentClient;
//! use agent_tunnel::server::AgentServer;
//! use agent_tunnel::HookError;
//!
//! # async fn demo() -> Result<(), agent_tunnel::Error> {
//! let server = AgentServer::builder().secret("s3cret").start("127.0.0.1:0").await?;
//! let url = format!("ws://{}", server.local_addr());
//! let agent = AgentClient::builder(&url, "s3cret")
//!     .on_hook("add", |(a, b): (i64, i64), _call| async move { Ok::<_, HookError>(a + b) })
//!     .connect()
//!     .await?;
//! let name = agent.name().unwrap_or_default();
//! let sum: i64 = server.send_to(name.as_str(), "add", &(2, 3)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub use agent_client as client;
pub use agent_protocol as protocol;
pub use agent_server as server;

/// The rustls crate the TLS builders of both sides take, re-exported so a
/// hand-built `ServerConfig` or `ClientConfig` matches the version in use:
/// `agent_tunnel::rustls::ClientConfig`.
pub use agent_server::rustls;

pub use agent_protocol::{
    codes, Call, CallHandle, CallStream, Canceller, Caps, CloseReason, Error, Event, FileStore,
    HookError, ItemSink, MemoryStore, NameStore, StreamOptions,
};
