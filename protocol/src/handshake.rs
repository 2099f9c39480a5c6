//! The handshake as pure state machines: frames in, frames out, no IO.
//!
//! ```text
//! server                                   agent
//!   hello {v, nonce_s, sign, caps?}  ────►
//!                             ◄─────────── auth {nonce_c, name?, claim?, bind?, meta, proof, caps?}
//!   welcome {name, first_time, token?, proof, limits, caps?}  or  reject {code, message, proof?}
//! ```
//!
//! Capabilities ([`Caps`]) are announced by each side (`hello.caps`,
//! `auth.caps`) and the server answers the set both announced
//! (`welcome.caps`), which the link then uses. A state machine announces
//! none unless given some with `with_caps`, which is what a peer written
//! before capabilities looks like.
//!
//! The agent proves the shared secret with `proof`; the server proves it back
//! in `welcome.proof`, so an agent never talks to a server that does not know
//! the secret. A name, once given, is bound to a token that only the server
//! can derive; reclaiming the name requires `claim`, a MAC under that token.
//! The secret itself never crosses the wire. A refusal made once the agent's
//! proof verified carries the server's proof too
//! ([`ServerHandshake::prove_refusal`], [`ClientHandshake::reject_is_proven`]),
//! so an agent can tell a genuine final refusal from a forged one.
//! An agent that holds no token yet
//! may send `bind`, a random value it repeats on its retries, so that a
//! server can repeat a first-time grant whose `welcome` was lost.
//!
//! Name policy (which name an agent gets) needs the server's store, so it is
//! left to the server: [`ServerHandshake::verify_auth`] checks the proofs and
//! [`ServerHandshake::welcome`] writes the answer.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::caps::Caps;
use crate::close;
use crate::crypto::{self, Key, Secret, LEN};
use crate::error::{codes, Error};
use crate::frame::{Auth, Frame, Hello, Limits, Reject, Welcome, PROTOCOL_VERSION};
use crate::labels::Labels;

/// What both sides hold once the handshake succeeded.
#[derive(Debug, Clone)]
pub struct Session {
    /// Key for signed frames, derived from the secret and both nonces.
    pub key: Key,
    /// Whether every frame after the handshake is signed.
    pub sign: bool,
    /// The capabilities both sides announced: what the link may use.
    pub caps: Caps,
}

/// A failed handshake as the server answers it: a `reject` frame's code and
/// text, and the close code that follows.
///
/// A refusal made after the agent's proof verified can carry the server's
/// proof of it ([`ServerHandshake::prove_refusal`]), so the agent can tell a
/// genuine final refusal from a forged one.
#[derive(Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code for the `reject` frame.
    pub code: &'static str,
    /// Text for the `reject` frame and the close.
    pub message: String,
    /// WebSocket close code.
    pub close_code: u16,
    proof: Option<[u8; LEN]>,
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusal")
            .field("code", &self.code)
            .field("message", &self.message)
            .field("close_code", &self.close_code)
            .field("proven", &self.proof.is_some())
            .finish()
    }
}

impl Refusal {
    /// A refusal with its code, text and close code, not yet proven.
    pub fn new(code: &'static str, message: impl Into<String>, close_code: u16) -> Self {
        Refusal {
            code,
            message: message.into(),
            close_code,
            proof: None,
        }
    }

    /// True when the refusal carries the server's proof.
    pub fn is_proven(&self) -> bool {
        self.proof.is_some()
    }

    /// The `reject` frame to send, with `proof` when the refusal is proven.
    pub fn frame(&self) -> Frame {
        Frame::Reject(Reject {
            code: self.code.to_owned(),
            message: self.message.clone(),
            proof: self.proof.map(hex::encode),
        })
    }
}

