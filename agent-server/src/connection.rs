//! One connection from accept to close: TLS and the WebSocket upgrade under
//! the upgrade deadline, the handshake under its deadline, the name decision,
//! the link, and the registry entry.
//!
//! Everything here runs in the connection's own task, so a slow or hostile
//! peer only ever holds up itself; and everything before authentication is
//! bounded in time (the deadlines, then `close_timeout` for telling a failed
//! peer), in size (the handshake message limit, see `first_message`), and
//! by shutdown, which ends unfinished handshakes at once.

use std::net::SocketAddr;
use std::sync::Arc;

use agent_protocol::frame::{Frame, Limits};
use agent_protocol::handshake::{Refusal, ServerHandshake, Session, VerifiedAuth};
use agent_protocol::labels::Labels;
use agent_protocol::link::{self, Role};
use agent_protocol::log_limit::{clip, LogLimit};
use agent_protocol::time;
use agent_protocol::transport::{self, MaybeTls, RecvError};
use agent_protocol::{close, codes, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::admission::{self, AdmitInfo};
use crate::agent::{Agent, AgentInfo};
use crate::first_message::FirstMessageLimit;
use crate::handshakes::HandshakeSlot;
use crate::names::{Grant, GrantError};
use crate::registry::Refused;
use crate::server::Inner;

/// Accepts the upgrade only for clients that offer the agent-tunnel subprotocol.
#[allow(clippy::result_large_err)]
fn negotiate(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        let mut err = ErrorResponse::new(Some(format!(
            "this endpoint speaks the {SUBPROTOCOL} WebSocket subprotocol"
        )));
        *err.status_mut() = StatusCode::BAD_REQUEST;
        return Err(err);
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

/// How a handshake failed.
enum Failure {
    /// Refused: send `reject` and close with its code.
    Refused(Refusal),
    /// The peer broke the protocol: close with the code, no `reject`.
    Violation(u16, String),
    /// The connection is gone; nothing to send.
    Gone(String),
    /// The handshake deadline passed: close with 4005.
    Timeout,
    /// The server began shutting down: close with 1001.
    Shutdown,
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

impl From<RecvError> for Failure {
    fn from(e: RecvError) -> Self {
        match e.close_code {
            Some(code) => Failure::Violation(code, e.error.to_string()),
            None => Failure::Gone(e.error.to_string()),
        }
    }
}

impl Failure {
    /// The code reported in [`HandshakeFailure`](crate::HandshakeFailure).
    fn code(&self) -> &'static str {
        match self {
            Failure::Refused(r) => r.code,
            Failure::Violation(..) => codes::PROTOCOL_ERROR,
            Failure::Gone(_) => codes::TRANSPORT,
            Failure::Timeout => codes::HANDSHAKE_TIMEOUT,
            Failure::Shutdown => codes::SHUTDOWN,
        }
    }

    /// Tells the peer, as far as it reads: `reject` and the close handshake.
    /// The caller bounds this; a peer that reads nothing must not hold it.
    async fn tell(&self, ws: &mut WebSocketStream<Stream>, close_timeout: std::time::Duration) {
        match self {
            Failure::Refused(r) => {
                let _ = transport::send_frame(ws, &r.frame()).await;
                transport::close(ws, r.close_code, &r.message, close_timeout).await;
            }
            Failure::Violation(code, reason) => {
                transport::close(ws, *code, reason, close_timeout).await;
            }
            Failure::Gone(_) => {}
            Failure::Timeout => {
                transport::close(
                    ws,
                    close::HANDSHAKE_TIMEOUT,
                    "handshake timeout",
                    close_timeout,
                )
                .await;
            }
            Failure::Shutdown => {
                transport::close(ws, close::GOING_AWAY, "server shutting down", close_timeout)
                    .await;
            }
        }
    }
}

/// Per-connection log lines before authentication, which any peer can
/// trigger at will.
static UPGRADE_LOGS: LogLimit = LogLimit::per_second(5);
static FAILURE_LOGS: LogLimit = LogLimit::per_second(5);

/// Serves one accepted connection until its link ends.
///
/// `slot` counts this connection among those not authenticated yet. It is
/// held until the connection is registered as an agent, or until a failed
/// handshake has finished telling the peer, so the bound on handshakes also
/// bounds the tasks and sockets that unauthenticated peers hold.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    server: Arc<Inner>,
    slot: HandshakeSlot,
) {
    let span = tracing::info_span!(
        "agent",
        peer = %peer_addr,
        name = tracing::field::Empty,
        conn = tracing::field::Empty
    );
    serve_inner(tcp, peer_addr, server, slot)
        .instrument(span)
        .await
}

/// The stream a server-side WebSocket runs on: TCP or TLS, with the
/// handshake's message bound on top.
type Stream = FirstMessageLimit<MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>>;

/// What a finished upgrade yields: the WebSocket, and the client's
/// certificate chain when mutual TLS verified one.
type Upgraded = (
    WebSocketStream<Stream>,
    Option<Vec<CertificateDer<'static>>>,
);

/// TLS (for `wss://`) and the WebSocket upgrade, in the connection's own
/// task so a slow client never stalls the accept loop; the caller bounds it.
/// A failure drops the TCP connection without a response.
async fn upgrade(tcp: TcpStream, server: &Inner) -> Result<Upgraded, &'static str> {
    let (stream, certs) = match &server.tls {
        None => (MaybeTls::Plain(tcp), None),
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(tls) => {
                let certs = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
                (MaybeTls::Tls(Box::new(tls)), certs)
            }
            Err(e) => {
                if let Some(suppressed) = UPGRADE_LOGS.allow() {
                    tracing::debug!(error = %clip(&e.to_string(), 200), suppressed, "TLS handshake failed");
                }
                return Err(codes::TRANSPORT);
            }
        },
    };
    let stream = FirstMessageLimit::new(stream, server.max_handshake_message_bytes);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        negotiate,
        Some(server.link.websocket()),
    );
    match upgrade.await {
        Ok(ws) => Ok((ws, certs)),
        Err(e) => {
            if let Some(suppressed) = UPGRADE_LOGS.allow() {
                tracing::debug!(error = %clip(&e.to_string(), 200), suppressed, "WebSocket upgrade failed");
            }
            Err(codes::TRANSPORT)
        }
    }
}

