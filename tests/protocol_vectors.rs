//! Checks `docs/PROTOCOL.md` against the implementation.
//!
//! The document carries its test vectors in a fenced block tagged `vectors`
//! (`key = value` lines). This test reads the document at run time and checks
//! every vector twice:
//!
//! * independently, with an HMAC-SHA256 written here from FIPS 180-4 and RFC
//!   2104 and the byte layouts the document describes (tags, nonces, `len32`
//!   name prefixes, direction bytes, `be64` sequence numbers), so a wrong
//!   layout in the document fails even if the values were pasted from the code;
//! * with the library's public API (`crypto`, `handshake::*::with_nonce`,
//!   `signed::Signer`/`Verifier`, `codec`), so a changed tag, field, field order
//!   or default in the code fails against the document.
//!
//! It also round-trips every frame of the document's `json` blocks through the
//! codec and checks the close-code and error-code tables against the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agent_protocol::close;
use agent_protocol::codec;
use agent_protocol::codes;
use agent_protocol::crypto::{self, Key, Secret};
use agent_protocol::frame::{Frame, Limits, PROTOCOL_VERSION, SUBPROTOCOL};
use agent_protocol::handshake::{ClientHandshake, Identity, Refusal, ServerHandshake};
use agent_protocol::link::{self, LinkConfig};
use agent_protocol::name::{is_valid_name, MAX_NAME_LEN};
use agent_protocol::signed::{self, SignError, Signer, Verifier};
use agent_protocol::{Error, NameFormat};

/// Every key the `vectors` block must define, no more and no fewer.
const KEYS: &[&str] = &[
    "secret",
    "secret_hex",
    "server_key",
    "name_format",
    "name_1",
    "meta",
    "sign",
    "nonce_s_1",
    "nonce_c_1",
    "nonce_s_2",
    "nonce_c_2",
    "tag_client_proof",
    "tag_server_proof",
    "tag_name_token",
    "tag_claim",
    "tag_session",
    "tag_frame",
    "tag_reject",
    "direction_server_to_agent",
    "direction_agent_to_server",
    "hello_1",
    "client_proof_input_1",
    "client_proof_1",
    "auth_1",
    "name_token_input",
    "name_token",
    "server_proof_input_1",
    "server_proof_1",
    "welcome_1",
    "session_input_1",
    "session_key_1",
    "frame_a0",
    "frame_mac_input_a0",
    "frame_mac_a0",
    "sig_a0",
    "frame_s0",
    "frame_mac_input_s0",
    "frame_mac_s0",
    "sig_s0",
    "frame_a1",
    "frame_mac_input_a1",
    "frame_mac_a1",
    "sig_a1",
    "bin_req_a2",
    "bin_mac_input_a2",
    "bin_mac_a2",
    "bin_sig_a2",
    "bin_res_s1",
    "bin_item",
    "hello_2",
    "claim_input_2",
    "claim_2",
    "client_proof_input_2",
    "client_proof_2",
    "auth_2",
    "server_proof_input_2",
    "server_proof_2",
    "welcome_2",
    "session_input_2",
    "session_key_2",
    "reject_code",
    "reject_message",
    "reject_proof_input_2",
    "reject_proof_2",
    "reject_2",
    "subprotocol",
    "protocol_version",
    "max_name_bytes",
    "default_name_format",
    "default_max_message_bytes",
    "default_max_in_flight",
    "default_ping_interval_ms",
    "default_missed_pongs",
    "default_close_timeout_ms",
    "default_handshake_timeout_ms",
    "default_max_pending_handshakes",
    "default_probe_timeout_ms",
];

/// The signed frames of the document: (label, direction byte, sequence number).
const SIGNED: &[(&str, u8, u64)] = &[("a0", b'A', 0), ("s0", b'S', 0), ("a1", b'A', 1)];

// ---------------------------------------------------------------------------
// Reading the document
// ---------------------------------------------------------------------------

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The fenced code blocks of `text` whose info string is `info`, as lines.
fn fenced(text: &str, info: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match current.take() {
            None => {
                if let Some(tag) = line.strip_prefix("```") {
                    current = Some((tag.trim().to_owned(), Vec::new()));
                }
            }
            Some((tag, lines)) if line.trim_end() == "```" => {
                if tag == info {
                    blocks.push(lines);
                }
            }
            Some((tag, mut lines)) => {
                lines.push(line.to_owned());
                current = Some((tag, lines));
            }
        }
    }
    assert!(
        current.is_none(),
        "docs/PROTOCOL.md has an unclosed code fence"
    );
    blocks
}

struct Vectors(BTreeMap<String, String>);

