//! What a failed connection attempt means for the next one: retry after a
//! delay, take a new identity at once, or give up.
//!
//! A refusal is trusted to be final only when it is authenticated: a
//! `reject` that carries the server's proof (PROTOCOL.md 6.6), or anything
//! received over `wss://`, where TLS with a verified certificate
//! authenticates the server. Anything else could come from a forger on the
//! path, who must not be able to end an agent for good with one frame, so it
//! is retried with backoff.

use agent_protocol::handshake::Identity;
use agent_protocol::{close, codes, Error};

/// A failed connection attempt.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// The failure is a `reject` whose proof verified.
    pub(crate) proven: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            proven: false,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Try again after the backoff delay.
    Retry,
    /// The server no longer knows the stored identity: drop it for this one
    /// and try again at once.
    Rename(Identity),
    /// Stop for good, reporting this error.
    GiveUp(Error),
}

/// Judges `f`. `tls`: the attempt ran over `wss://`. `identity`: what the
/// attempt asked with. `chosen`: the name the application chose, if any.
pub(crate) fn judge(f: &Failure, tls: bool, identity: &Identity, chosen: Option<&str>) -> Verdict {
    let trusted = f.proven || tls;
    match &f.error {
        Error::Config(_) => Verdict::GiveUp(f.error.clone()),
        // The welcome's proof failed: a server without the secret, or a
        // forged welcome.
        Error::ServerUnverified if tls => Verdict::GiveUp(f.error.clone()),
        // A close before `welcome`, with no `reject`: the real server always
        // sends one first, so only TLS makes this one credible.
        Error::ConnectionClosed(r) if r.code == close::REVOKED && tls => {
            Verdict::GiveUp(Error::Rejected {
                code: codes::REVOKED.into(),
                message: r.reason.clone(),
            })
        }
        Error::Rejected { code, .. } if trusted => match code.as_str() {
            // WRONG_SECRET cannot carry a proof (the agent lacks the secret
            // it would be checked with), and UNSUPPORTED_VERSION is the
            // agent's own verdict on `hello.v`: both are trusted over TLS only.
            codes::REVOKED | codes::WRONG_SECRET | codes::UNSUPPORTED_VERSION => {
                Verdict::GiveUp(f.error.clone())
            }
            codes::NAME_TAKEN | codes::INVALID_NAME => fresh_identity(f, identity, chosen),
            _ => Verdict::Retry,
        },
        _ => Verdict::Retry,
    }
}

