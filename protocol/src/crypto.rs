//! The MACs of the handshake, name tokens and signed frames.
//!
//! Every MAC is HMAC-SHA256 over a domain-separation tag followed by
//! fixed-width or length-prefixed fields, so that no input of one kind can be
//! read as another. `docs/PROTOCOL.md` lists the exact byte layouts; the test
//! vectors there are checked by this crate's tests.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of nonces, MACs, tokens and keys, in bytes.
pub const LEN: usize = 32;

/// Tag of the agent's proof of the shared secret.
pub const TAG_CLIENT_PROOF: &[u8] = b"agent-tunnel/v1/client-proof";
/// Tag of the server's proof of the shared secret.
pub const TAG_SERVER_PROOF: &[u8] = b"agent-tunnel/v1/server-proof";
/// Tag of a name token.
pub const TAG_NAME_TOKEN: &[u8] = b"agent-tunnel/v1/name-token";
/// Tag of a name claim.
pub const TAG_CLAIM: &[u8] = b"agent-tunnel/v1/claim";
/// Tag of the session key.
pub const TAG_SESSION: &[u8] = b"agent-tunnel/v1/session";
/// Tag of a signed frame's MAC.
pub const TAG_FRAME: &[u8] = b"agent-tunnel/v1/frame";
/// Tag of the server's proof of a refusal (`reject.proof`).
pub const TAG_REJECT: &[u8] = b"agent-tunnel/v1/reject";

/// The shared secret. Its `Debug` prints no byte of it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// True when the secret has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

/// A 32-byte key (server key, name token or session key). `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; LEN]);

impl Key {
    /// A fresh random key.
    pub fn random() -> Self {
        Key(random_bytes())
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; LEN]) -> Self {
        Key(bytes)
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        decode_hex32(s).map(Key)
    }

    /// The key as 64 lowercase hex digits, for stores and the wire. Keep the
    /// result out of logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// 32 random bytes from the operating system's generator.
pub fn random_bytes() -> [u8; LEN] {
    rand::random()
}

