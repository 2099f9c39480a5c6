//! The server's handle on one connected agent.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use agent_protocol::close;
use agent_protocol::labels::Labels;
use agent_protocol::{CallHandle, CallStream, CloseReason, Error, LinkHandle, StreamOptions};
use parking_lot::{Mutex, MutexGuard};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::registry::Registry;

/// The last connection id given in this process.
static LAST_CONNECTION_ID: AtomicU64 = AtomicU64::new(0);

/// What the server learned about an agent at its handshake.
pub(crate) struct AgentInfo {
    pub(crate) name: String,
    pub(crate) first_time: bool,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) tls: bool,
    /// The client's certificate chain, when mutual TLS verified one.
    pub(crate) peer_certificates: Option<Vec<CertificateDer<'static>>>,
    pub(crate) meta: Map<String, Value>,
    /// The labels it was admitted with; [`Agent`] keeps them apart, since
    /// they change.
    pub(crate) labels: Labels,
    pub(crate) default_timeout: Duration,
}

struct Inner {
    info: AgentInfo,
    id: u64,
    connected_at: SystemTime,
    link: LinkHandle,
    /// Where the agent is registered; weak, since the registry holds agents.
    registry: Weak<Registry>,
    /// Changed under the registry's lock, which keeps the label index in
    /// step (see [`Agent::set_label`]); read without it.
    labels: Mutex<Labels>,
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
            .field("connection_id", &self.0.id)
            .field("peer_addr", &self.0.info.peer_addr)
            .field("first_time", &self.0.info.first_time)
            .field("tls", &self.0.info.tls)
            .field("labels", &*self.0.labels.lock())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Agent {
    pub(crate) fn new(mut info: AgentInfo, link: LinkHandle, registry: Weak<Registry>) -> Self {
        let labels = Mutex::new(std::mem::take(&mut info.labels));
        Agent(Arc::new(Inner {
            labels,
            info,
            id: LAST_CONNECTION_ID.fetch_add(1, Ordering::Relaxed) + 1,
            connected_at: SystemTime::now(),
            link,
            registry,
            data: Mutex::new(HashMap::new()),
        }))
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.0.info.name
    }

    /// This connection's id: unique in the process, and greater than the id
    /// of every connection registered before it. An agent that reconnects
    /// keeps its name but gets a new id, so an application can tell its
    /// connections apart (for example, to ignore the `AgentDisconnected` of
    /// a connection it already replaced).
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) {
    /// use agent_server::ServerEvent;
    /// use std::collections::HashMap;
    ///
    /// let mut current: HashMap<String, u64> = HashMap::new();
    /// let mut events = server.events();
    /// while let Ok(event) = events.recv().await {
    ///     match event {
    ///         ServerEvent::AgentConnected(a) => {
    ///             current.insert(a.name().to_owned(), a.connection_id());
    ///         }
    ///         ServerEvent::AgentDisconnected(a, _) => {
    ///             if current.get(a.name()) == Some(&a.connection_id()) {
    ///                 current.remove(a.name());
    ///             }
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connection_id(&self) -> u64 {
        self.0.id
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

    /// The certificate chain the agent presented, end-entity certificate
    /// first, as DER, when the server requires client certificates
    /// ([`ServerBuilder::tls_client_ca_pem`](crate::ServerBuilder::tls_client_ca_pem))
    /// and verified it against those CAs; `None` over plain `ws://` and
    /// without mutual TLS.
    ///
    /// The chain is handed over as it was verified, not parsed: to bind
    /// names to certificates, compare it (or a digest of it) with what you
    /// expect, or parse it with an X.509 crate of your choice.
    ///
    /// ```no_run
    /// # fn demo(agent: agent_server::Agent, expected_der: &[u8]) {
    /// let presented = agent.peer_certificates().and_then(|chain| chain.first());
    /// if presented.map(|cert| cert.as_ref()) != Some(expected_der) {
    ///     agent.disconnect("certificate does not match this name");
    /// }
    /// # }
    /// ```
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.0.info.peer_certificates.as_deref()
    }

    /// The metadata the agent sent at connect.
    pub fn meta(&self) -> &Map<String, Value> {
        &self.0.info.meta
    }

    /// The agent's labels now: those it presented at connect, as the
    /// admission hook left them ([`ServerBuilder::on_admit`](crate::ServerBuilder::on_admit)),
    /// with the changes made since through [`Agent::set_label`] and its
    /// kin. Selectors ([`AgentServer::select`](crate::AgentServer::select))
    /// see the same labels.
    pub fn labels(&self) -> Labels {
        self.0.labels.lock().clone()
    }

    /// Sets the label `key` to `value` on this connection, returning the
    /// value it had; later selections see it at once. Fails with `CONFIG`
    /// for an invalid key or value, or past 64 labels, changing nothing.
    ///
    /// Labels belong to a connection: when the agent reconnects, it
    /// presents its own labels again and the admission hook runs again. On
    /// a handle whose connection has ended, only the handle changes.
    ///
    /// ```no_run
    /// # fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use agent_server::Selector;
    /// let agent = server.agent("A0042").expect("connected");
    /// agent.set_label("draining", "true")?;
    /// let serving: Selector = "!draining".parse()?;
    /// assert!(server.select(serving).agents().iter().all(|a| a.name() != "A0042"));
    /// # Ok(()) }
    /// ```
    pub fn set_label(&self, key: &str, value: &str) -> Result<Option<String>, Error> {
        self.relabel(|labels| labels.insert(key, value).map_err(Error::from))
    }

    /// Removes the label `key` from this connection, returning its value;
    /// see [`Agent::set_label`].
    pub fn remove_label(&self, key: &str) -> Option<String> {
        self.relabel(|labels| Ok(labels.remove(key)))
            .unwrap_or_default()
    }

    /// Replaces all of this connection's labels with `labels`; see
    /// [`Agent::set_label`].
    pub fn set_labels(&self, labels: Labels) {
        let _ = self.relabel(|l| {
            *l = labels;
            Ok(())
        });
    }

    /// Applies `change` to the labels, through the registry when the agent
    /// is registered so that its index follows.
    fn relabel<R>(&self, change: impl FnOnce(&mut Labels) -> Result<R, Error>) -> Result<R, Error> {
        match self.0.registry.upgrade() {
            Some(registry) => registry.relabel(self, change),
            None => change(&mut self.0.labels.lock()),
        }
    }

    /// The labels, locked; the registry changes them under its own lock.
    pub(crate) fn labels_lock(&self) -> MutexGuard<'_, Labels> {
        self.0.labels.lock()
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
    ///
    /// Fails at once with `SHUTDOWN` once the server's shutdown has begun,
    /// and with `CONNECTION_CLOSED` once this connection has ended.
    pub async fn send<B, R>(&self, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_timeout(action, body, self.0.info.default_timeout)
            .await
    }

    /// Calls the agent's hook `action` for a streamed result: its items
    /// and progress as they come, then its result (see
    /// [`LinkHandle::call_stream`]). `opts` sets the timeout and the
    /// credit; `StreamOptions::new(timeout)` gives the defaults.
    ///
    /// ```no_run
    /// # async fn demo(agent: agent_server::Agent) -> Result<(), agent_protocol::Error> {
    /// use agent_protocol::{Event, StreamOptions};
    /// use futures_util::StreamExt;
    /// let mut lines = agent
    ///     .send_streaming::<_, String, u64>("tail", &"/var/log/app", StreamOptions::new(std::time::Duration::from_secs(60)))
    ///     .await?;
    /// while let Some(event) = lines.next().await {
    ///     if let Event::Item(line) = event? {
    ///         println!("{line}");
    ///     }
    /// }
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
        self.0.link.call_stream(action, body, opts).await
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

    /// Disconnects this connection: closes its link with close code 4006
    /// and `reason`. The agent may reconnect (use
    /// [`AgentServer::revoke`](crate::AgentServer::revoke) to keep it out).
    ///
    /// Does not wait for the network: when it returns, calls in flight on
    /// the link have failed with `CONNECTION_CLOSED`, the agent is no longer
    /// listed, and its `AgentDisconnected` event is out; the close frame is
    /// sent in the background (await [`LinkHandle::stopped`] on
    /// [`Agent::link`] to wait until the socket is released). Does nothing
    /// to a connection that has ended already.
    pub fn disconnect(&self, reason: &str) {
        self.end(close::FORCED_DISCONNECT, reason);
    }

    /// Closes the link with `code` and takes the agent out of the registry,
    /// reporting it gone, unless its link ended by itself first.
    pub(crate) fn end(&self, code: u16, reason: &str) {
        self.0.link.close(code, reason);
        if let Some(registry) = self.0.registry.upgrade() {
            // The first reason the link ended with is the one it keeps.
            let why = self
                .0
                .link
                .close_reason()
                .unwrap_or_else(|| CloseReason::local(code, reason));
            registry.remove(self, why);
        }
    }

    /// The agent's link, for lower-level use (raw bodies, close codes).
    pub fn link(&self) -> &LinkHandle {
        &self.0.link
    }

    pub(crate) fn same_connection(&self, other: &Agent) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
