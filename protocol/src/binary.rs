//! Binary frames: a `req`, `res` or `item` whose body is bytes, in one
//! WebSocket binary message (capability `binary`, `docs/PROTOCOL.md` 5.13).
//! Pure codec, as [`crate::codec`] is for text.
//!
//! ```text
//! offset  size  field
//! 0       1     kind: 1 req, 2 res (a result; errors are text frames), 3 item
//! 1       8     id, u64 big-endian
//! 9       4     n, the length of the head, u32 big-endian
//! 13      n     head: for req, a JSON object with the members of a text
//!               req other than t, id and body (action, and timeout_ms,
//!               stream, from when present); n = 0 for res and item
//! 13 + n  rest  the body's bytes
//! ```
//!
//! With signed frames on, the message is `seq ‖ mac ‖ frame` instead (see
//! [`crate::signed`]): the same sequence and MAC as text frames.

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Bytes;

use crate::codec::DecodeError;
use crate::frame::{RequestId, StreamOpen};

/// Bytes before the head: kind, id and head length.
pub const HEADER: usize = 13;

/// The kinds of binary frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A request with a binary body.
    Req = 1,
    /// A result that is bytes.
    Res = 2,
    /// A stream item that is bytes.
    Item = 3,
}

/// The head of a binary `req`: the members of a text `req` other than
/// `t`, `id` and `body`. Unknown members are ignored, as in text frames.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReqHead {
    /// The action to run.
    pub action: String,
    /// The caller's timeout, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Asks for a streamed result.
    #[serde(default)]
    pub stream: Option<StreamOpen>,
    /// A relayed call's caller.
    #[serde(default)]
    pub from: Option<String>,
}

/// One decoded binary frame. The body shares the message's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BinFrame {
    /// A request with a binary body.
    Req {
        /// The request id.
        id: RequestId,
        /// The rest of the request.
        head: ReqHead,
        /// The body.
        body: Bytes,
    },
    /// A result that is bytes.
    Res {
        /// The id of the request it answers.
        id: RequestId,
        /// The result.
        body: Bytes,
    },
    /// A stream item that is bytes.
    Item {
        /// The id of the streamed request.
        id: RequestId,
        /// The item.
        body: Bytes,
    },
}

fn invalid(why: impl Into<String>) -> DecodeError {
    DecodeError::InvalidBinary(why.into())
}

/// Decodes one binary message (already verified, when signed).
///
/// ```
/// use agent_protocol::binary::{self, BinFrame, Kind};
/// use agent_protocol::Bytes;
/// let msg = Bytes::from(binary::encode(Kind::Item, 7, b"", b"\x00\x01"));
/// assert_eq!(
///     binary::decode(&msg).unwrap(),
///     BinFrame::Item { id: 7, body: Bytes::from_static(b"\x00\x01") }
/// );
/// assert!(binary::decode(&Bytes::from_static(b"\x09")).is_err());
/// ```
pub fn decode(msg: &Bytes) -> Result<BinFrame, DecodeError> {
    let header = msg
        .get(..HEADER)
        .ok_or_else(|| invalid(format!("{} bytes, shorter than the header", msg.len())))?;
    let (kind, rest) = header.split_at(1);
    let (id, len) = rest.split_at(8);
    let id = u64::from_be_bytes(id.try_into().map_err(|_| invalid("id"))?);
    let len = u32::from_be_bytes(len.try_into().map_err(|_| invalid("head length"))?);
    let head_end = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(HEADER))
        .filter(|end| *end <= msg.len())
        .ok_or_else(|| invalid(format!("head of {len} bytes overruns the message")))?;
    let head = msg.get(HEADER..head_end).unwrap_or_default();
    let body = msg.slice(head_end..);
    match kind.first().copied() {
        Some(1) => {
            let head: ReqHead = serde_json::from_slice(head).map_err(|e| {
                invalid(format!(
                    "req head: {}",
                    crate::log_limit::clip(&e.to_string(), crate::codec::ERROR_CLIP)
                ))
            })?;
            Ok(BinFrame::Req { id, head, body })
        }
        Some(k @ (2 | 3)) => {
            if !head.is_empty() {
                return Err(invalid("res and item frames carry no head"));
            }
            Ok(if k == 2 {
                BinFrame::Res { id, body }
            } else {
                BinFrame::Item { id, body }
            })
        }
        other => Err(invalid(format!(
            "unknown binary frame kind {}",
            other.unwrap_or_default()
        ))),
    }
}

/// Appends one binary frame to `out`.
pub fn encode_into(out: &mut Vec<u8>, kind: Kind, id: RequestId, head: &[u8], body: &[u8]) {
    out.reserve(HEADER + head.len() + body.len());
    out.push(kind as u8);
    out.extend_from_slice(&id.to_be_bytes());
    // Heads are a few short members; a caller's action is bounded by the
    // action syntax, so this never saturates in practice.
    let len = u32::try_from(head.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(body);
}

/// One binary frame, as a new buffer.
pub fn encode(kind: Kind, id: RequestId, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, kind, id, head, body);
    out
}

/// The head of a binary `req`, as [`ReqHead`] reads it.
///
/// ```
/// let head = agent_protocol::binary::req_head("put", Some(5000), None, None);
/// assert_eq!(head, br#"{"action":"put","timeout_ms":5000}"#);
/// ```
pub fn req_head(
    action: &str,
    timeout_ms: Option<u64>,
    stream: Option<StreamOpen>,
    from: Option<&str>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(48 + action.len());
    buf.extend_from_slice(br#"{"action":"#);
    crate::codec::push_json_str(&mut buf, action);
    if let Some(ms) = timeout_ms {
        buf.extend_from_slice(br#","timeout_ms":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
    }
    if let Some(open) = stream {
        buf.extend_from_slice(br#","stream":{"credit":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(open.credit).as_bytes());
        buf.push(b'}');
    }
    if let Some(from) = from {
        buf.extend_from_slice(br#","from":"#);
        crate::codec::push_json_str(&mut buf, from);
    }
    buf.push(b'}');
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let head = req_head(
            "put",
            Some(9),
            Some(StreamOpen { credit: 4 }),
            Some("A0002"),
        );
        let msg = Bytes::from(encode(Kind::Req, u64::MAX, &head, b"abc"));
        match decode(&msg).unwrap() {
            BinFrame::Req { id, head, body } => {
                assert_eq!(id, u64::MAX);
                assert_eq!(head.action, "put");
                assert_eq!(head.timeout_ms, Some(9));
                assert_eq!(head.stream, Some(StreamOpen { credit: 4 }));
                assert_eq!(head.from.as_deref(), Some("A0002"));
                assert_eq!(&body[..], b"abc");
            }
            other => panic!("{other:?}"),
        }
        let msg = Bytes::from(encode(Kind::Res, 1, b"", b""));
        assert_eq!(
            decode(&msg).unwrap(),
            BinFrame::Res {
                id: 1,
                body: Bytes::new()
            }
        );
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x03\x00\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
            b"\x04\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
            // Head longer than the message.
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff{}",
            // A req head that is not a req's.
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02{}",
            // A head on an item.
            b"\x03\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02{}",
        ] {
            let msg = Bytes::copy_from_slice(bad);
            assert!(
                matches!(decode(&msg), Err(DecodeError::InvalidBinary(_))),
                "{bad:?}"
            );
        }
    }
}
