//! Errors and their stable string codes.
//!
//! One enum, [`Error`], serves both sides: every call, handshake and
//! configuration failure maps to a variant whose [`Error::code`] is a stable
//! string that callers may match on. Application errors raised by a hook
//! travel as a [`HookError`] and keep the handler's own code, message and data.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::close::CloseReason;

/// Stable error codes. A hook may use any code of its own; these are the
/// library's.
pub mod codes {
    /// The call got no response within its timeout.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// No hook is registered for the action on the remote side.
    pub const UNKNOWN_ACTION: &str = "UNKNOWN_ACTION";
    /// The server never gave this name.
    pub const UNKNOWN_AGENT: &str = "UNKNOWN_AGENT";
    /// The name is known but the agent is offline.
    pub const AGENT_NOT_CONNECTED: &str = "AGENT_NOT_CONNECTED";
    /// `send_all` found no connected agent.
    pub const NO_CONNECTED_AGENTS: &str = "NO_CONNECTED_AGENTS";
    /// The client has no live link to the server.
    pub const OFFLINE: &str = "OFFLINE";
    /// Too many requests in flight on the link.
    pub const BUSY: &str = "BUSY";
    /// A body failed to (de)serialize as the expected type.
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    /// A hook panicked or the library hit an internal fault.
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    /// The link closed while the call was in flight.
    pub const CONNECTION_CLOSED: &str = "CONNECTION_CLOSED";
    /// The peer's proof of the shared secret is wrong.
    pub const WRONG_SECRET: &str = "WRONG_SECRET";
    /// The name is held by a live connection already.
    pub const DUPLICATE_ID: &str = "DUPLICATE_ID";
    /// The name was given to another agent; the claim does not prove its token.
    pub const NAME_TAKEN: &str = "NAME_TAKEN";
    /// The requested name is not acceptable (syntax, or reserved by the name format).
    pub const INVALID_NAME: &str = "INVALID_NAME";
    /// The name has been revoked by the server.
    pub const REVOKED: &str = "REVOKED";
    /// The server's admission check refused the agent.
    pub const NOT_ADMITTED: &str = "NOT_ADMITTED";
    /// The handshake did not finish before its deadline.
    pub const HANDSHAKE_TIMEOUT: &str = "HANDSHAKE_TIMEOUT";
    /// The server could not prove that it knows the shared secret.
    pub const SERVER_UNVERIFIED: &str = "SERVER_UNVERIFIED";
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: &str = "PROTOCOL_ERROR";
    /// The peer speaks another protocol version.
    pub const UNSUPPORTED_VERSION: &str = "UNSUPPORTED_VERSION";
    /// The network, WebSocket or TLS layer failed.
    pub const TRANSPORT: &str = "TRANSPORT";
    /// The configuration is invalid.
    pub const CONFIG: &str = "CONFIG";
    /// The name store failed to load or save.
    pub const STORE: &str = "STORE";
    /// The server is shutting down or the client was closed.
    pub const SHUTDOWN: &str = "SHUTDOWN";
    /// The caller cancelled the call: the peer stopped serving it.
    pub const CANCELLED: &str = "CANCELLED";
    /// The peer does not support what was asked (it did not announce the
    /// capability, e.g. `note` for a notification).
    pub const UNSUPPORTED: &str = "UNSUPPORTED";
}