/// An `auth` frame whose proof of the secret verified. `Debug` leaves out
/// the claim.
#[derive(Clone)]
pub struct VerifiedAuth {
    nonce_c: [u8; LEN],
    /// The name the agent asked for.
    pub name: Option<String>,
    claim: Option<[u8; LEN]>,
    bind: Option<[u8; LEN]>,
    /// The agent's metadata.
    pub meta: Map<String, Value>,
    /// The labels the agent presented, not yet validated: the server checks
    /// them with [`crate::labels::Labels`]'s `Deserialize`.
    pub labels: Map<String, Value>,
    caps: Caps,
}

impl VerifiedAuth {
    /// The capabilities the agent announced (those this implementation
    /// knows).
    pub fn caps(&self) -> Caps {
        self.caps
    }
}

impl std::fmt::Debug for VerifiedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bind lets its holder repeat a first-time grant: never shown.
        f.debug_struct("VerifiedAuth")
            .field("name", &self.name)
            .field("claim", &self.claim.map(|_| "<present>"))
            .field("bind", &self.bind.map(|_| "<redacted>"))
            .field("meta", &self.meta)
            .field("labels", &self.labels)
            .finish()
    }
}

impl VerifiedAuth {
    /// The SHA-256 of the agent's `bind`, when it sent one: what a server
    /// keeps to recognise the agent's retry of a first-time grant.
    pub fn bind_digest(&self) -> Option<BindDigest> {
        self.bind.map(|b| BindDigest(Sha256::digest(b).into()))
    }
}

/// The SHA-256 of an `auth.bind`. Equality is decided in constant time, and
/// `Debug` shows nothing of it.
#[derive(Clone, Copy)]
pub struct BindDigest([u8; LEN]);

impl PartialEq for BindDigest {
    fn eq(&self, other: &Self) -> bool {
        // Every byte is looked at, whatever the first difference.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for BindDigest {}

impl std::hash::Hash for BindDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for BindDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindDigest(<redacted>)")
    }
}

/// The server's side of one handshake.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    nonce_s: [u8; LEN],
    sign: bool,
    caps: Caps,
}

impl ServerHandshake {
    /// Starts a handshake with a fresh random nonce.
    pub fn new(sign: bool) -> Self {
        Self::with_nonce(crypto::random_bytes(), sign)
    }

    /// Starts a handshake with a given nonce (test vectors).
    pub fn with_nonce(nonce_s: [u8; LEN], sign: bool) -> Self {
        ServerHandshake {
            nonce_s,
            sign,
            caps: Caps::NONE,
        }
    }

