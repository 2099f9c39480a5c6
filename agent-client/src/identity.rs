//! The agent's name and token, kept in a [`NameStore`] between connections.

use agent_protocol::crypto::Key;
use agent_protocol::handshake::Identity;
use agent_protocol::{Error, NameStore};
use serde::{Deserialize, Serialize};

const DOC_VERSION: u32 = 1;

/// The identity the supervisor holds between connection attempts.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// What the next attempt asks with.
    pub(crate) identity: Identity,
    /// True while the store lacks `identity` (a save failed, or is still to
    /// come): the next successful handshake saves it.
    pub(crate) unsaved: bool,
}

#[derive(Serialize, Deserialize)]
struct Doc {
    version: u32,
    name: Option<String>,
    token: Option<String>,
}

/// Loads the stored identity; a store that fails or holds an unreadable
/// document is an error, never a silent fresh start.
pub(crate) async fn load(store: &dyn NameStore) -> Result<Identity, Error> {
    let Some(value) = store.load().await? else {
        return Ok(Identity::default());
    };
    let doc: Doc = serde_json::from_value(value)
        .map_err(|e| Error::Store(format!("agent identity document: {e}")))?;
    if doc.version != DOC_VERSION {
        return Err(Error::Store(format!(
            "agent identity document has version {}, expected {DOC_VERSION}",
            doc.version
        )));
    }
    let token = match doc.token {
        Some(t) => Some(
            Key::from_hex(&t)
                .ok_or_else(|| Error::Store("agent identity document: bad token".into()))?,
        ),
        None => None,
    };
    Ok(Identity {
        name: doc.name,
        token,
        bind: None,
    })
}

pub(crate) async fn save(store: &dyn NameStore, identity: &Identity) -> Result<(), Error> {
    let doc = Doc {
        version: DOC_VERSION,
        name: identity.name.clone(),
        token: identity.token.as_ref().map(Key::to_hex),
    };
    let value = serde_json::to_value(doc).map_err(|e| Error::Store(e.to_string()))?;
    store.save(&value).await.map_err(Error::from)
}