/// Parses exactly 64 hex digits.
pub fn decode_hex32(s: &str) -> Option<[u8; LEN]> {
    let mut out = [0u8; LEN];
    if s.len() != LEN * 2 {
        return None;
    }
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A MAC being computed over a tag and fields; finish it or verify it.
/// Cloning a keyed input is cheaper than keying a new one.
#[derive(Clone)]
pub struct MacInput(HmacSha256);

impl MacInput {
    pub(crate) fn new(key: &[u8], tag: &[u8]) -> Self {
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(key)
            .expect("HMAC takes keys of any length, so keying never fails; qed");
        mac.update(tag);
        MacInput(mac)
    }

    /// Appends fixed-width bytes.
    pub(crate) fn fixed(mut self, bytes: &[u8]) -> Self {
        self.0.update(bytes);
        self
    }

    /// Appends a field prefixed with its length as a big-endian u32.
    pub(crate) fn var(mut self, bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.update(&len.to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The MAC.
    pub fn finish(self) -> [u8; LEN] {
        self.0.finalize().into_bytes().into()
    }

    /// Compares in constant time against `expected`.
    pub fn verify(self, expected: &[u8]) -> bool {
        self.0.verify_slice(expected).is_ok()
    }
}

/// `HMAC(secret, TAG_CLIENT_PROOF ‖ nonce_s ‖ nonce_c ‖ len32(name) ‖ name)`.
pub fn client_proof_input(
    secret: &Secret,
    nonce_s: &[u8; LEN],
    nonce_c: &[u8; LEN],
    name: &str,
) -> MacInput {
    MacInput::new(secret.bytes(), TAG_CLIENT_PROOF)
        .fixed(nonce_s)
        .fixed(nonce_c)
        .var(name.as_bytes())
}

/// `HMAC(secret, TAG_SERVER_PROOF ‖ nonce_s ‖ nonce_c ‖ len32(name) ‖ name)`.
pub fn server_proof_input(
    secret: &Secret,
    nonce_s: &[u8; LEN],
    nonce_c: &[u8; LEN],
    name: &str,
) -> MacInput {
    MacInput::new(secret.bytes(), TAG_SERVER_PROOF)
        .fixed(nonce_s)
        .fixed(nonce_c)
        .var(name.as_bytes())
}

/// `HMAC(secret, TAG_REJECT ‖ nonce_s ‖ nonce_c ‖ len32(code) ‖ code)`: the
/// server's proof that it, and not a forger, refused this connection with
/// `code`. Only a server whose peer's `auth.proof` verified sends it, since
/// only then is `nonce_c` bound to an agent that knows the secret.
pub fn reject_proof_input(
    secret: &Secret,
    nonce_s: &[u8; LEN],
    nonce_c: &[u8; LEN],
    code: &str,
) -> MacInput {
    MacInput::new(secret.bytes(), TAG_REJECT)
        .fixed(nonce_s)
        .fixed(nonce_c)
        .var(code.as_bytes())
}

/// `HMAC(server_key, TAG_NAME_TOKEN ‖ len32(name) ‖ name)`.
pub fn name_token(server_key: &Key, name: &str) -> Key {
    Key(MacInput::new(&server_key.0, TAG_NAME_TOKEN)
        .var(name.as_bytes())
        .finish())
}

/// `HMAC(token, TAG_CLAIM ‖ nonce_s ‖ nonce_c)`.
pub fn claim_input(token: &Key, nonce_s: &[u8; LEN], nonce_c: &[u8; LEN]) -> MacInput {
    MacInput::new(&token.0, TAG_CLAIM)
        .fixed(nonce_s)
        .fixed(nonce_c)
}

/// `HMAC(secret, TAG_SESSION ‖ nonce_s ‖ nonce_c)`.
pub fn session_key(secret: &Secret, nonce_s: &[u8; LEN], nonce_c: &[u8; LEN]) -> Key {
    Key(MacInput::new(secret.bytes(), TAG_SESSION)
        .fixed(nonce_s)
        .fixed(nonce_c)
        .finish())
}

/// `HMAC(session_key, TAG_FRAME ‖ direction ‖ seq_be64 ‖ frame bytes)`.
pub fn frame_mac_input(session: &Key, direction: u8, seq: u64, frame: &[u8]) -> MacInput {
    frame_mac_base(session, direction).frame(seq, frame)
}

/// The keyed state `HMAC(session_key, TAG_FRAME ‖ direction ‖ …)`, computed
/// once per link and direction; [`MacInput::frame`] finishes it per frame.
pub fn frame_mac_base(session: &Key, direction: u8) -> MacInput {
    MacInput::new(&session.0, TAG_FRAME).fixed(&[direction])
}

impl MacInput {
    /// Continues a [`frame_mac_base`] with one frame's sequence number and bytes.
    pub fn frame(&self, seq: u64, frame: &[u8]) -> MacInput {
        self.clone().fixed(&seq.to_be_bytes()).fixed(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_or_key() {
        let s = Secret::from("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        let k = Key::from_bytes([0xab; LEN]);
        assert!(!format!("{k:?}").contains("abab"));
    }

    #[test]
    fn proofs_are_domain_separated() {
        let s = Secret::from("s");
        let a = client_proof_input(&s, &[1; LEN], &[2; LEN], "A1").finish();
        let b = server_proof_input(&s, &[1; LEN], &[2; LEN], "A1").finish();
        assert_ne!(a, b);
        assert!(client_proof_input(&s, &[1; LEN], &[2; LEN], "A1").verify(&a));
        assert!(!client_proof_input(&s, &[1; LEN], &[2; LEN], "A2").verify(&a));
        assert!(!client_proof_input(&s, &[1; LEN], &[2; LEN], "A1").verify(&a[..31]));
        let r = reject_proof_input(&s, &[1; LEN], &[2; LEN], "A1").finish();
        assert_ne!(r, a);
        assert_ne!(r, b);
    }

    #[test]
    fn hex32_parsing_is_strict() {
        assert!(decode_hex32(&"0".repeat(64)).is_some());
        assert!(decode_hex32(&"0".repeat(63)).is_none());
        assert!(decode_hex32(&"g".repeat(64)).is_none());
        assert!(decode_hex32("é").is_none());
    }
}
