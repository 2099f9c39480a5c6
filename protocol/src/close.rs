//! WebSocket close codes and the reason a link ended.
//!
//! agent-tunnel uses the standard codes for normal closes (1000), shutdown
//! (1001) and oversized messages (1009), and one documented 4xxx code per
//! reason of its own.

use std::fmt;

/// Normal close: the peer is done (client `close()`).
pub const NORMAL: u16 = 1000;
/// Going away: the server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// A message exceeded the maximum message size.
pub const TOO_BIG: u16 = 1009;
/// The server failed internally (e.g. its name store could not save).
pub const INTERNAL_ERROR: u16 = 1011;
/// The peer broke the protocol: invalid JSON or UTF-8, unknown frame type, a
/// frame out of order (e.g. before authentication), a binary frame.
pub const PROTOCOL_ERROR: u16 = 4000;
/// The proof of the shared secret failed (`WRONG_SECRET`).
pub const AUTH_FAILED: u16 = 4001;
/// A signed frame failed verification: forged, replayed, reordered, dropped.
pub const BAD_SIGNATURE: u16 = 4002;
/// The name is held by a live connection (`DUPLICATE_ID`).
pub const DUPLICATE_ID: u16 = 4003;
/// The name was refused: taken without its token, or invalid.
pub const NAME_REFUSED: u16 = 4004;
/// The handshake did not finish before its deadline.
pub const HANDSHAKE_TIMEOUT: u16 = 4005;
/// The server disconnected the agent on purpose; the reason text says why.
pub const FORCED_DISCONNECT: u16 = 4006;
/// The agent's name is revoked: it must not come back under it.
pub const REVOKED: u16 = 4007;
/// The peer speaks another protocol version.
pub const UNSUPPORTED_VERSION: u16 = 4008;
/// The peer missed too many pongs and is presumed dead.
pub const HEARTBEAT_TIMEOUT: u16 = 4009;
/// The server has too many connections waiting to authenticate.
pub const OVERLOADED: u16 = 4010;
/// The peer does not read: the link's outbound queue stayed full, the peer
/// taking none of it, for `LinkConfig::drain_timeout`.
pub const NOT_READING: u16 = 4011;
/// The server's admission check refused the agent (`NOT_ADMITTED`); the
/// reason text says why.
pub const NOT_ADMITTED: u16 = 4012;

/// Who ended a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// This side closed the link.
    Local,
    /// The peer closed the link, or the connection broke.
    Remote,
}

/// Why a link ended: a close code, its text, and who closed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code (1006 when the connection broke without a close).
    pub code: u16,
    /// The close text.
    pub reason: String,
    /// Who ended the link.
    pub initiator: Initiator,
}

/// Code for a connection that ended without a close frame.
pub const ABNORMAL: u16 = 1006;

impl CloseReason {
    /// A close this side initiates.
    pub fn local(code: u16, reason: impl Into<String>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
            initiator: Initiator::Local,
        }
    }

    /// A close the peer initiated, or a broken connection.
    pub fn remote(code: u16, reason: impl Into<String>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
            initiator: Initiator::Remote,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.initiator {
            Initiator::Local => "closed locally",
            Initiator::Remote => "closed by peer",
        };
        if self.reason.is_empty() {
            write!(f, "{who} with code {}", self.code)
        } else {
            write!(f, "{who} with code {}: {}", self.code, self.reason)
        }
    }
}

/// Longest close reason, in bytes: a close frame's payload is at most 125
/// bytes, two of them the code (RFC 6455 §5.5).
pub const MAX_REASON_LEN: usize = 123;

/// `reason` cut to [`MAX_REASON_LEN`] bytes at a character boundary, so the
/// close frame carrying it stays valid.
///
/// ```
/// use agent_protocol::close::{truncate_reason, MAX_REASON_LEN};
/// assert_eq!(truncate_reason("short"), "short");
/// assert!(truncate_reason(&"é".repeat(100)).len() <= MAX_REASON_LEN);
/// ```
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
