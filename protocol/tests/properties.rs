//! Property tests (proptest) of the pure protocol layer: the codec, the frame
//! MACs of signed links, the handshake proofs and the name format.
//!
//! Every property runs a moderate number of generated cases, so the file
//! takes a few seconds in a debug build. The fuzz targets under `fuzz/` cover
//! the same code with unstructured input for much longer; see
//! `fuzz/README.md`.
//!
//! Floats are any finite `f64`, in bodies (kept as raw text) and in the
//! `serde_json::Value` members (`auth.meta`, `res.err.data`) alike: the
//! workspace builds serde_json with `float_roundtrip`, so every float comes
//! back bit for bit (finding F1 in `fuzz/README.md`).

use std::collections::BTreeMap;

use agent_protocol::close;
use agent_protocol::codec::{decode, decode_general, encode, DecodeError};
use agent_protocol::codes;
use agent_protocol::crypto::{self, Key, Secret};
use agent_protocol::frame::{
    Auth, Cancel, Frame, Hello, HookError, Limits, Note, Outcome, Prog, Reject, Req, Res, Welcome,
};
use agent_protocol::handshake::{ClientHandshake, Identity, ServerHandshake};
use agent_protocol::name::{is_valid_name, MAX_NAME_LEN};
use agent_protocol::signed::{SignError, Signer, Verifier, AGENT_TO_SERVER, SERVER_TO_AGENT};
use agent_protocol::{Error, NameFormat, RawValue};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The proptest configuration of this file: `cases` cases, and no
/// regression files written next to the sources.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any text: proptest's own strings (no control characters), any chars
/// (control characters, surrogate-free Unicode of every plane), and the
/// characters JSON must escape.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        r#"[\x00-\x1f"\\\x7fa/é]{0,12}"#,
    ]
}

/// Any finite float.
fn any_float() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

/// Any JSON value, with floats from `float`.
fn json_value<F>(float: F) -> BoxedStrategy<Value>
where
    F: Strategy<Value = f64> + 'static,
{
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float.prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON object of any values (`meta`).
fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(text(), json_value(any_float()), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

/// A body: any JSON value, as compact or pretty text (the codec must keep the
/// bytes either way).
fn body() -> impl Strategy<Value = Box<RawValue>> {
    (json_value(any_float()), any::<bool>()).prop_map(|(v, pretty)| {
        let text = if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        };
        RawValue::from_string(text.expect("a Value always serializes")).expect("valid JSON")
    })
}

/// Hex as the handshake carries it: lowercase, mixed case, or any text (the
/// codec does not check it; the handshake does).
fn hex() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9a-f]{64}",
        1 => "[0-9a-fA-F]{64}",
        1 => text(),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(m, f, p)| Limits {
        max_message_bytes: m,
        max_in_flight: f,
        ping_interval_ms: p,
    })
}

fn hook_error() -> impl Strategy<Value = HookError> {
    (text(), text(), prop::option::of(json_value(any_float()))).prop_map(|(code, message, data)| {
        HookError {
            code,
            message,
            data,
        }
    })
}

/// A `caps` member: known names, unknown ones, or none.
fn caps() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![Just("cancel".to_owned()), Just("note".to_owned()), text()],
        0..3,
    )
}

/// A frame of any kind with arbitrary field values.
fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), hex(), any::<bool>(), caps()).prop_map(|(v, nonce, sign, caps)| {
            Frame::Hello(Hello {
                v,
                nonce,
                sign,
                caps,
            })
        }),
        (
            hex(),
            prop::option::of(text()),
            prop::option::of(hex()),
            prop::option::of(hex()),
            json_object(),
            json_object(),
            (hex(), caps())
        )
            .prop_map(|(nonce, name, claim, bind, meta, labels, (proof, caps))| {
                Frame::Auth(Auth {
                    nonce,
                    name,
                    claim,
                    bind,
                    meta,
                    labels,
                    proof,
                    caps,
                })
            }),
        (
            text(),
            any::<bool>(),
            prop::option::of(hex()),
            hex(),
            (limits(), caps())
        )
            .prop_map(|(name, first_time, token, proof, (limits, caps))| {
                Frame::Welcome(Welcome {
                    name,
                    first_time,
                    token,
                    proof,
                    limits,
                    caps,
                })
            }),
        (text(), text(), prop::option::of(hex())).prop_map(|(code, message, proof)| {
            Frame::Reject(Reject {
                code,
                message,
                proof,
            })
        }),
        (
            any::<u64>(),
            text(),
            body(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u32>()),
            prop::option::of(text())
        )
            .prop_map(
                |(id, action, body, timeout_ms, credit, from)| Frame::Req(Req {
                    id,
                    action,
                    body,
                    timeout_ms,
                    stream: credit.map(|credit| agent_protocol::StreamOpen { credit }),
                    from
                })
            ),
        (any::<u64>(), body()).prop_map(|(id, b)| Frame::Res(Res {
            id,
            outcome: Outcome::Ok(b)
        })),
        (any::<u64>(), hook_error()).prop_map(|(id, e)| Frame::Res(Res {
            id,
            outcome: Outcome::Err(e)
        })),
        (text(), body()).prop_map(|(action, body)| Frame::Note(Note { action, body })),
        any::<u64>().prop_map(|id| Frame::Cancel(Cancel { id })),
        (any::<u64>(), body()).prop_map(|(id, body)| Frame::Prog(Prog { id, body })),
    ]
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The frame a receiver decodes from `f`'s encoding: `err.data` of `null`
/// counts as absent (docs/PROTOCOL.md 5.6); everything else is unchanged.
fn as_received(f: &Frame) -> Frame {
    let mut f = f.clone();
    if let Frame::Res(Res {
        outcome: Outcome::Err(e),
        ..
    }) = &mut f
    {
        if e.data.as_ref().is_some_and(Value::is_null) {
            e.data = None;
        }
    }
    f
}

