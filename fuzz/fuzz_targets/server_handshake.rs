//! The server's handshake state machine: arbitrary text, decoded as a frame,
//! is fed to `ServerHandshake::verify_auth` and `claim_proves` with the fixed
//! secret, nonce and server key of docs/PROTOCOL.md section 14.1. Nothing may
//! panic.
//!
//! A random `auth` never carries a valid proof, so the target also replays
//! every decoded `auth` with the proof (and then the claim) fixed up to the
//! correct MAC. That reaches the claim checks and `welcome`, and checks their
//! outcomes against an oracle computed here from the public MAC functions.

#![no_main]

#[path = "common.rs"]
mod common;

use agent_protocol::close;
use agent_protocol::codec;
use agent_protocol::crypto;
use agent_protocol::error::codes;
use agent_protocol::frame::{Auth, Frame, Limits};
use agent_protocol::handshake::ServerHandshake;
use libfuzzer_sys::fuzz_target;

use common::{hex32, secret, server_key, NONCE_S};

const LIMITS: Limits = Limits {
    max_message_bytes: 1_048_576,
    max_in_flight: 256,
    ping_interval_ms: 5000,
};

fn is_hex32(s: &str) -> bool {
    crypto::decode_hex32(s).is_some()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = codec::decode(text) else {
        return;
    };
    // The server treats any first frame but `auth` as a protocol error
    // before the state machine sees it.
    let Frame::Auth(auth) = frame else {
        return;
    };
    let secret = secret();
    let server_key = server_key();
    let server = ServerHandshake::with_nonce(NONCE_S, true);

    // 1. The frame as received: any outcome, no panic; refusals carry the
    //    codes of docs/PROTOCOL.md 7.3.
    match server.verify_auth(&secret, auth.clone()) {
        Ok(verified) => {
            let name = verified.name.clone().unwrap_or_default();
            let token = crypto::name_token(&server_key, &name);
            let _ = server.claim_proves(&verified, &token);
        }
        Err(r) => {
            assert!(
                (r.code == codes::PROTOCOL_ERROR && r.close_code == close::PROTOCOL_ERROR)
                    || (r.code == codes::WRONG_SECRET && r.close_code == close::AUTH_FAILED),
                "unexpected refusal {r:?}"
            );
            if !is_hex32(&auth.nonce) {
                assert_eq!(r.code, codes::PROTOCOL_ERROR);
            }
        }
    }

    // 2. The same frame with a correct proof over its own nonce and name.
    let Some(nonce_c) = crypto::decode_hex32(&auth.nonce) else {
        return;
    };
    let name = auth.name.clone().unwrap_or_default();
    let proof = crypto::client_proof_input(&secret, &NONCE_S, &nonce_c, &name).finish();
    let fixed = Auth {
        proof: hex32(proof),
        ..auth.clone()
    };
    let claim_well_formed = fixed.claim.as_deref().is_none_or(is_hex32);
    let token = crypto::name_token(&server_key, &name);
    let right_claim = crypto::claim_input(&token, &NONCE_S, &nonce_c).finish();
    match server.verify_auth(&secret, fixed.clone()) {
        Ok(verified) => {
            assert!(
                claim_well_formed,
                "a malformed claim was accepted: {:?}",
                fixed.claim
            );
            assert_eq!(verified.name, fixed.name);
            assert_eq!(verified.meta, fixed.meta);
            let proves = fixed.claim.as_deref().and_then(crypto::decode_hex32) == Some(right_claim);
            assert_eq!(server.claim_proves(&verified, &token), proves);
            // A proof under another name never verifies.
            let other = Auth {
                name: Some(format!("{name}x")),
                ..fixed.clone()
            };
            let refusal = server.verify_auth(&secret, other).unwrap_err();
            assert_eq!(refusal.code, codes::WRONG_SECRET);
            // welcome: its proof covers the name given; the session key is
            // the one of docs/PROTOCOL.md 6.5.
            let given = if name.is_empty() {
                "A0001"
            } else {
                name.as_str()
            };
            let (welcome, session) =
                server.welcome(&secret, &verified, given, true, Some(&token), LIMITS);
            let Frame::Welcome(w) = welcome else {
                panic!("welcome() returned {}", welcome.kind());
            };
            let expect = crypto::server_proof_input(&secret, &NONCE_S, &nonce_c, given).finish();
            assert_eq!(w.proof, hex32(expect));
            assert_eq!(w.token, Some(token.to_hex()));
            assert_eq!(
                session.key,
                crypto::session_key(&secret, &NONCE_S, &nonce_c)
            );
            assert!(session.sign);
        }
        Err(r) => {
            assert!(!claim_well_formed, "refused a correct proof: {r:?}");
            assert_eq!(r.code, codes::PROTOCOL_ERROR);
            assert_eq!(r.close_code, close::PROTOCOL_ERROR);
        }
    }

    // 3. And with the correct claim for its name: a reclaim that proves.
    if fixed.name.is_some() {
        let reclaim = Auth {
            claim: Some(hex32(right_claim)),
            ..fixed
        };
        let verified = server
            .verify_auth(&secret, reclaim)
            .expect("a correct proof and claim must verify");
        assert!(server.claim_proves(&verified, &token));
        let other_token = crypto::name_token(&server_key, &format!("{name}x"));
        assert!(!server.claim_proves(&verified, &other_token));
    }
});
