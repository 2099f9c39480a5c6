//! The client handle and its supervisor task, which owns the connection's
//! lifecycle: connect, hand the link to callers, notice it drop, back off,
//! reconnect under the same name (or a new one, when the server no longer
//! knows it: `verdict` decides which refusals are final).

use std::sync::Arc;
use std::time::Duration;

use agent_protocol::handshake::Identity;
use agent_protocol::labels::Labels;
use agent_protocol::link::{self, Role};
use agent_protocol::relay::{RelayRequest, RELAY_ACTION};
use agent_protocol::time::deadline_in;
use agent_protocol::transport;
use agent_protocol::{
    close, codes, CallStream, CloseReason, Error, Hooks, LinkConfig, NameStore, Secret,
    StreamOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::ClientBuilder;
use crate::dial::{self, Dial, Endpoint};
use crate::events::ClientEvent;
use crate::identity::{self, Held};
use crate::peer::ServerHandle;
use crate::verdict::{self, Failure, Verdict};

/// Capacity of the event channel.
/// Events are rare; a receiver more than this far behind skips the oldest.
pub(crate) const EVENT_CAPACITY: usize = 64;

/// Where the client stands.
#[derive(Clone, Debug)]
enum State {
    /// A connection attempt is under way: calls wait for it.
    Connecting,
    /// Authenticated; calls go over this link.
    Ready(ServerHandle),
    /// No link and none being made right now: calls fail with `OFFLINE`.
    Offline,
    /// Closed for good.
    Closed,
}

struct Inner {
    state: watch::Sender<State>,
    events: broadcast::Sender<ClientEvent>,
    hooks: Hooks<ServerHandle>,
    default_timeout: Duration,
    /// Cancelled by `close()` or when the last handle drops.
    stop: CancellationToken,
    /// Cancelled when the supervisor has finished.
    done: CancellationToken,
    /// Calls and bytes over every link this client has had.
    counters: Arc<agent_protocol::link::Counters>,
}

impl Inner {
    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    fn set_state(&self, state: State) {
        self.state.send_replace(state);
    }
}

/// Everything the supervisor needs to (re)connect.
struct Settings {
    endpoint: Endpoint,
    /// The name the application chose, if any.
    chosen: Option<String>,
    tls: Option<Arc<ClientConfig>>,
    secret: Secret,
    meta: Map<String, Value>,
    labels: Labels,
    store: Arc<dyn NameStore>,
    link: LinkConfig,
    handshake_timeout: Duration,
    backoff: Backoff,
}

struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// An agent's connection to the control plane. Cheap to clone; the client
/// closes when [`AgentClient::close`] is called or the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), agent_client::Error> {
/// use agent_client::{AgentClient, HookError};
/// use serde_json::{json, Value};
///
/// let client = AgentClient::builder("ws://127.0.0.1:7800", "s3cret")
///     .on_hook("echo", |body: Value, _call| async move { Ok::<_, HookError>(body) })
///     .connect()
///     .await?;
/// let config: Value = client.send("get_config", &json!({"section": "net"})).await?;
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    _close_on_drop: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("name", &self.name())
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl AgentClient {
    /// A builder for a client of the server at `url` (`ws://host:port/path`
    /// or `wss://…`), proving `secret`.
    pub fn builder(url: &str, secret: impl Into<Secret>) -> ClientBuilder {
        ClientBuilder::new(url, secret.into())
    }

    pub(crate) async fn start(b: ClientBuilder) -> Result<Self, Error> {
        Self::launch(b, None).await.map(|(c, _)| c)
    }

    pub(crate) async fn connect(b: ClientBuilder) -> Result<Self, Error> {
        let (tx, rx) = oneshot::channel();
        let (client, _) = Self::launch(b, Some(tx)).await?;
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Shutdown),
        }
    }

    async fn launch(
        b: ClientBuilder,
        first: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<(Self, ()), Error> {
        if b.secret.is_empty() {
            return Err(Error::Config("the shared secret must not be empty".into()));
        }
        b.link.validate()?;
        b.backoff.validate()?;
        if b.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "handshake_timeout must be more than zero".into(),
            ));
        }
        if b.default_timeout.is_zero() {
            return Err(Error::Config(
                "default_timeout must be more than zero".into(),
            ));
        }
        let mut labels = Labels::new();
        for (k, v) in &b.labels {
            labels.insert(k, v)?;
        }
        let endpoint = Endpoint::parse(&b.url)?;
        let tls = if endpoint.is_tls() {
            Some(b.tls.client_config()?)
        } else {
            None
        };
        let mut identity = identity::load(b.store.as_ref()).await?;
        if let Some(wanted) = &b.name {
            if identity.name.as_deref() != Some(wanted.as_str()) {
                identity = Identity {
                    name: Some(wanted.clone()),
                    token: None,
                    bind: None,
                };
            }
        }
        // Until a welcome brings a token, every try carries the same bind, so
        // a server whose welcome was lost gives the same grant again.
        if identity.token.is_none() {
            identity.bind = Some(agent_protocol::crypto::Key::random());
        }
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            state: watch::channel(State::Connecting).0,
            events: b.events,
            hooks: b.hooks,
            default_timeout: b.default_timeout,
            stop: stop.clone(),
            done: CancellationToken::new(),
            counters: Arc::default(),
        });
        let settings = Settings {
            endpoint,
            chosen: b.name,
            tls,
            secret: b.secret,
            meta: b.meta,
            labels,
            store: b.store,
            link: b.link,
            handshake_timeout: b.handshake_timeout,
            backoff: b.backoff,
        };
        let span = tracing::info_span!("agent_client", url = %b.url);
        let held = Held {
            identity,
            unsaved: false,
        };
        tokio::spawn(supervise(Arc::clone(&inner), settings, held, first).instrument(span));
        Ok((
            AgentClient {
                inner,
                _close_on_drop: Arc::new(CloseOnDrop(stop)),
            },
            (),
        ))
    }

    /// Calls the server's hook `action` with the default timeout.
    ///
    /// While a connection attempt is under way the call waits for it (within
    /// its timeout); while the client has no link it fails at once with
    /// `OFFLINE`.
    pub async fn send<B, R>(&self, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_timeout(action, body, self.inner.default_timeout)
            .await
    }

    /// Calls the server's hook `action`, waiting at most `timeout` in all.
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
        // Connected: the common case, without waiting on the state.
        let ready = match &*self.inner.state.borrow() {
            State::Ready(server) if !server.link().is_closed() => Some(server.clone()),
            _ => None,
        };
        if let Some(server) = ready {
            return server.link().call(action, body, timeout).await;
        }
        let deadline = agent_protocol::time::deadline_in(timeout);
        let server = self.ready_by(deadline, timeout).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        server.link().call(action, body, left).await
    }

    /// Calls the server's hook `action` for a streamed result (see
    /// [`LinkHandle::call_stream`]): its items and progress as they come,
    /// then its result. Like [`AgentClient::send`], it waits for a
    /// connection attempt under way (within the options' timeout) and fails
    /// with `OFFLINE` without a link; `UNSUPPORTED` for a server without
    /// the `stream` capability. The stream belongs to the link it was
    /// opened on: if that link ends, it ends with `CONNECTION_CLOSED`.
    ///
    /// [`LinkHandle::call_stream`]: agent_protocol::LinkHandle::call_stream
    ///
    /// ```no_run
    /// # async fn demo(client: agent_client::AgentClient) -> Result<(), agent_client::Error> {
    /// use agent_protocol::{Event, StreamOptions};
    /// use futures_util::StreamExt;
    /// let opts = StreamOptions::new(std::time::Duration::from_secs(30));
    /// let mut jobs = client.send_streaming::<_, String, ()>("jobs", &(), opts).await?;
    /// while let Some(event) = jobs.next().await {
    ///     if let Event::Item(job) = event? {
    ///         println!("job {job}");
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
        let server = self.server_within(opts.whole_timeout()).await?;
        server.link().call_stream(action, body, opts).await
    }

    /// Calls hook `action` on agent `to`, relayed by the server, with the
    /// default timeout. The callee's hooks see this agent's name as
    /// `call.relayed_from()`; its answer, or its error with its own code and
    /// data, comes back unchanged.
    ///
    /// The server relays only what its relay policy allows
    /// (`ServerBuilder::relay_policy`; by default nothing). The call fails
    /// with an [`Error::Remote`] whose code is `FORBIDDEN` when the policy
    /// refuses it, `UNKNOWN_AGENT`, `AGENT_NOT_CONNECTED` or `REVOKED` for
    /// the target, `TIMEOUT`, or the callee's own; and, like
    /// [`AgentClient::send`], `OFFLINE` without a link. Dropping the future
    /// cancels the call at the server, which cancels it at the callee.
    ///
    /// ```no_run
    /// # async fn demo(client: agent_client::AgentClient) -> Result<(), agent_client::Error> {
    /// let rows: Vec<String> = client.send_to_agent("A0007", "read.rows", &"users").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_to_agent<B, R>(&self, to: &str, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_to_agent_timeout(to, action, body, self.inner.default_timeout)
            .await
    }

    /// [`AgentClient::send_to_agent`], waiting at most `timeout` in all.
    pub async fn send_to_agent_timeout<B, R>(
        &self,
        to: &str,
        action: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let body = serde_json::value::to_raw_value(body)
            .map_err(|e| Error::InvalidMessage(format!("request body: {e}")))?;
        let req = RelayRequest {
            to: to.to_owned(),
            action: action.to_owned(),
            body,
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        };
        self.send_timeout(RELAY_ACTION, &req, timeout).await
    }

    /// Sends the server a notification: its hook `action` runs with `body`,
    /// and nothing comes back (see [`LinkHandle::notify`]). Like
    /// [`AgentClient::send`], it waits for a connection attempt under way
    /// (up to the default timeout) and fails with `OFFLINE` without a link;
    /// `UNSUPPORTED` for a server written before notifications.
    ///
    /// [`LinkHandle::notify`]: agent_protocol::LinkHandle::notify
    ///
    /// ```no_run
    /// # async fn demo(client: agent_client::AgentClient) -> Result<(), agent_client::Error> {
    /// client.notify("log", &"deploy started").await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(&self, action: &str, body: &B) -> Result<(), Error>
    where
        B: Serialize + ?Sized,
    {
        let server = self.server_within(self.inner.default_timeout).await?;
        server.link().notify(action, body).await
    }

    /// The server of the live link at once; without one, waits up to
    /// `timeout` for a connection attempt under way (`OFFLINE` when none is).
    async fn server_within(&self, timeout: Duration) -> Result<ServerHandle, Error> {
        let ready = match &*self.inner.state.borrow() {
            State::Ready(server) if !server.link().is_closed() => Some(server.clone()),
            _ => None,
        };
        match ready {
            Some(server) => Ok(server),
            None => {
                let deadline = agent_protocol::time::deadline_in(timeout);
                self.ready_by(deadline, timeout).await
            }
        }
    }

    async fn ready_by(&self, deadline: Instant, timeout: Duration) -> Result<ServerHandle, Error> {
        let mut rx = self.inner.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Ready(server) if !server.link().is_closed() => return Ok(server.clone()),
                State::Ready(_) | State::Offline | State::Closed => return Err(Error::Offline),
                State::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(Error::Offline),
                Err(_) => return Err(Error::Timeout(timeout)),
            }
        }
    }

    /// Waits until the client is ready (through any reconnects), for at most
    /// `timeout`. Fails with `OFFLINE` once the client stopped for good.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.inner.state.subscribe();
        let wait = async move {
            let state = rx
                .wait_for(|s| match s {
                    State::Ready(server) => !server.link().is_closed(),
                    State::Closed => true,
                    State::Connecting | State::Offline => false,
                })
                .await;
            matches!(state.as_deref(), Ok(State::Ready(_)))
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Offline),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The agent's name, once the server gave one.
    pub fn name(&self) -> Option<String> {
        match &*self.inner.state.borrow() {
            State::Ready(server) => Some(server.name().to_owned()),
            _ => None,
        }
    }

    /// A snapshot of the current link: connected, calls in flight either
    /// way, running hooks and queued bytes (all zero without a link).
    ///
    /// ```no_run
    /// # fn demo(client: agent_client::AgentClient) {
    /// let s = client.stats();
    /// println!("connected: {}, {} calls waiting", s.connected, s.pending_requests);
    /// # }
    /// ```
    pub fn stats(&self) -> crate::ClientStats {
        match &*self.inner.state.borrow() {
            State::Ready(server) => {
                let link = server.link();
                crate::ClientStats {
                    connected: !link.is_closed(),
                    pending_requests: link.pending_requests(),
                    serving_requests: link.serving_requests(),
                    running_hooks: link.running_hooks(),
                    queued_bytes: link.queued_bytes(),
                }
            }
            _ => crate::ClientStats::default(),
        }
    }

    /// Calls either way, bytes and links over every link this client has
    /// had since it started: see [`Counters`](agent_protocol::link::Counters).
    ///
    /// ```no_run
    /// # fn demo(client: agent_client::AgentClient) {
    /// let c = client.counters();
    /// println!("{} calls answered OK, {} bytes read", c.calls_in.get("OK").unwrap_or(&0), c.bytes_in);
    /// # }
    /// ```
    pub fn counters(&self) -> agent_protocol::link::CounterSnapshot {
        self.inner.counters.snapshot()
    }

    /// Calls this client sent on its current link that still wait for a
    /// response (0 without a link).
    pub fn pending_requests(&self) -> usize {
        match &*self.inner.state.borrow() {
            State::Ready(server) => server.link().pending_requests(),
            _ => 0,
        }
    }

    /// True while the client has a live, authenticated link.
    pub fn is_ready(&self) -> bool {
        matches!(&*self.inner.state.borrow(), State::Ready(s) if !s.link().is_closed())
    }

    /// The hook registry (shared with the builder's).
    pub fn hooks(&self) -> &Hooks<ServerHandle> {
        &self.inner.hooks
    }

    /// Adds a handler for `action` (see [`Hooks::on_hook`]).
    pub fn on_hook<T, R, F, Fut>(&self, action: &str, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, agent_protocol::Call<ServerHandle>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, agent_protocol::HookError>> + Send + 'static,
    {
        self.inner.hooks.on_hook(action, f);
        self
    }

    /// Adds a catch-all handler, run before the handlers of every action
    /// (see [`Hooks::on_any`]).
    pub fn on_any<T, R, F, Fut>(&self, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, agent_protocol::Call<ServerHandle>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, agent_protocol::HookError>> + Send + 'static,
    {
        self.inner.hooks.on_any(f);
        self
    }

    /// Subscribes to [`ClientEvent`]s from now on (use
    /// [`ClientBuilder::events`] to see the first connection's too).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// Closes the link cleanly (close code 1000) and stops reconnecting.
    /// Calls in flight fail with `CONNECTION_CLOSED`; later calls with
    /// `OFFLINE`.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.done.cancelled().await;
    }
}

