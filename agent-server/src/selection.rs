//! Calls to a subset of the fleet: [`Selection`], what
//! [`AgentServer::select`](crate::AgentServer::select) returns, and
//! [`CallEach`], the stream of results that [`Selection::call_each`] yields
//! as each agent answers.
//!
//! A selection is a view, not a snapshot: each method evaluates its
//! [`Selector`] against the agents connected at that moment, through the
//! registry's label index.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agent_protocol::{Body, Error, Selector};
use futures_util::future::join_all;
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::agent::Agent;
use crate::registry::Lookup;
use crate::server::Inner;

/// The agents a [`Selector`] selects, as a view on the server: see
/// [`AgentServer::select`](crate::AgentServer::select).
///
/// ```no_run
/// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
/// use agent_server::Selector;
/// use serde_json::Value;
///
/// let eu_db = server.select("region=eu,role=db".parse::<Selector>()?);
/// println!("{} agents", eu_db.count());
/// for (name, result) in eu_db.send_all::<_, Value>("vacuum", &()).await? {
///     println!("{name}: {result:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Selection {
    inner: Arc<Inner>,
    selector: Selector,
}

impl fmt::Debug for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selection")
            .field("selector", &self.selector.to_string())
            .finish()
    }
}

impl Selection {
    pub(crate) fn new(inner: Arc<Inner>, selector: Selector) -> Self {
        Selection { inner, selector }
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The connected agents selected now, sorted by name.
    pub fn agents(&self) -> Vec<Agent> {
        self.inner.registry.select(&self.selector)
    }

    /// How many connected agents are selected now.
    pub fn count(&self) -> usize {
        self.inner.registry.count(&self.selector)
    }

    /// Calls hook `action` on every selected agent at once, with the
    /// server's default timeout, and returns each agent's own result by
    /// name.
    ///
    /// One agent's failure never fails the others. Fails as a whole only
    /// with `NO_CONNECTED_AGENTS` when the selector selects no connected
    /// agent (so a mistyped selector is an error, not a quiet no-op),
    /// `SHUTDOWN` once shutdown has begun, or `INVALID_MESSAGE` when `body`
    /// does not serialize. Dropping the future before it finished cancels
    /// every call still waiting, on every agent.
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

    /// Like [`Selection::send_all`], waiting at most `timeout` for each.
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
        if self.inner.stop.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let agents = self.agents();
        if agents.is_empty() {
            return Err(Error::NoConnectedAgents);
        }
        // Serialize once; every agent gets the same bytes.
        let raw = request_body(body)?;
        let raw = &raw;
        let calls = agents.iter().map(|agent| async move {
            (
                agent.name().to_owned(),
                call_raw::<R>(agent, action, raw, timeout).await,
            )
        });
        Ok(join_all(calls).await.into_iter().collect())
    }

    /// Sends every selected agent the same notification at once (see
    /// [`Agent::notify`]): its hook `action` runs and nothing comes back.
    /// Returns by name whether each was queued (`UNSUPPORTED` for an agent
    /// written before notifications). Fails as a whole like
    /// [`Selection::send_all`]: `NO_CONNECTED_AGENTS` when nobody is
    /// selected, `SHUTDOWN` once shutdown has begun, `INVALID_MESSAGE` when
    /// `body` does not serialize.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use agent_server::Selector;
    /// let eu = server.select("region=eu".parse::<Selector>()?);
    /// for (name, sent) in eu.notify("config-changed", &serde_json::json!({"version": 7})).await? {
    ///     if let Err(e) = sent {
    ///         println!("{name}: not notified: {e}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(
        &self,
        action: &str,
        body: &B,
    ) -> Result<BTreeMap<String, Result<(), Error>>, Error>
    where
        B: Serialize + ?Sized,
    {
        if self.inner.stop.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let agents = self.agents();
        if agents.is_empty() {
            return Err(Error::NoConnectedAgents);
        }
        let raw = serde_json::value::to_raw_value(body)
            .map_err(|e| Error::InvalidMessage(format!("note body: {e}")))?;
        let raw = &*raw;
        let notes = agents.iter().map(|agent| async move {
            let sent = agent.link().notify_raw(action, raw).await;
            (agent.name().to_owned(), sent)
        });
        Ok(join_all(notes).await.into_iter().collect())
    }

    /// Calls hook `action` on each selected agent and yields
    /// `(name, result)` as each one answers, in the order they answer.
    ///
    /// The agents are those selected now; each is called through the
    /// connection its name has when its turn comes (`AGENT_NOT_CONNECTED`
    /// when it has none then), so an agent that restarts during a rollout
    /// is reached again. By default every call starts at once, each with
    /// the server's default timeout; [`CallEach::concurrency`] rolls out to
    /// a few at a time and [`CallEach::timeout`] sets the time each agent
    /// gets. Nothing is sent before the stream is first polled.
    ///
    /// Calls go out as the stream is read (see [`CallEach::concurrency`]).
    /// Dropping the stream stops it: no further agent is called, and the
    /// calls in flight are cancelled (an agent that supports cancellation
    /// stops their hooks; see [`CallHandle`](crate::CallHandle)), their late
    /// answers dropped.
    /// A selector that selects nothing yields an empty stream. Fails only
    /// with `INVALID_MESSAGE` when `body` does not serialize.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use std::time::Duration;
    /// use agent_server::Selector;
    ///
    /// let canaries = server.select("canary".parse::<Selector>()?);
    /// let mut rollout = canaries
    ///     .call_each::<_, String>("upgrade", &"v2.1")?
    ///     .concurrency(10)
    ///     .timeout(Duration::from_secs(120));
    /// while let Some((name, result)) = rollout.next().await {
    ///     match result {
    ///         Ok(version) => println!("{name}: now on {version}"),
    ///         Err(e) => {
    ///             println!("{name}: {e}; stopping the rollout");
    ///             break; // dropping `rollout` calls no one else
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn call_each<B, R>(&self, action: &str, body: &B) -> Result<CallEach<R>, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let raw: Arc<Body> = Arc::new(request_body(body)?);
        let names: Vec<String> = self.agents().iter().map(|a| a.name().to_owned()).collect();
        Ok(CallEach {
            selected: names.len(),
            state: State::Ready(Plan {
                inner: Arc::clone(&self.inner),
                names,
                action: Arc::from(action),
                body: raw,
                timeout: self.inner.default_timeout,
                concurrency: usize::MAX,
            }),
            _result: PhantomData,
        })
    }
}

