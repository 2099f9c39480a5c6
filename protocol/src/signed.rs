//! Signed frames: with signing on, every frame after the handshake travels in
//! an envelope that carries a per-direction sequence number and a MAC under the
//! session key over that number and the frame's exact bytes:
//!
//! ```text
//! {"t":"sig","seq":<u64>,"mac":"<64 hex>","f":<frame>}
//! mac = HMAC(session_key, TAG_FRAME ‖ direction ‖ seq as u64 big-endian ‖ bytes of <frame>)
//! ```
//!
//! `direction` is `S` (0x53) for server → agent and `A` (0x41) for agent →
//! server; sequence numbers start at 0 in each direction and grow by one per
//! frame. A binary frame (see [`crate::binary`]) is signed the same way, in
//! the same sequence, as one binary message:
//!
//! ```text
//! seq as u64 big-endian (8 bytes) ‖ mac (32 bytes) ‖ <binary frame>
//! mac = HMAC(session_key, TAG_FRAME ‖ direction ‖ seq as u64 big-endian ‖ bytes of <binary frame>)
//! ```
//!
//! The two cannot be mistaken for each other: a text frame's bytes begin
//! with `{`, a binary frame's with its kind, 1 to 3. A forged frame fails the MAC; a replayed, reordered or dropped frame
//! breaks the sequence. Either ends the link with close code 4002.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::crypto::{self, Key, MacInput};

/// Direction byte of frames the server sends.
pub const SERVER_TO_AGENT: u8 = b'S';
/// Direction byte of frames an agent sends.
pub const AGENT_TO_SERVER: u8 = b'A';

/// Why a frame failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The frame is not a signed envelope, but signing is required.
    #[error("frame is not signed")]
    NotSigned,
    /// The envelope is not well formed.
    #[error("malformed signed envelope: {0}")]
    Malformed(String),
    /// The sequence number is not the next one: a replay, reorder or drop.
    #[error("frame out of sequence: expected {expected}, got {got}")]
    OutOfSequence {
        /// The sequence number the receiver expected.
        expected: u64,
        /// The one the frame carried.
        got: u64,
    },
    /// The MAC does not verify: the frame was forged or altered.
    #[error("frame MAC does not verify")]
    BadMac,
}

/// Signs outgoing frames for one direction of one link.
pub struct Signer {
    base: MacInput,
    seq: u64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer starting at sequence number 0.
    pub fn new(key: Key, direction: u8) -> Self {
        Signer {
            base: crypto::frame_mac_base(&key, direction),
            seq: 0,
        }
    }

