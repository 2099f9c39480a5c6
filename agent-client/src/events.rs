//! Events the client reports to the application.

use agent_protocol::{CloseReason, Error};

/// Something that happened to the client's connection.
///
/// Received through [`crate::AgentClient::events`]; a receiver that falls more
/// than the channel's capacity behind skips the oldest events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The WebSocket is open; the handshake starts.
    Connected,
    /// The handshake succeeded: the client is ready under `name`.
    Ready {
        /// The agent's name.
        name: String,
        /// True when the server gave the name just now.
        first_time: bool,
    },
    /// Ready again after a reconnect, under `name`.
    Reconnected {
        /// The agent's name.
        name: String,
    },
    /// The link went down, and why.
    Disconnected(CloseReason),
    /// A connection attempt or the link failed.
    Error(Error),
    /// The client stopped reconnecting: retries ran out, or the server refused
    /// it for good (`WRONG_SECRET`, `REVOKED`, …). `send` returns `OFFLINE`.
    GaveUp(Error),
}