    /// Announces `caps` in `hello` (default: none). The `welcome` then
    /// carries those of them the agent announced too.
    ///
    /// ```
    /// use agent_protocol::{handshake::ServerHandshake, Caps, Frame};
    /// let hs = ServerHandshake::new(false).with_caps(Caps::SUPPORTED);
    /// let Frame::Hello(hello) = hs.hello() else { unreachable!() };
    /// assert_eq!(hello.caps, ["cancel", "note", "stream", "binary"]);
    /// ```
    #[must_use]
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// The `hello` frame that opens the handshake.
    pub fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            v: PROTOCOL_VERSION,
            nonce: hex::encode(self.nonce_s),
            sign: self.sign,
            caps: self.caps.to_wire(),
        })
    }

    /// Checks an `auth` frame's encodings and its proof of the secret.
    pub fn verify_auth(&self, secret: &Secret, auth: Auth) -> Result<VerifiedAuth, Refusal> {
        let nonce_c = crypto::decode_hex32(&auth.nonce).ok_or_else(|| {
            Refusal::new(
                codes::PROTOCOL_ERROR,
                "auth.nonce must be 64 hex digits",
                close::PROTOCOL_ERROR,
            )
        })?;
        let wrong_secret = || {
            Refusal::new(
                codes::WRONG_SECRET,
                "proof of the shared secret failed",
                close::AUTH_FAILED,
            )
        };
        let proof = crypto::decode_hex32(&auth.proof).ok_or_else(wrong_secret)?;
        let name = auth.name.as_deref().unwrap_or("");
        if !crypto::client_proof_input(secret, &self.nonce_s, &nonce_c, name).verify(&proof) {
            return Err(wrong_secret());
        }
        let claim = match auth.claim.as_deref() {
            None => None,
            Some(c) => Some(crypto::decode_hex32(c).ok_or_else(|| {
                Refusal::new(
                    codes::PROTOCOL_ERROR,
                    "auth.claim must be 64 hex digits",
                    close::PROTOCOL_ERROR,
                )
            })?),
        };
        let bind = match auth.bind.as_deref() {
            None => None,
            Some(b) => Some(crypto::decode_hex32(b).ok_or_else(|| {
                Refusal::new(
                    codes::PROTOCOL_ERROR,
                    "auth.bind must be 64 hex digits",
                    close::PROTOCOL_ERROR,
                )
            })?),
        };
        Ok(VerifiedAuth {
            nonce_c,
            name: auth.name,
            claim,
            bind,
            meta: auth.meta,
            labels: auth.labels,
            caps: Caps::from_names(&auth.caps),
        })
    }

    /// True when `auth` carries a claim that proves the token of the name it
    /// asks for. Compared in constant time.
    pub fn claim_proves(&self, auth: &VerifiedAuth, token: &Key) -> bool {
        match &auth.claim {
            Some(claim) => crypto::claim_input(token, &self.nonce_s, &auth.nonce_c).verify(claim),
            None => false,
        }
    }

    /// `refusal` with the server's proof of it (`reject.proof`, PROTOCOL.md
    /// 6.6), for a refusal made after `auth`'s proof of the secret verified:
    /// the agent then knows that the server, and not a forger, refused it.
    ///
    /// ```
    /// use agent_protocol::handshake::{ClientHandshake, Identity, Refusal, ServerHandshake};
    /// use agent_protocol::{close, codes, Frame, Secret};
    ///
    /// let secret = Secret::from("s3cret");
    /// let server = ServerHandshake::new(false);
    /// let mut agent = ClientHandshake::new(Identity::default(), Default::default());
    /// let Frame::Auth(auth) = agent.on_hello(&secret, server.hello()).unwrap() else { panic!() };
    /// let verified = server.verify_auth(&secret, auth).unwrap();
    /// let refusal = Refusal::new(codes::REVOKED, "revoked", close::REVOKED);
    /// let Frame::Reject(reject) = server.prove_refusal(&secret, &verified, refusal).frame() else {
    ///     panic!()
    /// };
    /// assert!(agent.reject_is_proven(&secret, &reject));
    /// ```
    pub fn prove_refusal(&self, secret: &Secret, auth: &VerifiedAuth, refusal: Refusal) -> Refusal {
        let proof =
            crypto::reject_proof_input(secret, &self.nonce_s, &auth.nonce_c, refusal.code).finish();
        Refusal {
            proof: Some(proof),
            ..refusal
        }
    }

    /// The `welcome` frame and the session it opens.
    pub fn welcome(
        &self,
        secret: &Secret,
        auth: &VerifiedAuth,
        name: &str,
        first_time: bool,
        token: Option<&Key>,
        limits: Limits,
    ) -> (Frame, Session) {
        let proof = crypto::server_proof_input(secret, &self.nonce_s, &auth.nonce_c, name).finish();
        let caps = self.caps.intersect(auth.caps);
        let frame = Frame::Welcome(Welcome {
            name: name.to_owned(),
            first_time,
            token: token.map(Key::to_hex),
            proof: hex::encode(proof),
            limits,
            caps: caps.to_wire(),
        });
        let session = Session {
            key: crypto::session_key(secret, &self.nonce_s, &auth.nonce_c),
            sign: self.sign,
            caps,
        };
        (frame, session)
    }
}

