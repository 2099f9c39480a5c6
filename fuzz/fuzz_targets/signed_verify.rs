//! Signed-frame verification: arbitrary text must never make
//! `Verifier::verify` panic; a frame signed by `Signer` verifies exactly once
//! and yields its exact bytes; and any single-byte change to a valid envelope
//! either fails or yields the identical inner frame.
//!
//! Input layout: the whole input, split at NUL bytes, is a stream of messages
//! for one verifier (keyed with `session_key_1` of docs/PROTOCOL.md 14.2,
//! direction `A`). The first message, when it is exactly one JSON value, is
//! also the frame that gets signed (otherwise `frame_a0` of 14.3 is); the
//! first 24 bytes of the input, read as up to six 4-byte groups
//! `[op, pos_hi, pos_lo, byte]`, are single-byte changes (replace, insert,
//! delete) applied one at a time to the signed envelope.

#![no_main]

#[path = "common.rs"]
mod common;

use agent_protocol::crypto::Key;
use agent_protocol::signed::{SignError, Signer, Verifier, AGENT_TO_SERVER, SERVER_TO_AGENT};
use agent_protocol::RawValue;
use libfuzzer_sys::fuzz_target;

use common::{session_key, FRAME_A0};

fn exact_json(text: &str) -> bool {
    serde_json::from_str::<&RawValue>(text).is_ok_and(|raw| raw.get() == text)
}

fuzz_target!(|data: &[u8]| {
    let key = session_key();

    // 1. Arbitrary messages, in order, into one verifier: no panic, and
    //    whatever verifies is a slice of the message it came in.
    let mut verifier = Verifier::new(key.clone(), AGENT_TO_SERVER);
    let mut accepted = 0u64;
    for msg in data.split(|&b| b == 0) {
        let Ok(text) = std::str::from_utf8(msg) else {
            continue;
        };
        match verifier.verify(text) {
            Ok(inner) => {
                accepted += 1;
                assert!(text.contains(inner));
            }
            Err(SignError::OutOfSequence { expected, .. }) => assert_eq!(expected, accepted),
            Err(_) => {}
        }
    }

    // 2. A signed frame verifies once, with its exact bytes, only under its
    //    key and direction.
    let first = data.split(|&b| b == 0).next().unwrap_or_default();
    let frame = match std::str::from_utf8(first) {
        Ok(t) if exact_json(t) => t,
        _ => FRAME_A0,
    };
    let envelope = Signer::new(key.clone(), AGENT_TO_SERVER).sign(frame);
    let mut v = Verifier::new(key.clone(), AGENT_TO_SERVER);
    assert_eq!(v.verify(&envelope), Ok(frame), "envelope {envelope:?}");
    assert_eq!(
        v.verify(&envelope),
        Err(SignError::OutOfSequence {
            expected: 1,
            got: 0
        })
    );
    let mut other_dir = Verifier::new(key.clone(), SERVER_TO_AGENT);
    assert_eq!(other_dir.verify(&envelope), Err(SignError::BadMac));
    let mut other_key = Verifier::new(Key::from_bytes([0x42; 32]), AGENT_TO_SERVER);
    assert_eq!(other_key.verify(&envelope), Err(SignError::BadMac));

    // 3. Single-byte changes to the envelope.
    let bytes = envelope.as_bytes();
    for group in data.chunks_exact(4).take(6) {
        let &[op, hi, lo, byte] = group else {
            continue;
        };
        let pos = usize::from(u16::from_be_bytes([hi, lo]));
        let mut changed = bytes.to_vec();
        match op % 3 {
            0 => {
                let pos = pos % bytes.len();
                if changed[pos] == byte {
                    continue;
                }
                changed[pos] = byte;
            }
            1 => changed.insert(pos % (bytes.len() + 1), byte),
            _ => {
                changed.remove(pos % bytes.len());
            }
        }
        // Not UTF-8: the transport closes with 1007 before verification.
        let Ok(text) = std::str::from_utf8(&changed) else {
            continue;
        };
        let mut v = Verifier::new(key.clone(), AGENT_TO_SERVER);
        if let Ok(inner) = v.verify(text) {
            assert_eq!(
                inner, frame,
                "a changed envelope verified with another frame\nenvelope: {envelope:?}\nchanged:  {text:?}"
            );
        }
    }
});
