//! The server: the accept loop, the registry of connected agents, calls to
//! them, events and shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::close;
use agent_protocol::log_limit::LogLimit;
use agent_protocol::{
    CallStream, Error, Hooks, LinkConfig, NameFormat, Secret, Selector, StreamOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::AdmitHook;
use crate::agent::Agent;
use crate::config::ServerBuilder;
use crate::connection;
use crate::events::{HandshakeFailure, ServerEvent};
use crate::handshakes::Handshakes;
use crate::names::NameBook;
use crate::registry::{Lookup, Registry};
use crate::selection::Selection;

/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 4096;
/// Capacity of the handshake failure channel.
const FAILURE_CAPACITY: usize = 1024;

pub(crate) struct Inner {
    pub(crate) secret: Secret,
    pub(crate) sign_frames: bool,
    pub(crate) handshake_timeout: Duration,
    /// Deadline from accept to the end of the WebSocket upgrade (and TLS).
    pub(crate) upgrade_timeout: Duration,
    /// Largest first message (`auth`) a connection may send.
    pub(crate) max_handshake_message_bytes: usize,
    pub(crate) default_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) link: LinkConfig,
    pub(crate) names: NameBook,
    pub(crate) registry: Arc<Registry>,
    pub(crate) hooks: Hooks<Agent>,
    /// The admission hook, if the application set one.
    pub(crate) on_admit: Option<AdmitHook>,
    /// Which agent-to-agent calls are relayed; none when unset.
    pub(crate) relay_policy: Option<crate::relay::RelayPolicy>,
    /// Lifecycle events only: unauthenticated peers cannot crowd them out.
    events: broadcast::Sender<ServerEvent>,
    /// Failed handshakes, apart from `events`.
    failures: broadcast::Sender<HandshakeFailure>,
    /// Failed handshakes by code, for readers without a receiver.
    failure_counts: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
    /// Cancelled when the server stops accepting.
    pub(crate) stop: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    local_addr: SocketAddr,
    pub(crate) probe_timeout: Duration,
    /// Slots of the connections not authenticated yet.
    handshakes: Arc<Handshakes>,
    /// Present when serving `wss://`.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Calls, bytes and links over every link, the gone ones included.
    pub(crate) counters: Arc<agent_protocol::link::Counters>,
}

impl Inner {
    /// Counts and broadcasts a failed handshake.
    pub(crate) fn handshake_failed(&self, peer_addr: SocketAddr, code: &'static str) {
        *self.failure_counts.lock().entry(code).or_default() += 1;
        let _ = self.failures.send(HandshakeFailure { peer_addr, code });
    }
}

/// Stops the server when the last [`AgentServer`] handle is dropped: no more
/// accepts or registrations, and every link closes with 1001 at once.
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.cancel();
        self.0
            .registry
            .close(|agent| agent.link().close(close::GOING_AWAY, "server dropped"));
    }
}

/// Counts from [`AgentServer::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Agents connected and registered.
    pub agents: usize,
    /// Names reserved by handshakes that have not finished.
    pub reserved_names: usize,
    /// Connections not authenticated yet, including those still telling
    /// the peer why their handshake failed (bounded by
    /// `max_pending_handshakes`).
    pub handshakes: usize,
    /// Connection tasks alive, in any state (including ones still closing).
    pub connections: usize,
    /// Calls from the server to agents waiting for a response.
    pub pending_requests: usize,
    /// Calls from agents the server is serving now.
    pub serving_requests: usize,
    /// Hook tasks alive for agents' calls (hooks that did not finish at
    /// once). They end with their agent's link.
    pub running_hooks: usize,
    /// Bytes of frames waiting to be written to agents, over every link.
    pub queued_bytes: usize,
    /// Callers waiting for agents to connect ([`AgentServer::wait_for`],
    /// [`AgentServer::wait_for_count`], calls
    /// [`when_online`](crate::CallBuilder::when_online)).
    pub waiters: usize,
}

impl ServerStats {
    /// True when nothing is left: no agent, reserved name, handshake,
    /// connection task, running hook, waiter, or request either way. A
    /// server whose agents have all gone reaches this once their
    /// connections have closed.
    pub fn is_idle(&self) -> bool {
        *self == ServerStats::default()
    }
}

