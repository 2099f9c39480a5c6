//! The frames of wire protocol v1 (see `docs/PROTOCOL.md`).
//!
//! Every frame is one JSON object in one WebSocket text message, tagged by its
//! `t` field. Bodies are kept as [`RawValue`] so that a body is parsed once, by
//! the handler that knows its type, and forwarded byte for byte otherwise.
//! Decoding lives in [`crate::codec`]; this module only describes the shapes.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use crate::error::HookError;

/// Protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket subprotocol both sides must negotiate.
pub const SUBPROTOCOL: &str = "agent-tunnel.v1";

/// A request id, chosen by the side that sends the request. Each side numbers
/// its own requests; a response is matched only on the link it arrived on.
pub type RequestId = u64;

/// One protocol frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Frame {
    /// Server → agent, first frame after the upgrade.
    Hello(Hello),
    /// Agent → server, answer to `hello`.
    Auth(Auth),
    /// Server → agent, the handshake succeeded.
    Welcome(Welcome),
    /// Server → agent, the handshake failed; a close follows.
    Reject(Reject),
    /// A request for a hook on the other side.
    Req(Req),
    /// The response to a `req`.
    Res(Res),
    /// A fire-and-forget message for a hook on the other side (capability
    /// `note`).
    Note(Note),
    /// Cancels a request in flight (capability `cancel`).
    Cancel(Cancel),
    /// Progress of a request in flight (capability `stream`; ignored for
    /// a request that did not ask to stream).
    Prog(Prog),
    /// One item of a streamed result (capability `stream`).
    Item(Item),
    /// More credit for a streamed result, from its caller (capability
    /// `stream`).
    Credit(Credit),
}

impl Frame {
    /// The frame's `t` tag, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Auth(_) => "auth",
            Frame::Welcome(_) => "welcome",
            Frame::Reject(_) => "reject",
            Frame::Req(_) => "req",
            Frame::Res(_) => "res",
            Frame::Note(_) => "note",
            Frame::Cancel(_) => "cancel",
            Frame::Prog(_) => "prog",
            Frame::Item(_) => "item",
            Frame::Credit(_) => "credit",
        }
    }
}

/// `hello {v, nonce, sign, caps?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The server's nonce, 32 random bytes as lowercase hex.
    pub nonce: String,
    /// Whether every frame after the handshake must be signed.
    pub sign: bool,
    /// The capabilities the server supports (see [`crate::Caps`]); absent
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

/// `auth {nonce, name?, claim?, bind?, meta, labels?, proof, caps?}`. `Debug` leaves
/// out the proof, the claim and the bind.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    /// The agent's nonce, 32 random bytes as lowercase hex.
    pub nonce: String,
    /// The name the agent asks for (its stored name, or one of its choosing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Proof that the agent holds the name's token, as lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// 32 random bytes as lowercase hex, picked by an agent that holds no
    /// token yet and repeated on its retries, so that the server can give a
    /// first-time grant whose `welcome` was lost again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Free-form metadata the server keeps on the agent's handle.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// The labels the agent presents, key to string value (see
    /// [`crate::labels`]); left out when there are none. Carried as any
    /// JSON object so that the server, not the decoder, judges them.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub labels: Map<String, Value>,
    /// Proof that the agent knows the shared secret, as lowercase hex.
    pub proof: String,
    /// The capabilities the agent supports (see [`crate::Caps`]); absent
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

/// `welcome {name, first_time, token?, proof, limits, caps?}`. `Debug`
/// leaves out the token and the proof.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The agent's name for this session.
    pub name: String,
    /// True only when the name was newly given.
    pub first_time: bool,
    /// The name token, present when the name was newly given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Proof that the server knows the shared secret, as lowercase hex.
    pub proof: String,
    /// Limits the server enforces on this link.
    pub limits: Limits,
    /// The capabilities both sides announced, which this link uses (see
    /// [`crate::Caps`]); absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

/// `"<redacted>"` for a secret value that is there, `None` for one that is not.
fn redacted<T>(value: &Option<T>) -> Option<&'static str> {
    value.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("nonce", &self.nonce)
            .field("name", &self.name)
            .field("claim", &redacted(&self.claim))
            .field("bind", &redacted(&self.bind))
            .field("meta", &self.meta)
            .field("labels", &self.labels)
            .field("proof", &"<redacted>")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reject")
            .field("code", &self.code)
            .field("message", &self.message)
            .field("proof", &redacted(&self.proof))
            .finish()
    }
}

impl std::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Welcome")
            .field("name", &self.name)
            .field("first_time", &self.first_time)
            .field("token", &redacted(&self.token))
            .field("proof", &"<redacted>")
            .field("limits", &self.limits)
            .field("caps", &self.caps)
            .finish()
    }
}

/// Limits announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message, in bytes, the server accepts.
    pub max_message_bytes: u64,
    /// Most requests the server serves at once on this link.
    pub max_in_flight: u32,
    /// Interval of the server's pings in milliseconds (0: none).
    pub ping_interval_ms: u64,
}

/// `reject {code, message, proof?}`. `Debug` leaves out the proof.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Stable error code, e.g. `WRONG_SECRET`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The server's proof of the refusal over both nonces and `code`, as
    /// lowercase hex; present only when the agent's own proof verified (a
    /// server cannot prove anything to an agent that lacks the secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// `req {id, action, body, timeout_ms, from?}`.
#[derive(Debug, Clone, Serialize)]
pub struct Req {
    /// The sender's request id.
    pub id: RequestId,
    /// The hook to run.
    pub action: String,
    /// The request body.
    pub body: Box<RawValue>,
    /// How long the caller waits; the callee may stop working after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Present when the caller asks for a streamed result (capability
    /// `stream`, `docs/PROTOCOL.md` 5.11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamOpen>,
    /// Server → agent only: the agent whose call the server relays (see
    /// [`Call::relayed_from`](crate::Call::relayed_from)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// `req.stream {credit}`: the caller takes a streamed result and grants
/// the first `credit` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    /// Items the callee may send before it waits for a `credit` frame,
    /// 1 to [`MAX_CREDIT`].
    pub credit: u32,
}

/// Most credit a stream may hold at once: more is a protocol violation
/// (close 4000).
pub const MAX_CREDIT: u32 = 65_536;

/// `item {id, body}`: one item of the streamed result of request `id`.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The request the item belongs to.
    pub id: RequestId,
    /// The item.
    pub body: Box<RawValue>,
}

/// `credit {id, n}`: the caller of streamed request `id` takes `n` more
/// items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The streamed request.
    pub id: RequestId,
    /// Items granted, at least 1.
    pub n: u32,
}

/// `res {id, ok}` or `res {id, err}`.
#[derive(Debug, Clone, Serialize)]
pub struct Res {
    /// The id of the request this answers.
    pub id: RequestId,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The outcome of a request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The response body.
    Ok(Box<RawValue>),
    /// The error the callee answered with.
    Err(HookError),
}

/// `note {action, body}`: runs the hook `action` and answers nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    /// The hook the note is for.
    pub action: String,
    /// The note's body.
    pub body: Box<RawValue>,
}

/// `cancel {id}`: the sender gives up on its request `id`; the receiver
/// stops serving it and answers it with `CANCELLED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request to cancel.
    pub id: RequestId,
}

/// `prog {id, body}`: progress of streamed request `id`.
#[derive(Debug, Clone, Serialize)]
pub struct Prog {
    /// The request this reports progress on.
    pub id: RequestId,
    /// Progress detail.
    pub body: Box<RawValue>,
}
