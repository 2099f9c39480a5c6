//! Binds: how the server recognises an agent that retries a first-time grant
//! whose `welcome` it never received.
//!
//! An agent without a token sends `auth.bind`, random bytes it repeats on
//! every try until a `welcome` arrives. For each first-time grant the server
//! keeps the SHA-256 of its bind, in memory only and at most [`MAX_BINDS`]
//! of them (the oldest is forgotten first): an `auth` with the same bind then
//! gets the same grant again, instead of `NAME_TAKEN` (a chosen name) or a
//! new number (an assigned one). An entry goes once the agent reclaims its
//! name with its token, which shows the `welcome` did arrive.

use std::collections::{HashMap, VecDeque};

use agent_protocol::handshake::BindDigest;

/// Most binds the server keeps; past it the oldest is forgotten, and its
/// agent, should it retry, is refused as if it sent no bind.
pub(crate) const MAX_BINDS: usize = 10_000;

struct Entry {
    digest: BindDigest,
    /// Given from the counter: an `auth` without a name finds it by bind.
    assigned: bool,
}

#[derive(Default)]
pub(crate) struct Binds {
    by_name: HashMap<String, Entry>,
    /// Assigned names by the digest of their bind.
    assigned: HashMap<BindDigest, String>,
    /// Names in the order their binds were kept, oldest first.
    order: VecDeque<String>,
}

impl Binds {
    /// Keeps `digest` as the bind of the first-time grant of `name`.
    pub(crate) fn remember(&mut self, name: &str, digest: BindDigest, assigned: bool) {
        self.forget(name);
        self.by_name
            .insert(name.to_owned(), Entry { digest, assigned });
        if assigned {
            self.assigned.insert(digest, name.to_owned());
        }
        self.order.push_back(name.to_owned());
        while self.by_name.len() > MAX_BINDS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.drop_entry(&oldest);
        }
    }

    /// True when `digest` is the bind of the first-time grant of `name`.
    /// The digests are compared in constant time.
    pub(crate) fn matches(&self, name: &str, digest: &BindDigest) -> bool {
        self.by_name.get(name).is_some_and(|e| e.digest == *digest)
    }

    /// The assigned name whose first-time grant had this bind.
    pub(crate) fn assigned(&self, digest: &BindDigest) -> Option<String> {
        self.assigned.get(digest).cloned()
    }

    /// Forgets the bind of `name`, if one is kept.
    pub(crate) fn forget(&mut self, name: &str) {
        if self.drop_entry(name) {
            self.order.retain(|n| n != name);
        }
    }

    /// Number of binds kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    fn drop_entry(&mut self, name: &str) -> bool {
        match self.by_name.remove(name) {
            Some(entry) => {
                if entry.assigned {
                    self.assigned.remove(&entry.digest);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::crypto::Key;
    use agent_protocol::handshake::{ClientHandshake, Identity, ServerHandshake};
    use agent_protocol::{Frame, Secret};

    /// The digest a server computes for a fresh random bind.
    fn digest() -> BindDigest {
        let server = ServerHandshake::new(false);
        let identity = Identity {
            bind: Some(Key::random()),
            ..Identity::default()
        };
        let mut client = ClientHandshake::new(identity, Default::default());
        let Ok(Frame::Auth(auth)) = client.on_hello(&Secret::from("s"), server.hello()) else {
            panic!("no auth")
        };
        let verified = server.verify_auth(&Secret::from("s"), auth).unwrap();
        verified.bind_digest().unwrap()
    }

    #[test]
    fn a_bind_matches_only_its_own_name_and_assigned_ones_are_found_by_it() {
        let mut binds = Binds::default();
        let (a, b) = (digest(), digest());
        binds.remember("box", a, false);
        binds.remember("A0001", b, true);
        assert!(binds.matches("box", &a));
        assert!(!binds.matches("box", &b));
        assert!(!binds.matches("other", &a));
        assert_eq!(binds.assigned(&b).as_deref(), Some("A0001"));
        assert_eq!(binds.assigned(&a), None, "chosen names are found by name");
        binds.forget("A0001");
        assert_eq!(binds.assigned(&b), None);
        assert!(!binds.matches("A0001", &b));
    }

    #[test]
    fn the_oldest_bind_is_forgotten_past_the_bound() {
        let mut binds = Binds::default();
        let first = digest();
        binds.remember("n0", first, true);
        let other = digest();
        for i in 1..=MAX_BINDS {
            binds.remember(&format!("n{i}"), other, false);
        }
        assert_eq!(binds.len(), MAX_BINDS);
        assert!(!binds.matches("n0", &first));
        assert_eq!(binds.assigned(&first), None);
        assert!(binds.matches("n1", &other));
        assert!(binds.matches(&format!("n{MAX_BINDS}"), &other));
    }
}
