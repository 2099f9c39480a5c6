//! Admission: the application's say over an authenticated agent before it
//! is registered, through [`ServerBuilder::on_admit`](crate::ServerBuilder::on_admit).
//!
//! The hook runs once per connection, after the agent proved the shared
//! secret and its name was decided, and before the `welcome`: what it
//! returns are the agent's labels (the ones it presented, changed or
//! replaced), or a refusal, which the agent receives as a proven `reject`
//! with code `NOT_ADMITTED` and close code 4012.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use agent_protocol::handshake::Refusal;
use agent_protocol::labels::Labels;
use agent_protocol::log_limit::{clip, LogLimit};
use agent_protocol::{close, codes};
use serde_json::{Map, Value};
use tokio_rustls::rustls::pki_types::CertificateDer;

/// What the admission hook knows of an agent about to be admitted.
///
/// ```
/// use agent_server::{AdmitInfo, NotAdmitted};
/// use agent_server::Labels;
///
/// // Keep an agent's own labels, add where it connected from, and refuse
/// // agents that claim to be control-plane nodes.
/// fn admit(agent: &AdmitInfo<'_>) -> Result<Labels, NotAdmitted> {
///     if agent.labels().get("role") == Some("control-plane") {
///         return Err(NotAdmitted::new("agents may not take the control-plane role"));
///     }
///     let mut labels = agent.labels().clone();
///     let via = if agent.is_tls() { "tls" } else { "plain" };
///     labels.insert("acme.io/transport", via).map_err(|e| NotAdmitted::new(e.to_string()))?;
///     Ok(labels)
/// }
/// ```
#[derive(Debug)]
pub struct AdmitInfo<'a> {
    pub(crate) name: &'a str,
    pub(crate) first_time: bool,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) peer_certificates: Option<&'a [CertificateDer<'static>]>,
    pub(crate) meta: &'a Map<String, Value>,
    pub(crate) labels: &'a Labels,
}

impl AdmitInfo<'_> {
    /// The name the agent is getting.
    pub fn name(&self) -> &str {
        self.name
    }

    /// True when the name is given at this connection.
    pub fn first_time(&self) -> bool {
        self.first_time
    }

    /// The agent's address as the server sees it.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// True when the agent connected over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The agent's certificate chain, when mutual TLS verified one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.peer_certificates
    }

    /// The metadata the agent sent.
    pub fn meta(&self) -> &Map<String, Value> {
        self.meta
    }

    /// The labels the agent presented (valid: invalid ones were refused
    /// before the hook runs).
    pub fn labels(&self) -> &Labels {
        self.labels
    }
}

/// The admission hook's refusal: the agent receives `reject` with code
/// `NOT_ADMITTED`, this message, and close code 4012 (`NOT_ADMITTED`).
///
/// The message goes to the agent: say why, and nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAdmitted {
    message: String,
}

impl NotAdmitted {
    /// A refusal telling the agent `message`.
    pub fn new(message: impl Into<String>) -> Self {
        NotAdmitted {
            message: message.into(),
        }
    }

    /// The message the agent receives.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not admitted: {}", self.message)
    }
}

impl std::error::Error for NotAdmitted {}

/// The hook as the server keeps it.
pub(crate) type AdmitHook =
    Arc<dyn for<'a> Fn(&AdmitInfo<'a>) -> Result<Labels, NotAdmitted> + Send + Sync>;

/// Longest refusal message sent to the agent.
const MAX_MESSAGE_LEN: usize = 512;

static HOOK_PANICS: LogLimit = LogLimit::per_second(5);

/// Runs `hook` on `info`: the agent's labels, or the refusal to send. A
/// panicking hook refuses the agent with `INTERNAL_ERROR` (close 1011); the
/// server goes on.
pub(crate) fn decide(hook: Option<&AdmitHook>, info: &AdmitInfo<'_>) -> Result<Labels, Refusal> {
    let Some(hook) = hook else {
        return Ok(info.labels.clone());
    };
    match catch_unwind(AssertUnwindSafe(|| hook(info))) {
        Ok(Ok(labels)) => Ok(labels),
        Ok(Err(no)) => Err(Refusal::new(
            codes::NOT_ADMITTED,
            clip(&no.message, MAX_MESSAGE_LEN).into_owned(),
            close::NOT_ADMITTED,
        )),
        Err(_) => {
            if let Some(suppressed) = HOOK_PANICS.allow() {
                tracing::error!(suppressed, "the admission hook panicked; agent refused");
            }
            Err(Refusal::new(
                codes::INTERNAL_ERROR,
                "the server's admission check failed",
                close::INTERNAL_ERROR,
            ))
        }
    }
}
