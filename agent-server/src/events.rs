//! Events the server reports to the application.

use std::net::SocketAddr;

use agent_protocol::CloseReason;

use crate::agent::Agent;

/// Something that happened to an agent's connection.
///
/// Received through [`crate::AgentServer::events`]; a receiver that falls
/// more than the channel's capacity behind skips the oldest events.
///
/// Each connection is reported once connected and once disconnected, in the
/// order the server's list of agents changed: when a reconnect replaces an
/// agent's stale link, the old connection's `AgentDisconnected` comes before
/// the new one's `AgentConnected`. [`Agent::connection_id`] tells two
/// connections of one name apart.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// An agent finished its handshake and is live.
    AgentConnected(Agent),
    /// An agent's connection ended, or was taken out of the server's list
    /// (disconnected, revoked, or replaced by the agent's reconnect), and
    /// why.
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
