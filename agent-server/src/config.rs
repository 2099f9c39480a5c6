//! The server's builder and configuration, with documented defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::labels::Labels;
use agent_protocol::{LinkConfig, MemoryStore, NameFormat, NameStore, Secret};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::admission::{AdmitHook, AdmitInfo, NotAdmitted};
use crate::server::AgentServer;
use crate::Error;

/// Default name format.
pub const DEFAULT_NAME_FORMAT: &str = "A####";
/// Default handshake deadline.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for a connection's first bytes: TLS and the WebSocket
/// upgrade.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default largest message an agent may send before it is authenticated.
pub const DEFAULT_MAX_HANDSHAKE_MESSAGE_BYTES: usize = 64 * 1024;
/// Smallest handshake message limit a builder accepts: room for an `auth`
/// with a name, a claim and a little metadata.
pub const MIN_HANDSHAKE_MESSAGE_BYTES: usize = 1024;
/// Default timeout of `send_to`, `send_all` and `Agent::send`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most connections that may be in their handshake at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default most connections from one source (an IPv4 address or an IPv6
/// /64) that may be in their handshake at once: a sixteenth of
/// [`DEFAULT_MAX_HANDSHAKES`], so that it takes sixteen sources to fill the
/// pool.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = DEFAULT_MAX_HANDSHAKES / 16;
/// Default time shutdown lets calls in flight finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default most callers that may wait at once for agents to connect
/// (`wait_for`, calls `when_online`, `wait_for_count`, together).
pub const DEFAULT_MAX_WAITERS: usize = 1024;

/// Default time a reclaim waits for the name's old link to answer a ping
/// before replacing it as stale.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub(crate) upgrade_timeout: Duration,
    pub(crate) max_handshake_message_bytes: usize,
    pub(crate) default_timeout: Duration,
    pub(crate) sign_frames: bool,
    pub(crate) max_handshakes: usize,
    pub(crate) max_handshakes_per_ip: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) tls: crate::tls::TlsSettings,
    pub(crate) on_admit: Option<AdmitHook>,
    pub(crate) max_waiters: usize,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("name_format", &self.name_format)
            .field("link", &self.link)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field(
                "max_handshake_message_bytes",
                &self.max_handshake_message_bytes,
            )
            .field("default_timeout", &self.default_timeout)
            .field("sign_frames", &self.sign_frames)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_ip", &self.max_handshakes_per_ip)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("probe_timeout", &self.probe_timeout)
            .field("on_admit", &self.on_admit.is_some())
            .field("max_waiters", &self.max_waiters)
            .field(
                "tls",
                &(self.tls.identity.is_some() || self.tls.config.is_some()),
            )
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
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            max_handshake_message_bytes: DEFAULT_MAX_HANDSHAKE_MESSAGE_BYTES,
            default_timeout: DEFAULT_CALL_TIMEOUT,
            sign_frames: false,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            tls: crate::tls::TlsSettings::default(),
            on_admit: None,
            max_waiters: DEFAULT_MAX_WAITERS,
        }
    }
}

