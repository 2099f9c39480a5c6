//! Events the server reports to the application: the lifecycle of agents,
//! and, on a channel of their own, failed handshakes.

use std::net::SocketAddr;

use agent_protocol::CloseReason;

use crate::agent::Agent;

/// Something that happened to an agent's connection: only authenticated
/// agents cause these.
///
/// Received through [`crate::AgentServer::events`]; a receiver that falls
/// more than the channel's capacity (4096) behind skips the oldest events.
/// Connections that fail their handshake are reported apart, as
/// [`HandshakeFailure`]s.
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
}

/// A connection that failed its handshake, from
/// [`crate::AgentServer::handshake_failures`].
///
/// These are kept apart from [`ServerEvent`]: any peer can cause them at will,
/// and they must never push a lifecycle event out of a receiver's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeFailure {
    /// Where the connection came from.
    pub peer_addr: SocketAddr,
    /// Why it failed: the `reject` code (`WRONG_SECRET`, `NAME_TAKEN`, …);
    /// `PROTOCOL_ERROR` for a message that broke the protocol (close 4000,
    /// 1007 or 1009); `HANDSHAKE_TIMEOUT` when the upgrade or the handshake
    /// deadline passed; `TRANSPORT` when TLS or the upgrade failed or the
    /// connection was lost; `BUSY` when the connection was evicted before
    /// its upgrade to make room for another source (see
    /// [`ServerBuilder::max_pending_handshakes`](crate::ServerBuilder::max_pending_handshakes));
    /// `SHUTDOWN` when the server stopped first.
    pub code: &'static str,
}
