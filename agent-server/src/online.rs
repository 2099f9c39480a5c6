//! Waiting for the fleet: [`AgentServer::wait_for`] an agent to connect,
//! [`AgentServer::wait_for_count`] a selector to select enough agents, and
//! [`CallBuilder`], a call that can wait for its agent
//! ([`CallBuilder::when_online`]).
//!
//! Every wait is bounded: by its deadline, by shutdown (`SHUTDOWN`), and in
//! number ([`ServerBuilder::max_waiters`](crate::ServerBuilder::max_waiters):
//! one more is `BUSY`). The waiters themselves live in the registry, under
//! its lock.

use std::time::Duration;

use agent_protocol::name::is_valid_name;
use agent_protocol::time::deadline_in;
use agent_protocol::{Error, Selector};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::registry::Wait;
use crate::server::{AgentServer, Target};

impl AgentServer {
    /// Resolves with the agent `name` once it is connected: at once when it
    /// is, or when it (re)connects within `timeout`.
    ///
    /// Any valid name is waited for, one never given too (an agent may
    /// choose it when it first connects). Fails with `TIMEOUT` when
    /// `timeout` passes first, `UNKNOWN_AGENT` at once for a name no agent
    /// can have (bad syntax), `REVOKED` for a revoked name (also when it is
    /// revoked during the wait), `SHUTDOWN` when shutdown begins, and
    /// `BUSY` when [`max_waiters`](crate::ServerBuilder::max_waiters)
    /// callers wait already. Dropping the future stops the wait.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use std::time::Duration;
    /// let agent = server.wait_for("A0042", Duration::from_secs(60)).await?;
    /// println!("{} is back from {}", agent.name(), agent.peer_addr());
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Result<Agent, Error> {
        match self.online_by(name, deadline_in(timeout)).await? {
            Some(agent) => Ok(agent),
            None => Err(Error::Timeout(timeout)),
        }
    }

    /// Resolves, once `selector` selects at least `n` connected agents,
    /// with how many it selects then: at once when it does already, or as
    /// agents connect or change labels within `timeout`. For a rollout that
    /// needs a quorum before it starts.
    ///
    /// Fails with `TIMEOUT`, `SHUTDOWN` and `BUSY` like
    /// [`AgentServer::wait_for`]. The count is kept as the fleet changes
    /// rather than recounted, so a waiting selector costs nothing while
    /// nothing changes.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use std::time::Duration;
    /// use agent_server::Selector;
    /// let dbs: Selector = "role=db".parse()?;
    /// server.wait_for_count(&dbs, 3, Duration::from_secs(30)).await?;
    /// let results = server.select(dbs).send_all::<_, String>("migrate", &()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_count(
        &self,
        selector: &Selector,
        n: usize,
        timeout: Duration,
    ) -> Result<usize, Error> {
        let deadline = deadline_in(timeout);
        match self.inner.registry.wait_for_count(selector, n)? {
            Wait::Now(have) => Ok(have),
            Wait::Later(_guard, ticket) => match tokio::time::timeout_at(deadline, ticket.rx).await
            {
                Ok(Ok(answer)) => answer,
                // The table dropped the waiter without an answer: it closed.
                Ok(Err(_)) => Err(Error::Shutdown),
                Err(_) => Err(Error::Timeout(timeout)),
            },
        }
    }

    /// A call to the agent `target` names, to configure before sending:
    /// its timeout, and whether to wait for the agent to come online.
    ///
    /// ```no_run
    /// # async fn demo(server: agent_server::AgentServer) -> Result<(), agent_server::Error> {
    /// use std::time::Duration;
    /// // Sent as soon as A0042 is back, if it is within the minute.
    /// let done: String = server
    ///     .call("A0042")
    ///     .when_online()
    ///     .timeout(Duration::from_secs(60))
    ///     .send("apply-config", &serde_json::json!({"version": 7}))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn call(&self, target: impl Into<Target>) -> CallBuilder<'_> {
        CallBuilder {
            server: self,
            target: target.into(),
            timeout: None,
            when_online: false,
        }
    }

    /// The agent `name` once connected, or `None` at `deadline`.
    async fn online_by(&self, name: &str, deadline: Instant) -> Result<Option<Agent>, Error> {
        if !is_valid_name(name) {
            return Err(Error::UnknownAgent(name.to_owned()));
        }
        let names = &self.inner.names;
        match self
            .inner
            .registry
            .wait_for(name, |n| names.is_revoked(n))?
        {
            Wait::Now(agent) => Ok(Some(agent)),
            Wait::Later(_guard, ticket) => match tokio::time::timeout_at(deadline, ticket.rx).await
            {
                Ok(Ok(answer)) => answer.map(Some),
                Ok(Err(_)) => Err(Error::Shutdown),
                Err(_) => Ok(None),
            },
        }
    }
}

/// A call to one agent, from [`AgentServer::call`]: set its options, then
/// [`send`](CallBuilder::send) it.
#[derive(Debug)]
#[must_use = "a CallBuilder sends nothing until `send`"]
pub struct CallBuilder<'a> {
    server: &'a AgentServer,
    target: Target,
    timeout: Option<Duration>,
    when_online: bool,
}

impl CallBuilder<'_> {
    /// The call's whole time budget: waiting for the agent (with
    /// [`CallBuilder::when_online`]) and its answer together. Default: the
    /// server's default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// When the agent is not connected, wait for it to (re)connect, up to
    /// the call's deadline, instead of failing at once with
    /// `AGENT_NOT_CONNECTED`; then send with the time that is left. Default:
    /// off.
    ///
    /// The wait is for sending only: a call whose link drops after it was
    /// sent fails with `CONNECTION_CLOSED` as any call does (the agent may
    /// have run it), and is not sent again. When the deadline passes before
    /// the agent is back, the call fails with `AGENT_NOT_CONNECTED`: it was
    /// never sent. A name never given is waited for too (an agent may choose
    /// it); a revoked name fails with `REVOKED`. The wait counts towards
    /// [`max_waiters`](crate::ServerBuilder::max_waiters) (`BUSY` past it)
    /// and ends with `SHUTDOWN` when shutdown begins.
    pub fn when_online(mut self) -> Self {
        self.when_online = true;
        self
    }

    /// Sends the call to hook `action` with `body` and waits for the
    /// answer. Fails as [`AgentServer::send_to`] does, and as
    /// [`CallBuilder::when_online`] says when it waits.
    pub async fn send<B, R>(self, action: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let server = self.server;
        if server.is_stopped() {
            return Err(Error::Shutdown);
        }
        let timeout = self.timeout.unwrap_or(server.inner.default_timeout);
        let deadline = deadline_in(timeout);
        let name = self.target.name();
        let agent = match server.resolve(name) {
            Ok(agent) => agent,
            Err(Error::AgentNotConnected(_) | Error::UnknownAgent(_)) if self.when_online => {
                match server.online_by(name, deadline).await? {
                    Some(agent) => agent,
                    None => return Err(Error::AgentNotConnected(name.to_owned())),
                }
            }
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        agent.send_timeout(action, body, left).await
    }
}
