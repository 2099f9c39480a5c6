//! The client's builder and configuration, with documented defaults.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{Call, HookError, Hooks, LinkConfig, MemoryStore, NameStore, Secret};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::backoff::Backoff;
use crate::client::AgentClient;
use crate::peer::ServerHandle;
use crate::Error;

/// Default handshake deadline (TCP connect to `welcome`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of `send`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds an [`AgentClient`].
///
/// ```no_run
/// # async fn demo() -> Result<(), agent_client::Error> {
/// use agent_client::{AgentClient, FileStore, HookError};
///
/// let client = AgentClient::builder("ws://127.0.0.1:7800", "s3cret")
///     .store(FileStore::new("/var/lib/agent/identity.json"))
///     .meta("region", "eu-west")
///     .on_hook("uptime", |_: (), _call| async { Ok::<_, HookError>(42u64) })
///     .connect()
///     .await?;
/// println!("ready as {}", client.name().unwrap_or_default());
/// # Ok(()) }
/// ```
#[must_use]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) secret: Secret,
    pub(crate) name: Option<String>,
    pub(crate) meta: Map<String, Value>,
    /// Labels as given, in order; checked at connect, the last value of a
    /// key winning.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) store: Arc<dyn NameStore>,
    pub(crate) hooks: Hooks<ServerHandle>,
    pub(crate) link: LinkConfig,
    pub(crate) handshake_timeout: Duration,
    pub(crate) default_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) tls: crate::tls::TlsOptions,
    pub(crate) events: tokio::sync::broadcast::Sender<crate::ClientEvent>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("name", &self.name)
            .field("meta", &self.meta)
            .field("labels", &self.labels)
            .field("link", &self.link)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("default_timeout", &self.default_timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: &str, secret: Secret) -> Self {
        ClientBuilder {
            url: url.to_owned(),
            secret,
            name: None,
            meta: Map::new(),
            labels: Vec::new(),
            store: Arc::new(MemoryStore::new()),
            hooks: Hooks::new(),
            link: LinkConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            default_timeout: DEFAULT_CALL_TIMEOUT,
            backoff: Backoff::default(),
            tls: crate::tls::TlsOptions::default(),
            events: tokio::sync::broadcast::channel(crate::client::EVENT_CAPACITY).0,
        }
    }

    /// Asks for a name of the agent's own choosing instead of an assigned one.
    /// When the store holds this name already, its token comes with it.
    ///
    /// The application insists on this name: when the server refuses it for
    /// good (`NAME_TAKEN`: another agent holds it; `INVALID_NAME`) and the
    /// agent holds no token for it, the client gives up (`connect` fails, or
    /// `ClientEvent::GaveUp`). When the server no longer knows the stored
    /// token (it lost its store), the agent asks for the name again without
    /// it and reports `ClientEvent::Renamed`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Adds a metadata entry sent at connect; the server keeps it on the
    /// agent's handle.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.meta.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a label the agent presents at every connect, for the server's
    /// selectors (`region=eu,role in (db,cache)`); a later call for the same
    /// key replaces the value. Default: no labels.
    ///
    /// Keys and values follow the Kubernetes label syntax (see
    /// [`agent_protocol::labels`]): a key is `name` or `prefix/name`, the
    /// name of up to 63 letters, digits, `-`, `_` and `.` beginning and
    /// ending with a letter or digit, the prefix a DNS subdomain; a value has
    /// up to 63 such characters, or none. The key `name` is reserved, and an
    /// agent has at most 64 labels. They are checked when the client
    /// connects: `connect` and `start` fail with `CONFIG` naming the label.
    ///
    /// The server may add to, change or drop them when it admits the agent
    /// (`ServerBuilder::on_admit`), and change them later; what it sets
    /// lasts for that connection, and the agent presents its own labels
    /// again when it reconnects.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), agent_client::Error> {
    /// let client = agent_client::AgentClient::builder("ws://127.0.0.1:7800", "s3cret")
    ///     .label("region", "eu")
    ///     .label("acme.io/role", "db")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where the agent keeps its name and token. Default: a [`MemoryStore`],
    /// which keeps the name across reconnects but not restarts.
    ///
    /// A store that fails to load stops `connect`/`start` with `STORE`. A
    /// store that fails to save:
    ///
    /// * before the client was ready for the first time, fails the attempt
    ///   with `STORE` (the agent closes the new link with 1011, so the
    ///   server drops it at once): `connect` returns that error; a client
    ///   from `start` reports `ClientEvent::Error` and retries with backoff,
    ///   asking for the same name, until a save succeeds;
    /// * later (a new name or token on a reconnect), reports
    ///   `ClientEvent::Error` with `STORE` and stays online with the identity
    ///   in memory, saving it again at the next connection.
    pub fn store(mut self, store: impl NameStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Like [`ClientBuilder::store`], for a store already in an `Arc`.
    pub fn store_arc(mut self, store: Arc<dyn NameStore>) -> Self {
        self.store = store;
        self
    }

    /// Adds a handler for `action` before connecting, so no call from the
    /// server can arrive before it (see [`Hooks::on_hook`]).
    pub fn on_hook<T, R, F, Fut>(self, action: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, Call<ServerHandle>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HookError>> + Send + 'static,
    {
        self.hooks.on_hook(action, f);
        self
    }

    /// Adds a catch-all handler before connecting (see [`Hooks::on_any`]).
    pub fn on_any<T, R, F, Fut>(self, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, Call<ServerHandle>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HookError>> + Send + 'static,
    {
        self.hooks.on_any(f);
        self
    }

    /// Uses a registry of handlers built elsewhere.
    pub fn hooks(mut self, hooks: Hooks<ServerHandle>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Deadline from TCP connect to `welcome`, more than zero (else `CONFIG`
    /// at start); `Duration::MAX` waits for ever. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Timeout of calls that name none, more than zero (else `CONFIG` at
    /// start); `Duration::MAX` waits for ever. Default 30 s.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Largest message accepted. Default 1 MiB.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.link.max_message_bytes = bytes;
        self
    }

    /// Most requests in flight per direction. Default 256.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.link.max_in_flight = n;
        self
    }

    /// Ping interval (`None`: no heartbeats; at least 1 ms, else `CONFIG`
    /// at start). Default 5 s.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.link.ping_interval = interval;
        self
    }

    /// Turns heartbeats off: the same as `ping_interval(None)`. Default: on,
    /// every 5 s.
    pub fn no_heartbeat(self) -> Self {
        self.ping_interval(None)
    }

    /// Ping intervals without a sign of life before the link is declared
    /// dead. Default 2.
    pub fn missed_pongs(mut self, n: u32) -> Self {
        self.link.missed_pongs = n;
        self
    }

    /// Every limit and timer of the link at once.
    pub fn link_config(mut self, config: LinkConfig) -> Self {
        self.link = config;
        self
    }

    /// How to reconnect after losing the link. Default: [`Backoff::default`];
    /// [`Backoff::disabled`] turns reconnecting off. Invalid values fail
    /// `connect`/`start` with `CONFIG`.
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Trusts the CA certificates in this PEM file for `wss://` (read at
    /// start; a missing or empty file is `CONFIG`).
    ///
    /// Naming a CA (here or with [`ClientBuilder::tls_ca_pem`]; several may
    /// be named) makes the named CAs the *only* ones trusted: the built-in
    /// web roots are dropped, so a private PKI is not widened to every public
    /// CA. [`ClientBuilder::tls_web_roots`] adds them back.
    pub fn tls_ca_pem_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_files.push(path.into());
        self
    }

    /// Trusts these PEM-encoded CA certificates for `wss://`, and only them
    /// unless [`ClientBuilder::tls_web_roots`] adds the web roots back (see
    /// [`ClientBuilder::tls_ca_pem_file`]).
    ///
    /// ```no_run
    /// # async fn demo(ca_pem: Vec<u8>) -> Result<(), agent_client::Error> {
    /// use agent_client::AgentClient;
    /// // Trusts the private CA and nothing else.
    /// let client = AgentClient::builder("wss://control-plane.internal:7800", "s3cret")
    ///     .tls_ca_pem(ca_pem)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pems.push(pem.into());
        self
    }

    /// Whether the web's root CAs (webpki-roots) are trusted for `wss://`.
    /// Default: yes when no CA is named, no as soon as one is;
    /// `tls_web_roots(true)` trusts them beside the named CAs. Turning them
    /// off with no CA named is `CONFIG` (nothing would be trusted).
    pub fn tls_web_roots(mut self, trust: bool) -> Self {
        self.tls.web_roots = Some(trust);
        self
    }

    /// Presents this certificate chain and key (PEM) to servers that require
    /// client certificates.
    pub fn tls_client_cert_pem(
        mut self,
        chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_cert = Some((chain.into(), key.into()));
        self
    }

    /// Uses a ready rustls client configuration for `wss://` (overrides the
    /// other TLS settings). The client counts a refusal received over
    /// `wss://` as authenticated by TLS (it may be final), so keep the
    /// configuration's certificate verification.
    pub fn tls_config(mut self, config: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        self.tls.config = Some(config);
        self
    }

    /// Subscribes to the client's events before it starts, so that none is
    /// missed, not even the first `Connected` and `Ready`.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::ClientEvent> {
        self.events.subscribe()
    }

    /// Loads the stored identity and starts connecting in the background;
    /// returns at once. Calls made before the client is ready wait for it.
    ///
    /// Fails at once only for what no retry can fix: `CONFIG` (an invalid
    /// setting, URL or TLS file) and `STORE` (the store failed to load). Every
    /// failed attempt after that is a `ClientEvent::Error`; the client
    /// retries with backoff and gives up only on a refusal it can trust to
    /// be final (see the README's "Reconnect with backoff"). An identity that
    /// cannot be saved before the first ready is retried as described under
    /// [`ClientBuilder::store`].
    pub async fn start(self) -> Result<AgentClient, Error> {
        AgentClient::start(self).await
    }

    /// Connects and waits until the handshake succeeded. Fails with the first
    /// attempt's error (e.g. `WRONG_SECRET`, or `TRANSPORT` when the server is
    /// unreachable, or `STORE` when the new name cannot be saved: see
    /// [`ClientBuilder::store`]), so a misconfigured agent shows at once;
    /// after that, lost links are re-established automatically. A stored
    /// identity the server no longer knows is not a failure: the agent takes
    /// a new one ([`crate::ClientEvent::Renamed`]) and `connect` resolves.
    pub async fn connect(self) -> Result<AgentClient, Error> {
        AgentClient::connect(self).await
    }
}
