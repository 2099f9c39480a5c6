//! The TOML configuration of `agent-tunnel serve`: parsed strictly (an
//! unknown key is an error that names its line), then checked.
//!
//! Secrets and tokens come from a file or an environment variable, never
//! from the file itself or the command line, so they stay out of shell
//! history, process lists and logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_server::{AgentServer, ServerBuilder};
use serde::Deserialize;

/// The commented example `agent-tunnel config example` prints.
pub const EXAMPLE: &str = include_str!("../example.toml");

/// Where a secret comes from: exactly one of a file or a variable.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// A file holding the secret (surrounding whitespace is trimmed).
    pub file: Option<PathBuf>,
    /// An environment variable holding it.
    pub env: Option<String>,
}

impl SecretSource {
    /// The secret, or a message naming `key`.
    pub fn load(&self, key: &str, base: &Path) -> Result<String, String> {
        let value = match (&self.file, &self.env) {
            (Some(file), None) => {
                let path = base.join(file);
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("{key}.file: cannot read {}: {e}", path.display()))?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("{key}.env: the environment variable {var} is not set"))?,
            (None, None) => return Err(format!("{key}: give `file` or `env`")),
            (Some(_), Some(_)) => return Err(format!("{key}: give `file` or `env`, not both")),
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(format!("{key}: the secret is empty"));
        }
        Ok(value)
    }
}

/// `[tls]`: serve `wss://`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[limits]`: the server's bounds; each defaults to the library's.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_message_bytes: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub max_pending_handshakes: Option<usize>,
    pub max_pending_handshakes_per_ip: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub ping_interval_ms: Option<u64>,
}

/// `[admin]`: the HTTP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the API listens (default 127.0.0.1:7801).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The token of full access.
    pub token: SecretSource,
    /// A token for the `GET` routes only.
    pub read_only_token: Option<SecretSource>,
    /// Largest request body in bytes.
    pub max_body_bytes: Option<usize>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7800))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7801))
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where agents connect (default 127.0.0.1:7800).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The shared secret.
    pub secret: SecretSource,
    /// Names given to agents that do not choose one.
    pub name_format: Option<String>,
    /// A JSON file keeping names, tokens and revocations across restarts.
    pub store: Option<PathBuf>,
    /// Require signed frames.
    #[serde(default)]
    pub sign_frames: bool,
    pub tls: Option<Tls>,
    #[serde(default)]
    pub limits: Limits,
    pub admin: Option<Admin>,
}

/// Everything `serve` needs, loaded and checked.
pub struct Loaded {
    pub config: Config,
    pub builder: ServerBuilder,
    pub admin: Option<agent_tunnel_admin::AdminConfig>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Parses and checks the file at `path`: every error names its key (and
/// its line, for one the parser finds).
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let err = |e: String| format!("{}: {e}", path.display());
    let secret = config.secret.load("secret", base).map_err(err)?;
    let mut b = AgentServer::builder()
        .secret(secret)
        .sign_frames(config.sign_frames);
    if let Some(format) = &config.name_format {
        format
            .parse::<agent_protocol::NameFormat>()
            .map_err(|e| err(format!("name_format: {e}")))?;
        b = b.name_format(format);
    }
    if let Some(store) = &config.store {
        let store = base.join(store);
        let dir = store
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(err(format!(
                "store: the directory {} does not exist",
                dir.display()
            )));
        }
        b = b.store(agent_protocol::FileStore::new(store));
    }
    if let Some(tls) = &config.tls {
        for (key, file) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
            if !base.join(file).is_file() {
                return Err(err(format!("{key}: no file {}", base.join(file).display())));
            }
        }
        b = b.tls_pem_files(base.join(&tls.cert), base.join(&tls.key));
    }
    let l = &config.limits;
    if let Some(v) = l.max_message_bytes {
        b = b.max_message_bytes(v);
    }
    if let Some(v) = l.max_in_flight {
        b = b.max_in_flight(v);
    }
    if let Some(v) = l.max_pending_handshakes {
        b = b.max_pending_handshakes(v);
    }
    if let Some(v) = l.max_pending_handshakes_per_ip {
        b = b.max_pending_handshakes_per_ip(v);
    }
    if let Some(v) = l.handshake_timeout_ms {
        b = b.handshake_timeout(ms(v));
    }
    if let Some(v) = l.call_timeout_ms {
        b = b.default_timeout(ms(v));
    }
    if let Some(v) = l.shutdown_grace_ms {
        b = b.shutdown_grace(ms(v));
    }
    if let Some(v) = l.ping_interval_ms {
        b = b.ping_interval((v > 0).then(|| ms(v)));
    }
    let admin = match &config.admin {
        None => None,
        Some(a) => {
            let token = a.token.load("admin.token", base).map_err(err)?;
            let mut c = agent_tunnel_admin::AdminConfig::new(token);
            if let Some(ro) = &a.read_only_token {
                c = c.read_only_token(ro.load("admin.read_only_token", base).map_err(err)?);
            }
            if let Some(n) = a.max_body_bytes {
                c = c.max_body_bytes(n);
            }
            Some(c)
        }
    };
    Ok(Loaded {
        config,
        builder: b,
        admin,
    })
}
