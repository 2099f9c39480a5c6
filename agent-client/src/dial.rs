//! One connection attempt: TCP, TLS for `wss://`, the WebSocket upgrade with
//! the agent-tunnel subprotocol, and the handshake, all under one deadline.

use std::sync::Arc;

use agent_protocol::frame::Frame;
use agent_protocol::handshake::{ClientHandshake, Established, Identity};
use agent_protocol::labels::Labels;
use agent_protocol::log_limit::clip;
use agent_protocol::transport::{self, MaybeTls};
use agent_protocol::{close, codes, Error, LinkConfig, Secret, SUBPROTOCOL};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::WebSocketStream;

use crate::verdict::Failure;

/// The stream an agent's WebSocket runs on.
pub(crate) type Stream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// Where to connect, parsed from the URL once.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    uri: Uri,
    host: String,
    port: u16,
    tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Config(format!("server URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(Error::Config(format!(
                    "server URL {url:?} must start with ws:// or wss://"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::Config(format!("server URL {url:?} has no host")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            uri,
            host,
            port,
            tls,
        })
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }
}

/// What a connection attempt needs.
pub(crate) struct Dial<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) tls: Option<&'a Arc<ClientConfig>>,
    pub(crate) secret: &'a Secret,
    pub(crate) link: &'a LinkConfig,
    pub(crate) identity: Identity,
    pub(crate) meta: Map<String, Value>,
    pub(crate) labels: Labels,
}

/// Opens the WebSocket; `on_open` runs once it is up, before the handshake.
pub(crate) async fn open(d: &Dial<'_>) -> Result<WebSocketStream<Stream>, Error> {
    let tcp = TcpStream::connect((d.endpoint.host.as_str(), d.endpoint.port)).await?;
    let _ = tcp.set_nodelay(true);
    let stream = match (d.endpoint.tls, d.tls) {
        (false, _) => MaybeTls::Plain(tcp),
        (true, Some(config)) => {
            let name = ServerName::try_from(d.endpoint.host.clone())
                .map_err(|e| Error::Config(format!("TLS server name: {e}")))?;
            let tls = TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Transport(format!("TLS handshake failed: {e}")))?;
            MaybeTls::Tls(Box::new(tls))
        }
        (true, None) => return Err(Error::Config("wss:// needs a TLS configuration".into())),
    };
    let mut request = d.endpoint.uri.clone().into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(d.link.websocket()))
            .await
            .map_err(|e| match e {
                WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)) => {
                    Error::Protocol(format!("the server did not select {SUBPROTOCOL}: {e}"))
                }
                other => other.into(),
            })?;
    // The WebSocket layer checks this too; the protocol requires it
    // whatever that layer does (docs/PROTOCOL.md section 3.2).
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(Error::Protocol(format!(
            "the server did not select the {SUBPROTOCOL} subprotocol"
        )));
    }
    Ok(ws)
}

/// Runs the handshake on an open WebSocket. A refusal's [`Failure::proven`]
/// says whether the `reject` carried a valid proof of the server.
pub(crate) async fn authenticate(
    ws: &mut WebSocketStream<Stream>,
    d: Dial<'_>,
) -> Result<Established, Failure> {
    let mut hs = ClientHandshake::new(d.identity, d.meta)
        .with_labels(d.labels)
        .with_caps(agent_protocol::Caps::SUPPORTED);
    let hello = recv(ws, d.link).await?;
    let auth = match hs.on_hello(d.secret, hello) {
        Ok(auth) => auth,
        Err(e) => {
            let code = match e.code() {
                codes::UNSUPPORTED_VERSION => close::UNSUPPORTED_VERSION,
                _ => close::PROTOCOL_ERROR,
            };
            transport::close(ws, code, &e.to_string(), d.link.close_timeout).await;
            return Err(e.into());
        }
    };
    transport::send_frame(ws, &auth).await?;
    let answer = recv(ws, d.link).await?;
    let proven = match &answer {
        Frame::Reject(r) => {
            let proven = hs.reject_is_proven(d.secret, r);
            if !proven {
                tracing::debug!(
                    code = %clip(&r.code, 64),
                    "the reject carries no valid proof of the server"
                );
            }
            proven
        }
        _ => false,
    };
    match hs.on_answer(d.secret, answer) {
        Ok(est) => Ok(est),
        Err(Error::ServerUnverified) => {
            transport::close(
                ws,
                close::AUTH_FAILED,
                "server proof failed",
                d.link.close_timeout,
            )
            .await;
            Err(Error::ServerUnverified.into())
        }
        Err(error @ Error::Protocol(_)) => {
            // A malformed `welcome` (a bad token) or another frame than
            // `welcome`/`reject`: this side's protocol error, closed as such.
            transport::close(
                ws,
                close::PROTOCOL_ERROR,
                &error.to_string(),
                d.link.close_timeout,
            )
            .await;
            Err(error.into())
        }
        Err(error) => Err(Failure { error, proven }),
    }
}

/// Reads the next handshake frame; a message that breaks the protocol is
/// answered with its close code (4000, 1007 or 1009) before the error is
/// returned, as the server does.
async fn recv(ws: &mut WebSocketStream<Stream>, link: &LinkConfig) -> Result<Frame, Error> {
    match transport::recv_frame(ws).await {
        Ok(frame) => Ok(frame),
        Err(e) => {
            if let Some(code) = e.close_code {
                transport::close(ws, code, &e.error.to_string(), link.close_timeout).await;
            }
            Err(e.error)
        }
    }
}
