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
    Auth, Cancel, Frame, Hello, HookError, Limits, Note, Outcome, Prog, Reject, Req, RequestId,
    Res, Welcome,
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
    meta: Option<Map<String, Value>>,
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
    #[serde(default, borrow, deserialize_with = "raw_present")]
    ok: Option<&'a RawValue>,
    err: Option<HookError>,
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
    let f: Flat<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let frame = match f.t.as_ref() {
        "req" => Frame::Req(Req {
            id: need(f.id, "req", "id")?,
            action: need(f.action, "req", "action")?,
            body: owned_body(f.body),
            timeout_ms: f.timeout_ms,
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
        }),
        "auth" => Frame::Auth(Auth {
            nonce: need(f.nonce, "auth", "nonce")?,
            name: f.name,
            claim: f.claim,
            meta: f.meta.unwrap_or_default(),
            proof: need(f.proof, "auth", "proof")?,
        }),
        "welcome" => Frame::Welcome(Welcome {
            name: need(f.name, "welcome", "name")?,
            first_time: need(f.first_time, "welcome", "first_time")?,
            token: f.token,
            proof: need(f.proof, "welcome", "proof")?,
            limits: need(f.limits, "welcome", "limits")?,
        }),
        "reject" => Frame::Reject(Reject {
            code: need(f.code, "reject", "code")?,
            message: f.message.unwrap_or_default(),
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
        other => return Err(DecodeError::UnknownType(other.chars().take(64).collect())),
    };
    Ok(frame)
}

/// Encodes a frame as the text of one WebSocket message.
pub fn encode(frame: &Frame) -> String {
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

    #[test]
    fn req_round_trip_keeps_body_bytes() {
        let f = Frame::Req(Req {
            id: 42,
            action: "echo".into(),
            body: raw(r#"{"a": [1, 2.5, "x"]}"#),
            timeout_ms: Some(1500),
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
            }),
            Frame::Auth(Auth {
                nonce: "cd".repeat(32),
                name: Some("A0001".into()),
                claim: Some("ef".repeat(32)),
                meta: serde_json::from_str(r#"{"region":"eu"}"#).unwrap(),
                proof: "01".repeat(32),
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
            }),
            Frame::Reject(Reject {
                code: "WRONG_SECRET".into(),
                message: "bad proof".into(),
            }),
        ];
        for f in frames {
            let text = encode(&f);
            let back = decode(&text).unwrap();
            assert_eq!(encode(&back), text);
        }
    }
}