/// The name and token an agent keeps between connections.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The name to ask for.
    pub name: Option<String>,
    /// The name's token, once the server gave one.
    pub token: Option<Key>,
    /// While there is no token: 32 random bytes the agent picked for this
    /// identity and sends as `auth.bind` on every try until a `welcome`
    /// arrives, so that a server that gave the name but whose `welcome` was
    /// lost gives the same name and token again. Kept in memory only; the
    /// identity a `welcome` yields has none.
    pub bind: Option<Key>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("bind", &self.bind.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The outcome of a successful handshake, as the agent sees it.
#[derive(Debug, Clone)]
pub struct Established {
    /// The agent's name for this session.
    pub name: String,
    /// True when the server gave the name just now.
    pub first_time: bool,
    /// The identity to store: the name and its token.
    pub identity: Identity,
    /// The session's key and signing policy.
    pub session: Session,
    /// Limits the server announced.
    pub limits: Limits,
}

/// The agent's side of one handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    nonce_c: [u8; LEN],
    nonce_s: Option<[u8; LEN]>,
    sign: bool,
    identity: Identity,
    meta: Map<String, Value>,
    labels: Labels,
    caps: Caps,
}

impl ClientHandshake {
    /// Starts a handshake with a fresh nonce.
    pub fn new(identity: Identity, meta: Map<String, Value>) -> Self {
        Self::with_nonce(crypto::random_bytes(), identity, meta)
    }

    /// Starts a handshake with a given nonce (test vectors).
    pub fn with_nonce(nonce_c: [u8; LEN], identity: Identity, meta: Map<String, Value>) -> Self {
        ClientHandshake {
            nonce_c,
            nonce_s: None,
            sign: false,
            identity,
            meta,
            labels: Labels::new(),
            caps: Caps::NONE,
        }
    }

    /// Presents `labels` in `auth` (none by default).
    #[must_use]
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Announces `caps` in `auth` (default: none). The link uses those the
    /// server's `welcome` confirms.
    ///
    /// ```
    /// use agent_protocol::handshake::{ClientHandshake, Identity};
    /// use agent_protocol::Caps;
    /// let hs = ClientHandshake::new(Identity::default(), Default::default())
    ///     .with_caps(Caps::SUPPORTED);
    /// # drop(hs);
    /// ```
    #[must_use]
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// Answers the server's `hello` with an `auth` frame.
    pub fn on_hello(&mut self, secret: &Secret, frame: Frame) -> Result<Frame, Error> {
        let hello = match frame {
            Frame::Hello(h) => h,
            other => {
                return Err(Error::Protocol(format!(
                    "expected hello, got {}",
                    other.kind()
                )))
            }
        };
        if hello.v != PROTOCOL_VERSION {
            return Err(Error::Rejected {
                code: codes::UNSUPPORTED_VERSION.into(),
                message: format!("server speaks protocol v{}", hello.v),
            });
        }
        let nonce_s = crypto::decode_hex32(&hello.nonce)
            .ok_or_else(|| Error::Protocol("hello.nonce must be 64 hex digits".into()))?;
        self.nonce_s = Some(nonce_s);
        self.sign = hello.sign;
        let name = self.identity.name.as_deref().unwrap_or("");
        let proof = crypto::client_proof_input(secret, &nonce_s, &self.nonce_c, name).finish();
        let claim = match (&self.identity.name, &self.identity.token) {
            (Some(_), Some(token)) => Some(hex::encode(
                crypto::claim_input(token, &nonce_s, &self.nonce_c).finish(),
            )),
            _ => None,
        };
        // A token proves the name; a bind only stands in while there is none.
        let bind = match &self.identity.token {
            Some(_) => None,
            None => self.identity.bind.as_ref().map(Key::to_hex),
        };
        Ok(Frame::Auth(Auth {
            nonce: hex::encode(self.nonce_c),
            name: self.identity.name.clone(),
            claim,
            bind,
            meta: self.meta.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect(),
            proof: hex::encode(proof),
            caps: self.caps.to_wire(),
        }))
    }

