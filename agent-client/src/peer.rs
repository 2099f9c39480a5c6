//! The handle an agent's hooks receive: the server on the other end of the
//! link the call came in on.

use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{CallHandle, CallStream, Error, LinkHandle, StreamOptions};
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

    /// Calls the server's hook `action` for a streamed result (see
    /// [`LinkHandle::call_stream`]), over the link the request came in on.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_client::ServerHandle) -> Result<(), agent_protocol::Error> {
    /// use agent_protocol::StreamOptions;
    /// let stream = server
    ///     .send_streaming::<_, u64, u64>("count", &10, StreamOptions::new(std::time::Duration::from_secs(5)))
    ///     .await?;
    /// let total = stream.outcome().await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_streaming<B, T, R>(
        &self,
        action: &str,
        body: &B,
        opts: StreamOptions,
    ) -> Result<CallStream<T, R>, Error>
    where
        B: Serialize + ?Sized,
    {
        self.link.call_stream(action, body, opts).await
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

    /// Calls the server's hook `action` with the client's default timeout,
    /// as a [`CallHandle`] that can be cancelled on purpose (see
    /// [`LinkHandle::call_cancellable`]).
    pub fn send_cancellable<B, R>(&self, action: &str, body: &B) -> CallHandle<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.link
            .call_cancellable(action, body, self.default_timeout)
    }

    /// Sends the server a notification over this link: its hook `action`
    /// runs with `body`, and nothing comes back (see
    /// [`LinkHandle::notify`]).
    ///
    /// ```no_run
    /// # async fn demo(server: agent_client::ServerHandle) -> Result<(), agent_client::Error> {
    /// server.notify("progress", &serde_json::json!({"done": 10})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(&self, action: &str, body: &B) -> Result<(), Error>
    where
        B: Serialize + ?Sized,
    {
        self.link.notify(action, body).await
    }

    /// The underlying link.
    pub fn link(&self) -> &LinkHandle {
        &self.link
    }
}
