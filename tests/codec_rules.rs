//! The type rule of docs/PROTOCOL.md section 4: top-level members named like
//! a top-level member of any frame are type-checked in every frame type;
//! members of `limits`, `err` and the `sig` envelope only where they belong;
//! anything else is ignored.

use agent_tunnel::protocol::codec::decode;

const NONCE: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn ok(text: &str) {
    if let Err(e) = decode(text) {
        panic!("{text} must decode: {e}");
    }
}

fn invalid(text: &str) {
    assert!(decode(text).is_err(), "{text} must be refused");
}

#[test]
fn top_level_protocol_members_are_type_checked_in_every_frame() {
    // Members `req` does not have, but other frames do.
    for member in [
        r#""name":5"#,
        r#""sign":"yes""#,
        r#""v":"1""#,
        r#""nonce":7"#,
        r#""claim":[]"#,
        r#""bind":{}"#,
        r#""meta":"x""#,
        r#""labels":["region=eu"]"#,
        r#""caps":"cancel""#,
        r#""caps":[1]"#,
        r#""proof":1"#,
        r#""first_time":"no""#,
        r#""token":false"#,
        r#""limits":{"max_in_flight":"x","max_message_bytes":1,"ping_interval_ms":0}"#,
        r#""code":404"#,
        r#""message":{}"#,
        r#""err":{"code":1}"#,
    ] {
        invalid(&format!(
            r#"{{"t":"req","id":1,"action":"a","body":null,{member}}}"#
        ));
    }
    // The same members in `hello`, which has none of them but `v`/`nonce`/`sign`.
    invalid(&format!(
        r#"{{"t":"hello","v":1,"nonce":"{NONCE}","sign":false,"id":"seven"}}"#
    ));
    invalid(&format!(
        r#"{{"t":"hello","v":1,"nonce":"{NONCE}","sign":false,"timeout_ms":-1}}"#
    ));
    invalid(&format!(
        r#"{{"t":"hello","v":1,"nonce":"{NONCE}","sign":false,"action":true}}"#
    ));
    // Well-typed, they are accepted and ignored where the frame has no use
    // for them.
    ok(r#"{"t":"req","id":1,"action":"a","body":null,"name":"x","sign":true,"code":"C"}"#);
}

#[test]
fn nested_and_envelope_members_are_checked_only_where_they_belong() {
    // `limits` and `err` members at the top level are unknown members.
    ok(r#"{"t":"req","id":1,"action":"a","body":null,"max_in_flight":"x"}"#);
    ok(r#"{"t":"req","id":1,"action":"a","body":null,"data":[1,2]}"#);
    ok(&format!(
        r#"{{"t":"hello","v":1,"nonce":"{NONCE}","sign":false,"ping_interval_ms":"x"}}"#
    ));
    // The `sig` envelope's members outside an envelope: ignored.
    ok(r#"{"t":"req","id":1,"action":"a","body":null,"seq":"x","mac":5,"f":1}"#);
    ok(r#"{"t":"res","id":1,"ok":null,"seq":"x","mac":5,"f":1}"#);
    // Unknown members of any type are ignored.
    ok(r#"{"t":"res","id":1,"ok":null,"whatever":{"deep":[true]}}"#);
}

#[test]
fn members_inside_limits_and_err_are_checked_there() {
    invalid(&format!(
        r#"{{"t":"welcome","name":"A1","first_time":false,"proof":"{NONCE}","limits":{{"max_message_bytes":1,"max_in_flight":"x","ping_interval_ms":0}}}}"#
    ));
    invalid(r#"{"t":"res","id":1,"err":{"code":"C","message":5}}"#);
    ok(r#"{"t":"res","id":1,"err":{"code":"C","message":"m","data":{"any":1}}}"#);
}