/// One connection attempt: open, authenticate, persist the identity, start
/// the link. `ready_before`: the client has been ready at least once.
async fn attempt(
    inner: &Inner,
    s: &Settings,
    held: &mut Held,
    ready_before: bool,
) -> Result<(ServerHandle, String, bool), Failure> {
    let d = Dial {
        endpoint: &s.endpoint,
        tls: s.tls.as_ref(),
        secret: &s.secret,
        link: &s.link,
        identity: held.identity.clone(),
        meta: s.meta.clone(),
        labels: s.labels.clone(),
    };
    let mut ws = dial::open(&d).await?;
    inner.emit(ClientEvent::Connected);
    let est = dial::authenticate(&mut ws, d).await?;
    if est.identity != held.identity {
        held.identity = est.identity.clone();
        held.unsaved = true;
    }
    if held.unsaved {
        match identity::save(s.store.as_ref(), &held.identity).await {
            Ok(()) => held.unsaved = false,
            Err(e) if !ready_before => {
                // A name the agent cannot keep would be lost at its next
                // restart: until the client has been ready once, refuse it,
                // as the server refuses a name it cannot persist. Closing
                // with 1011 lets the server drop the agent at once.
                tracing::error!(error = %e, "could not save the agent's name and token");
                transport::close(
                    &mut ws,
                    close::INTERNAL_ERROR,
                    "the agent could not persist its name",
                    s.link.close_timeout,
                )
                .await;
                return Err(e.into());
            }
            Err(e) => {
                // Online already: stay online. The identity stays in memory,
                // so reconnects keep the name, and the next connection saves
                // it again; only a restart before that would lose it.
                tracing::error!(error = %e, "could not save the agent's name and token");
                inner.emit(ClientEvent::Error(e));
            }
        }
    }
    let name = est.name.clone();
    let timeout = inner.default_timeout;
    let mut config = s.link.clone();
    // What the server accepts bounds what this agent sends, so an oversized
    // request fails alone instead of closing the link.
    config.peer_max_message_bytes =
        Some(usize::try_from(est.limits.max_message_bytes).unwrap_or(usize::MAX));
    // The link's driver (and its hooks) log under the name this link got.
    let span = tracing::info_span!("link", name = %name);
    let (_link, server) = span.in_scope(|| {
        link::spawn_counted(
            ws,
            Role::Agent,
            config,
            Some(&est.session),
            inner.hooks.clone(),
            None,
            Arc::clone(&inner.counters),
            |link| ServerHandle::new(&name, link, timeout),
        )
    });
    Ok((server, est.name, est.first_time))
}