    /// True when `reject` carries a valid proof of the server (PROTOCOL.md
    /// 6.6): then the refusal comes from a server that knows the secret, not
    /// from a forger on the path. Compared in constant time; false before
    /// `hello`, and for a missing or malformed proof.
    pub fn reject_is_proven(&self, secret: &Secret, reject: &Reject) -> bool {
        let (Some(nonce_s), Some(proof)) = (self.nonce_s, reject.proof.as_deref()) else {
            return false;
        };
        let Some(proof) = crypto::decode_hex32(proof) else {
            return false;
        };
        crypto::reject_proof_input(secret, &nonce_s, &self.nonce_c, &reject.code).verify(&proof)
    }

    /// Reads the server's answer: `welcome` (checked against the server's
    /// proof) or `reject` (whatever its proof: see
    /// [`ClientHandshake::reject_is_proven`]).
    pub fn on_answer(&self, secret: &Secret, frame: Frame) -> Result<Established, Error> {
        let nonce_s = self
            .nonce_s
            .ok_or_else(|| Error::Protocol("answer before hello".into()))?;
        let welcome = match frame {
            Frame::Welcome(w) => w,
            Frame::Reject(r) => {
                return Err(Error::Rejected {
                    code: r.code,
                    message: r.message,
                })
            }
            other => {
                return Err(Error::Protocol(format!(
                    "expected welcome or reject, got {}",
                    other.kind()
                )))
            }
        };
        let proof = crypto::decode_hex32(&welcome.proof).ok_or(Error::ServerUnverified)?;
        if !crypto::server_proof_input(secret, &nonce_s, &self.nonce_c, &welcome.name)
            .verify(&proof)
        {
            return Err(Error::ServerUnverified);
        }
        let token = match welcome.token.as_deref() {
            Some(t) => Some(
                Key::from_hex(t)
                    .ok_or_else(|| Error::Protocol("welcome.token must be 64 hex digits".into()))?,
            ),
            // A reclaimed name keeps the token the agent already holds.
            None if self.identity.name.as_deref() == Some(welcome.name.as_str()) => {
                self.identity.token.clone()
            }
            None => None,
        };
        // Once the agent holds a token its bind has served; without one (a
        // server that gave none), the bind stays for the next try.
        let bind = match token {
            Some(_) => None,
            None => self.identity.bind.clone(),
        };
        Ok(Established {
            identity: Identity {
                name: Some(welcome.name.clone()),
                token,
                bind,
            },
            name: welcome.name,
            first_time: welcome.first_time,
            session: Session {
                key: crypto::session_key(secret, &nonce_s, &self.nonce_c),
                sign: self.sign,
                // Only what this side offered counts, whatever the server says.
                caps: Caps::from_names(&welcome.caps).intersect(self.caps),
            },
            limits: welcome.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1024,
        max_in_flight: 8,
        ping_interval_ms: 0,
    };

    fn run(
        server_secret: &str,
        client_secret: &str,
        identity: Identity,
    ) -> (
        Result<VerifiedAuth, Refusal>,
        ServerHandshake,
        ClientHandshake,
    ) {
        let server = ServerHandshake::new(false);
        let mut client = ClientHandshake::new(identity, Map::new());
        let auth = client
            .on_hello(&Secret::from(client_secret), server.hello())
            .unwrap();
        let Frame::Auth(auth) = auth else {
            panic!("not auth")
        };
        let verified = server.verify_auth(&Secret::from(server_secret), auth);
        (verified, server, client)
    }

    #[test]
    fn matching_secrets_establish_the_same_session_key() {
        let (verified, server, client) = run("s3cret", "s3cret", Identity::default());
        let verified = verified.unwrap();
        let key = Key::random();
        let token = crypto::name_token(&key, "A1");
        let (welcome, s_session) = server.welcome(
            &Secret::from("s3cret"),
            &verified,
            "A1",
            true,
            Some(&token),
            LIMITS,
        );
        let est = client.on_answer(&Secret::from("s3cret"), welcome).unwrap();
        assert_eq!(est.name, "A1");
        assert!(est.first_time);
        assert_eq!(est.identity.token, Some(token));
        assert_eq!(est.session.key, s_session.key);
    }

    #[test]
    fn the_welcome_carries_the_capabilities_both_announced() {
        let cases = [
            (Caps::SUPPORTED, Caps::SUPPORTED, Caps::SUPPORTED),
            (Caps::SUPPORTED, Caps::NOTE, Caps::NOTE),
            (Caps::SUPPORTED, Caps::NONE, Caps::NONE),
            (Caps::NONE, Caps::SUPPORTED, Caps::NONE),
        ];
        for (server_caps, agent_caps, agreed) in cases {
            let secret = Secret::from("s");
            let server = ServerHandshake::new(false).with_caps(server_caps);
            let mut client =
                ClientHandshake::new(Identity::default(), Map::new()).with_caps(agent_caps);
            let Frame::Auth(auth) = client.on_hello(&secret, server.hello()).unwrap() else {
                panic!("not auth")
            };
            let verified = server.verify_auth(&secret, auth).unwrap();
            assert_eq!(verified.caps(), agent_caps);
            let (welcome, session) = server.welcome(&secret, &verified, "A1", true, None, LIMITS);
            assert_eq!(session.caps, agreed);
            let est = client.on_answer(&secret, welcome).unwrap();
            assert_eq!(est.session.caps, agreed);
        }
    }

    #[test]
    fn wrong_secret_is_refused_with_its_code() {
        let (verified, _, _) = run("right", "wrong", Identity::default());
        let refusal = verified.unwrap_err();
        assert_eq!(refusal.code, codes::WRONG_SECRET);
        assert_eq!(refusal.close_code, close::AUTH_FAILED);
    }

    #[test]
    fn client_refuses_a_server_without_the_secret() {
        let (verified, server, client) = run("s", "s", Identity::default());
        let (welcome, _) = server.welcome(
            &Secret::from("impostor"),
            &verified.unwrap(),
            "A1",
            true,
            None,
            LIMITS,
        );
        assert!(matches!(
            client.on_answer(&Secret::from("s"), welcome),
            Err(Error::ServerUnverified)
        ));
    }

    #[test]
    fn claim_proves_only_the_right_token() {
        let key = Key::random();
        let token = crypto::name_token(&key, "A7");
        let (verified, server, _) = run(
            "s",
            "s",
            Identity {
                name: Some("A7".into()),
                token: Some(token.clone()),
                bind: None,
            },
        );
        let verified = verified.unwrap();
        assert!(server.claim_proves(&verified, &token));
        assert!(!server.claim_proves(&verified, &crypto::name_token(&key, "A8")));

        let (no_claim, server, _) = run(
            "s",
            "s",
            Identity {
                name: Some("A7".into()),
                token: None,
                bind: None,
            },
        );
        assert!(!server.claim_proves(&no_claim.unwrap(), &token));
    }

    #[test]
    fn a_proven_refusal_verifies_only_for_its_connection_and_code() {
        let (verified, server, client) = run("s", "s", Identity::default());
        let verified = verified.unwrap();
        let secret = Secret::from("s");
        let refusal = Refusal::new(codes::REVOKED, "revoked", close::REVOKED);
        assert!(!refusal.is_proven());
        let Frame::Reject(unproven) = refusal.frame() else {
            panic!("not reject")
        };
        assert_eq!(unproven.proof, None);
        assert!(!client.reject_is_proven(&secret, &unproven));

        let proven = server.prove_refusal(&secret, &verified, refusal);
        assert!(proven.is_proven());
        assert!(!format!("{proven:?}").contains(&hex::encode(proven.proof.unwrap())));
        let Frame::Reject(reject) = proven.frame() else {
            panic!("not reject")
        };
        assert!(client.reject_is_proven(&secret, &reject));
        // Another secret, another code, or another connection: no proof.
        assert!(!client.reject_is_proven(&Secret::from("t"), &reject));
        let relabelled = Reject {
            code: codes::WRONG_SECRET.into(),
            ..reject.clone()
        };
        assert!(!client.reject_is_proven(&secret, &relabelled));
        let (_, _, other_client) = run("s", "s", Identity::default());
        assert!(!other_client.reject_is_proven(&secret, &reject));
        let garbled = Reject {
            proof: Some("zz".into()),
            ..reject
        };
        assert!(!client.reject_is_proven(&secret, &garbled));
    }

    #[test]
    fn auth_replayed_to_a_new_hello_fails() {
        let server1 = ServerHandshake::new(false);
        let mut client = ClientHandshake::new(Identity::default(), Map::new());
        let Frame::Auth(auth) = client
            .on_hello(&Secret::from("s"), server1.hello())
            .unwrap()
        else {
            panic!()
        };
        let server2 = ServerHandshake::new(false);
        assert_eq!(
            server2
                .verify_auth(&Secret::from("s"), auth)
                .unwrap_err()
                .code,
            codes::WRONG_SECRET
        );
    }

    fn auth_of(identity: Identity) -> Auth {
        let server = ServerHandshake::new(false);
        let mut client = ClientHandshake::new(identity, Map::new());
        match client.on_hello(&Secret::from("s"), server.hello()).unwrap() {
            Frame::Auth(auth) => auth,
            other => panic!("not auth: {other:?}"),
        }
    }

    #[test]
    fn a_bind_is_sent_only_while_there_is_no_token() {
        let bind = Key::random();
        let fresh = auth_of(Identity {
            name: Some("box".into()),
            token: None,
            bind: Some(bind.clone()),
        });
        assert_eq!(fresh.bind, Some(bind.to_hex()));
        let holder = auth_of(Identity {
            name: Some("box".into()),
            token: Some(Key::random()),
            bind: Some(bind),
        });
        assert_eq!(holder.bind, None);
        assert_eq!(auth_of(Identity::default()).bind, None);
    }

    #[test]
    fn the_server_keeps_only_a_digest_of_the_bind_and_shows_neither() {
        let bind = Key::random();
        let identity = Identity {
            name: None,
            token: None,
            bind: Some(bind.clone()),
        };
        assert!(!format!("{identity:?}").contains(&bind.to_hex()));
        let (verified, _, _) = run("s", "s", identity);
        let verified = verified.unwrap();
        let digest = verified.bind_digest().expect("a bind was sent");
        let expected: [u8; LEN] = Sha256::digest(bind.as_bytes()).into();
        assert!(digest == BindDigest(expected));
        assert!(digest != BindDigest([0; LEN]));
        for shown in [format!("{verified:?}"), format!("{digest:?}")] {
            assert!(!shown.contains(&bind.to_hex()), "{shown}");
            assert!(!shown.contains(&hex::encode(expected)), "{shown}");
        }
        let (none, _, _) = run("s", "s", Identity::default());
        assert!(none.unwrap().bind_digest().is_none());
    }

    #[test]
    fn a_malformed_bind_is_a_protocol_error() {
        let server = ServerHandshake::new(false);
        let mut client = ClientHandshake::new(Identity::default(), Map::new());
        let Frame::Auth(mut auth) = client.on_hello(&Secret::from("s"), server.hello()).unwrap()
        else {
            panic!("not auth")
        };
        auth.bind = Some("zz".into());
        let refusal = server.verify_auth(&Secret::from("s"), auth).unwrap_err();
        assert_eq!(refusal.code, codes::PROTOCOL_ERROR);
        assert_eq!(refusal.close_code, close::PROTOCOL_ERROR);
    }

    #[test]
    fn a_welcome_with_a_token_clears_the_bind() {
        let bind = Key::random();
        let (verified, server, client) = run(
            "s",
            "s",
            Identity {
                name: None,
                token: None,
                bind: Some(bind),
            },
        );
        let token = crypto::name_token(&Key::random(), "A1");
        let (welcome, _) = server.welcome(
            &Secret::from("s"),
            &verified.unwrap(),
            "A1",
            true,
            Some(&token),
            LIMITS,
        );
        let est = client.on_answer(&Secret::from("s"), welcome).unwrap();
        assert_eq!(est.identity.token, Some(token));
        assert_eq!(est.identity.bind, None);
    }
}
