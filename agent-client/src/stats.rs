//! [`ClientStats`]: what [`AgentClient::stats`](crate::AgentClient::stats)
//! reports about the current link.

/// A snapshot of an agent's current link, from
/// [`AgentClient::stats`](crate::AgentClient::stats). All zero while there
/// is no link. Totals since start are in
/// [`AgentClient::counters`](crate::AgentClient::counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// True while the client has a live, authenticated link.
    pub connected: bool,
    /// Calls to the server waiting for a response.
    pub pending_requests: usize,
    /// Calls from the server this agent is serving now.
    pub serving_requests: usize,
    /// Hook tasks alive (hooks that did not finish at once).
    pub running_hooks: usize,
    /// Bytes of frames waiting to be written to the server.
    pub queued_bytes: usize,
}