/// Reports a failed handshake: counted, broadcast, and logged within limits
/// (`why` is the peer's doing, so it is clipped too).
fn failed(server: &Inner, peer_addr: SocketAddr, code: &'static str, why: Option<&str>) {
    if let Some(suppressed) = FAILURE_LOGS.allow() {
        match why {
            Some(why) => {
                tracing::debug!(%code, why = %clip(why, 200), suppressed, "handshake failed")
            }
            None => tracing::debug!(%code, suppressed, "handshake failed"),
        }
    }
    server.handshake_failed(peer_addr, code);
}

async fn serve_inner(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    server: Arc<Inner>,
    slot: HandshakeSlot,
) {
    let accepted = tokio::time::Instant::now();
    let deadline = time::deadline_from(accepted, server.handshake_timeout);
    // The first bytes (TLS and the HTTP upgrade) get a much shorter
    // deadline: a socket that sends nothing holds its slot only that long.
    let upgrade_by = time::sooner(
        deadline,
        time::deadline_from(accepted, server.upgrade_timeout),
    );
    let upgraded = tokio::select! {
        biased;
        // Cancel-safe: tokens only observe. Losing either race drops the
        // unfinished upgrade, and with it the TCP connection, unanswered.
        _ = server.stop.cancelled() => Err(codes::SHUTDOWN),
        _ = slot.evicted() => Err(codes::BUSY),
        done = tokio::time::timeout_at(upgrade_by, upgrade(tcp, &server)) => match done {
            Ok(done) => done,
            Err(_) => Err(codes::HANDSHAKE_TIMEOUT),
        },
    };
    let (mut ws, peer_certificates) = match upgraded {
        Ok(up) => up,
        Err(code) => {
            failed(&server, peer_addr, code, None);
            return;
        }
    };
    if !slot.upgraded() {
        // Evicted just as the upgrade finished: its slot is gone already.
        failed(&server, peer_addr, codes::BUSY, None);
        return;
    }
    let tls = ws.get_ref().get_ref().is_tls();
    let peer = Peer {
        addr: peer_addr,
        tls,
        certificates: peer_certificates.as_deref(),
    };

    let authenticated = tokio::select! {
        biased;
        // Cancel-safe like the deadline: a reserved name is released by the
        // reservation's drop.
        _ = server.stop.cancelled() => Err(Failure::Shutdown),
        done = tokio::time::timeout_at(deadline, authenticate(&mut ws, &server, &peer)) => match done {
            Ok(done) => done,
            Err(_) => Err(Failure::Timeout),
        },
    };
    let Authenticated {
        grant,
        welcome,
        session,
        meta,
        labels,
    } = match authenticated {
        Ok(done) => done,
        Err(failure) => {
            let failure = match failure {
                Failure::Gone(_) if ws.get_ref().tripped() => Failure::Violation(
                    close::TOO_BIG,
                    format!(
                        "handshake message over {} bytes",
                        server.max_handshake_message_bytes
                    ),
                ),
                other => other,
            };
            let why = match &failure {
                Failure::Violation(_, why) | Failure::Gone(why) => Some(why.as_str()),
                _ => None,
            };
            failed(&server, peer_addr, failure.code(), why);
            // Every write before authentication ends by a deadline: `hello`
            // by the handshake's, the rest close_timeout from here, however
            // little the peer reads.
            let close_timeout = server.link.close_timeout;
            let by = time::deadline_in(close_timeout);
            let _ = tokio::time::timeout_at(by, failure.tell(&mut ws, close_timeout)).await;
            drop(slot);
            return;
        }
    };
    // Registered (or closed) from here on: no longer a handshake.
    drop(slot);
    // Past this point the name is reserved for us: the grant frees it when
    // dropped, unless the registry takes it over.
    tracing::Span::current().record("name", grant.name());

    let info = AgentInfo {
        name: grant.name().to_owned(),
        first_time: grant.first_time,
        peer_addr,
        tls,
        peer_certificates,
        meta,
        labels,
        default_timeout: server.default_timeout,
    };
    let first_time = grant.first_time;
    let registry = Arc::downgrade(&server.registry);
    // Admitted under the registry's lock, which shutdown and revocation
    // take too: an agent registered here is one they see. Registered before
    // the link's tasks start, so the agent is known here before the welcome
    // tells it that it is ready.
    let admitted = server.registry.admit(
        grant.reservation,
        |name| server.names.is_revoked(name),
        ws,
        |ws| {
            let (_link, agent) = link::spawn_counted(
                ws,
                Role::Server,
                server.link.clone(),
                Some(&session),
                server.hooks.clone(),
                Some(&welcome),
                Arc::clone(&server.counters),
                |link| Agent::new(info, link, registry),
            );
            agent
        },
    );
    let agent = match admitted {
        Ok(agent) => agent,
        Err((Refused::Shutdown, mut ws)) => {
            transport::close(
                &mut ws,
                close::GOING_AWAY,
                "server shutting down",
                server.link.close_timeout,
            )
            .await;
            return;
        }
        Err((Refused::Revoked, mut ws)) => {
            let refusal = Refusal::new(
                codes::REVOKED,
                "the name was revoked during the handshake",
                close::REVOKED,
            );
            let _ = transport::send_frame(&mut ws, &refusal.frame()).await;
            transport::close(
                &mut ws,
                refusal.close_code,
                &refusal.message,
                server.link.close_timeout,
            )
            .await;
            failed(&server, peer_addr, codes::REVOKED, None);
            return;
        }
    };
    // The link's driver runs in this span too, so its lines carry both.
    tracing::Span::current().record("conn", agent.connection_id());
    tracing::info!(first_time, "agent connected");

    // This task's future is as large as its largest state (the TLS and
    // WebSocket handshakes); a small task of its own waits out the link, so
    // an idle agent costs only that.
    let watcher = Arc::clone(&server);
    server.tasks.spawn(
        async move {
            let link = agent.link().clone();
            let reason = link.closed().await;
            // Unless a replacement or a disconnect removed it (and reported
            // it) already.
            watcher.registry.remove(&agent, reason.clone());
            tracing::info!(%reason, "agent disconnected");
            drop(agent);
            link.stopped().await;
        }
        .instrument(tracing::Span::current()),
    );
}