async fn supervise(
    inner: Arc<Inner>,
    s: Settings,
    mut held: Held,
    mut first: Option<oneshot::Sender<Result<(), Error>>>,
) {
    let mut retry: u32 = 0;
    let mut connected_before = false;
    let mut last_error: Option<Error>;
    // The name the server no longer knew, until a new one is granted.
    let mut renamed_from: Option<String> = None;
    loop {
        inner.set_state(State::Connecting);
        let deadline = deadline_in(s.handshake_timeout);
        let outcome = tokio::select! {
            biased;
            _ = inner.stop.cancelled() => break,
            r = tokio::time::timeout_at(deadline, attempt(&inner, &s, &mut held, connected_before)) => {
                r.unwrap_or_else(|_| Err(Error::HandshakeTimeout(s.handshake_timeout).into()))
            }
        };
        match outcome {
            Ok((server, name, first_time)) => {
                tracing::info!(%name, first_time, "ready");
                inner.set_state(State::Ready(server.clone()));
                if let Some(old) = renamed_from.take() {
                    inner.emit(ClientEvent::Renamed {
                        old,
                        new: name.clone(),
                    });
                }
                inner.emit(ClientEvent::Ready {
                    name: name.clone(),
                    first_time,
                });
                if connected_before {
                    inner.emit(ClientEvent::Reconnected { name });
                }
                connected_before = true;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                let up_since = Instant::now();
                let reason = tokio::select! {
                    biased;
                    _ = inner.stop.cancelled() => {
                        server.link().close(close::NORMAL, "client closed");
                        server.link().stopped().await;
                        break;
                    }
                    reason = server.link().closed() => reason,
                };
                tracing::info!(%reason, "disconnected");
                inner.set_state(State::Offline);
                inner.emit(ClientEvent::Disconnected(reason.clone()));
                if up_since.elapsed() >= s.backoff.healthy_after {
                    retry = 0;
                }
                if reason.code == close::REVOKED {
                    if s.endpoint.is_tls() {
                        let e = Error::Rejected {
                            code: codes::REVOKED.into(),
                            message: reason.reason.clone(),
                        };
                        inner.emit(ClientEvent::GaveUp(e));
                        break;
                    }
                    // Without TLS a close frame is not authenticated: come
                    // back, and a genuine revocation refuses the handshake
                    // with a proven REVOKED.
                    tracing::warn!("closed as revoked over ws://: reconnecting to confirm it");
                }
                last_error = Some(Error::ConnectionClosed(reason));
            }
            Err(failure) => {
                let verdict = verdict::judge(
                    &failure,
                    s.endpoint.is_tls(),
                    &held.identity,
                    s.chosen.as_deref(),
                );
                let e = failure.error;
                if let Verdict::Rename(fresh) = verdict {
                    let old = held.identity.name.clone().unwrap_or_default();
                    tracing::warn!(%old, error = %e, "the server no longer knows this agent's name; taking a new one");
                    held.identity = fresh;
                    held.unsaved = true;
                    // Drop the stale identity from the store too; the new one
                    // is saved once granted.
                    let saved = tokio::select! {
                        biased;
                        _ = inner.stop.cancelled() => break,
                        r = identity::save(s.store.as_ref(), &held.identity) => r,
                    };
                    if let Err(e) = saved {
                        tracing::error!(error = %e, "could not drop the stale name from the store");
                        inner.emit(ClientEvent::Error(e));
                    }
                    renamed_from.get_or_insert(old);
                    // At once: a new request, not a retry of the refused one.
                    continue;
                }
                tracing::debug!(error = %e, "connection attempt failed");
                inner.set_state(State::Offline);
                inner.emit(ClientEvent::Error(e.clone()));
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    break;
                }
                if let Verdict::GiveUp(why) = verdict {
                    inner.emit(ClientEvent::GaveUp(why));
                    break;
                }
                last_error = Some(e);
            }
        }
        let Some(delay) = s.backoff.delay(retry) else {
            let e = last_error.take().unwrap_or_else(|| {
                Error::ConnectionClosed(CloseReason::local(close::NORMAL, "no retries"))
            });
            if s.backoff.enabled {
                inner.emit(ClientEvent::GaveUp(e));
            }
            break;
        };
        retry = retry.saturating_add(1);
        tracing::debug!(?delay, retry, "reconnecting after a delay");
        tokio::select! {
            biased;
            _ = inner.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline_in(delay)) => {}
        }
    }
    inner.set_state(State::Closed);
    inner.done.cancel();
}