/// An application error: returned by a hook, carried in `res.err`, received
/// by the caller as [`Error::Remote`].
///
/// ```
/// use agent_protocol::HookError;
/// let e = HookError::new("NOT_FOUND", "no such job").with_data(serde_json::json!({"job": 7}));
/// assert_eq!(e.code, "NOT_FOUND");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookError {
    /// Stable code, the library's own (`UNKNOWN_ACTION`, …) or the handler's.
    pub code: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// Optional structured detail from the handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl HookError {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HookError {
            code: code.into(),
            message: message.into(),
            data: None,
        }
    }

    /// Attaches structured detail.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// An `INTERNAL_ERROR` carrying `err`'s text.
    pub fn internal(err: impl fmt::Display) -> Self {
        HookError::new(codes::INTERNAL_ERROR, err.to_string())
    }

    /// An `INVALID_MESSAGE` carrying `err`'s text.
    pub fn invalid_message(err: impl fmt::Display) -> Self {
        HookError::new(codes::INVALID_MESSAGE, err.to_string())
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HookError {}

/// A hook that calls onward can pass the failure back with `?`: a remote
/// error keeps its own code, message and data; any other error becomes a
/// `HookError` with the error's stable code and text (`TIMEOUT`,
/// `AGENT_NOT_CONNECTED`, …).
///
/// ```
/// use agent_protocol::{Error, HookError};
/// let onward = Error::Remote(HookError::new("DISK_FULL", "no space left"));
/// let e: HookError = onward.into();
/// assert_eq!((e.code.as_str(), e.message.as_str()), ("DISK_FULL", "no space left"));
///
/// let e: HookError = Error::Timeout(std::time::Duration::from_secs(1)).into();
/// assert_eq!(e.code, "TIMEOUT");
/// ```
impl From<Error> for HookError {
    fn from(e: Error) -> Self {
        match e {
            Error::Remote(remote) => remote,
            other => HookError::new(other.code(), other.to_string()),
        }
    }
}

/// A body or value that does not (de)serialize: `INVALID_MESSAGE`.
impl From<serde_json::Error> for HookError {
    fn from(e: serde_json::Error) -> Self {
        HookError::invalid_message(e)
    }
}

/// A failed file, process or socket operation inside a hook:
/// `INTERNAL_ERROR` with the error's text.
impl From<std::io::Error> for HookError {
    fn from(e: std::io::Error) -> Self {
        HookError::internal(e)
    }
}

/// Every failure agent-tunnel reports.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No response arrived within the call's timeout (`TIMEOUT`).
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The remote side answered with an error: a hook's own, or the library's
    /// `UNKNOWN_ACTION`, `INVALID_MESSAGE`, `INTERNAL_ERROR` or `BUSY`.
    #[error("remote error {0}")]
    Remote(HookError),
    /// No agent was ever given this name (`UNKNOWN_AGENT`).
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The name is known, but its agent is offline (`AGENT_NOT_CONNECTED`).
    #[error("agent {0:?} is not connected")]
    AgentNotConnected(String),
    /// The server revoked this name: no agent of it is, or will be,
    /// connected (`REVOKED`). The handshake's refusal of a revoked name is
    /// [`Error::Rejected`] with the same code.
    #[error("agent {0:?} is revoked")]
    Revoked(String),
    /// `send_all` found no connected agent (`NO_CONNECTED_AGENTS`).
    #[error("no agent is connected")]
    NoConnectedAgents,
    /// The client has no live link (`OFFLINE`).
    #[error("offline: no link to the server")]
    Offline,
    /// The link already carries its maximum of requests in flight (`BUSY`).
    #[error("too many requests in flight on this link")]
    Busy,
    /// A body failed to serialize or deserialize (`INVALID_MESSAGE`).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The link closed while the call was in flight (`CONNECTION_CLOSED`).
    #[error("connection closed: {0}")]
    ConnectionClosed(CloseReason),
    /// The server refused the handshake; `code` says why (`WRONG_SECRET`,
    /// `DUPLICATE_ID`, `NAME_TAKEN`, `INVALID_NAME`, `REVOKED`, …).
    #[error("handshake rejected: {code}: {message}")]
    Rejected {
        /// Stable code from the `reject` frame.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server's proof of the shared secret did not verify
    /// (`SERVER_UNVERIFIED`).
    #[error("the server could not prove it knows the shared secret")]
    ServerUnverified,
    /// The handshake did not finish before its deadline (`HANDSHAKE_TIMEOUT`).
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer broke the protocol (`PROTOCOL_ERROR`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The network, WebSocket or TLS layer failed (`TRANSPORT`).
    #[error("transport error: {0}")]
    Transport(String),
    /// The configuration is invalid (`CONFIG`).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The name store failed (`STORE`).
    #[error("name store: {0}")]
    Store(String),
    /// The server is shutting down, or the client was closed (`SHUTDOWN`).
    #[error("shut down")]
    Shutdown,
    /// The call was cancelled with [`CallHandle::cancel`](crate::link::CallHandle::cancel)
    /// (`CANCELLED`): the peer confirmed that it stopped serving it, or it
    /// had not been sent yet, or the peer cannot be told (no `cancel`
    /// capability).
    #[error("cancelled")]
    Cancelled,
    /// The peer does not support what was asked (`UNSUPPORTED`): it did not
    /// announce the capability, e.g. `note` for a notification to a peer
    /// written before notifications. The text names the capability.
    #[error("not supported by the peer: {0}")]
    Unsupported(String),
}

impl Error {
    /// The stable string code of this error.
    ///
    /// ```
    /// use agent_protocol::Error;
    /// assert_eq!(Error::Offline.code(), "OFFLINE");
    /// ```
    pub fn code(&self) -> &str {
        match self {
            Error::Timeout(_) => codes::TIMEOUT,
            Error::Remote(e) => &e.code,
            Error::UnknownAgent(_) => codes::UNKNOWN_AGENT,
            Error::AgentNotConnected(_) => codes::AGENT_NOT_CONNECTED,
            Error::Revoked(_) => codes::REVOKED,
            Error::NoConnectedAgents => codes::NO_CONNECTED_AGENTS,
            Error::Offline => codes::OFFLINE,
            Error::Busy => codes::BUSY,
            Error::InvalidMessage(_) => codes::INVALID_MESSAGE,
            Error::ConnectionClosed(_) => codes::CONNECTION_CLOSED,
            Error::Rejected { code, .. } => code,
            Error::ServerUnverified => codes::SERVER_UNVERIFIED,
            Error::HandshakeTimeout(_) => codes::HANDSHAKE_TIMEOUT,
            Error::Protocol(_) => codes::PROTOCOL_ERROR,
            Error::Transport(_) => codes::TRANSPORT,
            Error::Config(_) => codes::CONFIG,
            Error::Store(_) => codes::STORE,
            Error::Shutdown => codes::SHUTDOWN,
            Error::Cancelled => codes::CANCELLED,
            Error::Unsupported(_) => codes::UNSUPPORTED,
        }
    }

    /// The application error, when the remote side answered with one.
    pub fn remote(&self) -> Option<&HookError> {
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::Transport(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Transport(e.to_string())
    }
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