    /// Wraps `frame` (one encoded frame) in a signed envelope.
    pub fn sign(&mut self, frame: &str) -> String {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mac = self.base.frame(seq, frame.as_bytes()).finish();
        let mut mac_hex = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(mac, &mut mac_hex);
        let mut out = String::with_capacity(frame.len() + 120);
        out.push_str(r#"{"t":"sig","seq":"#);
        out.push_str(itoa::Buffer::new().format(seq));
        out.push_str(r#","mac":""#);
        out.push_str(std::str::from_utf8(&mac_hex).unwrap_or_default());
        out.push_str(r#"","f":"#);
        out.push_str(frame);
        out.push('}');
        out
    }
}

/// Bytes a signed binary message carries before its frame: the sequence
/// number and the MAC.
pub const BINARY_PREFIX: usize = 8 + 32;

impl Signer {
    /// Signs a binary frame in place: `msg` is [`BINARY_PREFIX`] bytes of
    /// room followed by the frame, and the room receives the sequence
    /// number and the MAC.
    pub fn sign_binary(&mut self, msg: &mut [u8]) {
        let Some((prefix, frame)) = msg.split_at_mut_checked(BINARY_PREFIX) else {
            return;
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mac = self.base.frame(seq, frame).finish();
        let (seq_bytes, mac_bytes) = prefix.split_at_mut(8);
        seq_bytes.copy_from_slice(&seq.to_be_bytes());
        mac_bytes.copy_from_slice(&mac);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    t: &'a str,
    seq: u64,
    mac: &'a str,
    #[serde(borrow)]
    f: &'a RawValue,
}

/// Splits an envelope in exactly the layout [`Signer::sign`] writes
/// (`{"t":"sig","seq":N,"mac":"…","f":FRAME}`) without a JSON parse; any
/// other layout returns `None` and goes through the full parser. The frame
/// bytes are then checked by the MAC and parsed once, by the codec.
fn split_canonical(text: &str) -> Option<(u64, &str, &str)> {
    let rest = text.strip_prefix(r#"{"t":"sig","seq":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest.starts_with('0')) {
        return None;
    }
    let seq: u64 = rest.get(..digits)?.parse().ok()?;
    let rest = rest.get(digits..)?.strip_prefix(r#","mac":""#)?;
    let mac = rest.get(..64)?;
    let frame = rest
        .get(64..)?
        .strip_prefix(r#"","f":"#)?
        .strip_suffix('}')?;
    // The frame must be the whole value: an object, with nothing around it.
    let trimmed = frame.trim();
    if trimmed.len() != frame.len() || !frame.starts_with('{') || !frame.ends_with('}') {
        return None;
    }
    Some((seq, mac, frame))
}

/// Verifies incoming frames for one direction of one link.
pub struct Verifier {
    base: MacInput,
    expected: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier expecting sequence number 0 first.
    pub fn new(key: Key, direction: u8) -> Self {
        Verifier {
            base: crypto::frame_mac_base(&key, direction),
            expected: 0,
        }
    }

    /// Checks an envelope and returns the exact text of the frame inside.
    pub fn verify<'a>(&mut self, text: &'a str) -> Result<&'a str, SignError> {
        if !text.starts_with(r#"{"t":"sig""#) {
            return Err(SignError::NotSigned);
        }
        let (seq, mac, frame) = match split_canonical(text) {
            Some(parts) => parts,
            None => {
                let env: Envelope<'a> =
                    serde_json::from_str(text).map_err(|e| SignError::Malformed(e.to_string()))?;
                if env.t != "sig" {
                    return Err(SignError::NotSigned);
                }
                (env.seq, env.mac, env.f.get())
            }
        };
        let mac = crypto::decode_hex32(mac).ok_or(SignError::BadMac)?;
        if !self.base.frame(seq, frame.as_bytes()).verify(&mac) {
            return Err(SignError::BadMac);
        }
        // Checked after the MAC so that a forged sequence number reads as forgery.
        if seq != self.expected {
            return Err(SignError::OutOfSequence {
                expected: self.expected,
                got: seq,
            });
        }
        self.expected = self.expected.wrapping_add(1);
        Ok(frame)
    }

    /// Checks a signed binary message and returns the frame inside, sharing
    /// the message's buffer.
    pub fn verify_binary(
        &mut self,
        msg: &tokio_tungstenite::tungstenite::Bytes,
    ) -> Result<tokio_tungstenite::tungstenite::Bytes, SignError> {
        let (Some(seq), Some(mac)) = (msg.get(..8), msg.get(8..BINARY_PREFIX)) else {
            return Err(SignError::Malformed(format!(
                "signed binary message of {} bytes, shorter than its prefix",
                msg.len()
            )));
        };
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| SignError::BadMac)?);
        let mac: [u8; 32] = mac.try_into().map_err(|_| SignError::BadMac)?;
        let frame = msg.slice(BINARY_PREFIX..);
        if !self.base.frame(seq, &frame).verify(&mac) {
            return Err(SignError::BadMac);
        }
        if seq != self.expected {
            return Err(SignError::OutOfSequence {
                expected: self.expected,
                got: seq,
            });
        }
        self.expected = self.expected.wrapping_add(1);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Signer, Verifier) {
        let key = Key::from_bytes([7; 32]);
        (
            Signer::new(key.clone(), AGENT_TO_SERVER),
            Verifier::new(key, AGENT_TO_SERVER),
        )
    }

    #[test]
    fn canonical_and_reformatted_envelopes_verify_the_same() {
        let (mut s, mut v) = pair();
        let inner = r#"{"t":"req","id":1,"action":"a","body":[1,2]}"#;
        let env = s.sign(inner);
        assert_eq!(split_canonical(&env).map(|p| p.2), Some(inner));
        // The same envelope with whitespace takes the full parser.
        let spaced = env.replacen(r#""seq":0"#, r#""seq": 0"#, 1);
        assert_eq!(split_canonical(&spaced), None);
        assert_eq!(v.verify(&spaced).unwrap(), inner);
        let env2 = s.sign(inner);
        assert_eq!(v.verify(&env2).unwrap(), inner);
        // Leading zeros and trailing members are not canonical.
        assert_eq!(
            split_canonical(&env2.replacen(r#""seq":1"#, r#""seq":01"#, 1)),
            None
        );
        assert!(v
            .verify(&format!("{}, \"x\":1}}", &env2[..env2.len() - 1]))
            .is_err());
    }

    #[test]
    fn signed_frames_verify_in_order() {
        let (mut s, mut v) = pair();
        for i in 0..3 {
            let inner = format!(r#"{{"t":"req","id":{i},"action":"a","body":null}}"#);
            let env = s.sign(&inner);
            assert_eq!(v.verify(&env).unwrap(), inner);
        }
    }

    #[test]
    fn forged_replayed_reordered_and_unsigned_frames_fail() {
        let (mut s, mut v) = pair();
        let f0 = s.sign(r#"{"t":"req","id":1,"action":"a","body":1}"#);
        let f1 = s.sign(r#"{"t":"req","id":2,"action":"a","body":2}"#);
        let f2 = s.sign(r#"{"t":"req","id":3,"action":"a","body":3}"#);
        // Forged: body altered.
        let forged = f0.replace(r#""body":1"#, r#""body":9"#);
        assert_eq!(v.verify(&forged), Err(SignError::BadMac));
        assert!(v.verify(&f0).is_ok());
        // Replayed.
        assert!(matches!(
            v.verify(&f0),
            Err(SignError::OutOfSequence {
                expected: 1,
                got: 0
            })
        ));
        // Dropped f1, so f2 is out of sequence.
        assert!(matches!(
            v.verify(&f2),
            Err(SignError::OutOfSequence {
                expected: 1,
                got: 2
            })
        ));
        assert!(v.verify(&f1).is_ok());
        assert_eq!(
            v.verify(r#"{"t":"req","id":4,"action":"a"}"#),
            Err(SignError::NotSigned)
        );
        // A frame signed for the other direction does not verify.
        let mut other = Signer::new(Key::from_bytes([7; 32]), SERVER_TO_AGENT);
        let _ = other.sign("{}");
        let _ = other.sign("{}");
        assert_eq!(
            v.verify(&other.sign(r#"{"t":"x"}"#)),
            Err(SignError::BadMac)
        );
    }
}