/// Field-by-field equality; bodies compare by their exact text.
fn assert_same(want: &Frame, got: &Frame) -> Result<(), TestCaseError> {
    match (want, got) {
        (Frame::Hello(a), Frame::Hello(b)) => prop_assert_eq!(a, b),
        (Frame::Auth(a), Frame::Auth(b)) => prop_assert_eq!(a, b),
        (Frame::Welcome(a), Frame::Welcome(b)) => prop_assert_eq!(a, b),
        (Frame::Reject(a), Frame::Reject(b)) => prop_assert_eq!(a, b),
        (Frame::Req(a), Frame::Req(b)) => {
            prop_assert_eq!(a.id, b.id);
            prop_assert_eq!(&a.action, &b.action);
            prop_assert_eq!(a.body.get(), b.body.get());
            prop_assert_eq!(a.timeout_ms, b.timeout_ms);
            prop_assert_eq!(a.stream, b.stream);
        }
        (Frame::Res(a), Frame::Res(b)) => {
            prop_assert_eq!(a.id, b.id);
            match (&a.outcome, &b.outcome) {
                (Outcome::Ok(x), Outcome::Ok(y)) => prop_assert_eq!(x.get(), y.get()),
                (Outcome::Err(x), Outcome::Err(y)) => prop_assert_eq!(x, y),
                (x, y) => prop_assert!(false, "outcome {x:?} decoded as {y:?}"),
            }
        }
        (Frame::Note(a), Frame::Note(b)) => {
            prop_assert_eq!(&a.action, &b.action);
            prop_assert_eq!(a.body.get(), b.body.get());
        }
        (Frame::Cancel(a), Frame::Cancel(b)) => prop_assert_eq!(a, b),
        (Frame::Prog(a), Frame::Prog(b)) => {
            prop_assert_eq!(a.id, b.id);
            prop_assert_eq!(a.body.get(), b.body.get());
        }
        (a, b) => prop_assert!(false, "{} decoded as {}", a.kind(), b.kind()),
    }
    Ok(())
}

/// The members of an encoded frame, each with its exact value text.
fn members(text: &str) -> Vec<(String, String)> {
    let map: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(text).expect("an encoded frame is a JSON object");
    map.into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect()
}

/// Writes members back into an object, in the given order, with the given
/// whitespace between tokens.
fn object(members: &[(String, String)], ws: &[&str]) -> String {
    let mut w = ws.iter().cycle();
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(w.next().copied().unwrap_or(""));
        out.push_str(&serde_json::to_string(k).expect("a string serializes"));
        out.push_str(w.next().copied().unwrap_or(""));
        out.push(':');
        out.push_str(w.next().copied().unwrap_or(""));
        out.push_str(v);
        out.push_str(w.next().copied().unwrap_or(""));
    }
    out.push('}');
    out
}

/// The members a frame kind requires (docs/PROTOCOL.md section 5), except
/// `res`'s `ok`/`err`, whose absence is `AmbiguousOutcome`.
fn required(kind: &str) -> &'static [&'static str] {
    match kind {
        "hello" => &["v", "nonce"],
        "auth" => &["nonce", "proof"],
        "welcome" => &["name", "first_time", "proof", "limits"],
        "reject" => &["code"],
        "req" => &["id", "action"],
        "res" | "cancel" | "prog" => &["id"],
        "note" => &["action"],
        _ => &[],
    }
}