/// Which agent a call goes to: a name, or an [`Agent`] handle.
#[derive(Debug, Clone)]
pub enum Target {
    /// The agent of this name.
    Name(String),
    /// The agent of this handle's name (its current connection).
    Agent(Agent),
}

impl Target {
    pub(crate) fn name(&self) -> &str {
        match self {
            Target::Name(n) => n,
            Target::Agent(a) => a.name(),
        }
    }
}

impl From<&str> for Target {
    fn from(n: &str) -> Self {
        Target::Name(n.to_owned())
    }
}

impl From<String> for Target {
    fn from(n: String) -> Self {
        Target::Name(n)
    }
}

impl From<&String> for Target {
    fn from(n: &String) -> Self {
        Target::Name(n.clone())
    }
}

impl From<&Agent> for Target {
    fn from(a: &Agent) -> Self {
        Target::Agent(a.clone())
    }
}

impl From<Agent> for Target {
    fn from(a: Agent) -> Self {
        Target::Agent(a)
    }
}

/// The control plane's end of the tunnel: accepts agents, authenticates and
/// names them, serves their calls, and calls them.
///
/// Cheap to clone. The server runs until [`AgentServer::shutdown`], or until
/// every handle is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), agent_server::Error> {
/// use agent_server::{AgentServer, HookError};
/// use serde_json::{json, Value};
///
/// let server = AgentServer::builder().secret("s3cret").start("127.0.0.1:0").await?;
/// server.on_hook("log", |line: String, call| async move {
///     tracing::info!(agent = call.peer.name(), %line);
///     Ok::<_, HookError>(())
/// });
/// let reply: Value = server.send_to("A0001", "status", &json!({})).await?;
/// for (name, result) in server.send_all::<_, Value>("ping", &()).await? {
///     println!("{name}: {result:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AgentServer {
    pub(crate) inner: Arc<Inner>,
    _stop_on_drop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("local_addr", &self.inner.local_addr)
            .field("agents", &self.inner.registry.live_count())
            .field("stopped", &self.inner.stop.is_cancelled())
            .finish()
    }
}

