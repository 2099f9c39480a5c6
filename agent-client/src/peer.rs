//! The handle an agent's hooks receive: the server on the other end of the
//! link the call came in on.

use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{Error, LinkHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The server, as seen from one link; handed to hooks as
/// [`Call::peer`](agent_protocol::Call). Calls through it go over the link the
/// request came in on.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    name: Arc<str>,
    link: LinkHandle,
    default_timeout: Duration,
}

impl ServerHandle {
    pub(crate) fn new(name: &str, link: LinkHandle, default_timeout: Duration) -> Self {
        ServerHandle {
            name: Arc::from(name),
            link,
            default_timeout,
        }
    }

    /// This agent's own name on the link.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the server's hook `action` with the client's default timeout.
    pub async fn send<B, R>(&self, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.link.call(action, body, self.default_timeout).await
    }

    /// Calls the server's hook `action`, waiting at most `timeout`.
    pub async fn send_timeout<B, R>(
        &self,
        action: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.link.call(action, body, timeout).await
    }

    /// The underlying link.
    pub fn link(&self) -> &LinkHandle {
        &self.link
    }
}
