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
    /// The server refused the agent's stored identity with a trusted
    /// `NAME_TAKEN` or `INVALID_NAME` (it was restarted with an empty store,
    /// say), so the agent dropped it, also from its store, and took a new
    /// one: an assigned name, or the name chosen with
    /// [`ClientBuilder::name`](crate::ClientBuilder::name) asked for again
    /// without the stale token. Sent once the new name is granted, before
    /// `Ready`; the new identity is in the store by then (unless saving
    /// failed: see `Error(STORE)`).
    ///
    /// `old` and `new` may be the same text: a server that lost its store
    /// counts from the start again. Either way the server treats the agent
    /// as new (`Ready { first_time: true }`). A chosen name the server does
    /// not know is granted again under a fresh token without a refusal, so
    /// without `Renamed`.
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
