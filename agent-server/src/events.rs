//! Events the server reports to the application.

use std::net::SocketAddr;

use agent_protocol::CloseReason;

use crate::agent::Agent;

/// Something that happened to an agent's connection.
///
/// Received through [`crate::AgentServer::events`]; a receiver that falls
/// more than the channel's capacity behind skips the oldest events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// An agent finished its handshake and is live.
    AgentConnected(Agent),
    /// An agent's link ended, and why.
    AgentDisconnected(Agent, CloseReason),
    /// A connection failed its handshake; `code` is the reject code (e.g.
    /// `WRONG_SECRET`) or `HANDSHAKE_TIMEOUT`, `PROTOCOL_ERROR`, `TRANSPORT`.
    HandshakeFailed {
        /// Where the connection came from.
        peer_addr: SocketAddr,
        /// Why it failed.
        code: String,
    },
}
