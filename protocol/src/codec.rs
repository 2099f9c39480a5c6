//! Pure codec: text in, a [`Frame`] or a typed [`DecodeError`] out; a frame in,
//! text out. No sockets here, so every rule is testable with string literals.
//!
//! Decoding reads one flat, borrowed view of the object and then checks that the
//! fields the frame's `t` requires are present, so a body is copied once and
//! never parsed into a `serde_json::Value` on the way through.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::frame::{
    Auth, Cancel, Credit, Frame, Hello, HookError, Item, Limits, Note, Outcome, Prog, Reject, Req,
    RequestId, Res, StreamOpen, Welcome,
};

/// Why a text message is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text is not a JSON object of the expected field types.
    #[error("invalid JSON frame: {0}")]
    InvalidJson(String),
    /// The `t` tag names no frame of this protocol version.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A field the frame type requires is absent.
    #[error("{frame} frame lacks field `{field}`")]
    MissingField {
        /// The frame type.
        frame: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A `res` carries both or neither of `ok` and `err`.
    #[error("res frame must carry exactly one of `ok` and `err`")]
    AmbiguousOutcome,
    /// A binary message that is not a valid binary frame (see
    /// [`crate::binary`]).
    #[error("invalid binary frame: {0}")]
    InvalidBinary(String),
}

/// Keeps a present `null` as `Some("null")` rather than collapsing it to `None`.
fn raw_present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Flat<'a> {
    t: std::borrow::Cow<'a, str>,
    v: Option<u32>,
    nonce: Option<String>,
    sign: Option<bool>,
    name: Option<String>,
    claim: Option<String>,
    bind: Option<String>,
    meta: Option<Map<String, Value>>,
    labels: Option<Map<String, Value>>,
    proof: Option<String>,
    first_time: Option<bool>,
    token: Option<String>,
    limits: Option<Limits>,
    code: Option<String>,
    message: Option<String>,
    id: Option<RequestId>,
    action: Option<String>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    body: Option<&'a RawValue>,
    timeout_ms: Option<u64>,
    from: Option<String>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    ok: Option<&'a RawValue>,
    err: Option<HookError>,
    caps: Option<Vec<String>>,
    stream: Option<StreamOpen>,
    n: Option<u32>,
}

/// Longest decode error text: serde's messages quote the input (a string
/// of the wrong type, an unknown variant), and the input is the peer's.
pub const ERROR_CLIP: usize = 200;

fn invalid_json(e: serde_json::Error) -> DecodeError {
    DecodeError::InvalidJson(crate::log_limit::clip(&e.to_string(), ERROR_CLIP).into_owned())
}

fn need<T>(v: Option<T>, frame: &'static str, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingField { frame, field })
}

fn owned_body(raw: Option<&RawValue>) -> Box<RawValue> {
    match raw {
        Some(r) => r.to_owned(),
        None => null_body(),
    }
}

