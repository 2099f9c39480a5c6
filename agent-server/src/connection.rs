//! One connection from accept to close: WebSocket upgrade, handshake under its
//! deadline, the name decision, the link, and the registry entry.
//!
//! Everything here runs in the connection's own task, so a slow or hostile
//! peer only ever holds up itself.

use std::net::SocketAddr;
use std::sync::Arc;

use agent_protocol::frame::{Frame, Limits};
use agent_protocol::handshake::{Refusal, ServerHandshake, Session};
use agent_protocol::link::{self, Role};
use agent_protocol::transport::{self, MaybeTls, RecvError};
use agent_protocol::{close, codes, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::agent::{Agent, AgentInfo};
use crate::events::ServerEvent;
use crate::names::{Grant, GrantError};
use crate::server::{HandshakeSlot, Inner};

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

/// Serves one accepted connection until its link ends.
///
/// `permit` counts this connection among those in their handshake; it is
/// released as soon as the handshake ends, either way.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    server: Arc<Inner>,
    permit: HandshakeSlot,
) {
    let span = tracing::info_span!("agent", peer = %peer_addr, name = tracing::field::Empty);
    serve_inner(tcp, peer_addr, server, permit)
        .instrument(span)
        .await
}

/// The stream a server-side WebSocket runs on.
type Stream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

async fn serve_inner(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    server: Arc<Inner>,
    permit: HandshakeSlot,
) {
    let deadline = agent_protocol::time::deadline_in(server.handshake_timeout);
    // TLS runs here, in the connection's own task and under the handshake
    // deadline, so a slow client never stalls the accept loop.
    let stream: Stream = match &server.tls {
        None => MaybeTls::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                server.emit(ServerEvent::HandshakeFailed {
                    peer_addr,
                    code: codes::TRANSPORT.into(),
                });
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake did not finish before the handshake deadline");
                server.emit(ServerEvent::HandshakeFailed {
                    peer_addr,
                    code: codes::HANDSHAKE_TIMEOUT.into(),
                });
                return;
            }
        },
    };
    let tls = stream.is_tls();
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        negotiate,
        Some(server.link.websocket()),
    );
    let mut ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            server.emit(ServerEvent::HandshakeFailed {
                peer_addr,
                code: codes::TRANSPORT.into(),
            });
            return;
        }
        Err(_) => {
            tracing::debug!("WebSocket upgrade did not finish before the handshake deadline");
            server.emit(ServerEvent::HandshakeFailed {
                peer_addr,
                code: codes::HANDSHAKE_TIMEOUT.into(),
            });
            return;
        }
    };

    let authenticated = tokio::time::timeout_at(deadline, authenticate(&mut ws, &server)).await;
    // The handshake is over either way: free its slot before any close wait.
    drop(permit);
    let (grant, welcome, session, meta) = match authenticated {
        Ok(Ok(done)) => done,
        Ok(Err(failure)) => {
            let code = match &failure {
                Failure::Refused(r) => {
                    let _ = transport::send_frame(&mut ws, &r.frame()).await;
                    transport::close(&mut ws, r.close_code, &r.message, server.link.close_timeout)
                        .await;
                    r.code.to_owned()
                }
                Failure::Violation(close_code, reason) => {
                    transport::close(&mut ws, *close_code, reason, server.link.close_timeout).await;
                    codes::PROTOCOL_ERROR.to_owned()
                }
                Failure::Gone(why) => {
                    tracing::debug!(%why, "connection lost during the handshake");
                    codes::TRANSPORT.to_owned()
                }
            };
            tracing::debug!(%code, "handshake failed");
            server.emit(ServerEvent::HandshakeFailed { peer_addr, code });
            return;
        }
        Err(_) => {
            tracing::debug!("handshake did not finish before its deadline");
            transport::close(
                &mut ws,
                close::HANDSHAKE_TIMEOUT,
                "handshake timeout",
                server.link.close_timeout,
            )
            .await;
            server.emit(ServerEvent::HandshakeFailed {
                peer_addr,
                code: codes::HANDSHAKE_TIMEOUT.into(),
            });
            return;
        }
    };
    // Past this point the name is reserved for us: every path releases it
    // or turns it into a live entry.
    tracing::Span::current().record("name", grant.name.as_str());

    if server.stop.is_cancelled() {
        server.registry.release(&grant.name);
        transport::close(
            &mut ws,
            close::GOING_AWAY,
            "server shutting down",
            server.link.close_timeout,
        )
        .await;
        return;
    }

    let info = AgentInfo {
        name: grant.name.clone(),
        first_time: grant.first_time,
        peer_addr,
        tls,
        meta,
        default_timeout: server.default_timeout,
    };
    let (link, agent) = link::spawn(
        ws,
        Role::Server,
        server.link.clone(),
        Some(&session),
        server.hooks.clone(),
        Some(&welcome),
        |link| {
            // Registered before the link's tasks start, so the agent is
            // known here before the welcome tells it that it is ready.
            let agent = Agent::new(info, link);
            server.registry.activate(agent.clone());
            agent
        },
    );
    tracing::info!(first_time = grant.first_time, "agent connected");
    server.emit(ServerEvent::AgentConnected(agent.clone()));

    // This task's future is as large as its largest state (the TLS and
    // WebSocket handshakes); a small task of its own waits out the link, so
    // an idle agent costs only that.
    let watcher = Arc::clone(&server);
    server.tasks.spawn(
        async move {
            let reason = link.closed().await;
            watcher.registry.remove(&agent);
            tracing::info!(%reason, "agent disconnected");
            watcher.emit(ServerEvent::AgentDisconnected(agent, reason));
            link.stopped().await;
        }
        .instrument(tracing::Span::current()),
    );
}