/// A trusted name refusal: the server does not know the name (it lost its
/// store) or gave it to someone else.
fn fresh_identity(f: &Failure, identity: &Identity, chosen: Option<&str>) -> Verdict {
    let Some(old) = identity.name.as_deref() else {
        // Asked to be assigned a name: nothing stale to drop; the server may
        // recover (its counter is exhausted, say).
        return Verdict::Retry;
    };
    // Only the name and its token are stale; anything else the identity
    // carries stays.
    let mut fresh = identity.clone();
    fresh.token = None;
    match chosen {
        // The application insists on a name that is not free: asking again
        // changes nothing.
        Some(c) if old == c && identity.token.is_none() => Verdict::GiveUp(f.error.clone()),
        // Ask for the chosen name again, without the stale token.
        Some(c) => {
            fresh.name = Some(c.to_owned());
            Verdict::Rename(fresh)
        }
        // An assigned name the server does not know: ask for a new one.
        None => {
            fresh.name = None;
            Verdict::Rename(fresh)
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_protocol::crypto::Key;
    use agent_protocol::CloseReason;

    use super::*;

    fn rejected(code: &str, proven: bool) -> Failure {
        Failure {
            error: Error::Rejected {
                code: code.into(),
                message: String::new(),
            },
            proven,
        }
    }

    /// Built field by field, so it stays valid when `Identity` grows.
    #[allow(clippy::field_reassign_with_default)]
    fn identity(name: Option<&str>, token: Option<Key>) -> Identity {
        let mut id = Identity::default();
        id.name = name.map(str::to_owned);
        id.token = token;
        id
    }

    fn stored(name: &str) -> Identity {
        identity(Some(name), Some(Key::random()))
    }

    impl PartialEq for Verdict {
        fn eq(&self, other: &Self) -> bool {
            match (self, other) {
                (Verdict::Retry, Verdict::Retry) => true,
                (Verdict::Rename(a), Verdict::Rename(b)) => a == b,
                (Verdict::GiveUp(a), Verdict::GiveUp(b)) => a.code() == b.code(),
                _ => false,
            }
        }
    }

    fn gives_up(v: &Verdict) -> bool {
        matches!(v, Verdict::GiveUp(_))
    }

    #[test]
    fn unauthenticated_refusals_are_retried_whatever_their_code() {
        let id = stored("A0001");
        for code in [
            codes::REVOKED,
            codes::WRONG_SECRET,
            codes::NAME_TAKEN,
            codes::INVALID_NAME,
            codes::UNSUPPORTED_VERSION,
            codes::DUPLICATE_ID,
        ] {
            assert_eq!(
                judge(&rejected(code, false), false, &id, None),
                Verdict::Retry,
                "{code}"
            );
        }
        let unverified = Failure::from(Error::ServerUnverified);
        assert_eq!(judge(&unverified, false, &id, None), Verdict::Retry);
        let closed = Failure::from(Error::ConnectionClosed(CloseReason::remote(
            close::REVOKED,
            "revoked",
        )));
        assert_eq!(judge(&closed, false, &id, None), Verdict::Retry);
    }

    #[test]
    fn proven_or_tls_refusals_are_final() {
        let id = stored("A0001");
        assert!(gives_up(&judge(
            &rejected(codes::REVOKED, true),
            false,
            &id,
            None
        )));
        for code in [
            codes::REVOKED,
            codes::WRONG_SECRET,
            codes::UNSUPPORTED_VERSION,
        ] {
            assert!(gives_up(&judge(&rejected(code, false), true, &id, None)));
        }
        let unverified = Failure::from(Error::ServerUnverified);
        assert!(gives_up(&judge(&unverified, true, &id, None)));
        let closed = Failure::from(Error::ConnectionClosed(CloseReason::remote(
            close::REVOKED,
            "revoked",
        )));
        match judge(&closed, true, &id, None) {
            Verdict::GiveUp(e) => assert_eq!(e.code(), codes::REVOKED),
            other => panic!("{other:?}"),
        }
        // Transient either way.
        for code in [codes::DUPLICATE_ID, codes::STORE, codes::PROTOCOL_ERROR] {
            assert_eq!(
                judge(&rejected(code, true), true, &id, None),
                Verdict::Retry
            );
        }
        let config = Failure::from(Error::Config("x".into()));
        assert!(gives_up(&judge(&config, false, &id, None)));
    }

    #[test]
    fn a_trusted_name_refusal_drops_a_stale_identity_once() {
        for code in [codes::NAME_TAKEN, codes::INVALID_NAME] {
            let f = rejected(code, true);
            // Assigned name: ask for a new one.
            assert_eq!(
                judge(&f, false, &stored("A0001"), None),
                Verdict::Rename(Identity::default())
            );
            // A stored name without a token: the same.
            let bare = identity(Some("A0001"), None);
            assert_eq!(
                judge(&f, false, &bare, None),
                Verdict::Rename(Identity::default())
            );
            // Chosen name with a stale token: the name again, no token.
            assert_eq!(
                judge(&f, false, &stored("web-1"), Some("web-1")),
                Verdict::Rename(identity(Some("web-1"), None))
            );
            // Chosen name without a token, still refused: final.
            let insisted = identity(Some("web-1"), None);
            assert!(gives_up(&judge(&f, false, &insisted, Some("web-1"))));
            // Nothing asked for: nothing to drop.
            assert_eq!(judge(&f, false, &Identity::default(), None), Verdict::Retry);
        }
    }
}
