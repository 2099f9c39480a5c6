//! Frame decoding: arbitrary bytes must never make `codec::decode` panic, and
//! every frame it accepts must survive encode → decode with an identical
//! encoding (the encoding is a fixed point after one round); `encode` must
//! write exactly what serde writes for the frame; and the direct path that
//! `decode` takes for call frames must decide exactly as the general parser.
//!
//! Floats in `auth.meta` and `res.err.data` are compared exactly too: the
//! workspace builds serde_json with `float_roundtrip` (finding F1 in
//! fuzz/README.md, kept in the corpus as `regression-f1-*`).

#![no_main]

use agent_protocol::codec::{decode, decode_general, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transport closes a non-UTF-8 text message with 1007 before the
    // codec sees it, so only UTF-8 reaches `decode`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode(text);
    assert_eq!(
        format!("{decoded:?}"),
        format!("{:?}", decode_general(text)),
        "the direct and general paths disagree\ninput: {text:?}"
    );
    let Ok(frame) = decoded else {
        return;
    };
    let first = encode(&frame);
    // `req` and `res` take hand-written encoders; they must write exactly
    // what serde writes for the frame.
    let serde = serde_json::to_string(&frame).expect("a decoded frame serializes");
    assert_eq!(first, serde, "encode differs from serde\ninput: {text:?}");
    let again = match decode(&first) {
        Ok(f) => f,
        Err(e) => {
            panic!("an encoded frame does not decode: {e}\ninput:   {text:?}\nencoded: {first:?}")
        }
    };
    assert_eq!(again.kind(), frame.kind(), "input: {text:?}");
    let second = encode(&again);
    assert_eq!(
        second, first,
        "encoding is not stable across decode\ninput: {text:?}"
    );
});