/// What the connection knows of its peer before the handshake.
struct Peer<'a> {
    addr: SocketAddr,
    tls: bool,
    certificates: Option<&'a [CertificateDer<'static>]>,
}

/// A finished handshake, its `welcome` not sent yet.
struct Authenticated {
    grant: Grant,
    welcome: Frame,
    session: Session,
    meta: serde_json::Map<String, serde_json::Value>,
    /// The labels the agent is admitted with.
    labels: Labels,
}

/// Longest text of an invalid label repeated in the refusal.
const LABEL_ERROR_LEN: usize = 200;

async fn authenticate<S>(
    ws: &mut WebSocketStream<S>,
    server: &Arc<Inner>,
    peer: &Peer<'_>,
) -> Result<Authenticated, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Both capabilities of this implementation; the welcome carries those
    // the agent announced too, and the link uses only those.
    let hs = ServerHandshake::new(server.sign_frames).with_caps(agent_protocol::Caps::SUPPORTED);
    transport::send_frame(ws, &hs.hello())
        .await
        .map_err(|e| Failure::Gone(e.to_string()))?;
    let auth = match transport::recv_frame(ws).await? {
        Frame::Auth(auth) => auth,
        other => {
            return Err(Failure::Refused(Refusal::new(
                codes::PROTOCOL_ERROR,
                format!(
                    "expected auth, got {}: nothing is served before authentication",
                    other.kind()
                ),
                close::PROTOCOL_ERROR,
            )))
        }
    };
    let verified = hs.verify_auth(&server.secret, auth)?;
    // The agent proved the secret over its nonce: from here on every refusal
    // carries the server's proof, so the agent can trust that it is final.
    let proven = |r: Refusal| Failure::Refused(hs.prove_refusal(&server.secret, &verified, r));
    // Judged before a name is decided: a request that cannot be admitted
    // gets none.
    let presented: Labels = serde_json::from_value(serde_json::Value::Object(
        verified.labels.clone(),
    ))
    .map_err(|e| {
        proven(Refusal::new(
            codes::INVALID_MESSAGE,
            format!("auth.labels: {}", clip(&e.to_string(), LABEL_ERROR_LEN)),
            close::PROTOCOL_ERROR,
        ))
    })?;
    let grant = match grant_detached(server, &hs, &verified).await {
        Ok(grant) => grant,
        Err(GrantError::Refused(r)) => return Err(proven(r)),
        Err(GrantError::Held(old)) => {
            // The agent proved the name, but a registered link holds it. A
            // live holder keeps it; a silent one (half-open after a network
            // cut) is stale and gives way, so a reconnect is never refused
            // forever.
            if old.link().probe(server.probe_timeout).await {
                return Err(proven(Refusal::new(
                    codes::DUPLICATE_ID,
                    format!("{} is connected already", old.name()),
                    close::DUPLICATE_ID,
                )));
            }
            tracing::info!("replacing a stale link of the same name");
            // Removes and reports the old link now, so its AgentDisconnected
            // comes before this connection's AgentConnected.
            old.end(
                close::HEARTBEAT_TIMEOUT,
                "stale: replaced by a new connection",
            );
            match grant_detached(server, &hs, &verified).await {
                Ok(grant) => grant,
                Err(GrantError::Refused(r)) => return Err(proven(r)),
                Err(GrantError::Held(again)) => {
                    return Err(proven(Refusal::new(
                        codes::DUPLICATE_ID,
                        format!("{} is connected already", again.name()),
                        close::DUPLICATE_ID,
                    )))
                }
            }
        }
    };
    // The application's say, once the name is known; refusing drops the
    // grant, which frees the name.
    let labels = admission::decide(
        server.on_admit.as_ref(),
        &AdmitInfo {
            name: grant.name(),
            first_time: grant.first_time,
            peer_addr: peer.addr,
            tls: peer.tls,
            peer_certificates: peer.certificates,
            meta: &verified.meta,
            labels: &presented,
        },
    )
    .map_err(proven)?;
    let limits = Limits {
        max_message_bytes: server.link.max_message_bytes as u64,
        max_in_flight: u32::try_from(server.link.max_in_flight).unwrap_or(u32::MAX),
        ping_interval_ms: server
            .link
            .ping_interval
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let (welcome, session) = hs.welcome(
        &server.secret,
        &verified,
        grant.name(),
        grant.first_time,
        grant.token.as_ref(),
        limits,
    );
    // Should the deadline cancel us from here on, dropping the grant frees
    // the name; the welcome goes out as the link's first frame, once the
    // agent is registered.
    Ok(Authenticated {
        grant,
        welcome,
        session,
        meta: verified.meta,
        labels,
    })
}

/// Runs the grant on a task of its own, so the handshake deadline never
/// cuts it off half-way: a save in progress either completes or is undone,
/// as a whole. When this future is dropped first, the grant sees it: it does
/// not start, or frees its reservation once done.
async fn grant_detached(
    server: &Arc<Inner>,
    hs: &ServerHandshake,
    auth: &VerifiedAuth,
) -> Result<Grant, GrantError> {
    let (tx, rx) = oneshot::channel();
    let (task_server, hs, auth) = (Arc::clone(server), hs.clone(), auth.clone());
    server.tasks.spawn(
        async move {
            let s = &task_server;
            let result = s
                .names
                .grant(&hs, &auth, &s.registry, || !tx.is_closed())
                .await;
            // Undelivered, the grant is dropped, and so is its reservation.
            let _ = tx.send(result);
        }
        .instrument(tracing::Span::current()),
    );
    rx.await.unwrap_or_else(|_| {
        Err(GrantError::Refused(Refusal::new(
            codes::INTERNAL_ERROR,
            "the name decision failed",
            close::INTERNAL_ERROR,
        )))
    })
}
