//! The name book: which names this server has given, the key their tokens
//! derive from, and the decision of which name an authenticated agent gets.
//!
//! It persists through the [`NameStore`] before any answer goes out, so a name
//! once given is never given again, across restarts and crashes. Tokens are
//! `HMAC(server key, name)`, so nothing per agent is stored but chosen names.

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_protocol::close;
use agent_protocol::codes;
use agent_protocol::crypto::{self, Key};
use agent_protocol::handshake::{Refusal, ServerHandshake, VerifiedAuth};
use agent_protocol::name::is_valid_name;
use agent_protocol::{Error, NameFormat, NameStore};
use serde::{Deserialize, Serialize};

use crate::registry::{Lookup, Registry};

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
    /// The agent proved the name, but a registered link holds it: the caller
    /// decides whether that link is alive (`DUPLICATE_ID`) or stale.
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

/// A name granted to an agent.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) name: String,
    pub(crate) first_time: bool,
    pub(crate) token: Option<Key>,
}

pub(crate) struct NameBook {
    format: NameFormat,
    store: Arc<dyn NameStore>,
    state: parking_lot::Mutex<State>,
    /// Serializes grants, so a name is decided and saved before the next one.
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

    /// Revokes or restores `name` and persists the change.
    pub(crate) async fn set_revoked(&self, name: &str, revoked: bool) -> Result<(), Error> {
        let _grant = self.grant_lock.lock().await;
        let doc = {
            let mut st = self.state.lock();
            if revoked {
                st.revoked.insert(name.to_owned());
            } else {
                st.revoked.remove(name);
            }
            st.doc()
        };
        self.store.save(&doc).await.map_err(Error::from)
    }

    /// Decides the name of an authenticated agent, persists it when it is new,
    /// and reserves it in `registry` so no second connection can take it.
    pub(crate) async fn grant(
        &self,
        hs: &ServerHandshake,
        auth: &VerifiedAuth,
        registry: &Registry,
    ) -> Result<Grant, GrantError> {
        // Callers retry once after replacing a stale holder; see connection.rs.
        let _grant = self.grant_lock.lock().await;
        let (grant, doc) = {
            let mut st = self.state.lock();
            match auth.name.as_deref() {
                None => {
                    if st.next == u64::MAX {
                        return Err(GrantError::Refused(Refusal::new(
                            codes::INVALID_NAME,
                            "the name counter is exhausted",
                            close::NAME_REFUSED,
                        )));
                    }
                    // Chosen names never have the format, so the counter's next
                    // name is always free.
                    let n = st.next;
                    st.next = n + 1;
                    let name = self.format.format(n);
                    let token = crypto::name_token(&st.key, &name);
                    (
                        Grant {
                            name,
                            first_time: true,
                            token: Some(token),
                        },
                        Some(st.doc()),
                    )
                }
                Some(name) => {
                    if !is_valid_name(name) {
                        return Err(GrantError::Refused(Refusal::new(
                            codes::INVALID_NAME,
                            "names are 1 to 64 letters, digits, `-`, `_` or `.`",
                            close::NAME_REFUSED,
                        )));
                    }
                    if st.revoked.contains(name) {
                        return Err(GrantError::Refused(Refusal::new(
                            codes::REVOKED,
                            format!("the name {name} is revoked"),
                            close::REVOKED,
                        )));
                    }
                    let token = crypto::name_token(&st.key, name);
                    if hs.claim_proves(auth, &token) {
                        match registry.get(name) {
                            Lookup::Live(agent) => return Err(GrantError::Held(agent)),
                            Lookup::Reserved => return Err(duplicate(name).into()),
                            Lookup::Absent => {}
                        }
                        (
                            Grant {
                                name: name.to_owned(),
                                first_time: false,
                                token: None,
                            },
                            None,
                        )
                    } else if Self::known_in(&self.format, &st, name) || registry.contains(name) {
                        return Err(GrantError::Refused(Refusal::new(
                            codes::NAME_TAKEN,
                            format!("{name} belongs to another agent; its token is required"),
                            close::NAME_REFUSED,
                        )));
                    } else {
                        // A name of the agent's own choosing, new to this server.
                        // Names of the server's format are the counter's alone:
                        // choosing one would skip or exhaust the counter.
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
                        (
                            Grant {
                                name: name.to_owned(),
                                first_time: true,
                                token: Some(token),
                            },
                            Some(st.doc()),
                        )
                    }
                }
            }
        };
        if let Some(doc) = doc {
            if let Err(e) = self.store.save(&doc).await {
                tracing::error!(error = %e, "name store failed to save; refusing the agent");
                return Err(GrantError::Refused(Refusal::new(
                    codes::STORE,
                    "the server could not persist the name",
                    close::INTERNAL_ERROR,
                )));
            }
        }
        if !registry.reserve(&grant.name) {
            return Err(duplicate(&grant.name).into());
        }
        Ok(grant)
    }
}