impl Vectors {
    fn load() -> Self {
        let blocks = fenced(&doc(), "vectors");
        assert_eq!(
            blocks.len(),
            1,
            "docs/PROTOCOL.md must hold exactly one ```vectors block"
        );
        let mut map = BTreeMap::new();
        for line in &blocks[0] {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("vector line is not `key = value`: {line:?}"));
            let (key, value) = (key.trim(), value.trim());
            assert!(!key.is_empty(), "vector line without a key: {line:?}");
            let previous = map.insert(key.to_owned(), value.to_owned());
            assert!(previous.is_none(), "vector {key} is defined twice");
        }
        Vectors(map)
    }

    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md lacks the vector {key}"))
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        unhex(self.get(key)).unwrap_or_else(|| panic!("vector {key} is not hex"))
    }

    fn b32(&self, key: &str) -> [u8; 32] {
        crypto::decode_hex32(self.get(key))
            .unwrap_or_else(|| panic!("vector {key} is not 64 hex digits"))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|e| panic!("vector {key} is not an integer: {e}"))
    }

    fn secret(&self) -> Secret {
        Secret::from(self.get("secret"))
    }

    fn meta(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(self.get("meta")).expect("vector meta is a JSON object")
    }

    fn sign(&self) -> bool {
        match self.get("sign") {
            "true" => true,
            "false" => false,
            other => panic!("vector sign is {other:?}, not true or false"),
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// An HMAC-SHA256 independent of the library (FIPS 180-4, RFC 2104)
// ---------------------------------------------------------------------------

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let bits = u64::try_from(data.len())
        .expect("message length fits in u64")
        .wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (slot, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *slot = slot.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

/// `len32(x) ‖ x` of the document's notation.
fn len32(x: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(x.len())
        .expect("field fits len32")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(x);
    out
}

#[test]
fn embedded_hmac_sha256_passes_known_answers() {
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    // RFC 4231 test cases 2 and 6.
    assert_eq!(
        hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

// ---------------------------------------------------------------------------
// The document against itself: layouts rebuilt from the prose
// ---------------------------------------------------------------------------

#[test]
fn vectors_block_defines_exactly_the_expected_keys() {
    let v = Vectors::load();
    let have: BTreeSet<&str> = v.0.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = KEYS.iter().copied().collect();
    let missing: Vec<_> = want.difference(&have).collect();
    let unchecked: Vec<_> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && unchecked.is_empty(),
        "vectors block: missing {missing:?}, not checked by this test {unchecked:?}"
    );
}

#[test]
fn documented_layouts_rebuild_every_mac_input_and_value() {
    let v = Vectors::load();
    let secret = v.get("secret").as_bytes().to_vec();
    assert_eq!(hex(&secret), v.get("secret_hex"));
    let tag = |k: &str| v.get(k).as_bytes().to_vec();
    let name = v.get("name_1").as_bytes().to_vec();
    let check = |input_key: &str, input: Vec<u8>, key: &[u8], mac_key: &str| {
        assert_eq!(hex(&input), v.get(input_key), "{input_key} (layout)");
        assert_eq!(hex(&hmac(key, &input)), v.get(mac_key), "{mac_key} (HMAC)");
    };

    for (i, name_in_auth) in [(1, Vec::new()), (2, name.clone())] {
        let ns = v.b32(&format!("nonce_s_{i}"));
        let nc = v.b32(&format!("nonce_c_{i}"));
        // Client proof: the name of auth (empty when absent).
        check(
            &format!("client_proof_input_{i}"),
            [
                tag("tag_client_proof"),
                ns.to_vec(),
                nc.to_vec(),
                len32(&name_in_auth),
            ]
            .concat(),
            &secret,
            &format!("client_proof_{i}"),
        );
        // Server proof: the name of welcome.
        check(
            &format!("server_proof_input_{i}"),
            [
                tag("tag_server_proof"),
                ns.to_vec(),
                nc.to_vec(),
                len32(&name),
            ]
            .concat(),
            &secret,
            &format!("server_proof_{i}"),
        );
        check(
            &format!("session_input_{i}"),
            [tag("tag_session"), ns.to_vec(), nc.to_vec()].concat(),
            &secret,
            &format!("session_key_{i}"),
        );
    }

    check(
        "name_token_input",
        [tag("tag_name_token"), len32(&name)].concat(),
        &v.b32("server_key"),
        "name_token",
    );
    check(
        "claim_input_2",
        [
            tag("tag_claim"),
            v.b32("nonce_s_2").to_vec(),
            v.b32("nonce_c_2").to_vec(),
        ]
        .concat(),
        &v.b32("name_token"),
        "claim_2",
    );
    check(
        "reject_proof_input_2",
        [
            tag("tag_reject"),
            v.b32("nonce_s_2").to_vec(),
            v.b32("nonce_c_2").to_vec(),
            len32(v.get("reject_code").as_bytes()),
        ]
        .concat(),
        &secret,
        "reject_proof_2",
    );

    let session = v.b32("session_key_1");
    for &(label, direction, seq) in SIGNED {
        let dir_key = if direction == b'S' {
            "direction_server_to_agent"
        } else {
            "direction_agent_to_server"
        };
        assert_eq!(v.bytes(dir_key), [direction], "{dir_key}");
        let frame = v.get(&format!("frame_{label}"));
        check(
            &format!("frame_mac_input_{label}"),
            [
                tag("tag_frame"),
                vec![direction],
                seq.to_be_bytes().to_vec(),
                frame.as_bytes().to_vec(),
            ]
            .concat(),
            &session,
            &format!("frame_mac_{label}"),
        );
        // The envelope of section 9.1, assembled from its parts.
        let envelope = format!(
            r#"{{"t":"sig","seq":{seq},"mac":"{}","f":{frame}}}"#,
            v.get(&format!("frame_mac_{label}"))
        );
        assert_eq!(envelope, v.get(&format!("sig_{label}")), "sig_{label}");
    }

    // The handshake frames of section 5, assembled from their parts in the
    // order the document gives.
    let limits = format!(
        r#"{{"max_message_bytes":{},"max_in_flight":{},"ping_interval_ms":{}}}"#,
        v.get("default_max_message_bytes"),
        v.get("default_max_in_flight"),
        v.get("default_ping_interval_ms"),
    );
    let n1 = v.get("name_1");
    for i in [1, 2] {
        assert_eq!(
            v.get(&format!("hello_{i}")),
            format!(
                r#"{{"t":"hello","v":{},"nonce":"{}","sign":{}}}"#,
                v.get("protocol_version"),
                v.get(&format!("nonce_s_{i}")),
                v.get("sign")
            ),
            "hello_{i}"
        );
    }
    assert_eq!(
        v.get("auth_1"),
        format!(
            r#"{{"t":"auth","nonce":"{}","meta":{},"proof":"{}"}}"#,
            v.get("nonce_c_1"),
            v.get("meta"),
            v.get("client_proof_1")
        )
    );
    assert_eq!(
        v.get("welcome_1"),
        format!(
            r#"{{"t":"welcome","name":"{n1}","first_time":true,"token":"{}","proof":"{}","limits":{limits}}}"#,
            v.get("name_token"),
            v.get("server_proof_1")
        )
    );
    assert_eq!(
        v.get("auth_2"),
        format!(
            r#"{{"t":"auth","nonce":"{}","name":"{n1}","claim":"{}","meta":{},"proof":"{}"}}"#,
            v.get("nonce_c_2"),
            v.get("claim_2"),
            v.get("meta"),
            v.get("client_proof_2")
        )
    );
    assert_eq!(
        v.get("welcome_2"),
        format!(
            r#"{{"t":"welcome","name":"{n1}","first_time":false,"proof":"{}","limits":{limits}}}"#,
            v.get("server_proof_2")
        )
    );
    assert_eq!(
        v.get("reject_2"),
        format!(
            r#"{{"t":"reject","code":"{}","message":"{}","proof":"{}"}}"#,
            v.get("reject_code"),
            v.get("reject_message"),
            v.get("reject_proof_2")
        )
    );
}

// ---------------------------------------------------------------------------
// The document against the library
// ---------------------------------------------------------------------------

fn default_limits() -> Limits {
    let cfg = LinkConfig::default();
    Limits {
        max_message_bytes: u64::try_from(cfg.max_message_bytes).expect("fits u64"),
        max_in_flight: u32::try_from(cfg.max_in_flight).expect("fits u32"),
        ping_interval_ms: cfg.ping_interval.map_or(0, |d| {
            u64::try_from(d.as_millis()).expect("ping interval fits u64")
        }),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("fits u64")
}

#[test]
fn library_constants_match_the_document() {
    let v = Vectors::load();
    let tags = [
        ("tag_client_proof", crypto::TAG_CLIENT_PROOF),
        ("tag_server_proof", crypto::TAG_SERVER_PROOF),
        ("tag_name_token", crypto::TAG_NAME_TOKEN),
        ("tag_claim", crypto::TAG_CLAIM),
        ("tag_session", crypto::TAG_SESSION),
        ("tag_frame", crypto::TAG_FRAME),
        ("tag_reject", crypto::TAG_REJECT),
    ];
    for (key, tag) in tags {
        assert_eq!(v.get(key).as_bytes(), tag, "{key}");
    }
    assert_eq!(
        v.bytes("direction_server_to_agent"),
        [signed::SERVER_TO_AGENT]
    );
    assert_eq!(
        v.bytes("direction_agent_to_server"),
        [signed::AGENT_TO_SERVER]
    );
    assert_eq!(v.get("subprotocol"), SUBPROTOCOL);
    assert_eq!(v.num("protocol_version"), u64::from(PROTOCOL_VERSION));
    assert_eq!(v.num("max_name_bytes"), MAX_NAME_LEN as u64);
    assert_eq!(
        v.get("default_name_format"),
        agent_server::config::DEFAULT_NAME_FORMAT
    );
    assert_eq!(
        v.num("default_max_message_bytes"),
        link::DEFAULT_MAX_MESSAGE_BYTES as u64
    );
    assert_eq!(
        v.num("default_max_in_flight"),
        link::DEFAULT_MAX_IN_FLIGHT as u64
    );
    assert_eq!(
        v.num("default_ping_interval_ms"),
        millis(link::DEFAULT_PING_INTERVAL)
    );
    assert_eq!(
        v.num("default_missed_pongs"),
        u64::from(link::DEFAULT_MISSED_PONGS)
    );
    assert_eq!(
        v.num("default_close_timeout_ms"),
        millis(link::DEFAULT_CLOSE_TIMEOUT)
    );
    assert_eq!(
        v.num("default_handshake_timeout_ms"),
        millis(agent_server::config::DEFAULT_HANDSHAKE_TIMEOUT)
    );
    assert_eq!(
        v.num("default_max_pending_handshakes"),
        agent_server::config::DEFAULT_MAX_HANDSHAKES as u64
    );
    assert_eq!(
        v.num("default_probe_timeout_ms"),
        millis(agent_server::config::DEFAULT_PROBE_TIMEOUT)
    );
    // The assigned name is the format's first name, and a valid name.
    let format: NameFormat = v.get("name_format").parse().expect("name format parses");
    assert_eq!(format.format(1), v.get("name_1"));
    assert_eq!(format.parse_name(v.get("name_1")), Some(1));
    assert!(is_valid_name(v.get("name_1")));
}

fn decode(text: &str) -> Frame {
    codec::decode(text).unwrap_or_else(|e| panic!("document frame does not decode: {e}: {text}"))
}

#[test]
fn first_connection_matches_the_library() {
    let v = Vectors::load();
    let secret = v.secret();
    let (ns, nc) = (v.b32("nonce_s_1"), v.b32("nonce_c_1"));
    let name = v.get("name_1");

    let server = ServerHandshake::with_nonce(ns, v.sign());
    assert_eq!(codec::encode(&server.hello()), v.get("hello_1"));

    let mut client = ClientHandshake::with_nonce(nc, Identity::default(), v.meta());
    let auth = client
        .on_hello(&secret, decode(v.get("hello_1")))
        .expect("agent accepts the documented hello");
    assert_eq!(codec::encode(&auth), v.get("auth_1"));

    let proof = crypto::client_proof_input(&secret, &ns, &nc, "").finish();
    assert_eq!(hex(&proof), v.get("client_proof_1"));
    let Frame::Auth(auth) = decode(v.get("auth_1")) else {
        panic!("auth_1 is not an auth frame")
    };
    let verified = server
        .verify_auth(&secret, auth)
        .expect("server accepts the documented auth");
    assert_eq!(verified.name, None);
    assert_eq!(verified.meta, v.meta());

    let token = crypto::name_token(&Key::from_bytes(v.b32("server_key")), name);
    assert_eq!(token.to_hex(), v.get("name_token"));
    assert_eq!(
        hex(&crypto::server_proof_input(&secret, &ns, &nc, name).finish()),
        v.get("server_proof_1")
    );
    assert_eq!(
        crypto::session_key(&secret, &ns, &nc).to_hex(),
        v.get("session_key_1")
    );

    let (welcome, session) = server.welcome(
        &secret,
        &verified,
        name,
        true,
        Some(&token),
        default_limits(),
    );
    assert_eq!(codec::encode(&welcome), v.get("welcome_1"));
    assert_eq!(session.key.to_hex(), v.get("session_key_1"));
    assert_eq!(session.sign, v.sign());

    let est = client
        .on_answer(&secret, decode(v.get("welcome_1")))
        .expect("agent accepts the documented welcome");
    assert_eq!(est.name, name);
    assert!(est.first_time);
    assert_eq!(est.identity.name.as_deref(), Some(name));
    assert_eq!(est.identity.token.as_ref(), Some(&token));
    assert_eq!(est.session.key.to_hex(), v.get("session_key_1"));
    assert_eq!(est.session.sign, v.sign());
    assert_eq!(est.limits, default_limits());

    // The documented auth does not verify against another connection's hello,
    // and the documented welcome does not verify under another secret.
    let other = ServerHandshake::with_nonce(v.b32("nonce_s_2"), v.sign());
    let Frame::Auth(auth) = decode(v.get("auth_1")) else {
        panic!("auth_1 is not an auth frame")
    };
    let refusal = other.verify_auth(&secret, auth).expect_err("replayed auth");
    assert_eq!(refusal.code, codes::WRONG_SECRET);
    assert_eq!(refusal.close_code, close::AUTH_FAILED);
    let mut client = ClientHandshake::with_nonce(nc, Identity::default(), v.meta());
    let wrong = Secret::from("not the secret");
    client
        .on_hello(&wrong, decode(v.get("hello_1")))
        .expect("hello is accepted before any proof");
    assert!(matches!(
        client.on_answer(&wrong, decode(v.get("welcome_1"))),
        Err(Error::ServerUnverified)
    ));
}

#[test]
fn signed_frames_match_the_library() {
    let v = Vectors::load();
    let key = Key::from_bytes(v.b32("session_key_1"));
    let mut to_server = Signer::new(key.clone(), signed::AGENT_TO_SERVER);
    let mut to_agent = Signer::new(key.clone(), signed::SERVER_TO_AGENT);
    let mut server_side = Verifier::new(key.clone(), signed::AGENT_TO_SERVER);
    let mut agent_side = Verifier::new(key.clone(), signed::SERVER_TO_AGENT);

    for &(label, direction, seq) in SIGNED {
        let frame = v.get(&format!("frame_{label}"));
        let sig = v.get(&format!("sig_{label}"));
        let mac = crypto::frame_mac_input(&key, direction, seq, frame.as_bytes()).finish();
        assert_eq!(hex(&mac), v.get(&format!("frame_mac_{label}")));
        let (signer, verifier) = if direction == signed::AGENT_TO_SERVER {
            (&mut to_server, &mut server_side)
        } else {
            (&mut to_agent, &mut agent_side)
        };
        // Signers number their frames themselves, in document order.
        assert_eq!(signer.sign(frame), sig, "sig_{label}");
        assert_eq!(verifier.verify(sig), Ok(frame), "sig_{label} verifies");
        // The inner frame is a canonical frame of its own.
        assert_eq!(codec::encode(&decode(frame)), frame, "frame_{label}");
    }

    let (a0, a1, s0) = (v.get("sig_a0"), v.get("sig_a1"), v.get("sig_s0"));
    let fresh = || Verifier::new(key.clone(), signed::AGENT_TO_SERVER);
    assert_eq!(
        fresh().verify(a1),
        Err(SignError::OutOfSequence {
            expected: 0,
            got: 1
        })
    );
    let mut replay = fresh();
    assert!(replay.verify(a0).is_ok());
    assert!(matches!(
        replay.verify(a0),
        Err(SignError::OutOfSequence { .. })
    ));
    assert_eq!(fresh().verify(s0), Err(SignError::BadMac), "direction");
    assert_eq!(fresh().verify(v.get("frame_a0")), Err(SignError::NotSigned));
    let forged = a0.replacen(r#""msg":"hi""#, r#""msg":"ho""#, 1);
    assert_ne!(forged, a0);
    assert_eq!(fresh().verify(&forged), Err(SignError::BadMac));
    let mac = v.get("frame_mac_a0");
    let flipped = if mac.starts_with('0') { "1" } else { "0" };
    let bad_mac = a0.replacen(mac, &format!("{flipped}{}", &mac[1..]), 1);
    assert_eq!(fresh().verify(&bad_mac), Err(SignError::BadMac));
    let other_key = Verifier::new(
        Key::from_bytes(v.b32("session_key_2")),
        signed::AGENT_TO_SERVER,
    )
    .verify(a0);
    assert_eq!(other_key, Err(SignError::BadMac), "other session's key");
}

#[test]
fn binary_frames_match_the_document_and_the_library() {
    use agent_protocol::binary::{self, BinFrame, Kind};
    use agent_protocol::Bytes;
    let v = Vectors::load();
    // From the prose of 5.13 and 9.4: kind ‖ be64(id) ‖ be32(n) ‖ head ‖ body.
    let layout = |kind: u8, id: u64, head: &[u8], body: &[u8]| {
        [
            vec![kind],
            id.to_be_bytes().to_vec(),
            u32::try_from(head.len()).unwrap().to_be_bytes().to_vec(),
            head.to_vec(),
            body.to_vec(),
        ]
        .concat()
    };
    let head = br#"{"action":"put","timeout_ms":30000}"#;
    let req = layout(1, 3, head, &[0, 1, 2, 0xff]);
    assert_eq!(hex(&req), v.get("bin_req_a2"), "bin_req_a2 (layout)");
    let res = layout(2, 3, b"", &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(hex(&res), v.get("bin_res_s1"), "bin_res_s1 (layout)");
    let item = layout(3, 4, b"", &[0, 0]);
    assert_eq!(hex(&item), v.get("bin_item"), "bin_item (layout)");
    let input = [
        v.get("tag_frame").as_bytes().to_vec(),
        vec![0x41],
        2u64.to_be_bytes().to_vec(),
        req.clone(),
    ]
    .concat();
    assert_eq!(hex(&input), v.get("bin_mac_input_a2"), "bin_mac_input_a2");
    let key_bytes = v.b32("session_key_1");
    let mac = hmac(&key_bytes, &input);
    assert_eq!(hex(&mac), v.get("bin_mac_a2"), "bin_mac_a2 (HMAC)");
    let sig = [2u64.to_be_bytes().to_vec(), mac.to_vec(), req.clone()].concat();
    assert_eq!(hex(&sig), v.get("bin_sig_a2"), "bin_sig_a2 (layout)");

    // The library writes and reads the same bytes.
    let lib_head = binary::req_head("put", Some(30_000), None, None);
    assert_eq!(
        binary::encode(Kind::Req, 3, &lib_head, &[0, 1, 2, 0xff]),
        req
    );
    assert_eq!(
        binary::encode(Kind::Res, 3, b"", &[0xde, 0xad, 0xbe, 0xef]),
        res
    );
    assert_eq!(binary::encode(Kind::Item, 4, b"", &[0, 0]), item);
    match binary::decode(&Bytes::from(req.clone())).unwrap() {
        BinFrame::Req { id, head, body } => {
            assert_eq!(
                (id, head.action.as_str(), head.timeout_ms),
                (3, "put", Some(30_000))
            );
            assert_eq!(&body[..], &[0, 1, 2, 0xff]);
        }
        other => panic!("bin_req_a2 decodes as {other:?}"),
    }
    assert_eq!(
        binary::decode(&Bytes::from(item)).unwrap(),
        BinFrame::Item {
            id: 4,
            body: Bytes::from_static(&[0, 0])
        }
    );
    // Signed after the agent's two text frames, in one sequence.
    let key = Key::from_bytes(key_bytes);
    let mut signer = Signer::new(key.clone(), signed::AGENT_TO_SERVER);
    let mut verifier = Verifier::new(key, signed::AGENT_TO_SERVER);
    for label in ["a0", "a1"] {
        let frame = v.get(&format!("frame_{label}"));
        assert!(verifier.verify(&signer.sign(frame)).is_ok());
    }
    let mut msg = vec![0u8; signed::BINARY_PREFIX];
    msg.extend_from_slice(&req);
    signer.sign_binary(&mut msg);
    assert_eq!(hex(&msg), v.get("bin_sig_a2"), "bin_sig_a2 (library)");
    let msg = Bytes::from(msg);
    assert_eq!(verifier.verify_binary(&msg).map(|f| f.to_vec()), Ok(req));
    // Replayed: out of sequence; altered: a bad MAC.
    assert!(matches!(
        verifier.verify_binary(&msg),
        Err(SignError::OutOfSequence {
            expected: 3,
            got: 2
        })
    ));
    let mut altered = msg.to_vec();
    if let Some(b) = altered.last_mut() {
        *b ^= 0x80;
    }
    assert_eq!(
        verifier.verify_binary(&Bytes::from(altered)),
        Err(SignError::BadMac)
    );
}

#[test]
fn reclaim_matches_the_library() {
    let v = Vectors::load();
    let secret = v.secret();
    let (ns, nc) = (v.b32("nonce_s_2"), v.b32("nonce_c_2"));
    let name = v.get("name_1");
    let token = Key::from_bytes(v.b32("name_token"));

    let server = ServerHandshake::with_nonce(ns, v.sign());
    assert_eq!(codec::encode(&server.hello()), v.get("hello_2"));
    let identity = Identity {
        name: Some(name.to_owned()),
        token: Some(token.clone()),
        bind: None,
    };
    let mut client = ClientHandshake::with_nonce(nc, identity, v.meta());
    let auth = client
        .on_hello(&secret, decode(v.get("hello_2")))
        .expect("agent accepts the documented hello");
    assert_eq!(codec::encode(&auth), v.get("auth_2"));
    assert_eq!(
        hex(&crypto::claim_input(&token, &ns, &nc).finish()),
        v.get("claim_2")
    );
    assert_eq!(
        hex(&crypto::client_proof_input(&secret, &ns, &nc, name).finish()),
        v.get("client_proof_2")
    );

    let Frame::Auth(auth) = decode(v.get("auth_2")) else {
        panic!("auth_2 is not an auth frame")
    };
    let verified = server
        .verify_auth(&secret, auth)
        .expect("server accepts the documented auth");
    assert_eq!(verified.name.as_deref(), Some(name));
    assert!(server.claim_proves(&verified, &token));
    let other_token = crypto::name_token(&Key::from_bytes(v.b32("server_key")), "A0002");
    assert!(!server.claim_proves(&verified, &other_token));

    let (welcome, session) =
        server.welcome(&secret, &verified, name, false, None, default_limits());
    assert_eq!(codec::encode(&welcome), v.get("welcome_2"));
    assert_eq!(session.key.to_hex(), v.get("session_key_2"));
    assert_eq!(
        hex(&crypto::server_proof_input(&secret, &ns, &nc, name).finish()),
        v.get("server_proof_2")
    );

    let est = client
        .on_answer(&secret, decode(v.get("welcome_2")))
        .expect("agent accepts the documented welcome");
    assert!(!est.first_time);
    assert_eq!(est.identity.token.as_ref(), Some(&token), "token kept");
    assert_eq!(est.session.key.to_hex(), v.get("session_key_2"));
}

#[test]
fn proven_refusal_matches_the_library() {
    let v = Vectors::load();
    let secret = v.secret();
    let (ns, nc) = (v.b32("nonce_s_2"), v.b32("nonce_c_2"));
    let name = v.get("name_1");
    let code = v.get("reject_code");
    assert_eq!(code, codes::REVOKED);
    assert_eq!(
        hex(&crypto::reject_proof_input(&secret, &ns, &nc, code).finish()),
        v.get("reject_proof_2")
    );

    // The server of the second connection, having verified auth_2, proves
    // the refusal it makes with the message it makes.
    let server = ServerHandshake::with_nonce(ns, v.sign());
    let Frame::Auth(auth) = decode(v.get("auth_2")) else {
        panic!("auth_2 is not an auth frame")
    };
    let verified = server
        .verify_auth(&secret, auth)
        .expect("server accepts the documented auth");
    let refusal = Refusal::new(codes::REVOKED, v.get("reject_message"), close::REVOKED);
    let proven = server.prove_refusal(&secret, &verified, refusal);
    assert!(proven.is_proven());
    assert_eq!(codec::encode(&proven.frame()), v.get("reject_2"));

    // The agent of the second connection checks it.
    let identity = Identity {
        name: Some(name.to_owned()),
        token: Some(Key::from_bytes(v.b32("name_token"))),
        bind: None,
    };
    let mut client = ClientHandshake::with_nonce(nc, identity, v.meta());
    client
        .on_hello(&secret, decode(v.get("hello_2")))
        .expect("agent accepts the documented hello");
    let Frame::Reject(reject) = decode(v.get("reject_2")) else {
        panic!("reject_2 is not a reject frame")
    };
    assert!(client.reject_is_proven(&secret, &reject));
    let err = client
        .on_answer(&secret, Frame::Reject(reject.clone()))
        .expect_err("a reject fails the handshake");
    assert_eq!(err.code(), codes::REVOKED);
    // Not under another secret, not relabelled, not without its proof, not
    // on the first connection's nonces.
    assert!(!client.reject_is_proven(&Secret::from("not the secret"), &reject));
    let mut relabelled = reject.clone();
    relabelled.code = codes::NAME_TAKEN.into();
    assert!(!client.reject_is_proven(&secret, &relabelled));
    let mut bare = reject.clone();
    bare.proof = None;
    assert!(!client.reject_is_proven(&secret, &bare));
    let mut other = ClientHandshake::with_nonce(v.b32("nonce_c_1"), Identity::default(), v.meta());
    other
        .on_hello(&secret, decode(v.get("hello_1")))
        .expect("agent accepts the documented hello");
    assert!(!other.reject_is_proven(&secret, &reject));
}

#[test]
fn every_json_example_round_trips_through_the_codec() {
    let text = doc();
    let v = Vectors::load();
    let signed: Vec<&str> = SIGNED
        .iter()
        .map(|(label, _, _)| v.get(&format!("sig_{label}")))
        .collect();
    let mut frames = 0;
    for block in fenced(&text, "json") {
        for line in block.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            frames += 1;
            if line.starts_with(r#"{"t":"sig""#) {
                assert!(
                    signed.contains(&line),
                    "signed example is not one of the vectors: {line}"
                );
                continue;
            }
            assert_eq!(codec::encode(&decode(line)), line, "round trip");
        }
    }
    // Every handshake vector round-trips as well.
    for key in [
        "hello_1",
        "auth_1",
        "welcome_1",
        "hello_2",
        "auth_2",
        "welcome_2",
        "reject_2",
    ] {
        assert_eq!(codec::encode(&decode(v.get(key))), v.get(key), "{key}");
        assert!(
            text.contains(&format!("```json\n{}\n```", v.get(key))),
            "{key} is not shown in a json block"
        );
    }
    assert!(frames >= 18, "only {frames} JSON examples found");
}

#[test]
fn worked_example_text_agrees_with_the_vectors() {
    // Lines of `text` blocks that start with a vector's key (`key = …`) show
    // that vector's value after their last ` = `.
    let v = Vectors::load();
    let mut shown = 0;
    for block in fenced(&doc(), "text") {
        for line in &block {
            let Some((key, _)) = line.trim().split_once(" = ") else {
                continue;
            };
            let Some(want) = v.0.get(key) else {
                continue;
            };
            let got = line.rsplit(" = ").next().unwrap_or_default().trim();
            assert_eq!(got, want, "the worked example shows another {key}");
            shown += 1;
        }
    }
    assert!(
        shown >= 19,
        "only {shown} vectors shown in the worked example"
    );
}

#[test]
fn close_and_error_code_tables_match_the_library() {
    let text = doc();
    let close_codes = [
        ("NORMAL", close::NORMAL),
        ("GOING_AWAY", close::GOING_AWAY),
        ("ABNORMAL", close::ABNORMAL),
        ("TOO_BIG", close::TOO_BIG),
        ("INTERNAL_ERROR", close::INTERNAL_ERROR),
        ("PROTOCOL_ERROR", close::PROTOCOL_ERROR),
        ("AUTH_FAILED", close::AUTH_FAILED),
        ("BAD_SIGNATURE", close::BAD_SIGNATURE),
        ("DUPLICATE_ID", close::DUPLICATE_ID),
        ("NAME_REFUSED", close::NAME_REFUSED),
        ("HANDSHAKE_TIMEOUT", close::HANDSHAKE_TIMEOUT),
        ("FORCED_DISCONNECT", close::FORCED_DISCONNECT),
        ("REVOKED", close::REVOKED),
        ("UNSUPPORTED_VERSION", close::UNSUPPORTED_VERSION),
        ("HEARTBEAT_TIMEOUT", close::HEARTBEAT_TIMEOUT),
        ("OVERLOADED", close::OVERLOADED),
    ];
    for (name, code) in close_codes {
        let row = format!("| {code} | `{name}` |");
        assert!(text.contains(&row), "close code table lacks {row}");
    }
    let error_codes = [
        codes::TIMEOUT,
        codes::UNKNOWN_ACTION,
        codes::UNKNOWN_AGENT,
        codes::AGENT_NOT_CONNECTED,
        codes::NO_CONNECTED_AGENTS,
        codes::OFFLINE,
        codes::BUSY,
        codes::INVALID_MESSAGE,
        codes::INTERNAL_ERROR,
        codes::CONNECTION_CLOSED,
        codes::WRONG_SECRET,
        codes::DUPLICATE_ID,
        codes::NAME_TAKEN,
        codes::INVALID_NAME,
        codes::REVOKED,
        codes::HANDSHAKE_TIMEOUT,
        codes::SERVER_UNVERIFIED,
        codes::PROTOCOL_ERROR,
        codes::UNSUPPORTED_VERSION,
        codes::TRANSPORT,
        codes::CONFIG,
        codes::STORE,
        codes::SHUTDOWN,
        codes::CANCELLED,
        codes::UNSUPPORTED,
    ];
    for code in error_codes {
        let row = format!("| `{code}` |");
        assert!(text.contains(&row), "error code table lacks {row}");
    }
}

#[test]
fn capability_frames_match_the_library() {
    // 14.5: the first connection's handshake with both capabilities, built
    // by the library's state machines, and the cancel exchange.
    let text = doc();
    let v = Vectors::load();
    let secret = v.secret();
    let caps = agent_protocol::Caps::SUPPORTED;
    let shown = |frame: &str, what: &str| {
        assert!(
            fenced(&text, "json")
                .iter()
                .flatten()
                .any(|line| line.trim() == frame),
            "{what} is not shown in a json block: {frame}"
        );
    };
    let server = ServerHandshake::with_nonce(v.b32("nonce_s_1"), v.sign()).with_caps(caps);
    let hello = codec::encode(&server.hello());
    shown(&hello, "hello with caps");
    let mut client = ClientHandshake::with_nonce(v.b32("nonce_c_1"), Identity::default(), v.meta())
        .with_caps(caps);
    let auth = client
        .on_hello(&secret, decode(&hello))
        .expect("agent accepts hello");
    let auth_text = codec::encode(&auth);
    shown(&auth_text, "auth with caps");
    let Frame::Auth(auth) = auth else {
        panic!("not auth")
    };
    let verified = server.verify_auth(&secret, auth).expect("auth verifies");
    assert_eq!(verified.caps(), caps);
    let token = crypto::name_token(&Key::from_bytes(v.b32("server_key")), v.get("name_1"));
    let (welcome, session) = server.welcome(
        &secret,
        &verified,
        v.get("name_1"),
        true,
        Some(&token),
        default_limits(),
    );
    let welcome_text = codec::encode(&welcome);
    shown(&welcome_text, "welcome with caps");
    assert_eq!(session.caps, caps);
    // No MAC covers caps: the frames are those of 14.2 plus the member.
    for (with, without, tail) in [
        (
            &hello,
            v.get("hello_1"),
            r#","caps":["cancel","note","stream","binary"]}"#,
        ),
        (
            &auth_text,
            v.get("auth_1"),
            r#","caps":["cancel","note","stream","binary"]}"#,
        ),
        (
            &welcome_text,
            v.get("welcome_1"),
            r#","caps":["cancel","note","stream","binary"]}"#,
        ),
    ] {
        assert_eq!(
            with.strip_suffix(tail).map(|t| format!("{t}}}")),
            Some(without.to_owned())
        );
    }
    let est = client
        .on_answer(&secret, decode(&welcome_text))
        .expect("agent accepts welcome");
    assert_eq!(est.session.caps, caps);
    // A peer that announces nothing agrees to nothing.
    let old = ClientHandshake::with_nonce(v.b32("nonce_c_1"), Identity::default(), v.meta())
        .on_hello(&secret, decode(&hello));
    let Ok(Frame::Auth(old)) = old else {
        panic!("not auth")
    };
    let old = server.verify_auth(&secret, old).expect("auth verifies");
    let (welcome, session) = server.welcome(&secret, &old, "A0001", true, None, default_limits());
    assert!(!codec::encode(&welcome).contains("caps"));
    assert!(session.caps.is_empty());

    shown(&codec::encode_cancel(6), "cancel");
    let cancelled = agent_protocol::HookError::new(codes::CANCELLED, "cancelled by the caller");
    let res = codec::encode_res(6, Err(&cancelled));
    shown(&res, "the CANCELLED answer");

    // 10.8: a streamed request, as the library encodes each frame.
    let open = agent_protocol::StreamOpen { credit: 2 };
    let req = codec::encode_req_stream_with(7, "count", Some(60_000), Some(open), |b| {
        b.extend_from_slice(b"3");
        Ok(())
    })
    .expect("encodes");
    shown(&req, "the streamed req");
    let body = |text: &'static str| {
        move |b: &mut Vec<u8>| {
            b.extend_from_slice(text.as_bytes());
            Ok(())
        }
    };
    shown(
        &codec::encode_item_with("prog", 7, body(r#"{"of":3}"#)).expect("prog"),
        "prog",
    );
    for i in ["0", "1", "2"] {
        shown(
            &codec::encode_item_with("item", 7, body(i)).expect("item"),
            "item",
        );
    }
    shown(&codec::encode_credit(7, 1), "credit");
    let three = agent_protocol::RawValue::from_string("3".into()).expect("raw");
    shown(&codec::encode_res(7, Ok(&three)), "the streamed res");
}
