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
    /// The server no longer knew the agent's stored identity (it was
    /// restarted with an empty store, say), so the agent dropped it and took
    /// a new one: an assigned name, or its chosen name under a fresh token.
    /// Sent once the new name is granted, before `Ready`; the new identity is
    /// in the store by then (unless saving failed: see `Error(STORE)`).
    ///
    /// `old` and `new` may be the same text: a server that lost its store
    /// counts from the start again, and a chosen name comes back as itself.
    /// Either way the server treats the agent as new (`first_time`).
    Renamed {
        /// The name the server no longer knew.
        old: String,
        /// The name the agent has now.
        new: String,
    },
    /// The link went down, and why.
    Disconnected(CloseReason),
    /// A connection attempt or the link failed, or the store could not save
    /// the agent's identity (`STORE`).
    Error(Error),
    /// The client stopped reconnecting: retries ran out, or the server
    /// refused it for good (`REVOKED`, a chosen name that is `NAME_TAKEN`, or
    /// over `wss://` also `WRONG_SECRET`, …; see the README's "Reconnect with
    /// backoff" for when a refusal is trusted to be final). `send` returns
    /// `OFFLINE`.
    GaveUp(Error),
}