impl ServerBuilder {
    /// The shared secret agents must prove they know. Required; never logged.
    pub fn secret(mut self, secret: impl Into<Secret>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The format names are assigned from: literal text around exactly one
    /// run of `#`, the counter, zero-padded to the run's width (`A####`:
    /// `A0001`, …, `A9999`, `A10000`). A format with no `#`, or two runs,
    /// is a `CONFIG` error. Default `A####`.
    pub fn name_format(mut self, format: &str) -> Self {
        self.name_format = format.to_owned();
        self
    }

    /// Where the server keeps its name counter, its key (from which every
    /// name token derives), the chosen names and the revocations. Every new
    /// name is saved here before its `welcome` goes out.
    ///
    /// Default: a [`MemoryStore`], which forgets all of it on restart: the
    /// restarted server has a new key and counts from 1 again, so every
    /// agent's stored name and token becomes unknown to it (an assigned name
    /// is refused with `INVALID_NAME` and its agent must take a new one; a
    /// chosen name is given again as new), and revoked names are welcome
    /// again. With a [`FileStore`](agent_protocol::FileStore), or a store of
    /// your own that persists, names, tokens and revocations survive
    /// restarts and no name is given twice.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), agent_server::Error> {
    /// use agent_server::{AgentServer, FileStore};
    ///
    /// let server = AgentServer::builder()
    ///     .secret("s3cret")
    ///     .store(FileStore::new("/var/lib/control-plane/names.json"))
    ///     .start("0.0.0.0:7800")
    ///     .await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// A handshake still unfinished then is closed with 4005 (or, before
    /// the upgrade, dropped). Either way the connection is gone at most
    /// `close_timeout` later (see [`LinkConfig::close_timeout`]), whether or
    /// not the peer reads what it is told.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Deadline from TCP accept to the end of the TLS handshake and the
    /// WebSocket upgrade, the first bytes of every connection. A connection
    /// not upgraded by then is dropped without a response. Much shorter than
    /// the whole handshake, so an idle socket holds its handshake slot only
    /// briefly; the handshake deadline still bounds the whole (the sooner of
    /// the two applies). Default 3 s.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), agent_server::Error> {
    /// use std::time::Duration;
    /// let server = agent_server::AgentServer::builder()
    ///     .secret("s3cret")
    ///     .upgrade_timeout(Duration::from_secs(5))   // slow links: allow more
    ///     .start("0.0.0.0:7800")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// Largest message an agent may send before it is authenticated (its
    /// `auth`, with its `meta`); a bigger one closes the connection with
    /// 1009 before any of it is parsed. Checked on the frame headers as they
    /// arrive, so an oversized message is never buffered. Never above
    /// [`ServerBuilder::max_message_bytes`], which applies from then on. At
    /// least 1 KiB. Default 64 KiB.
    pub fn max_handshake_message_bytes(mut self, bytes: usize) -> Self {
        self.max_handshake_message_bytes = bytes;
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

    /// Turns heartbeats off: the same as `ping_interval(None)`. Default: on,
    /// every 5 s.
    pub fn no_heartbeat(self) -> Self {
        self.ping_interval(None)
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

    /// Most connections in their handshake at once: from TCP accept until
    /// registered as an agent, or until a failed handshake is closed. Each
    /// holds a task and a socket, so this bounds what unauthenticated peers
    /// cost. Default 1024.
    ///
    /// When every slot is taken, a new connection from a source (an IPv4
    /// address or an IPv6 /64) holding less than an equal share of the
    /// slots (this bound divided by the sources holding any) evicts the
    /// oldest connection of the source holding the most that has not
    /// finished its WebSocket upgrade: it is dropped at once, unanswered, and
    /// reported as a [`HandshakeFailure`](crate::HandshakeFailure) with code
    /// `BUSY`. Otherwise the new connection is dropped at accept. So a few
    /// busy sources cannot lock every other one out, and a source within its
    /// share never loses a slot.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Most connections from one source in their handshake at once; more
    /// from that source are dropped at accept. A source is an IPv4 address,
    /// or an IPv6 /64 network (one host usually holds a whole /64);
    /// IPv4-mapped IPv6 addresses count as IPv4. Default 64, a sixteenth of
    /// the default [`ServerBuilder::max_pending_handshakes`].
    pub fn max_pending_handshakes_per_ip(mut self, n: usize) -> Self {
        self.max_handshakes_per_ip = n;
        self
    }

    /// How long [`AgentServer::shutdown`] lets calls in flight finish.
    /// Default 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// When an agent reclaims a name whose old link is still registered, the
    /// server pings the old link and waits this long for any sign of life: a
    /// live link makes the reclaim fail with `DUPLICATE_ID`, a silent one is
    /// closed as stale and replaced. Default 2 s.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Decides, for each agent that authenticated, whether it is admitted
    /// and with which labels. Default: every agent, with the labels it
    /// presented.
    ///
    /// `f` runs once per connection, after the agent proved the secret and
    /// its name was decided, before the `welcome`; it sees the name, the
    /// address, TLS, certificates, metadata and the labels the agent
    /// presented (already checked). `Ok(labels)` admits the agent with
    /// those labels (the presented ones, changed or replaced); `Err`
    /// refuses it: the agent gets a proven `reject` with code
    /// `NOT_ADMITTED` and the message, then close code 4012. An agent
    /// refused this way retries with backoff, so the hook may admit it
    /// later; a refused first-time agent keeps the name it was given for
    /// its retries.
    ///
    /// The hook is synchronous and runs inside the handshake: keep it
    /// quick. A hook that panics refuses the agent with `INTERNAL_ERROR`
    /// (close code 1011); the server goes on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), agent_server::Error> {
    /// use agent_server::{AgentServer, NotAdmitted};
    ///
    /// let server = AgentServer::builder()
    ///     .secret("s3cret")
    ///     .on_admit(|agent| {
    ///         if agent.labels().get("env") == Some("prod") && !agent.is_tls() {
    ///             return Err(NotAdmitted::new("prod agents connect over wss://"));
    ///         }
    ///         let mut labels = agent.labels().clone();
    ///         // The server's word on the region, not the agent's.
    ///         let region = if agent.peer_addr().ip().is_loopback() { "local" } else { "eu" };
    ///         labels.insert("region", region).map_err(|e| NotAdmitted::new(e.to_string()))?;
    ///         Ok(labels)
    ///     })
    ///     .start("0.0.0.0:7800")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_admit<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(&AdmitInfo<'a>) -> Result<Labels, NotAdmitted> + Send + Sync + 'static,
    {
        self.on_admit = Some(Arc::new(f));
        self
    }

    /// Most callers that may wait at once for agents to connect: the calls
    /// of [`AgentServer::wait_for`], [`AgentServer::wait_for_count`] and
    /// calls [`when_online`](crate::CallBuilder::when_online) waiting for
    /// their agent, together. One more fails at once with `BUSY`. Default
    /// 1024; 0 is a `CONFIG` error.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// Serves `wss://` with the PEM certificate chain and private key in
    /// these files (read at start).
    pub fn tls_pem_files(
        mut self,
        cert_chain: impl Into<std::path::PathBuf>,
        private_key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.identity = Some(crate::tls::Identity::Files {
            cert: cert_chain.into(),
            key: private_key.into(),
        });
        self
    }

    /// Serves `wss://` with this PEM certificate chain and private key.
    pub fn tls_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        private_key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some(crate::tls::Identity::Pem {
            cert: cert_chain.into(),
            key: private_key.into(),
        });
        self
    }

    /// Requires agents to present a client certificate signed by a CA in this
    /// PEM (mutual TLS). Needs a server certificate too.
    pub fn tls_client_ca_pem(mut self, ca: impl Into<Vec<u8>>) -> Self {
        self.tls.client_ca.push(ca.into());
        self
    }

    /// Serves `wss://` with a ready rustls configuration (overrides the other
    /// TLS settings).
    pub fn tls_config(
        mut self,
        config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> Self {
        self.tls.config = Some(config);
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
        if self.max_handshake_message_bytes < MIN_HANDSHAKE_MESSAGE_BYTES {
            return Err(Error::Config(
                "max_handshake_message_bytes must be at least 1024".into(),
            ));
        }
        // A zero deadline fails every handshake or call at once: never what
        // was meant.
        for (what, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("upgrade_timeout", self.upgrade_timeout),
            ("default_timeout", self.default_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{what} must be more than zero")));
            }
        }
        if self.max_waiters == 0 {
            return Err(Error::Config("max_waiters must be at least 1".into()));
        }
        self.link.validate()
    }
}
