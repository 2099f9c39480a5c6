//! The name book: which names this server has given, the key their tokens
//! derive from, and the decision of which name an authenticated agent gets.
//!
//! It persists through the [`NameStore`] before any answer goes out, so a name
//! once given is never given again, across restarts and crashes. Tokens are
//! `HMAC(server key, name)`, so nothing per agent is stored but chosen names.
//! A grant whose save fails leaves no trace: the counter and the chosen set
//! are as before, so the agent's retry gets the same name.

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_protocol::close;
use agent_protocol::codes;
use agent_protocol::crypto::{self, Key};
use agent_protocol::handshake::{BindDigest, Refusal, ServerHandshake, VerifiedAuth};
use agent_protocol::name::is_valid_name;
use agent_protocol::{Error, NameFormat, NameStore};
use serde::{Deserialize, Serialize};

use crate::binds::Binds;
use crate::registry::{Lookup, Registry, Reservation};

/// Most chosen names a server keeps; beyond it new ones are refused.
pub(crate) const MAX_CHOSEN_NAMES: usize = 100_000;

/// Version of the store document this server writes.
const DOC_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Doc {
    version: u32,
    key: String,
    next: u64,
    #[serde(default)]
    chosen: BTreeSet<String>,
    #[serde(default)]
    revoked: BTreeSet<String>,
}

struct State {
    key: Key,
    next: u64,
    chosen: BTreeSet<String>,
    revoked: BTreeSet<String>,
}

impl State {
    fn doc(&self) -> serde_json::Value {
        let doc = Doc {
            version: DOC_VERSION,
            key: self.key.to_hex(),
            next: self.next,
            chosen: self.chosen.clone(),
            revoked: self.revoked.clone(),
        };
        serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a name was not granted.
pub(crate) enum GrantError {
    /// Refused outright.
    Refused(Refusal),
    /// The agent proved the name (its claim, or the bind of the name's
    /// first-time grant), but a registered link holds it: the caller decides
    /// whether that link is alive (`DUPLICATE_ID`) or stale.
    Held(crate::agent::Agent),
}

impl From<Refusal> for GrantError {
    fn from(r: Refusal) -> Self {
        GrantError::Refused(r)
    }
}

fn duplicate(name: &str) -> Refusal {
    Refusal::new(
        codes::DUPLICATE_ID,
        format!("{name} is connected already"),
        close::DUPLICATE_ID,
    )
}

/// A name granted to an agent, reserved for its connection until dropped.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) reservation: Reservation,
    pub(crate) first_time: bool,
    pub(crate) token: Option<Key>,
}

impl Grant {
    pub(crate) fn name(&self) -> &str {
        self.reservation.name()
    }
}

pub(crate) struct NameBook {
    format: NameFormat,
    store: Arc<dyn NameStore>,
    state: parking_lot::Mutex<State>,
    /// Binds of first-time grants, in memory only (see `binds`).
    binds: parking_lot::Mutex<Binds>,
    /// Serializes grants and revocations, so a name is decided and saved
    /// (or its change undone) before the next one.
    grant_lock: tokio::sync::Mutex<()>,
}

impl NameBook {
    /// Loads the book from `store`; a store that fails to load, or holds a
    /// document this server cannot read, stops start-up.
    pub(crate) async fn load(format: NameFormat, store: Arc<dyn NameStore>) -> Result<Self, Error> {
        let state = match store.load().await? {
            None => State {
                key: Key::random(),
                next: 1,
                chosen: BTreeSet::new(),
                revoked: BTreeSet::new(),
            },
            Some(value) => {
                let doc: Doc = serde_json::from_value(value)
                    .map_err(|e| Error::Store(format!("server name document: {e}")))?;
                if doc.version != DOC_VERSION {
                    return Err(Error::Store(format!(
                        "server name document has version {}, expected {DOC_VERSION}",
                        doc.version
                    )));
                }
                let key = Key::from_hex(&doc.key)
                    .ok_or_else(|| Error::Store("server name document: bad key".into()))?;
                State {
                    key,
                    next: doc.next.max(1),
                    chosen: doc.chosen,
                    revoked: doc.revoked,
                }
            }
        };
        let book = NameBook {
            format,
            store,
            state: parking_lot::Mutex::new(state),
            binds: parking_lot::Mutex::default(),
            grant_lock: tokio::sync::Mutex::new(()),
        };
        // Persist the key at once: tokens given from now on must stay valid.
        let doc = book.state.lock().doc();
        book.store.save(&doc).await?;
        Ok(book)
    }