/// A deterministic permutation of `0..n` from a seed (Fisher–Yates over a
/// xorshift generator).
fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = usize::try_from(seed % (i as u64 + 1)).unwrap_or(0);
        p.swap(i, j);
    }
    p
}

/// The bytes HMAC actually keys with: a key longer than SHA-256's block (64
/// bytes) is hashed first, and a shorter one is padded with zero bytes, so
/// trailing zero bytes do not count.
fn hmac_key(secret: &[u8]) -> Vec<u8> {
    let mut k = if secret.len() > 64 {
        Sha256::digest(secret).to_vec()
    } else {
        secret.to_vec()
    };
    while k.last() == Some(&0) {
        k.pop();
    }
    k
}

/// The byte range of the inner frame `f` in an envelope `Signer` wrote.
fn inner_range(envelope: &str) -> std::ops::Range<usize> {
    let start = envelope.find(r#","f":"#).expect("an envelope has `f`") + 5;
    start..envelope.len() - 1
}

/// One edit at a char boundary: replace, insert or delete one char.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, char),
    Insert(prop::sample::Index, char),
    Delete(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<char>()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<prop::sample::Index>(), any::<char>()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ]
}

/// Applies `edit` to the chars of `text[range]`; `None` when it changes
/// nothing.
fn apply(text: &str, range: std::ops::Range<usize>, edit: &Edit) -> Option<String> {
    let region = &text[range.clone()];
    let mut chars: Vec<char> = region.chars().collect();
    match edit {
        Edit::Replace(i, c) => {
            let i = i.index(chars.len());
            if chars[i] == *c {
                return None;
            }
            chars[i] = *c;
        }
        Edit::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
        Edit::Delete(i) => {
            chars.remove(i.index(chars.len()));
        }
    }
    let region: String = chars.into_iter().collect();
    Some(format!(
        "{}{}{}",
        &text[..range.start],
        region,
        &text[range.end..]
    ))
}

fn meta() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("region".into(), Value::from("eu"));
    m
}

fn direction() -> impl Strategy<Value = u8> {
    prop_oneof![Just(AGENT_TO_SERVER), Just(SERVER_TO_AGENT)]
}

fn other(direction: u8) -> u8 {
    if direction == AGENT_TO_SERVER {
        SERVER_TO_AGENT
    } else {
        AGENT_TO_SERVER
    }
}