/// A body of JSON `null`.
pub fn null_body() -> Box<RawValue> {
    // "null" is valid JSON, so this conversion cannot fail; keep a fallback
    // anyway rather than a panic.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// Decodes one text message into a frame.
///
/// ```
/// use agent_protocol::{codec, Frame};
/// let f = codec::decode(r#"{"t":"req","id":7,"action":"echo","body":{"x":1}}"#).unwrap();
/// assert!(matches!(f, Frame::Req(r) if r.id == 7 && r.body.get() == r#"{"x":1}"#));
/// assert!(codec::decode(r#"{"t":"nope"}"#).is_err());
/// ```
pub fn decode(text: &str) -> Result<Frame, DecodeError> {
    match decode_call(text) {
        Some(frame) => Ok(frame),
        None => decode_general(text),
    }
}

/// Decodes any frame, in any layout, through serde only: what [`decode`]
/// does for every text its direct path declines. Public so that tests and
/// fuzzers can check that both paths agree.
#[doc(hidden)]
pub fn decode_general(text: &str) -> Result<Frame, DecodeError> {
    let f: Flat<'_> = serde_json::from_str(text).map_err(invalid_json)?;
    let frame = match f.t.as_ref() {
        "req" => Frame::Req(Req {
            id: need(f.id, "req", "id")?,
            action: need(f.action, "req", "action")?,
            body: owned_body(f.body),
            timeout_ms: f.timeout_ms,
            stream: f.stream,
            from: f.from,
        }),
        "res" => {
            let outcome = match (f.ok, f.err) {
                (Some(ok), None) => Outcome::Ok(ok.to_owned()),
                (None, Some(err)) => Outcome::Err(err),
                _ => return Err(DecodeError::AmbiguousOutcome),
            };
            Frame::Res(Res {
                id: need(f.id, "res", "id")?,
                outcome,
            })
        }
        "hello" => Frame::Hello(Hello {
            v: need(f.v, "hello", "v")?,
            nonce: need(f.nonce, "hello", "nonce")?,
            sign: f.sign.unwrap_or(false),
            caps: f.caps.unwrap_or_default(),
        }),
        "auth" => Frame::Auth(Auth {
            nonce: need(f.nonce, "auth", "nonce")?,
            name: f.name,
            claim: f.claim,
            bind: f.bind,
            meta: f.meta.unwrap_or_default(),
            labels: f.labels.unwrap_or_default(),
            proof: need(f.proof, "auth", "proof")?,
            caps: f.caps.unwrap_or_default(),
        }),
        "welcome" => Frame::Welcome(Welcome {
            name: need(f.name, "welcome", "name")?,
            first_time: need(f.first_time, "welcome", "first_time")?,
            token: f.token,
            proof: need(f.proof, "welcome", "proof")?,
            limits: need(f.limits, "welcome", "limits")?,
            caps: f.caps.unwrap_or_default(),
        }),
        "reject" => Frame::Reject(Reject {
            code: need(f.code, "reject", "code")?,
            message: f.message.unwrap_or_default(),
            proof: f.proof,
        }),
        "note" => Frame::Note(Note {
            action: need(f.action, "note", "action")?,
            body: owned_body(f.body),
        }),
        "cancel" => Frame::Cancel(Cancel {
            id: need(f.id, "cancel", "id")?,
        }),
        "prog" => Frame::Prog(Prog {
            id: need(f.id, "prog", "id")?,
            body: owned_body(f.body),
        }),
        "item" => Frame::Item(Item {
            id: need(f.id, "item", "id")?,
            body: owned_body(f.body),
        }),
        "credit" => Frame::Credit(Credit {
            id: need(f.id, "credit", "id")?,
            n: need(f.n, "credit", "n")?,
        }),
        other => return Err(DecodeError::UnknownType(other.chars().take(64).collect())),
    };
    Ok(frame)
}

/// A frame read in place from the message text: the two frames of every
/// call, and the two small frames of cancellation and notification.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallRef<'a> {
    /// `req`.
    Req {
        id: RequestId,
        action: &'a str,
        body: &'a RawValue,
        timeout_ms: Option<u64>,
    },
    /// `res` with `ok`.
    Ok { id: RequestId, body: &'a RawValue },
    /// `note`.
    Note { action: &'a str, body: &'a RawValue },
    /// `cancel`.
    Cancel { id: RequestId },
}

/// Reads the `req`, `res {ok}`, `note` and `cancel` frames in the exact
/// layout [`encode_req_with`], [`encode_res`], [`encode_note_with`] and
/// [`encode_cancel`] write, without the general parser and without copying
/// anything: those carry every call. Any other text (other key order,
/// whitespace, escapes in the action, an `err` outcome, anything invalid)
/// gives `None` and takes the general path, so both paths give the same
/// frame for the same text and every error comes from one place. `req` and
/// `res` are tried first: the other two cost them nothing.
pub(crate) fn decode_call_ref(text: &str) -> Option<CallRef<'_>> {
    if let Some(rest) = text.strip_prefix(r#"{"t":"req","id":"#) {
        let (id, rest) = split_u64(rest)?;
        let (action, rest) = split_action(rest.strip_prefix(r#","action":""#)?)?;
        let rest = rest.strip_prefix(r#","body":"#)?.strip_suffix('}')?;
        let (body, timeout_ms) = match split_timeout(rest) {
            Some((body, ms)) => (body, Some(ms)),
            None => (rest, None),
        };
        return Some(CallRef::Req {
            id,
            action,
            body: exact_value(body)?,
            timeout_ms,
        });
    }
    if let Some(rest) = text.strip_prefix(r#"{"t":"res","id":"#) {
        let (id, rest) = split_u64(rest)?;
        let body = rest.strip_prefix(r#","ok":"#)?.strip_suffix('}')?;
        return Some(CallRef::Ok {
            id,
            body: exact_value(body)?,
        });
    }
    if let Some(rest) = text.strip_prefix(r#"{"t":"note","action":""#) {
        let (action, rest) = split_action(rest)?;
        let body = rest.strip_prefix(r#","body":"#)?.strip_suffix('}')?;
        return Some(CallRef::Note {
            action,
            body: exact_value(body)?,
        });
    }
    let rest = text.strip_prefix(r#"{"t":"cancel","id":"#)?;
    match split_u64(rest)? {
        (id, "}") => Some(CallRef::Cancel { id }),
        _ => None,
    }
}

/// Splits `<action>"<rest>` at the closing quote of an action written
/// without escapes (one with escapes or control characters takes the
/// general path).
fn split_action(text: &str) -> Option<(&str, &str)> {
    let (action, rest) = text.split_once('"')?;
    if action.bytes().any(|b| b < 0x20 || b == b'\\') {
        return None;
    }
    Some((action, rest))
}

/// [`decode_call_ref`], as an owned frame.
fn decode_call(text: &str) -> Option<Frame> {
    Some(match decode_call_ref(text)? {
        CallRef::Req {
            id,
            action,
            body,
            timeout_ms,
        } => Frame::Req(Req {
            id,
            action: action.to_owned(),
            body: body.to_owned(),
            timeout_ms,
            stream: None,
            from: None,
        }),
        CallRef::Ok { id, body } => Frame::Res(Res {
            id,
            outcome: Outcome::Ok(body.to_owned()),
        }),
        CallRef::Note { action, body } => Frame::Note(Note {
            action: action.to_owned(),
            body: body.to_owned(),
        }),
        CallRef::Cancel { id } => Frame::Cancel(Cancel { id }),
    })
}

/// Splits `<body>,"timeout_ms":<digits>` into the body and the timeout.
/// A body is one JSON value, which cannot itself end in that shape, so a
/// suffix of that shape is the field; only the suffix is searched.
fn split_timeout(text: &str) -> Option<(&str, u64)> {
    const KEY: &[u8] = br#","timeout_ms":"#;
    let bytes = text.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let at = bytes.len().checked_sub(digits + KEY.len())?;
    if bytes.get(at..at + KEY.len())? != KEY {
        return None;
    }
    let (body, field) = text.split_at_checked(at)?;
    match split_u64(field.get(KEY.len()..)?)? {
        (ms, "") => Some((body, ms)),
        _ => None,
    }
}

/// A leading JSON integer that fits a `u64`, written without leading zeros,
/// and the text after it.
fn split_u64(s: &str) -> Option<(u64, &str)> {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, rest) = s.split_at_checked(len)?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

/// `text` as a raw value when it is exactly one JSON value, with no
/// whitespace around it (the general parser would trim that).
fn exact_value(text: &str) -> Option<&RawValue> {
    let edges = [text.bytes().next()?, text.bytes().next_back()?];
    if edges.iter().any(u8::is_ascii_whitespace) {
        return None;
    }
    serde_json::from_str::<&RawValue>(text).ok()
}

/// Appends `s` as a JSON string, exactly as `serde_json` writes it.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn into_text(buf: Vec<u8>) -> Result<String, DecodeError> {
    String::from_utf8(buf).map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

/// Encodes a `req` frame whose body `write_body` writes in place, so a typed
/// body is serialized once, straight into the frame.
pub fn encode_req_with(
    id: RequestId,
    action: &str,
    timeout_ms: Option<u64>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    encode_req_parts(id, action, timeout_ms, None, None, write_body)
}

/// [`encode_req_with`] with the optional `from` member of a relayed call,
/// written last (such a frame takes the general decoding path).
pub fn encode_req_from(
    id: RequestId,
    action: &str,
    timeout_ms: Option<u64>,
    from: Option<&str>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    encode_req_parts(id, action, timeout_ms, None, from, write_body)
}

/// [`encode_req_with`] for a request that may ask for a streamed result.
///
/// ```
/// use agent_protocol::{codec, StreamOpen};
/// let text = codec::encode_req_stream_with(3, "tail", None, Some(StreamOpen { credit: 32 }), |b| {
///     b.extend_from_slice(b"null");
///     Ok(())
/// })
/// .unwrap();
/// assert_eq!(text, r#"{"t":"req","id":3,"action":"tail","body":null,"stream":{"credit":32}}"#);
/// ```
pub fn encode_req_stream_with(
    id: RequestId,
    action: &str,
    timeout_ms: Option<u64>,
    stream: Option<StreamOpen>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    encode_req_parts(id, action, timeout_ms, stream, None, write_body)
}

/// A `req` with every optional member: `stream`, then `from`.
pub(crate) fn encode_req_parts(
    id: RequestId,
    action: &str,
    timeout_ms: Option<u64>,
    stream: Option<StreamOpen>,
    from: Option<&str>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    let mut buf = Vec::with_capacity(96 + action.len());
    buf.extend_from_slice(br#"{"t":"req","id":"#);
    push_u64(&mut buf, id);
    buf.extend_from_slice(br#","action":"#);
    push_json_str(&mut buf, action);
    buf.extend_from_slice(br#","body":"#);
    write_body(&mut buf)?;
    if let Some(ms) = timeout_ms {
        buf.extend_from_slice(br#","timeout_ms":"#);
        push_u64(&mut buf, ms);
    }
    if let Some(open) = stream {
        buf.extend_from_slice(br#","stream":{"credit":"#);
        push_u64(&mut buf, u64::from(open.credit));
        buf.push(b'}');
    }
    if let Some(from) = from {
        buf.extend_from_slice(br#","from":"#);
        push_json_str(&mut buf, from);
    }
    buf.push(b'}');
    into_text(buf).map_err(serde::ser::Error::custom)
}

/// Encodes a `req` frame around a body that is JSON already.
pub fn encode_req(id: RequestId, action: &str, body: &RawValue, timeout_ms: Option<u64>) -> String {
    encode_req_stream(id, action, body, timeout_ms, None)
}

fn encode_req_stream(
    id: RequestId,
    action: &str,
    body: &RawValue,
    timeout_ms: Option<u64>,
    stream: Option<StreamOpen>,
) -> String {
    let raw = body.get().as_bytes();
    encode_req_stream_with(id, action, timeout_ms, stream, |buf| {
        buf.extend_from_slice(raw);
        Ok(())
    })
    .unwrap_or_default()
}

/// Encodes a `res` frame with its outcome.
pub fn encode_res(id: RequestId, outcome: Result<&RawValue, &HookError>) -> String {
    const HEAD: &[u8] = br#"{"t":"res","id":"#;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(id).as_bytes();
    // An `ok` frame is sized exactly: a full buffer becomes the WebSocket
    // payload without another allocation.
    let mut buf = Vec::with_capacity(
        HEAD.len()
            + digits.len()
            + match outcome {
                Ok(body) => r#","ok":}"#.len() + body.get().len(),
                Err(e) => 48 + e.code.len() + e.message.len(),
            },
    );
    buf.extend_from_slice(HEAD);
    buf.extend_from_slice(digits);
    match outcome {
        Ok(body) => {
            buf.extend_from_slice(br#","ok":"#);
            buf.extend_from_slice(body.get().as_bytes());
        }
        Err(e) => {
            buf.extend_from_slice(br#","err":"#);
            if serde_json::to_writer(&mut buf, e).is_err() {
                buf.extend_from_slice(br#"{"code":"INTERNAL_ERROR","message":""}"#);
            }
        }
    }
    buf.push(b'}');
    into_text(buf).unwrap_or_default()
}

/// Encodes a `note` frame whose body `write_body` writes in place.
///
/// ```
/// use agent_protocol::codec;
/// let text = codec::encode_note_with("log", |buf| {
///     buf.extend_from_slice(br#"{"line":"started"}"#);
///     Ok(())
/// })
/// .unwrap();
/// assert_eq!(text, r#"{"t":"note","action":"log","body":{"line":"started"}}"#);
/// ```
pub fn encode_note_with(
    action: &str,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    let mut buf = Vec::with_capacity(64 + action.len());
    buf.extend_from_slice(br#"{"t":"note","action":"#);
    push_json_str(&mut buf, action);
    buf.extend_from_slice(br#","body":"#);
    write_body(&mut buf)?;
    buf.push(b'}');
    into_text(buf).map_err(serde::ser::Error::custom)
}

/// Encodes a `cancel` frame.
///
/// ```
/// assert_eq!(agent_protocol::codec::encode_cancel(6), r#"{"t":"cancel","id":6}"#);
/// ```
pub fn encode_cancel(id: RequestId) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(id);
    let mut text = String::with_capacity(20 + digits.len());
    text.push_str(r#"{"t":"cancel","id":"#);
    text.push_str(digits);
    text.push('}');
    text
}

/// Encodes an `item` (`kind` `"item"`) or `prog` (`kind` `"prog"`) frame
/// whose body `write_body` writes in place.
///
/// ```
/// use agent_protocol::codec;
/// let text = codec::encode_item_with("item", 4, |b| {
///     b.extend_from_slice(b"[1,2]");
///     Ok(())
/// })
/// .unwrap();
/// assert_eq!(text, r#"{"t":"item","id":4,"body":[1,2]}"#);
/// ```
pub fn encode_item_with(
    kind: &str,
    id: RequestId,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    let mut buf = Vec::with_capacity(48);
    buf.extend_from_slice(br#"{"t":"#);
    push_json_str(&mut buf, kind);
    buf.extend_from_slice(br#","id":"#);
    push_u64(&mut buf, id);
    buf.extend_from_slice(br#","body":"#);
    write_body(&mut buf)?;
    buf.push(b'}');
    into_text(buf).map_err(serde::ser::Error::custom)
}

/// Encodes a `credit` frame.
///
/// ```
/// assert_eq!(agent_protocol::codec::encode_credit(4, 16), r#"{"t":"credit","id":4,"n":16}"#);
/// ```
pub fn encode_credit(id: RequestId, n: u32) -> String {
    let mut text = String::with_capacity(40);
    text.push_str(r#"{"t":"credit","id":"#);
    text.push_str(itoa::Buffer::new().format(id));
    text.push_str(r#","n":"#);
    text.push_str(itoa::Buffer::new().format(n));
    text.push('}');
    text
}

/// Encodes a frame as the text of one WebSocket message.
pub fn encode(frame: &Frame) -> String {
    // The two frames of every call take the direct path.
    match frame {
        Frame::Req(r) => {
            let raw = r.body.get().as_bytes();
            return encode_req_parts(
                r.id,
                &r.action,
                r.timeout_ms,
                r.stream,
                r.from.as_deref(),
                |buf| {
                    buf.extend_from_slice(raw);
                    Ok(())
                },
            )
            .unwrap_or_default();
        }
        Frame::Res(r) => {
            return encode_res(
                r.id,
                match &r.outcome {
                    Outcome::Ok(b) => Ok(b),
                    Outcome::Err(e) => Err(e),
                },
            )
        }
        Frame::Note(n) => {
            let raw = n.body.get().as_bytes();
            if let Ok(text) = encode_note_with(&n.action, |buf| {
                buf.extend_from_slice(raw);
                Ok(())
            }) {
                return text;
            }
        }
        Frame::Cancel(c) => return encode_cancel(c.id),
        _ => {}
    }
    // Serializing these types cannot fail: every map key is a string and every
    // body is already valid JSON. Should that ever change, the error surfaces
    // as an `INTERNAL_ERROR` frame instead of a panic.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        tracing::error!(error = %e, kind = frame.kind(), "frame failed to encode");
        String::from(
            r#"{"t":"note","action":"","body":{"code":"INTERNAL_ERROR","message":"encode failed"}}"#,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// The direct path for call frames and the general parser agree on
    /// every text: the same frame, or the direct path declines.
    #[test]
    fn call_frames_decode_the_same_by_either_path() {
        let texts = [
            r#"{"t":"req","id":1,"action":"echo","body":{"a":1}}"#,
            r#"{"t":"req","id":1,"action":"echo","body":{"a":1},"timeout_ms":250}"#,
            r#"{"t":"req","id":18446744073709551615,"action":"é","body":null,"timeout_ms":0}"#,
            r#"{"t":"req","id":2,"action":"a","body":{"x":1,"timeout_ms":5}}"#,
            r#"{"t":"req","id":2,"action":"a","body":{"x":1,"timeout_ms":5},"timeout_ms":6}"#,
            r#"{"t":"req","id":2,"action":"a","body":5,"timeout_ms":6}"#,
            r#"{"t":"req","id":2,"action":"a","body":"5,\"timeout_ms\":6"}"#,
            r#"{"t":"res","id":3,"ok":[1,"two",{"3":null}]}"#,
            r#"{"t":"res","id":3,"ok":"}"}"#,
            r#"{"t":"note","action":"log","body":{"line":"x"}}"#,
            r#"{"t":"note","action":"é","body":null}"#,
            r#"{"t":"cancel","id":6}"#,
            r#"{"t":"cancel","id":18446744073709551615}"#,
            // Declined by the direct path; the general parser decides.
            r#"{"t":"note","action":"a\"b","body":1}"#,
            r#"{"t":"note","action":"a","body":1,"body":2}"#,
            r#"{"t":"note","action":"a","body": 1}"#,
            r#"{"t":"note","action":"a","body":1,"caps":5}"#,
            r#"{"t":"note","action":"a"}"#,
            r#"{"t":"note","body":1,"action":"a"}"#,
            r#"{"t":"cancel","id":6,"id":7}"#,
            r#"{"t":"cancel","id":06}"#,
            r#"{"t":"cancel","id":-6}"#,
            r#"{"t":"cancel","id":"6"}"#,
            r#"{"t":"cancel","id":6 }"#,
            r#"{"t":"cancel","id":6,"x":1}"#,
            r#"{"t":"cancel"}"#,
            r#"{"t":"req","id":2,"action":"a","body":1,"body":2}"#,
            r#"{"t":"req","id":2,"action":"a","body":1,"timeout_ms":5,"timeout_ms":6}"#,
            r#"{"t":"req","id":2,"action":"a","body":1,"timeout_ms":05}"#,
            r#"{"t":"req","id":2,"action":"a","body":1,"extra":true}"#,
            r#"{"t":"req","id":2,"action":"a\"b","body":1}"#,
            r#"{"t":"req","id":2,"action":"a\u0041","body":1}"#,
            r#"{"t":"req","id":02,"action":"a","body":1}"#,
            r#"{"t":"req","id":18446744073709551616,"action":"a","body":1}"#,
            r#"{"t":"req","id":-1,"action":"a","body":1}"#,
            r#"{"t":"req","id":2,"action":"a","body": 1 }"#,
            r#"{"t":"req","id":2,"action":"a","body":}"#,
            r#"{"t":"req","id":2,"action":"a","body":[1}"#,
            r#"{"t":"req","id":2,"action":"a"}"#,
            r#"{"t":"req","id":2,"body":1,"action":"a"}"#,
            r#"{"t":"res","id":3,"ok":1,"err":{"code":"X","message":""}}"#,
            r#"{"t":"res","id":3,"err":{"code":"X","message":"m"}}"#,
            r#"{"t":"res","id":3,"ok":1} "#,
            r#"{"t":"res","id":3,"ok":1}}"#,
            r#"{"t":"res","id":3}"#,
            r#"{"t":"res","id":3,"ok":"#,
            r#"{"t":"res","id":"#,
        ];
        for text in texts {
            let general = format!("{:?}", decode_general(text));
            if let Some(fast) = decode_call(text) {
                assert_eq!(
                    format!("{:?}", Ok::<_, DecodeError>(fast)),
                    general,
                    "{text}"
                );
            }
            assert_eq!(format!("{:?}", decode(text)), general, "{text}");
        }
        // The direct path takes what this codec writes.
        for text in &texts[..13] {
            assert!(decode_call(text).is_some(), "{text}");
        }
    }

    #[test]
    fn an_ok_response_is_sized_exactly() {
        for id in [0, 7, u64::MAX] {
            let text = encode_res(id, Ok(&raw(r#"{"a":[1,"x"]}"#)));
            assert_eq!(text.len(), text.capacity(), "{text}");
        }
    }

    #[test]
    fn req_round_trip_keeps_body_bytes() {
        let f = Frame::Req(Req {
            id: 42,
            action: "echo".into(),
            body: raw(r#"{"a": [1, 2.5, "x"]}"#),
            timeout_ms: Some(1500),
            stream: None,
            from: None,
        });
        let text = encode(&f);
        assert_eq!(
            text,
            r#"{"t":"req","id":42,"action":"echo","body":{"a": [1, 2.5, "x"]},"timeout_ms":1500}"#
        );
        match decode(&text).unwrap() {
            Frame::Req(r) => {
                assert_eq!(r.id, 42);
                assert_eq!(r.action, "echo");
                assert_eq!(r.body.get(), r#"{"a": [1, 2.5, "x"]}"#);
                assert_eq!(r.timeout_ms, Some(1500));
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn direct_encoders_match_serde_byte_for_byte() {
        #[derive(serde::Serialize)]
        #[serde(tag = "t", rename_all = "lowercase")]
        enum Plain<'a> {
            Req(&'a Req),
            Res(&'a Res),
        }
        let reqs = [
            Req {
                id: 0,
                action: "plain".into(),
                body: raw("null"),
                timeout_ms: None,
                stream: None,
                from: None,
            },
            Req {
                id: u64::MAX,
                action: "quote\"back\\slash\u{1}é\u{7f}".into(),
                body: raw(r#"{"a":[1,"x"]}"#),
                timeout_ms: Some(30_000),
                stream: Some(StreamOpen { credit: 32 }),
                from: Some("A0001".into()),
            },
        ];
        for r in &reqs {
            assert_eq!(
                encode(&Frame::Req(r.clone())),
                serde_json::to_string(&Plain::Req(r)).unwrap()
            );
        }
        let res = [
            Res {
                id: 7,
                outcome: Outcome::Ok(raw(r#""ok""#)),
            },
            Res {
                id: 8,
                outcome: Outcome::Err(
                    HookError::new("E", "line\nbreak \"q\"")
                        .with_data(serde_json::json!({"k": [1]})),
                ),
            },
            Res {
                id: 9,
                outcome: Outcome::Err(HookError::new("E", "")),
            },
        ];
        for r in &res {
            assert_eq!(
                encode(&Frame::Res(r.clone())),
                serde_json::to_string(&Plain::Res(r)).unwrap()
            );
        }
        let others = [
            Frame::Note(Note {
                action: "quote\"back\\slash\u{1}é".into(),
                body: raw(r#"{"a":[1,"x"]}"#),
            }),
            Frame::Note(Note {
                action: "log".into(),
                body: raw("null"),
            }),
            Frame::Cancel(Cancel { id: 0 }),
            Frame::Cancel(Cancel { id: u64::MAX }),
        ];
        for f in &others {
            assert_eq!(encode(f), serde_json::to_string(f).unwrap());
        }
    }

    #[test]
    fn res_ok_null_is_a_response_not_missing() {
        let f = decode(r#"{"t":"res","id":1,"ok":null}"#).unwrap();
        assert!(
            matches!(f, Frame::Res(Res { id: 1, outcome: Outcome::Ok(b) }) if b.get() == "null")
        );
        let text = encode(&Frame::Res(Res {
            id: 1,
            outcome: Outcome::Ok(null_body()),
        }));
        assert_eq!(text, r#"{"t":"res","id":1,"ok":null}"#);
    }

    #[test]
    fn res_err_round_trip() {
        let f = Frame::Res(Res {
            id: 9,
            outcome: Outcome::Err(HookError {
                code: "NOPE".into(),
                message: "no".into(),
                data: Some(serde_json::json!({"k": 1})),
            }),
        });
        let text = encode(&f);
        assert_eq!(
            text,
            r#"{"t":"res","id":9,"err":{"code":"NOPE","message":"no","data":{"k":1}}}"#
        );
        assert!(
            matches!(decode(&text).unwrap(), Frame::Res(Res { id: 9, outcome: Outcome::Err(e) }) if e.code == "NOPE")
        );
    }

    #[test]
    fn res_with_both_or_neither_outcome_is_refused() {
        assert_eq!(
            decode(r#"{"t":"res","id":1,"ok":1,"err":{"code":"X"}}"#).unwrap_err(),
            DecodeError::AmbiguousOutcome
        );
        assert_eq!(
            decode(r#"{"t":"res","id":1}"#).unwrap_err(),
            DecodeError::AmbiguousOutcome
        );
    }

    #[test]
    fn missing_body_is_null() {
        let f = decode(r#"{"t":"req","id":3,"action":"ping"}"#).unwrap();
        assert!(matches!(f, Frame::Req(r) if r.body.get() == "null"));
    }

    #[test]
    fn decode_errors_of_huge_input_are_clipped() {
        let long = "x".repeat(10 * 1024);
        let texts = [
            // serde quotes a string of the wrong type whole.
            format!(r#"{{"t":"req","id":"{long}","action":"a"}}"#),
            format!(r#"{{"t":"{long}"}}"#),
            format!(r#"{{"t":"res","id":1,"err":{{"code":1,"message":"{long}"}}}}"#),
            format!("{{{long}"),
        ];
        for text in &texts {
            let err = decode(text).unwrap_err().to_string();
            assert!(err.len() <= ERROR_CLIP + 40, "{} bytes: {err}", err.len());
        }
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        assert!(matches!(
            decode("not json"),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::InvalidJson(_))));
        assert!(matches!(
            decode(r#"{"id":1}"#),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            decode(r#"{"t":"req","id":"x","action":"a"}"#),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            decode(r#"{"t":"req","id":1,"id":2,"action":"a"}"#),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(
            decode(r#"{"t":"launch"}"#).unwrap_err(),
            DecodeError::UnknownType("launch".into())
        );
        assert_eq!(
            decode(r#"{"t":"req","action":"a"}"#).unwrap_err(),
            DecodeError::MissingField {
                frame: "req",
                field: "id"
            }
        );
    }

    #[test]
    fn handshake_frames_round_trip() {
        let frames = [
            Frame::Hello(Hello {
                v: 1,
                nonce: "ab".repeat(32),
                sign: true,
                caps: vec!["cancel".into(), "note".into()],
            }),
            Frame::Auth(Auth {
                nonce: "cd".repeat(32),
                name: Some("A0001".into()),
                claim: Some("ef".repeat(32)),
                bind: Some("ab".repeat(32)),
                meta: serde_json::from_str(r#"{"region":"eu"}"#).unwrap(),
                labels: serde_json::from_str(r#"{"role":"db"}"#).unwrap(),
                proof: "01".repeat(32),
                caps: vec!["note".into(), "future-thing".into()],
            }),
            Frame::Welcome(Welcome {
                name: "A0001".into(),
                first_time: true,
                token: Some("02".repeat(32)),
                proof: "03".repeat(32),
                limits: Limits {
                    max_message_bytes: 1 << 20,
                    max_in_flight: 256,
                    ping_interval_ms: 15_000,
                },
                caps: vec![],
            }),
            Frame::Reject(Reject {
                code: "WRONG_SECRET".into(),
                message: "bad proof".into(),
                proof: None,
            }),
            Frame::Reject(Reject {
                code: "REVOKED".into(),
                message: "revoked".into(),
                proof: Some("04".repeat(32)),
            }),
        ];
        for f in frames {
            let text = encode(&f);
            let back = decode(&text).unwrap();
            assert_eq!(encode(&back), text);
        }
    }

    #[test]
    fn caps_are_optional_and_type_checked() {
        let hello = r#"{"t":"hello","v":1,"nonce":"00","sign":false}"#;
        assert!(matches!(decode(hello).unwrap(), Frame::Hello(h) if h.caps.is_empty()));
        let with = r#"{"t":"hello","v":1,"nonce":"00","sign":false,"caps":["cancel","x"]}"#;
        assert!(matches!(decode(with).unwrap(), Frame::Hello(h) if h.caps == ["cancel", "x"]));
        assert_eq!(encode(&decode(with).unwrap()), with);
        assert!(matches!(
            decode(r#"{"t":"hello","v":1,"nonce":"00","caps":"cancel"}"#),
            Err(DecodeError::InvalidJson(_))
        ));
    }
}
