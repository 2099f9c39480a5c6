//! The server's builder and configuration, with documented defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{LinkConfig, MemoryStore, NameFormat, NameStore, Secret};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::server::AgentServer;
use crate::Error;

/// Default name format.
pub const DEFAULT_NAME_FORMAT: &str = "A####";
/// Default handshake deadline.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of `send_to`, `send_all` and `Agent::send`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most connections that may be in their handshake at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default time shutdown lets calls in flight finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Builds an [`AgentServer`].
///
/// ```no_run
/// # async fn demo() -> Result<(), agent_server::Error> {
/// use std::time::Duration;
/// use agent_server::AgentServer;
///
/// let server = AgentServer::builder()
///     .secret("change me")                        // required
///     .name_format("A####")                       // default
///     .default_timeout(Duration::from_secs(30))   // default
///     .start("0.0.0.0:7800")
///     .await?;
/// println!("listening on {}", server.local_addr());
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServerBuilder {
    pub(crate) secret: Option<Secret>,
    pub(crate) name_format: String,
    pub(crate) store: Arc<dyn NameStore>,
    pub(crate) link: LinkConfig,
    pub(crate) handshake_timeout: Duration,
    pub(crate) default_timeout: Duration,
    pub(crate) sign_frames: bool,
    pub(crate) max_handshakes: usize,
    pub(crate) shutdown_grace: Duration,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("name_format", &self.name_format)
            .field("link", &self.link)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("default_timeout", &self.default_timeout)
            .field("sign_frames", &self.sign_frames)
            .field("max_handshakes", &self.max_handshakes)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            secret: None,
            name_format: DEFAULT_NAME_FORMAT.to_owned(),
            store: Arc::new(MemoryStore::new()),
            link: LinkConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            default_timeout: DEFAULT_CALL_TIMEOUT,
            sign_frames: false,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServerBuilder {
    /// The shared secret agents must prove they know. Required; never logged.
    pub fn secret(mut self, secret: impl Into<Secret>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The format names are assigned from; the first run of `#` is the
    /// counter. Default `A####`.
    pub fn name_format(mut self, format: &str) -> Self {
        self.name_format = format.to_owned();
        self
    }

    /// Where the server keeps its name counter and key. Default: a
    /// [`MemoryStore`], which forgets on restart; use a
    /// [`FileStore`](agent_protocol::FileStore) to keep names across restarts.
    pub fn store(mut self, store: impl NameStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Like [`ServerBuilder::store`], for a store already in an `Arc`.
    pub fn store_arc(mut self, store: Arc<dyn NameStore>) -> Self {
        self.store = store;
        self
    }

    /// Deadline from TCP accept to `welcome`. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Timeout of calls that name none. Default 30 s.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Largest message accepted; a bigger one closes that link with 1009.
    /// Default 1 MiB.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.link.max_message_bytes = bytes;
        self
    }

    /// Most requests in flight per link and direction; beyond it callers get
    /// `BUSY`. Default 256.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.link.max_in_flight = n;
        self
    }

    /// Ping interval (`None`: no heartbeats). Default 5 s.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.link.ping_interval = interval;
        self
    }

    /// Ping intervals without a sign of life before a link is closed as
    /// dead. Default 2.
    pub fn missed_pongs(mut self, n: u32) -> Self {
        self.link.missed_pongs = n;
        self
    }

    /// Every limit and timer of links at once.
    pub fn link_config(mut self, config: LinkConfig) -> Self {
        self.link = config;
        self
    }

    /// Requires every frame after the handshake to be signed under the
    /// session key (see `docs/PROTOCOL.md`). Default off.
    pub fn sign_frames(mut self, on: bool) -> Self {
        self.sign_frames = on;
        self
    }

    /// Most connections in their handshake at once; more are dropped at
    /// accept. Default 1024.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// How long [`AgentServer::shutdown`] lets calls in flight finish.
    /// Default 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Binds `addr` (port 0 picks a free port; see
    /// [`AgentServer::local_addr`]) and starts serving.
    pub async fn start(self, addr: impl ToSocketAddrs) -> Result<AgentServer, Error> {
        self.validate()?;
        let listener = TcpListener::bind(addr).await?;
        AgentServer::serve(self, listener).await
    }

    /// Starts serving on a listener bound elsewhere.
    pub async fn listen(self, listener: TcpListener) -> Result<AgentServer, Error> {
        self.validate()?;
        AgentServer::serve(self, listener).await
    }

    fn validate(&self) -> Result<(), Error> {
        match &self.secret {
            None => return Err(Error::Config("a shared secret is required".into())),
            Some(s) if s.is_empty() => {
                return Err(Error::Config("the shared secret must not be empty".into()))
            }
            Some(_) => {}
        }
        self.name_format.parse::<NameFormat>()?;
        if self.link.max_in_flight == 0 || self.link.max_message_bytes < 256 {
            return Err(Error::Config(
                "max_in_flight must be at least 1 and max_message_bytes at least 256".into(),
            ));
        }
        Ok(())
    }
}