// ---------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(128))]

    /// Every frame kind, built from arbitrary field values, decodes from its
    /// encoding to the same fields (bodies byte for byte; `err.data` of
    /// `null` as absent), and the encoding is a fixed point. `encode` writes
    /// exactly what serde writes for the frame (`req` and `res` take
    /// hand-written encoders).
    #[test]
    fn every_frame_round_trips_through_the_codec(frame in any_frame()) {
        let text = encode(&frame);
        prop_assert_eq!(&text, &serde_json::to_string(&frame).expect("a frame serializes"));
        let prefix = format!(r#"{{"t":"{}""#, frame.kind());
        prop_assert!(text.starts_with(&prefix), "{text}");
        let back = decode(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let want = as_received(&frame);
        assert_same(&want, &back)?;
        prop_assert_eq!(encode(&back), encode(&want));
    }

    /// Member order and whitespace between tokens are not significant.
    #[test]
    fn member_order_and_whitespace_do_not_matter(
        frame in any_frame(),
        seed in any::<u64>(),
        ws in prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t", "\r\n  "]), 1..8),
    ) {
        let want = as_received(&frame);
        let mut m = members(&encode(&frame));
        let order = permutation(m.len(), seed);
        m = order.into_iter().map(|i| m[i].clone()).collect();
        let text = format!("{}{}{}", ws[0], object(&m, &ws), ws[ws.len() - 1]);
        let back = decode(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        assert_same(&want, &back)?;
    }

    /// Dropping a member: a required one gives `MissingField` (`t`: invalid
    /// JSON; `res`'s outcome: `AmbiguousOutcome`), an optional one still
    /// decodes. Repeating a member is refused.
    #[test]
    fn required_members_are_required_and_none_may_repeat(
        frame in any_frame(),
        pick in any::<prop::sample::Index>(),
    ) {
        let kind = frame.kind();
        let m = members(&encode(&frame));
        let i = pick.index(m.len());
        let key = m[i].0.clone();
        let mut dropped = m.clone();
        dropped.remove(i);
        let result = decode(&object(&dropped, &[""]));
        if key == "t" {
            prop_assert!(matches!(result, Err(DecodeError::InvalidJson(_))));
        } else if kind == "res" && (key == "ok" || key == "err") {
            prop_assert_eq!(result.unwrap_err(), DecodeError::AmbiguousOutcome);
        } else if let Some(&field) = required(kind).iter().find(|f| **f == key) {
            prop_assert_eq!(result.unwrap_err(), DecodeError::MissingField { frame: kind, field });
        } else {
            prop_assert!(result.is_ok(), "dropping optional `{}` of {}: {:?}", key, kind, result);
        }
        let mut repeated = m.clone();
        repeated.insert(i, m[i].clone());
        prop_assert!(matches!(
            decode(&object(&repeated, &[""])),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    /// `decode` never panics, whatever the text; what it accepts re-encodes
    /// to a fixed point.
    #[test]
    fn decode_never_panics(
        input in prop_oneof![
            text(),
            r#"[{}\[\]":,.0-9a-z\\ -]{0,80}"#,
            r#"\{"t":"(req|res|hello|auth|welcome|reject|note|cancel|prog)"(,"[a-z_]{1,10}":[^,{}]{0,12}){0,6}\}"#,
        ]
    ) {
        if let Ok(frame) = decode(&input) {
            let once = encode(&frame);
            let back = decode(&once).map_err(|e| TestCaseError::fail(format!("{e}: {once}")))?;
            prop_assert_eq!(encode(&back), once);
        }
    }

    /// Valid frames damaged by one to three char edits (replace, insert,
    /// delete), and cut short anywhere, never make `decode` panic either,
    /// and its direct path for call frames decides exactly as the general
    /// parser does.
    #[test]
    fn decode_never_panics_on_damaged_frames(
        frame in any_frame(),
        edits in prop::collection::vec(edit(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = encode(&frame);
        for e in &edits {
            if let Some(t) = apply(&text, 0..text.len(), e) {
                text = t;
            }
        }
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        for t in [&text[..], &text[..end]] {
            prop_assert_eq!(
                format!("{:?}", decode(t)),
                format!("{:?}", decode_general(t)),
                "{}", t
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Signed frames
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    /// A signed frame verifies once, yielding its exact text; verified again
    /// (a replay) it is out of sequence.
    #[test]
    fn a_signed_frame_verifies_exactly_once(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
    ) {
        let text = encode(&frame);
        let env = Signer::new(Key::from_bytes(key), dir).sign(&text);
        let mut v = Verifier::new(Key::from_bytes(key), dir);
        prop_assert_eq!(v.verify(&env), Ok(text.as_str()));
        prop_assert_eq!(v.verify(&env), Err(SignError::OutOfSequence { expected: 1, got: 0 }));
    }

    /// Any change to the inner frame's bytes fails (forgery, or an envelope
    /// that no longer parses). The only edit of that region that verifies is
    /// JSON whitespace inserted before or after the frame, which is not part
    /// of the MACed bytes (docs/PROTOCOL.md 9.2): the frame's exact text comes
    /// out unchanged.
    #[test]
    fn any_change_to_the_inner_frame_fails(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
        e in edit(),
    ) {
        let text = encode(&frame);
        let env = Signer::new(Key::from_bytes(key), dir).sign(&text);
        let Some(changed) = apply(&env, inner_range(&env), &e) else {
            return Ok(());
        };
        match Verifier::new(Key::from_bytes(key), dir).verify(&changed) {
            Err(SignError::BadMac) | Err(SignError::Malformed(_)) => {}
            Ok(inner) => {
                prop_assert_eq!(inner, text.as_str());
                let range = inner_range(&changed);
                let region = &changed[range];
                prop_assert!(
                    matches!(e, Edit::Insert(_, c) if matches!(c, ' ' | '\t' | '\n' | '\r'))
                        && region.trim_matches([' ', '\t', '\n', '\r']) == text,
                    "{changed} verified"
                );
            }
            other => prop_assert!(false, "{changed} gave {other:?}"),
        }
    }

    /// Any other sequence number in the envelope fails the MAC (checked
    /// before the sequence, so it reads as forgery); the true one, when not
    /// the next expected, is out of sequence.
    #[test]
    fn a_changed_seq_is_a_forgery(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
        skip in 0u64..4,
        forged in any::<u64>(),
    ) {
        prop_assume!(forged != skip);
        let text = encode(&frame);
        let mut signer = Signer::new(Key::from_bytes(key), dir);
        for _ in 0..skip {
            let _ = signer.sign("{}");
        }
        let env = signer.sign(&text);
        let old = format!(r#""seq":{skip},"#);
        prop_assert!(env.contains(&old));
        let changed = env.replacen(&old, &format!(r#""seq":{forged},"#), 1);
        let mut v = Verifier::new(Key::from_bytes(key), dir);
        prop_assert_eq!(v.verify(&changed), Err(SignError::BadMac));
        let result = v.verify(&env);
        if skip == 0 {
            prop_assert_eq!(result, Ok(text.as_str()));
        } else {
            prop_assert_eq!(result, Err(SignError::OutOfSequence { expected: 0, got: skip }));
        }
    }

    /// Any change to the value of the MAC fails; a change of hex case only
    /// does not (receivers accept both cases, docs/PROTOCOL.md section 4).
    #[test]
    fn a_changed_mac_fails(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
        pos in 0usize..64,
        nibble in 0u8..16,
        cut in 0usize..64,
    ) {
        let text = encode(&frame);
        let env = Signer::new(Key::from_bytes(key), dir).sign(&text);
        let at = env.find(r#""mac":""#).expect("an envelope has `mac`") + 7;
        let mac = &env[at..at + 64];
        let digit = |n: u8| char::from_digit(u32::from(n), 16).expect("a nibble is a hex digit");
        let old = char::from(mac.as_bytes()[pos]).to_digit(16).expect("the mac is hex");
        let verify = |e: &str| Verifier::new(Key::from_bytes(key), dir).verify(e).map(str::to_owned);
        if u32::from(nibble) != old {
            let mut m: Vec<char> = mac.chars().collect();
            m[pos] = digit(nibble);
            let m: String = m.into_iter().collect();
            let changed = format!("{}{}{}", &env[..at], m, &env[at + 64..]);
            prop_assert_eq!(verify(&changed), Err(SignError::BadMac));
        }
        let short = format!("{}{}", &env[..at + cut], &env[at + 64..]);
        prop_assert_eq!(verify(&short), Err(SignError::BadMac));
        let upper = format!("{}{}{}", &env[..at], mac.to_ascii_uppercase(), &env[at + 64..]);
        prop_assert_eq!(verify(&upper), Ok(text.clone()));
    }

    /// The verifier reads the signer's exact layout without a JSON parse and
    /// every other layout with the full parser; both give the same answer:
    /// members in another order, whitespace after `{"t":"sig"` and an
    /// uppercase MAC verify to the same frame text, and an extra member or a
    /// non-canonical sequence number is malformed either way.
    #[test]
    fn every_envelope_layout_verifies_alike(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
        skip in 0u64..3,
        ws in prop::sample::select(vec![" ", "\n", "\t", "\r\n  "]),
    ) {
        let text = encode(&frame);
        let mut signer = Signer::new(Key::from_bytes(key), dir);
        for _ in 0..skip {
            let _ = signer.sign("{}");
        }
        let env = signer.sign(&text);
        let at = env.find(r#""mac":""#).expect("an envelope has `mac`") + 7;
        let mac = &env[at..at + 64];
        // A verifier that has seen the `skip` frames signed before this one.
        let verify = |e: &str| {
            let mut prior = Signer::new(Key::from_bytes(key), dir);
            let mut v = Verifier::new(Key::from_bytes(key), dir);
            for _ in 0..skip {
                v.verify(&prior.sign("{}")).expect("prior frames verify");
            }
            v.verify(e).map(str::to_owned)
        };
        let layouts = [
            env.clone(),
            format!(r#"{{"t":"sig","mac":"{mac}","seq":{skip},"f":{text}}}"#),
            format!(r#"{{"t":"sig","f":{text},"seq":{skip},"mac":"{mac}"}}"#),
            format!(r#"{{"t":"sig"{ws},{ws}"seq"{ws}:{ws}{skip}{ws},"mac":"{mac}",{ws}"f":{ws}{text}{ws}}}{ws}"#),
            format!(r#"{{"t":"sig","seq":{skip},"mac":"{}","f":{text}}}"#, mac.to_ascii_uppercase()),
        ];
        for layout in &layouts {
            prop_assert_eq!(verify(layout), Ok(text.clone()), "{}", layout);
        }
        let extra_first = env.replacen(r#""t":"sig","#, r#""t":"sig","x":0,"#, 1);
        let extra_last = format!(r#"{},"x":0}}"#, &env[..env.len() - 1]);
        let zero_padded = env.replacen(&format!(r#""seq":{skip},"#), &format!(r#""seq":0{skip},"#), 1);
        for bad in [extra_first, extra_last, zero_padded] {
            prop_assert!(matches!(verify(&bad), Err(SignError::Malformed(_))), "{}", bad);
        }
        // A trailing member whose value is an object reads, in the signer's
        // layout, as part of the frame, so it fails the MAC instead; both
        // close the link with 4002 (docs/PROTOCOL.md 9.3).
        let extra_object = format!(r#"{},"x":{{}}}}"#, &env[..env.len() - 1]);
        prop_assert!(
            matches!(verify(&extra_object), Err(SignError::Malformed(_)) | Err(SignError::BadMac)),
            "{}", extra_object
        );
    }

    /// A frame signed under another key, or for the other direction, fails.
    #[test]
    fn another_key_or_direction_fails(
        key in any::<[u8; 32]>(),
        key2 in any::<[u8; 32]>(),
        dir in direction(),
        frame in any_frame(),
    ) {
        prop_assume!(key != key2);
        let text = encode(&frame);
        let env = Signer::new(Key::from_bytes(key), dir).sign(&text);
        prop_assert_eq!(
            Verifier::new(Key::from_bytes(key2), dir).verify(&env),
            Err(SignError::BadMac)
        );
        prop_assert_eq!(
            Verifier::new(Key::from_bytes(key), other(dir)).verify(&env),
            Err(SignError::BadMac)
        );
    }

    /// N frames verify in the order they were signed; in any other order,
    /// the first frame out of place is out of sequence and nothing before it
    /// fails.
    #[test]
    fn only_the_signing_order_verifies(
        key in any::<[u8; 32]>(),
        dir in direction(),
        frames in prop::collection::vec(any_frame(), 1..7),
        seed in any::<u64>(),
    ) {
        let texts: Vec<String> = frames.iter().map(encode).collect();
        let mut signer = Signer::new(Key::from_bytes(key), dir);
        let envs: Vec<String> = texts.iter().map(|t| signer.sign(t)).collect();

        let mut v = Verifier::new(Key::from_bytes(key), dir);
        for (env, text) in envs.iter().zip(&texts) {
            prop_assert_eq!(v.verify(env), Ok(text.as_str()));
        }

        let order = permutation(envs.len(), seed);
        let mut v = Verifier::new(Key::from_bytes(key), dir);
        let first_wrong = order.iter().enumerate().position(|(i, &j)| i != j);
        for (i, &j) in order.iter().enumerate() {
            let result = v.verify(&envs[j]);
            match first_wrong {
                Some(w) if i == w => {
                    prop_assert_eq!(result, Err(SignError::OutOfSequence {
                        expected: i as u64,
                        got: j as u64,
                    }));
                    break;
                }
                _ => prop_assert_eq!(result, Ok(texts[j].as_str())),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// The agent's identity: none, a name alone, or a name with a token (its
/// own, or a wrong one).
#[derive(Debug, Clone)]
enum Who {
    New,
    Named(String),
    WithToken(String),
    WrongToken(String),
}

fn who() -> impl Strategy<Value = Who> {
    let name = "[A-Za-z0-9._-]{1,64}";
    prop_oneof![
        Just(Who::New),
        name.prop_map(Who::Named),
        name.prop_map(Who::WithToken),
        name.prop_map(Who::WrongToken),
    ]
}

fn identity(who: &Who, server_key: &Key) -> Identity {
    match who {
        Who::New => Identity::default(),
        Who::Named(n) => Identity {
            name: Some(n.clone()),
            token: None,
            bind: None,
        },
        Who::WithToken(n) => Identity {
            name: Some(n.clone()),
            token: Some(crypto::name_token(server_key, n)),
            bind: None,
        },
        Who::WrongToken(n) => Identity {
            name: Some(n.clone()),
            token: Some(crypto::name_token(server_key, &format!("{n}~"))),
            bind: None,
        },
    }
}

/// Sends a frame across the codec, as the wire would.
fn wire(frame: Frame) -> Frame {
    decode(&encode(&frame)).expect("an encoded handshake frame decodes")
}

proptest! {
    #![proptest_config(config(64))]

    /// With the same secret, the handshake always succeeds: the server
    /// verifies the agent, the claim proves exactly when the agent holds the
    /// name's token, the agent verifies the server over the name given, and
    /// both derive the same session key and signing policy.
    #[test]
    fn matching_secrets_establish_equal_session_keys(
        secret in prop::collection::vec(any::<u8>(), 1..100),
        nonce_s in any::<[u8; 32]>(),
        nonce_c in any::<[u8; 32]>(),
        server_key in any::<[u8; 32]>(),
        who in who(),
        assigned in "[A-Za-z0-9._-]{1,64}",
        sign in any::<bool>(),
        limits in limits(),
    ) {
        let secret = Secret::new(secret);
        let server_key = Key::from_bytes(server_key);
        let id = identity(&who, &server_key);
        let server = ServerHandshake::with_nonce(nonce_s, sign);
        let mut client = ClientHandshake::with_nonce(nonce_c, id.clone(), meta());

        let auth = client.on_hello(&secret, wire(server.hello()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Frame::Auth(auth) = wire(auth) else {
            return Err(TestCaseError::fail("on_hello did not answer with auth"));
        };
        let verified = server.verify_auth(&secret, auth)
            .map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
        prop_assert_eq!(&verified.name, &id.name);
        prop_assert_eq!(&verified.meta, &meta());

        let given = id.name.clone().unwrap_or(assigned);
        let token = crypto::name_token(&server_key, &given);
        let proves = server.claim_proves(&verified, &token);
        prop_assert_eq!(proves, matches!(who, Who::WithToken(_)));
        let (welcome, s_session) = if proves {
            server.welcome(&secret, &verified, &given, false, None, limits)
        } else {
            server.welcome(&secret, &verified, &given, true, Some(&token), limits)
        };
        let est = client.on_answer(&secret, wire(welcome))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(est.session.key, s_session.key.clone());
        prop_assert_eq!(s_session.key, crypto::session_key(&secret, &nonce_s, &nonce_c));
        prop_assert_eq!(est.session.sign, sign);
        prop_assert_eq!(s_session.sign, sign);
        prop_assert_eq!(&est.name, &given);
        prop_assert_eq!(est.first_time, !proves);
        prop_assert_eq!(est.limits, limits);
        prop_assert_eq!(est.identity.name, Some(given));
        prop_assert_eq!(est.identity.token, Some(token));
    }

    /// With different secrets (different as HMAC keys), the server refuses
    /// the agent with WRONG_SECRET (close 4001), and the agent refuses a
    /// server's welcome with SERVER_UNVERIFIED.
    #[test]
    fn different_secrets_always_fail(
        agent_secret in prop::collection::vec(any::<u8>(), 1..100),
        server_secret in prop::collection::vec(any::<u8>(), 1..100),
        nonce_s in any::<[u8; 32]>(),
        nonce_c in any::<[u8; 32]>(),
        who in who(),
        sign in any::<bool>(),
        limits in limits(),
    ) {
        prop_assume!(hmac_key(&agent_secret) != hmac_key(&server_secret));
        let agent_secret = Secret::new(agent_secret);
        let server_secret = Secret::new(server_secret);
        let id = identity(&who, &Key::from_bytes([9; 32]));
        let server = ServerHandshake::with_nonce(nonce_s, sign);
        let mut client = ClientHandshake::with_nonce(nonce_c, id.clone(), meta());
        let Frame::Auth(auth) = wire(client.on_hello(&agent_secret, wire(server.hello()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?) else {
            return Err(TestCaseError::fail("on_hello did not answer with auth"));
        };

        let refusal = server.verify_auth(&server_secret, auth.clone()).unwrap_err();
        prop_assert_eq!(refusal.code, codes::WRONG_SECRET);
        prop_assert_eq!(refusal.close_code, close::AUTH_FAILED);
        prop_assert_eq!(refusal.frame().kind(), "reject");

        // A server that got hold of a verified auth (say, by relaying it to
        // the real server) but not the secret cannot prove itself.
        let verified = server.verify_auth(&agent_secret, auth)
            .map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
        let name = id.name.clone().unwrap_or_else(|| "A0001".into());
        let (welcome, _) = server.welcome(&server_secret, &verified, &name, true, None, limits);
        let err = client.on_answer(&agent_secret, wire(welcome)).unwrap_err();
        prop_assert!(matches!(err, Error::ServerUnverified));
        prop_assert_eq!(err.code(), codes::SERVER_UNVERIFIED);
    }

    /// An auth answers one hello only: under another server nonce it fails
    /// with WRONG_SECRET; and a welcome proves one name only.
    #[test]
    fn proofs_are_bound_to_nonces_and_name(
        secret in prop::collection::vec(any::<u8>(), 1..100),
        nonce_s in any::<[u8; 32]>(),
        nonce_s2 in any::<[u8; 32]>(),
        nonce_c in any::<[u8; 32]>(),
        who in who(),
        name in "[A-Za-z0-9._-]{1,63}",
        limits in limits(),
    ) {
        prop_assume!(nonce_s != nonce_s2);
        let secret = Secret::new(secret);
        let id = identity(&who, &Key::from_bytes([9; 32]));
        let server = ServerHandshake::with_nonce(nonce_s, false);
        let mut client = ClientHandshake::with_nonce(nonce_c, id, meta());
        let Frame::Auth(auth) = client.on_hello(&secret, server.hello())
            .map_err(|e| TestCaseError::fail(e.to_string()))? else {
            return Err(TestCaseError::fail("on_hello did not answer with auth"));
        };
        let replayed = ServerHandshake::with_nonce(nonce_s2, false)
            .verify_auth(&secret, auth.clone())
            .unwrap_err();
        prop_assert_eq!(replayed.code, codes::WRONG_SECRET);

        let verified = server.verify_auth(&secret, auth)
            .map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
        let (welcome, _) = server.welcome(&secret, &verified, &name, true, None, limits);
        let Frame::Welcome(mut w) = welcome else {
            return Err(TestCaseError::fail("welcome() did not give a welcome"));
        };
        w.name.push('x');
        prop_assert!(matches!(
            client.on_answer(&secret, Frame::Welcome(w)),
            Err(Error::ServerUnverified)
        ));
    }

    /// HMAC pads a short key with zero bytes and hashes a key longer than 64
    /// bytes, so a secret, the same secret with trailing zero bytes, and a
    /// long secret's SHA-256 are one secret to the protocol. This documents
    /// why `different_secrets_always_fail` compares secrets as HMAC keys.
    #[test]
    fn hmac_equivalent_secrets_are_one_secret(
        short in prop::collection::vec(any::<u8>(), 1..48),
        zeros in 1usize..16,
        long in prop::collection::vec(any::<u8>(), 65..100),
        nonce_s in any::<[u8; 32]>(),
        nonce_c in any::<[u8; 32]>(),
    ) {
        let mut padded = short.clone();
        padded.extend(std::iter::repeat_n(0u8, zeros));
        let pairs = [
            (short, padded),
            (long.clone(), Sha256::digest(&long).to_vec()),
        ];
        for (a, b) in pairs {
            let (a, b) = (Secret::new(a), Secret::new(b));
            let server = ServerHandshake::with_nonce(nonce_s, false);
            let mut client = ClientHandshake::with_nonce(nonce_c, Identity::default(), meta());
            let Frame::Auth(auth) = client.on_hello(&a, server.hello())
                .map_err(|e| TestCaseError::fail(e.to_string()))? else {
                return Err(TestCaseError::fail("on_hello did not answer with auth"));
            };
            prop_assert!(server.verify_auth(&b, auth).is_ok());
            prop_assert_eq!(
                crypto::session_key(&a, &nonce_s, &nonce_c),
                crypto::session_key(&b, &nonce_s, &nonce_c)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// A valid name format: literal text around one run of `#`, short enough
/// that every name it yields is at most 64 bytes.
fn name_format() -> impl Strategy<Value = (String, usize, String)> {
    ("[A-Za-z0-9._-]{0,24}", 1usize..=44, "[A-Za-z0-9._-]{0,24}")
        .prop_filter("names must fit in 64 bytes", |(p, w, s)| {
            p.len() + s.len() + (*w).max(20) <= MAX_NAME_LEN
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// For every counter value, the formatted name parses back to it and is
    /// a valid name; the format displays as written.
    #[test]
    fn formatted_names_parse_back_and_are_valid(
        (prefix, width, suffix) in name_format(),
        n in prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)],
    ) {
        let text = format!("{prefix}{}{suffix}", "#".repeat(width));
        let f: NameFormat = text.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(f.to_string(), text);
        let name = f.format(n);
        prop_assert!(is_valid_name(&name), "{name}");
        prop_assert!(name.len() <= MAX_NAME_LEN);
        prop_assert_eq!(f.parse_name(&name), Some(n));
        prop_assert_eq!(f.parse_name(&f.format(u64::MAX)), Some(u64::MAX));
        // A non-canonical spelling of the counter is not the format's name.
        let zero_padded = format!("{prefix}0{}{suffix}", &name[prefix.len()..name.len() - suffix.len()]);
        prop_assert_eq!(f.parse_name(&zero_padded), None);
    }

    /// `parse_name` accepts a string only if formatting its counter gives
    /// that very string.
    #[test]
    fn parse_name_accepts_only_canonical_names(
        (prefix, width, suffix) in name_format(),
        digits in "[0-9]{0,24}",
        junk in "[A-Za-z0-9._#-]{0,70}",
    ) {
        let f: NameFormat = format!("{prefix}{}{suffix}", "#".repeat(width))
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        for s in [format!("{prefix}{digits}{suffix}"), junk] {
            if let Some(n) = f.parse_name(&s) {
                prop_assert_eq!(f.format(n), s);
            }
        }
    }

    /// Formats whose names could exceed 64 bytes, or with text that is not
    /// name syntax, are refused.
    #[test]
    fn bad_formats_are_refused(
        prefix in "[A-Za-z0-9._-]{0,70}",
        width in 1usize..70,
        suffix in "[A-Za-z0-9._-]{0,70}",
        bad in "[ #/@é]",
    ) {
        let text = format!("{prefix}{}{suffix}", "#".repeat(width));
        let fits = prefix.len() + suffix.len() + width.max(20) <= MAX_NAME_LEN;
        prop_assert_eq!(text.parse::<NameFormat>().is_ok(), fits);
        let spoiled = format!("{prefix}{}{suffix}x{bad}", "#".repeat(width));
        prop_assert!(spoiled.parse::<NameFormat>().is_err());
    }
}
