//! Agent-to-agent calls through the server: the reserved action an agent
//! calls and the body it sends (see `docs/PROTOCOL.md` §5.5).
//!
//! An agent asks the server to call hook `action` on agent `to` by sending
//! an ordinary `req` for [`RELAY_ACTION`] with a [`RelayRequest`] body. The
//! server relays it only when its relay policy allows (by default it allows
//! nothing: `FORBIDDEN`), and the callee's `req` carries the caller's name
//! in its `from` member. The callee's answer comes back unchanged.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The action an agent calls to have the server relay a call. The `@` keeps
/// it apart from the actions applications name; the server serves it itself,
/// before and instead of any hook, so applications must not use it.
pub const RELAY_ACTION: &str = "@relay";

/// The body of a [`RELAY_ACTION`] request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayRequest {
    /// The name of the agent to call.
    pub to: String,
    /// The hook to run on that agent.
    pub action: String,
    /// The body of that call, forwarded byte for byte.
    pub body: Box<RawValue>,
    /// How long the caller waits, in milliseconds; the server's default call
    /// timeout when absent. The server's own cap on hook time bounds it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}