impl AgentServer {
    /// A builder with the documented defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub(crate) async fn serve(b: ServerBuilder, listener: TcpListener) -> Result<Self, Error> {
        let format: NameFormat = b.name_format.parse()?;
        let secret = b
            .secret
            .ok_or_else(|| Error::Config("a shared secret is required".into()))?;
        let tls = b.tls.server_config()?.map(tokio_rustls::TlsAcceptor::from);
        let names = NameBook::load(format, b.store).await?;
        let local_addr = listener.local_addr()?;
        let events = broadcast::channel(EVENT_CAPACITY).0;
        let inner = Arc::new(Inner {
            secret,
            sign_frames: b.sign_frames,
            handshake_timeout: b.handshake_timeout,
            upgrade_timeout: b.upgrade_timeout,
            // Never above the link's own limit, which applies from the start.
            max_handshake_message_bytes: b
                .max_handshake_message_bytes
                .min(b.link.max_message_bytes),
            default_timeout: b.default_timeout,
            shutdown_grace: b.shutdown_grace,
            link: b.link,
            names,
            registry: Registry::new(events.clone(), b.max_waiters),
            hooks: Hooks::new(),
            on_admit: b.on_admit,
            relay_policy: b.relay_policy,
            events,
            failures: broadcast::channel(FAILURE_CAPACITY).0,
            failure_counts: parking_lot::Mutex::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            local_addr,
            probe_timeout: b.probe_timeout,
            handshakes: Handshakes::new(b.max_handshakes, b.max_handshakes_per_ip),
            tls,
            counters: Arc::default(),
        });
        crate::relay::install(&inner);
        let span = tracing::info_span!("agent_server", addr = %local_addr);
        // Tracked, so shutdown returns only once the port is released.
        inner
            .tasks
            .spawn(accept_loop(listener, Arc::clone(&inner)).instrument(span));
        tracing::info!(addr = %local_addr, "agent server listening");
        Ok(AgentServer {
            _stop_on_drop: Arc::new(StopOnDrop(Arc::clone(&inner))),
            inner,
        })
    }

    /// The address the server listens on (the real port when bound to 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The hook registry; handlers receive the calling [`Agent`] as
    /// [`Call::peer`](agent_protocol::Call).
    pub fn hooks(&self) -> &Hooks<Agent> {
        &self.inner.hooks
    }

    /// Adds a handler for `action` (see [`Hooks::on_hook`]).
    pub fn on_hook<T, R, F, Fut>(&self, action: &str, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, agent_protocol::Call<Agent>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, agent_protocol::HookError>> + Send + 'static,
    {
        self.inner.hooks.on_hook(action, f);
        self
    }

    /// Adds a catch-all handler (see [`Hooks::on_any`]).
    pub fn on_any<T, R, F, Fut>(&self, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, agent_protocol::Call<Agent>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, agent_protocol::HookError>> + Send + 'static,
    {
        self.inner.hooks.on_any(f);
        self
    }

    /// Subscribes to [`ServerEvent`]s from now on: agents connecting and
    /// disconnecting. Failed handshakes go to
    /// [`AgentServer::handshake_failures`] instead, so no number of them can
    /// push a lifecycle event out of a slow receiver's queue.
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.inner.events.subscribe()
    }

    /// Subscribes to failed handshakes from now on, one
    /// [`HandshakeFailure`] per connection that never became an agent
    /// (those dropped at accept are not reported). Any peer can cause these
    /// at will, so a receiver that falls 1024 behind skips the oldest; the
    /// totals in [`AgentServer::handshake_failure_counts`] miss none.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) {
    /// let mut failures = server.handshake_failures();
    /// while let Ok(f) = failures.recv().await {
    ///     if f.code == agent_server::codes::WRONG_SECRET {
    ///         eprintln!("{} does not know the secret", f.peer_addr);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn handshake_failures(&self) -> broadcast::Receiver<HandshakeFailure> {
        self.inner.failures.subscribe()
    }

    /// How many handshakes failed since the server started, by code (the
    /// codes of [`HandshakeFailure::code`]).
    ///
    /// ```no_run
    /// # fn demo(server: agent_server::AgentServer) {
    /// let counts = server.handshake_failure_counts();
    /// let wrong = counts.get(agent_server::codes::WRONG_SECRET).copied().unwrap_or(0);
    /// println!("{wrong} connections with a wrong secret");
    /// # }
    /// ```
    pub fn handshake_failure_counts(&self) -> BTreeMap<&'static str, u64> {
        self.inner.failure_counts.lock().clone()
    }

    /// The connected agents, sorted by name.
    pub fn agents(&self) -> Vec<Agent> {
        self.inner.registry.live()
    }

    /// The connected agent of this name.
    pub fn agent(&self, name: &str) -> Option<Agent> {
        match self.inner.registry.get(name) {
            Lookup::Live(a) => Some(a),
            _ => None,
        }
    }

    /// The connected agents that `selector` selects, as a view: each of
    /// its methods looks again (see [`Selection`]). `select(Selector::all())`
    /// is every agent, and its `send_all` is [`AgentServer::send_all`].
    ///
    /// The selector is evaluated against the label index, so selecting a
    /// few agents of many reads only those that carry the selector's most
    /// selective `key=value`, `key in (…)`, `key` or `name` term; a
    /// selector with none of these (only `!=`, `notin`, `!key`, or no term
    /// at all) looks at every agent.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use agent_server::Selector;
    ///
    /// let dbs = server.select("region=eu,role in (db,cache),!draining".parse::<Selector>()?);
    /// for agent in dbs.agents() {
    ///     println!("{} {}", agent.name(), agent.labels());
    /// }
    /// let by_name = server.select(Selector::all().names(["A0001", "A0002"])?);
    /// assert!(by_name.count() <= 2);
    /// # Ok(()) }
    /// ```
    pub fn select(&self, selector: Selector) -> Selection {
        Selection::new(Arc::clone(&self.inner), selector)
    }

    /// The connected agent of `name`, or why there is none.
    pub(crate) fn resolve(&self, name: &str) -> Result<Agent, Error> {
        self.inner.resolve(name)
    }
}

