//! The agent's handshake state machine: arbitrary texts, decoded as frames,
//! are fed as the server's `hello` and then as its answer to
//! `ClientHandshake::on_hello` and `on_answer`, with the fixed secret and
//! `nonce_c` of docs/PROTOCOL.md section 14.1. Nothing may panic.
//!
//! Input layout: one byte choosing the agent's identity (none, a name, a name
//! with its token, a chosen name with a token), then the `hello` text, a NUL
//! byte, and the answer text. An empty `hello` text stands for the `hello` of
//! section 14.2, so the fuzzer can spend its time on answers. A random
//! `welcome` never carries a valid server proof, so every decoded `welcome`
//! is also replayed with its proof fixed up to the correct MAC, which reaches
//! the token checks; their outcome is checked against an oracle computed
//! here from the public MAC functions.

#![no_main]

#[path = "common.rs"]
mod common;

use agent_protocol::codec;
use agent_protocol::crypto::{self, Key};
use agent_protocol::error::codes;
use agent_protocol::frame::{Frame, Welcome, PROTOCOL_VERSION};
use agent_protocol::handshake::{ClientHandshake, Identity};
use agent_protocol::Error;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

use common::{hex32, secret, server_key, HELLO_1, NONCE_C};

fn identity(mode: u8) -> Identity {
    let with_token = |name: &str| Identity {
        name: Some(name.to_owned()),
        token: Some(crypto::name_token(&server_key(), name)),
        bind: None,
    };
    match mode % 4 {
        0 => Identity::default(),
        1 => Identity {
            name: Some("A0001".to_owned()),
            token: None,
            bind: None,
        },
        2 => with_token("A0001"),
        _ => with_token("worker-7.eu"),
    }
}

fn meta() -> Map<String, Value> {
    let Value::Object(m) = json!({"region": "eu"}) else {
        unreachable!()
    };
    m
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(2, |&b| b == 0);
    let hello_bytes = parts.next().unwrap_or_default();
    let answer_bytes = parts.next().unwrap_or_default();
    let hello_text = if hello_bytes.is_empty() {
        HELLO_1
    } else {
        match std::str::from_utf8(hello_bytes) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let answer = std::str::from_utf8(answer_bytes)
        .ok()
        .and_then(|t| codec::decode(t).ok());
    let secret = secret();
    let id = identity(mode);

    // An answer before any hello is a protocol error, whatever it is.
    if let Some(frame) = answer.clone() {
        let fresh = ClientHandshake::with_nonce(NONCE_C, id.clone(), meta());
        assert!(matches!(
            fresh.on_answer(&secret, frame),
            Err(Error::Protocol(_))
        ));
    }

    let Ok(hello_frame) = codec::decode(hello_text) else {
        return;
    };
    let hello = match &hello_frame {
        Frame::Hello(h) => Some(h.clone()),
        _ => None,
    };
    let mut client = ClientHandshake::with_nonce(NONCE_C, id.clone(), meta());
    let auth = match client.on_hello(&secret, hello_frame) {
        Ok(Frame::Auth(a)) => a,
        Ok(other) => panic!("on_hello answered with {}", other.kind()),
        Err(Error::Protocol(_)) => {
            if let Some(h) = &hello {
                assert!(h.v == PROTOCOL_VERSION && crypto::decode_hex32(&h.nonce).is_none());
            }
            return;
        }
        Err(Error::Rejected { code, .. }) => {
            assert_eq!(code, codes::UNSUPPORTED_VERSION);
            assert_ne!(hello.map(|h| h.v), Some(PROTOCOL_VERSION));
            return;
        }
        Err(e) => panic!("on_hello failed with {e:?}"),
    };
    let hello = hello.expect("on_hello accepted a frame that is not hello");
    let nonce_s = crypto::decode_hex32(&hello.nonce).expect("on_hello accepted a bad nonce");

    // The auth frame: nonce_c, the proof over the name, a claim exactly when
    // the agent holds a name and its token.
    let name = id.name.clone().unwrap_or_default();
    assert_eq!(auth.nonce, hex32(NONCE_C));
    assert_eq!(auth.name, id.name);
    assert_eq!(auth.meta, meta());
    let proof = crypto::client_proof_input(&secret, &nonce_s, &NONCE_C, &name).finish();
    assert_eq!(auth.proof, hex32(proof));
    let claim = match (&id.name, &id.token) {
        (Some(_), Some(t)) => Some(hex32(crypto::claim_input(t, &nonce_s, &NONCE_C).finish())),
        _ => None,
    };
    assert_eq!(auth.claim, claim);

    let Some(answer) = answer else {
        return;
    };
    // The answer as received: welcome only with a valid server proof.
    match client.on_answer(&secret, answer.clone()) {
        Ok(est) => {
            let Frame::Welcome(w) = &answer else {
                panic!("on_answer accepted {}", answer.kind());
            };
            let expect = crypto::server_proof_input(&secret, &nonce_s, &NONCE_C, &w.name).finish();
            assert_eq!(crypto::decode_hex32(&w.proof), Some(expect));
            assert_eq!(est.name, w.name);
        }
        Err(Error::Rejected { code, message }) => {
            let Frame::Reject(r) = &answer else {
                panic!("on_answer rejected on {}", answer.kind());
            };
            assert_eq!((code, message), (r.code.clone(), r.message.clone()));
        }
        Err(Error::ServerUnverified) => assert!(matches!(answer, Frame::Welcome(_))),
        Err(Error::Protocol(_)) => {}
        Err(e) => panic!("on_answer failed with {e:?}"),
    }

    // A welcome with the correct server proof over its own name.
    let Frame::Welcome(w) = answer else {
        return;
    };
    let proof = crypto::server_proof_input(&secret, &nonce_s, &NONCE_C, &w.name).finish();
    let fixed = Welcome {
        proof: hex32(proof),
        ..w
    };
    match client.on_answer(&secret, Frame::Welcome(fixed.clone())) {
        Ok(est) => {
            assert_eq!(est.name, fixed.name);
            assert_eq!(est.first_time, fixed.first_time);
            assert_eq!(est.limits, fixed.limits);
            assert_eq!(est.identity.name.as_deref(), Some(fixed.name.as_str()));
            let token = match &fixed.token {
                Some(t) => Some(Key::from_hex(t).expect("accepted a malformed token")),
                None if id.name.as_deref() == Some(fixed.name.as_str()) => id.token.clone(),
                None => None,
            };
            assert_eq!(est.identity.token, token);
            assert_eq!(
                est.session.key,
                crypto::session_key(&secret, &nonce_s, &NONCE_C)
            );
            assert_eq!(est.session.sign, hello.sign);
        }
        Err(Error::Protocol(_)) => {
            let token = fixed
                .token
                .as_deref()
                .expect("refused a welcome without token");
            assert!(Key::from_hex(token).is_none(), "refused a valid token");
        }
        Err(e) => panic!("a correctly proven welcome failed with {e:?}"),
    }
    // The proof covers the name: the same proof for another name fails.
    let renamed = Welcome {
        name: format!("{}x", fixed.name),
        ..fixed
    };
    assert!(matches!(
        client.on_answer(&secret, Frame::Welcome(renamed)),
        Err(Error::ServerUnverified)
    ));
});