async fn authenticate<S>(
    ws: &mut WebSocketStream<S>,
    server: &Inner,
) -> Result<
    (
        Grant,
        Frame,
        Session,
        serde_json::Map<String, serde_json::Value>,
    ),
    Failure,
>
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
    let grant = match server.names.grant(&hs, &verified, &server.registry).await {
        Ok(grant) => grant,
        Err(GrantError::Refused(r)) => return Err(r.into()),
        Err(GrantError::Held(old)) => {
            // The agent proved the name, but a registered link holds it. A
            // live holder keeps it; a silent one (half-open after a network
            // cut) is stale and gives way, so a reconnect is never refused
            // forever.
            if old.link().probe(server.probe_timeout).await {
                return Err(Failure::Refused(Refusal::new(
                    codes::DUPLICATE_ID,
                    format!("{} is connected already", old.name()),
                    close::DUPLICATE_ID,
                )));
            }
            tracing::info!("replacing a stale link of the same name");
            old.link().close(
                close::HEARTBEAT_TIMEOUT,
                "stale: replaced by a new connection",
            );
            server.registry.remove(&old);
            match server.names.grant(&hs, &verified, &server.registry).await {
                Ok(grant) => grant,
                Err(GrantError::Refused(r)) => return Err(r.into()),
                Err(GrantError::Held(again)) => {
                    return Err(Failure::Refused(Refusal::new(
                        codes::DUPLICATE_ID,
                        format!("{} is connected already", again.name()),
                        close::DUPLICATE_ID,
                    )))
                }
            }
        }
    };
    // Should the deadline cancel us before `welcome` is out, free the name.
    let reservation = Reservation {
        server,
        name: Some(grant.name.clone()),
    };
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
        &grant.name,
        grant.first_time,
        grant.token.as_ref(),
        limits,
    );
    // The welcome goes out as the link's first frame, once the agent is
    // registered.
    reservation.keep();
    Ok((grant, welcome, session, verified.meta))
}

/// Releases a reserved name unless kept.
struct Reservation<'a> {
    server: &'a Inner,
    name: Option<String>,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.name = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.server.registry.release(&name);
        }
    }
}