    /// True when this server has given `name`.
    pub(crate) fn is_known(&self, name: &str) -> bool {
        let st = self.state.lock();
        Self::known_in(&self.format, &st, name)
    }

    fn known_in(format: &NameFormat, st: &State, name: &str) -> bool {
        st.chosen.contains(name)
            || format
                .parse_name(name)
                .is_some_and(|n| n >= 1 && n < st.next)
    }

    /// True when `name` is revoked.
    pub(crate) fn is_revoked(&self, name: &str) -> bool {
        self.state.lock().revoked.contains(name)
    }

    /// Revokes or restores `name` and persists the change; when saving
    /// fails, the change is undone and the error returned.
    pub(crate) async fn set_revoked(&self, name: &str, revoked: bool) -> Result<(), Error> {
        let _grant = self.grant_lock.lock().await;
        let (doc, changed) = {
            let mut st = self.state.lock();
            let changed = if revoked {
                st.revoked.insert(name.to_owned())
            } else {
                st.revoked.remove(name)
            };
            (st.doc(), changed)
        };
        let saved = self.store.save(&doc).await.map_err(Error::from);
        if saved.is_err() && changed {
            let mut st = self.state.lock();
            if revoked {
                st.revoked.remove(name);
            } else {
                st.revoked.insert(name.to_owned());
            }
        }
        saved
    }