impl Inner {
    /// The connected agent `name`, or why there is none.
    pub(crate) fn resolve(&self, name: &str) -> Result<Agent, Error> {
        if self.names.is_revoked(name) {
            return Err(Error::Revoked(name.to_owned()));
        }
        match self.registry.get(name) {
            Lookup::Live(a) if a.is_connected() => Ok(a),
            // A link that just ended is offline, though its entry may still
            // wait for its connection task to remove it.
            Lookup::Live(_) | Lookup::Reserved => Err(Error::AgentNotConnected(name.to_owned())),
            Lookup::Absent if self.names.is_known(name) => {
                Err(Error::AgentNotConnected(name.to_owned()))
            }
            Lookup::Absent => Err(Error::UnknownAgent(name.to_owned())),
        }
    }
}

impl AgentServer {
    /// Calls hook `action` on one agent with the default timeout.
    ///
    /// Fails with `UNKNOWN_AGENT` for a name never given, `REVOKED` for a
    /// revoked name, `AGENT_NOT_CONNECTED` for a known name that is offline,
    /// `SHUTDOWN` once shutdown has begun, `TIMEOUT`, `CONNECTION_CLOSED`
    /// when the link drops during the call, or the agent's own error.
    pub async fn send_to<B, R>(
        &self,
        target: impl Into<Target>,
        action: &str,
        body: &B,
    ) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_to_timeout(target, action, body, self.inner.default_timeout)
            .await
    }

    /// Calls hook `action` on one agent, waiting at most `timeout`.
    pub async fn send_to_timeout<B, R>(
        &self,
        target: impl Into<Target>,
        action: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        if self.is_stopped() {
            return Err(Error::Shutdown);
        }
        let target = target.into();
        let agent = self.resolve(target.name())?;
        agent.send_timeout(action, body, timeout).await
    }

    /// Calls hook `action` on one agent for a streamed result: its items
    /// and progress as they come, then its result (see
    /// [`Agent::send_streaming`](crate::Agent::send_streaming)). Fails at
    /// once with `SHUTDOWN` once shutdown has begun, as
    /// [`AgentServer::send_to`] does for an agent unknown or not connected,
    /// and with `UNSUPPORTED` for an agent without the `stream` capability.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_protocol::Error> {
    /// use agent_protocol::StreamOptions;
    /// let total = server
    ///     .send_to_streaming::<_, u64, u64>("A0001", "count", &10, StreamOptions::new(std::time::Duration::from_secs(5)))
    ///     .await?
    ///     .outcome()
    ///     .await?;
    /// # let _ = total;
    /// # Ok(()) }
    /// ```
    pub async fn send_to_streaming<B, T, R>(
        &self,
        target: impl Into<Target>,
        action: &str,
        body: &B,
        opts: StreamOptions,
    ) -> Result<CallStream<T, R>, Error>
    where
        B: Serialize + ?Sized,
    {
        if self.is_stopped() {
            return Err(Error::Shutdown);
        }
        let target = target.into();
        let agent = self.resolve(target.name())?;
        agent.send_streaming(action, body, opts).await
    }

    /// Calls hook `action` on every connected agent at once, with the default
    /// timeout, and returns each agent's own result by name: the same as
    /// `select(Selector::all()).send_all(…)`.
    ///
    /// One agent's failure never fails the others. Fails as a whole only with
    /// `NO_CONNECTED_AGENTS`, `SHUTDOWN` once shutdown has begun, or
    /// `INVALID_MESSAGE` when `body` does not serialize. Dropping the future
    /// before it finished cancels every call still waiting, on every agent.
    pub async fn send_all<B, R>(
        &self,
        action: &str,
        body: &B,
    ) -> Result<BTreeMap<String, Result<R, Error>>, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_all_timeout(action, body, self.inner.default_timeout)
            .await
    }

    /// Like [`AgentServer::send_all`], waiting at most `timeout` for each.
    pub async fn send_all_timeout<B, R>(
        &self,
        action: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<BTreeMap<String, Result<R, Error>>, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.select(Selector::all())
            .send_all_timeout(action, body, timeout)
            .await
    }

    /// Sends one agent a notification (see [`Agent::notify`]): its hook
    /// `action` runs and nothing comes back. Fails like
    /// [`AgentServer::send_to`] for an agent that is not connected
    /// (`SHUTDOWN` once shutdown has begun), and with `UNSUPPORTED` for an
    /// agent written before notifications.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// server.notify("A0001", "reload", &()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(
        &self,
        target: impl Into<Target>,
        action: &str,
        body: &B,
    ) -> Result<(), Error>
    where
        B: Serialize + ?Sized,
    {
        if self.is_stopped() {
            return Err(Error::Shutdown);
        }
        let target = target.into();
        self.resolve(target.name())?.notify(action, body).await
    }

    /// Sends every connected agent the same notification at once, and
    /// returns by name whether each was queued (`UNSUPPORTED` for an agent
    /// written before notifications): the same as
    /// `select(Selector::all()).notify(…)`. Fails as a whole only with
    /// `NO_CONNECTED_AGENTS`, `SHUTDOWN` once shutdown has begun, or
    /// `INVALID_MESSAGE` when `body` does not serialize.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// for (name, sent) in server.notify_all("rotate-logs", &()).await? {
    ///     if let Err(e) = sent {
    ///         println!("{name}: {e}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn notify_all<B>(
        &self,
        action: &str,
        body: &B,
    ) -> Result<BTreeMap<String, Result<(), Error>>, Error>
    where
        B: Serialize + ?Sized,
    {
        self.select(Selector::all()).notify(action, body).await
    }

    /// Disconnects the agent `target` names (for an [`Agent`] handle, the
    /// current connection of its name) with close code 4006 and `reason`,
    /// as [`Agent::disconnect`] does: returns at once, with the agent no
    /// longer listed, its calls in flight failed and its `AgentDisconnected`
    /// event out; the close frame follows in the background. The agent may
    /// reconnect; [`AgentServer::revoke`] keeps it out.
    ///
    /// Fails, doing nothing, with `UNKNOWN_AGENT`, `REVOKED` or
    /// `AGENT_NOT_CONNECTED`, as [`AgentServer::send_to`] would.
    ///
    /// ```no_run
    /// # fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// server.disconnect("A0001", "maintenance window")?;
    /// assert!(server.agent("A0001").is_none());
    /// # Ok(()) }
    /// ```
    pub fn disconnect(&self, target: impl Into<Target>, reason: &str) -> Result<(), Error> {
        let target = target.into();
        self.resolve(target.name())?.disconnect(reason);
        Ok(())
    }

    /// Revokes `name`: it is refused at every later handshake with `REVOKED`
    /// (close code 4007), and a live agent of that name is disconnected with
    /// that code now; calls to it fail with `REVOKED`. Persisted in the name
    /// store before it takes effect; when saving fails, nothing changes and
    /// the store's error is returned. A handshake of the name that is
    /// finishing meanwhile is refused too, never registered.
    pub async fn revoke(&self, name: &str, reason: &str) -> Result<(), Error> {
        self.inner.names.set_revoked(name, true).await?;
        // A handshake past its name check is admitted only after checking
        // the revocation again, under the registry's lock: it is either
        // refused there or found live here.
        if let Lookup::Live(agent) = self.inner.registry.get(name) {
            agent.end(close::REVOKED, reason);
        }
        // Likewise a waiter: registered before this, it is answered here;
        // after, it saw the revocation.
        self.inner
            .registry
            .fail_waiters(name, &Error::Revoked(name.to_owned()));
        Ok(())
    }

    /// Lifts a revocation.
    pub async fn unrevoke(&self, name: &str) -> Result<(), Error> {
        self.inner.names.set_revoked(name, false).await
    }

    /// True when `name` is revoked.
    pub fn is_revoked(&self, name: &str) -> bool {
        self.inner.names.is_revoked(name)
    }

    /// True when the server has given `name` to an agent (connected or
    /// not, revoked or not).
    pub fn is_known(&self, name: &str) -> bool {
        self.inner.names.is_known(name)
    }

    /// Shuts down gracefully and returns once every connection has ended
    /// and the port is released.
    ///
    /// At once: stops accepting, admits no more agents (a handshake that
    /// finishes from now on is closed with 1001 instead of registered), and
    /// takes no new calls either way: [`AgentServer::send_to`],
    /// [`AgentServer::send_all`] and [`Agent::send`] fail with `SHUTDOWN`,
    /// agents' new requests are answered with a `SHUTDOWN` error, and every
    /// caller waiting for an agent ([`AgentServer::wait_for`],
    /// [`AgentServer::wait_for_count`], calls
    /// [`when_online`](crate::CallBuilder::when_online)) fails with
    /// `SHUTDOWN`, as do new waits. Then
    /// the calls already in flight get up to the shutdown grace to finish;
    /// shutdown goes on as soon as they have (it looks every 10 ms), or when
    /// the grace is over. Last, every link closes with 1001 (calls still in
    /// flight fail with `CONNECTION_CLOSED`).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        // Under the registry's lock: every agent it ever admits is drained.
        inner.registry.close(|agent| agent.link().drain());
        inner.stop.cancel();
        let grace_end = agent_protocol::time::deadline_in(inner.shutdown_grace);
        // Nothing new starts, so what is in flight only dwindles; polling it
        // costs nothing that matters next to a grace of seconds.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            let busy = inner
                .registry
                .live()
                .iter()
                .any(|a| a.link().pending_requests() > 0 || a.link().serving_requests() > 0);
            if !busy || tokio::time::Instant::now() >= grace_end {
                break;
            }
            tick.tick().await;
        }
        for agent in inner.registry.live() {
            agent
                .link()
                .close(close::GOING_AWAY, "server shutting down");
        }
        inner.tasks.close();
        inner.tasks.wait().await;
        tracing::info!("agent server stopped");
    }

    /// A snapshot of the server's bookkeeping: what is connected, in flight
    /// and open. After every agent has left, all but `connections` (which
    /// counts tasks still closing) are zero.
    pub fn stats(&self) -> ServerStats {
        let inner = &self.inner;
        let live = inner.registry.live();
        ServerStats {
            agents: live.len(),
            reserved_names: inner.registry.reserved_count(),
            handshakes: inner.handshakes.taken(),
            // One tracked task is the accept loop while it runs.
            connections: inner
                .tasks
                .len()
                .saturating_sub(usize::from(!inner.stop.is_cancelled())),
            pending_requests: live.iter().map(|a| a.link().pending_requests()).sum(),
            serving_requests: live.iter().map(|a| a.link().serving_requests()).sum(),
            running_hooks: live.iter().map(|a| a.link().running_hooks()).sum(),
            queued_bytes: live.iter().map(|a| a.link().queued_bytes()).sum(),
            waiters: inner.registry.waiter_count(),
        }
    }

    /// Totals since the server started, over every link (the gone ones
    /// included): calls either way by outcome code, call latency, bytes
    /// read and written, and links opened (handshakes that succeeded; the
    /// failed ones are [`AgentServer::handshake_failure_counts`]).
    ///
    /// ```no_run
    /// # fn demo(server: agent_server::AgentServer) {
    /// let c = server.counters();
    /// let timeouts = c.calls_out.get("TIMEOUT").copied().unwrap_or(0);
    /// println!("{} agents connected so far, {timeouts} calls timed out", c.links_opened);
    /// # }
    /// ```
    pub fn counters(&self) -> agent_protocol::link::CounterSnapshot {
        self.inner.counters.snapshot()
    }

    /// True once shutdown has begun.
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.is_cancelled()
    }
}

/// The accept-time drop line: any peer can trigger it, once per connection.
static ACCEPT_DROPS: LogLimit = LogLimit::per_second(5);

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        tokio::select! {
            biased;
            // Cancel-safe: a token only observes.
            _ = inner.stop.cancelled() => break,
            // Cancel-safe: `accept` loses no connection when the other branch wins.
            accepted = listener.accept() => {
                let (stream, peer_addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match inner.handshakes.take(peer_addr.ip()) {
                    Ok(slot) => slot,
                    Err(full) => {
                        if let Some(suppressed) = ACCEPT_DROPS.allow() {
                            tracing::warn!(peer = %peer_addr, suppressed, "{full}; connection dropped");
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let inner2 = Arc::clone(&inner);
                inner.tasks.spawn(async move {
                    connection::serve(stream, peer_addr, inner2, slot).await;
                });
            }
        }
    }
    // The listener is dropped here, so the port stops accepting at once.
}