/// The body of a fan-out, serialized once for every agent: bytes stay
/// bytes (see [`Body`]).
fn request_body<B: Serialize + ?Sized>(body: &B) -> Result<Body, Error> {
    Body::encode(body).map_err(|e| Error::InvalidMessage(format!("request body: {e}")))
}

async fn call_raw<R: DeserializeOwned>(
    agent: &Agent,
    action: &str,
    body: &Body,
    timeout: Duration,
) -> Result<R, Error> {
    let res = agent.link().request_body(action, body, timeout).await?;
    res.decode::<R>()
        .map_err(|e| Error::InvalidMessage(format!("response to {action:?}: {e}")))
}

/// What a [`CallEach`] will do once polled.
struct Plan {
    inner: Arc<Inner>,
    names: Vec<String>,
    action: Arc<str>,
    body: Arc<Body>,
    timeout: Duration,
    concurrency: usize,
}

type Results<R> = Pin<Box<dyn Stream<Item = (String, Result<R, Error>)> + Send>>;

enum State<R> {
    Ready(Plan),
    /// Only while `Ready` turns into `Running`.
    Started,
    Running(Results<R>),
}

/// The results of [`Selection::call_each`], as each agent answers: a
/// [`Stream`] of `(name, result)`, also readable without a stream library
/// through [`CallEach::next`]. Configure it before the first poll.
#[must_use = "a CallEach calls no agent until it is polled"]
pub struct CallEach<R> {
    state: State<R>,
    selected: usize,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for CallEach<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Ready(plan) => f
                .debug_struct("CallEach")
                .field("agents", &plan.names.len())
                .field("action", &plan.action)
                .field("timeout", &plan.timeout)
                .field("concurrency", &plan.concurrency)
                .finish(),
            State::Started | State::Running(_) => f
                .debug_struct("CallEach")
                .field("agents", &self.selected)
                .finish_non_exhaustive(),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> CallEach<R> {
    /// At most `n` calls in flight at once (at least 1). Calls start as the
    /// stream is read: each answer it yields makes room for the next
    /// agent's call, so a reader that stops reading also pauses the
    /// rollout. Default: every agent at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        if let State::Ready(plan) = &mut self.state {
            plan.concurrency = n.max(1);
        }
        self
    }

    /// The time each agent gets to answer, counted from when its call is
    /// sent. Default: the server's default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if let State::Ready(plan) = &mut self.state {
            plan.timeout = timeout;
        }
        self
    }

    /// How many agents were selected: the number of results the stream
    /// yields in all.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// The next result, or `None` once every selected agent has answered.
    pub async fn next(&mut self) -> Option<(String, Result<R, Error>)> {
        StreamExt::next(self).await
    }

    fn start(plan: Plan) -> Results<R> {
        let Plan {
            inner,
            names,
            action,
            body,
            timeout,
            concurrency,
        } = plan;
        let calls = stream::iter(names).map(move |name| {
            let (inner, action, body) =
                (Arc::clone(&inner), Arc::clone(&action), Arc::clone(&body));
            async move {
                let result = match inner.registry.get(&name) {
                    Lookup::Live(agent) => call_raw::<R>(&agent, &action, &body, timeout).await,
                    _ => Err(Error::AgentNotConnected(name.clone())),
                };
                (name, result)
            }
        });
        Box::pin(calls.buffer_unordered(concurrency))
    }
}

impl<R: DeserializeOwned + Send + 'static> Stream for CallEach<R> {
    type Item = (String, Result<R, Error>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if matches!(this.state, State::Ready(_)) {
            if let State::Ready(plan) = std::mem::replace(&mut this.state, State::Started) {
                this.state = State::Running(Self::start(plan));
            }
        }
        match &mut this.state {
            State::Running(results) => results.as_mut().poll_next(cx),
            State::Ready(_) | State::Started => Poll::Ready(None),
        }
    }
}
