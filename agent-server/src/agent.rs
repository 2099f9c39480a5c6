//! The server's handle on one connected agent.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_protocol::close;
use agent_protocol::{CallHandle, CloseReason, Error, LinkHandle};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// What the server learned about an agent at its handshake.
pub(crate) struct AgentInfo {
    pub(crate) name: String,
    pub(crate) first_time: bool,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) meta: Map<String, Value>,
    pub(crate) default_timeout: Duration,
}

struct Inner {
    info: AgentInfo,
    connected_at: SystemTime,
    link: LinkHandle,
    data: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

/// One connected agent, as the server sees it. Cheap to clone; clones share
/// the connection and the user-data slot.
///
/// The handle stays usable after the agent disconnected: its fields still
/// read, and calls fail with `CONNECTION_CLOSED`.
///
/// ```no_run
/// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
/// for agent in server.agents() {
///     let uptime: serde_json::Value = agent.send("uptime", &()).await?;
///     println!("{} ({}) up {uptime}", agent.name(), agent.peer_addr());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Agent(Arc<Inner>);

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.0.info.name)
            .field("peer_addr", &self.0.info.peer_addr)
            .field("first_time", &self.0.info.first_time)
            .field("tls", &self.0.info.tls)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Agent {
    pub(crate) fn new(info: AgentInfo, link: LinkHandle) -> Self {
        Agent(Arc::new(Inner {
            info,
            connected_at: SystemTime::now(),
            link,
            data: Mutex::new(HashMap::new()),
        }))
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.0.info.name
    }

    /// True when the name was given at this connection (not reclaimed).
    pub fn first_time(&self) -> bool {
        self.0.info.first_time
    }

    /// The agent's address as the server saw it.
    pub fn peer_addr(&self) -> SocketAddr {
        self.0.info.peer_addr
    }

    /// True when the agent connected over TLS.
    pub fn is_tls(&self) -> bool {
        self.0.info.tls
    }

    /// The metadata the agent sent at connect.
    pub fn meta(&self) -> &Map<String, Value> {
        &self.0.info.meta
    }

    /// When the handshake finished.
    pub fn connected_at(&self) -> SystemTime {
        self.0.connected_at
    }

    /// True while the link is up.
    pub fn is_connected(&self) -> bool {
        !self.0.link.is_closed()
    }

    /// Why the link ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.link.close_reason()
    }

    /// Stores a value of type `T` on this agent, replacing any earlier `T`.
    ///
    /// ```no_run
    /// # fn demo(agent: agent_server::Agent) {
    /// struct Role(&'static str);
    /// agent.set_data(Role("builder"));
    /// assert_eq!(agent.data::<Role>().unwrap().0, "builder");
    /// # }
    /// ```
    pub fn set_data<T: Any + Send + Sync>(&self, value: T) {
        self.0
            .data
            .lock()
            .insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T` stored on this agent, if any.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let any = self.0.data.lock().get(&TypeId::of::<T>()).cloned()?;
        any.downcast::<T>().ok()
    }

    /// Removes and returns the value of type `T`.
    pub fn take_data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let any = self.0.data.lock().remove(&TypeId::of::<T>())?;
        any.downcast::<T>().ok()
    }

    /// Calls the agent's hook `action` with the server's default timeout.
    pub async fn send<B, R>(&self, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_timeout(action, body, self.0.info.default_timeout)
            .await
    }

    /// Calls the agent's hook `action`, waiting at most `timeout`.
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
        self.0.link.call(action, body, timeout).await
    }

    /// Calls the agent's hook `action` with the server's default timeout,
    /// as a [`CallHandle`] that can be cancelled on purpose: after
    /// [`CallHandle::cancel`] the agent's hook is stopped (unless it keeps
    /// running) and the handle resolves with `CANCELLED` once the agent
    /// confirmed it.
    ///
    /// ```no_run
    /// # async fn demo(agent: agent_server::Agent) {
    /// let deploy = agent.send_cancellable::<_, String>("deploy", &"v2");
    /// let stop = deploy.canceller();
    /// // Elsewhere, when the operator gives up: stop.cancel();
    /// # stop.cancel();
    /// match deploy.await {
    ///     Err(e) if e.code() == "CANCELLED" => println!("deploy stopped"),
    ///     other => println!("deploy ended: {other:?}"),
    /// }
    /// # }
    /// ```
    pub fn send_cancellable<B, R>(&self, action: &str, body: &B) -> CallHandle<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.0
            .link
            .call_cancellable(action, body, self.0.info.default_timeout)
    }

    /// Sends the agent a notification: its hook `action` runs with `body`,
    /// and nothing comes back (see [`LinkHandle::notify`]). Fails with
    /// `UNSUPPORTED` for an agent written before notifications.
    ///
    /// ```no_run
    /// # async fn demo(agent: agent_server::Agent) -> Result<(), agent_server::Error> {
    /// agent.notify("config-changed", &serde_json::json!({"version": 7})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(&self, action: &str, body: &B) -> Result<(), Error>
    where
        B: Serialize + ?Sized,
    {
        self.0.link.notify(action, body).await
    }

    /// Closes the agent's link with close code 4006 and `reason`. Calls in
    /// flight on it fail at once.
    pub fn disconnect(&self, reason: &str) {
        self.0.link.close(close::FORCED_DISCONNECT, reason);
    }

    /// The agent's link, for lower-level use (raw bodies, close codes).
    pub fn link(&self) -> &LinkHandle {
        &self.0.link
    }

    pub(crate) fn same_connection(&self, other: &Agent) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
