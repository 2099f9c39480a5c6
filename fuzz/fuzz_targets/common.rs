//! Fixed inputs shared by the fuzz targets: the test-vector values of
//! docs/PROTOCOL.md section 14.1, so that the seed corpus (taken from section
//! 14) drives the state machines down their success paths.

#![allow(dead_code)]

use agent_protocol::crypto::{self, Key};
use agent_protocol::Secret;

/// The shared secret of section 14.1.
pub const SECRET: &str = "correct horse battery staple";
/// `nonce_s` of the first connection.
pub const NONCE_S: [u8; 32] = [0x01; 32];
/// `nonce_c` of the first connection.
pub const NONCE_C: [u8; 32] = [0x02; 32];
/// The server key.
pub const SERVER_KEY: [u8; 32] = [0x03; 32];
/// The `hello` of section 14.2.
pub const HELLO_1: &str = r#"{"t":"hello","v":1,"nonce":"0101010101010101010101010101010101010101010101010101010101010101","sign":true}"#;
/// `frame_a0` of section 14.3.
pub const FRAME_A0: &str =
    r#"{"t":"req","id":1,"action":"echo","body":{"msg":"hi"},"timeout_ms":30000}"#;

pub fn secret() -> Secret {
    Secret::from(SECRET)
}

pub fn server_key() -> Key {
    Key::from_bytes(SERVER_KEY)
}

/// The session key of the first connection (`session_key_1`).
pub fn session_key() -> Key {
    crypto::session_key(&secret(), &NONCE_S, &NONCE_C)
}

/// 32 bytes as 64 lowercase hex digits.
pub fn hex32(bytes: [u8; 32]) -> String {
    Key::from_bytes(bytes).to_hex()
}
