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
//! * `names`: which names were given, persisted in a [`NameStore`].
//! * `binds`: how a retried first-time grant is recognised.
//! * `registry`: the connected agents by name.
//! * [`Agent`]: the handle on one connected agent.
//!
//! The request/response machinery itself is the Link of `agent-protocol`,
//! shared with `agent-client`.
//!
//! ```no_run
//! use agent_server::{AgentServer, HookError, ServerEvent};
//!
//! # async fn demo() -> Result<(), agent_server::Error> {
//! let server = AgentServer::builder().secret("s3cret").start("0.0.0.0:7800").await?;
//! server.on_hook("hello", |who: String, call| async move {
//!     Ok::<_, HookError>(format!("hello {who}, you are {}", call.peer.name()))
//! });
//! let mut events = server.events();
//! while let Ok(event) = events.recv().await {
//!     if let ServerEvent::AgentConnected(agent) = event {
//!         let up: u64 = agent.send("uptime", &()).await?;
//!         println!("{} is up for {up} s", agent.name());
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod agent;
mod binds;
pub mod config;
mod connection;
mod events;
mod names;
mod registry;
mod server;
mod tls;

pub use agent::Agent;
pub use config::ServerBuilder;
pub use events::ServerEvent;
pub use server::{AgentServer, ServerStats, Target};

pub use agent_protocol::store::{StoreError, StoreFuture};
pub use agent_protocol::{
    close, codes, Call, CloseReason, Error, FileStore, Handler, HookError, Hooks, LinkConfig,
    MemoryStore, NameStore, Secret,
};
