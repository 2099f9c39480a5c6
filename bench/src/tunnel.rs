//! agent-tunnel under test: a server and agents that serve `echo` with the
//! typed body, used as any application would use them.

use std::net::SocketAddr;
use std::time::Duration;

use agent_client::{AgentClient, Backoff};
use agent_server::{AgentServer, HookError};

use crate::common::{Body, Caller, Context, Res, SharedCaller, CALL_TIMEOUT, ECHO};

/// The shared secret of the benchmark's servers and agents.
pub const SECRET: &str = "bench-shared-secret";

/// A server on `bind` with the `echo` hook; `sign` turns frame signing on.
pub async fn server(bind: SocketAddr, sign: bool) -> Res<AgentServer> {
    let server = AgentServer::builder()
        .secret(SECRET)
        .sign_frames(sign)
        .default_timeout(CALL_TIMEOUT)
        // Every benchmark agent connects from the same address, up to 256
        // at a time: let that one source use the whole handshake pool.
        .max_pending_handshakes_per_ip(agent_server::config::DEFAULT_MAX_HANDSHAKES)
        .start(bind)
        .await
        .ctx("starting the agent-tunnel server")?;
    server.on_hook(ECHO, |b: Body, _| async move { Ok::<_, HookError>(b) });
    Ok(server)
}

pub fn url(server: SocketAddr) -> String {
    format!("ws://{server}")
}

/// An agent with the `echo` hook, connected and authenticated. It does not
/// reconnect: a lost link is an error of the run.
pub async fn agent(url: &str) -> Res<AgentClient> {
    AgentClient::builder(url, SECRET)
        .default_timeout(CALL_TIMEOUT)
        .reconnect(Backoff::disabled())
        .on_hook(ECHO, |b: Body, _| async move { Ok::<_, HookError>(b) })
        .connect()
        .await
        .ctx("connecting an agent")
}

/// Agent → server calls.
pub struct AgentToServer {
    pub client: AgentClient,
    pub body: Body,
}

impl Caller for AgentToServer {
    async fn call(&mut self) -> Res<()> {
        SharedCaller::call(self).await
    }
}

impl SharedCaller for AgentToServer {
    async fn call(&self) -> Res<()> {
        let r: Body = self.client.send(ECHO, &self.body).await.ctx("agent send")?;
        check(&r, &self.body)
    }
}

/// Server → agent calls, by name as an application calls them.
pub struct ServerToAgent {
    pub server: AgentServer,
    pub name: String,
    pub body: Body,
}

impl Caller for ServerToAgent {
    async fn call(&mut self) -> Res<()> {
        SharedCaller::call(self).await
    }
}

impl SharedCaller for ServerToAgent {
    async fn call(&self) -> Res<()> {
        let r: Body = self
            .server
            .send_to(self.name.as_str(), ECHO, &self.body)
            .await
            .ctx("server send_to")?;
        check(&r, &self.body)
    }
}

fn check(got: &Body, want: &Body) -> Res<()> {
    if got.id == want.id {
        Ok(())
    } else {
        Err(format!("echo returned id {} for {}", got.id, want.id))
    }
}

/// Waits until the server lists `n` agents, for at most `timeout`.
pub async fn wait_for_agents(server: &AgentServer, n: usize, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let count = server.agents().len();
        if count >= n || tokio::time::Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `send_all` round; returns how many agents answered correctly and how
/// many failed.
pub async fn fan_out(server: &AgentServer, body: &Body, timeout: Duration) -> (usize, usize) {
    match server
        .send_all_timeout::<_, Body>(ECHO, body, timeout)
        .await
    {
        Ok(results) => {
            let ok = results
                .values()
                .filter(|r| matches!(r, Ok(b) if b.id == body.id))
                .count();
            (ok, results.len() - ok)
        }
        Err(e) => {
            eprintln!("send_all failed as a whole: {e}");
            (0, 1)
        }
    }
}

/// Waits until the server lists no agent, for at most `timeout`.
pub async fn wait_gone(server: &AgentServer, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !server.agents().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