    /// Decides the name of an authenticated agent, persists it when it is
    /// new, and reserves it in `registry` so no second connection can take
    /// it. A failed save undoes the decision.
    ///
    /// `wanted` says whether the handshake still waits for the answer: a
    /// grant whose handshake was given up is not started, and one that
    /// finished after that frees its reservation before the next grant runs.
    pub(crate) async fn grant(
        &self,
        hs: &ServerHandshake,
        auth: &VerifiedAuth,
        registry: &Arc<Registry>,
        wanted: impl Fn() -> bool,
    ) -> Result<Grant, GrantError> {
        // Callers retry once after replacing a stale holder; see connection.rs.
        let _grant = self.grant_lock.lock().await;
        if !wanted() {
            return Err(abandoned().into());
        }
        let digest = auth.bind_digest();
        // The name asked for: the auth's own or, without one, the assigned
        // name an earlier grant gave to the same bind.
        let asked = match (&auth.name, &digest) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(d)) => self.binds.lock().assigned(d),
            (None, None) => None,
        };
        let decision = match asked {
            None => self.assign(digest)?,
            Some(name) => {
                // Looked up before the state lock: the registry's lock comes
                // first wherever both are held (see `Registry::admit`).
                let held = registry.get(&name);
                self.decide(hs, auth, &name, digest, held)?
            }
        };
        let (name, first_time, token) = match decision {
            Decision::Ready {
                name,
                first_time,
                token,
            } => (name, first_time, token),
            Decision::New {
                name,
                token,
                doc,
                undo,
            } => {
                if let Err(e) = self.store.save(&doc).await {
                    self.undo(undo, &name);
                    tracing::error!(error = %e, "name store failed to save; refusing the agent");
                    return Err(GrantError::Refused(Refusal::new(
                        codes::STORE,
                        "the server could not persist the name",
                        close::INTERNAL_ERROR,
                    )));
                }
                (name, true, Some(token))
            }
        };
        let Some(reservation) = registry.reserve(&name) else {
            return Err(duplicate(&name).into());
        };
        if !wanted() {
            // Freed here, while no other grant runs: a retry finds it free.
            drop(reservation);
            return Err(abandoned().into());
        }
        Ok(Grant {
            reservation,
            first_time,
            token,
        })
    }

    /// A new name from the counter.
    fn assign(&self, digest: Option<BindDigest>) -> Result<Decision, GrantError> {
        let mut st = self.state.lock();
        if st.next == u64::MAX {
            return Err(GrantError::Refused(Refusal::new(
                codes::INVALID_NAME,
                "the name counter is exhausted",
                close::NAME_REFUSED,
            )));
        }
        // Chosen names never have the format, so the counter's next name is
        // always free.
        let n = st.next;
        st.next = n + 1;
        let name = self.format.format(n);
        let token = crypto::name_token(&st.key, &name);
        let doc = st.doc();
        drop(st);
        if let Some(d) = digest {
            self.binds.lock().remember(&name, d, true);
        }
        Ok(Decision::New {
            name,
            token,
            doc,
            undo: Undo::Counter(n),
        })
    }

    /// The decision for an `auth` that asks for `name` (its own, or found by
    /// its bind); `held` is what the registry holds for it.
    fn decide(
        &self,
        hs: &ServerHandshake,
        auth: &VerifiedAuth,
        name: &str,
        digest: Option<BindDigest>,
        held: Lookup,
    ) -> Result<Decision, GrantError> {
        if !is_valid_name(name) {
            return Err(GrantError::Refused(Refusal::new(
                codes::INVALID_NAME,
                "names are 1 to 64 letters, digits, `-`, `_` or `.`",
                close::NAME_REFUSED,
            )));
        }
        let bound = digest.is_some_and(|d| self.binds.lock().matches(name, &d));
        let mut st = self.state.lock();
        if st.revoked.contains(name) {
            return Err(GrantError::Refused(Refusal::new(
                codes::REVOKED,
                format!("the name {name} is revoked"),
                close::REVOKED,
            )));
        }
        let token = crypto::name_token(&st.key, name);
        let proven = hs.claim_proves(auth, &token);
        if proven || bound {
            drop(st);
            if proven {
                // The agent holds its token: its first welcome arrived.
                self.binds.lock().forget(name);
            }
            return match held {
                Lookup::Live(agent) => Err(GrantError::Held(agent)),
                Lookup::Reserved => Err(duplicate(name).into()),
                // A reclaim; or the first grant again, for an agent whose
                // welcome was lost: same name, same token.
                Lookup::Absent => Ok(Decision::Ready {
                    name: name.to_owned(),
                    first_time: !proven,
                    token: (!proven).then_some(token),
                }),
            };
        }
        if Self::known_in(&self.format, &st, name) || !matches!(held, Lookup::Absent) {
            return Err(GrantError::Refused(Refusal::new(
                codes::NAME_TAKEN,
                format!("{name} belongs to another agent; its token is required"),
                close::NAME_REFUSED,
            )));
        }
        // A name of the agent's own choosing, new to this server. Names of
        // the server's format are the counter's alone: choosing one would
        // skip or exhaust the counter.
        if self.format.parse_name(name).is_some() {
            return Err(GrantError::Refused(Refusal::new(
                codes::INVALID_NAME,
                format!(
                    "names of the form {} are assigned by the server",
                    self.format
                ),
                close::NAME_REFUSED,
            )));
        }
        if st.chosen.len() >= MAX_CHOSEN_NAMES {
            return Err(GrantError::Refused(Refusal::new(
                codes::INVALID_NAME,
                "the server keeps no more chosen names",
                close::NAME_REFUSED,
            )));
        }
        st.chosen.insert(name.to_owned());
        let doc = st.doc();
        drop(st);
        if let Some(d) = digest {
            self.binds.lock().remember(name, d, false);
        }
        Ok(Decision::New {
            name: name.to_owned(),
            token,
            doc,
            undo: Undo::Chosen,
        })
    }

    /// Takes back a new name whose save failed. Grants are serialized, so
    /// nothing has changed since the decision.
    fn undo(&self, undo: Undo, name: &str) {
        {
            let mut st = self.state.lock();
            match undo {
                Undo::Counter(n) => {
                    if st.next == n + 1 {
                        st.next = n;
                    }
                }
                Undo::Chosen => {
                    st.chosen.remove(name);
                }
            }
        }
        self.binds.lock().forget(name);
    }
}

/// What a grant decided, before anything is saved.
enum Decision {
    /// Nothing to persist: a reclaim, or a first-time grant given again to
    /// the agent with its bind.
    Ready {
        name: String,
        first_time: bool,
        token: Option<Key>,
    },
    /// A new name: persist `doc` before answering, or `undo`.
    New {
        name: String,
        token: Key,
        doc: serde_json::Value,
        undo: Undo,
    },
}

/// How to take back a new name whose save failed.
enum Undo {
    /// The counter gave this number.
    Counter(u64),
    /// The name was added to the chosen set.
    Chosen,
}

/// The refusal of a grant whose handshake was given up; nobody reads it.
fn abandoned() -> Refusal {
    Refusal::new(
        codes::HANDSHAKE_TIMEOUT,
        "the handshake was given up",
        close::HANDSHAKE_TIMEOUT,
    )
}
