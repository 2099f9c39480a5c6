//! Frame IO on a WebSocket before the Link takes it over: the handshake's few
//! frames are read and written here, one at a time, under the caller's deadline.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::close::{self, CloseReason};
use crate::codec;
use crate::error::Error;
use crate::frame::Frame;

/// Writes one frame and flushes it.
pub async fn send_frame<S>(ws: &mut WebSocketStream<S>, frame: &Frame) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(codec::encode(frame))).await?;
    Ok(())
}

/// A frame that could not be read, with the close code it deserves.
#[derive(Debug)]
pub struct RecvError {
    /// What went wrong.
    pub error: Error,
    /// The close code to answer with, when the connection is still writable.
    pub close_code: Option<u16>,
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Self {
        e.error
    }
}

fn violation(code: u16, message: impl Into<String>) -> RecvError {
    RecvError {
        error: Error::Protocol(message.into()),
        close_code: Some(code),
    }
}

/// Reads the next frame, skipping pings and pongs.
pub async fn recv_frame<S>(ws: &mut WebSocketStream<S>) -> Result<Frame, RecvError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::{error::ProtocolError, Error as WsError};
    loop {
        let msg = match ws.next().await {
            None => {
                return Err(RecvError {
                    error: Error::ConnectionClosed(CloseReason::remote(
                        close::ABNORMAL,
                        "connection ended",
                    )),
                    close_code: None,
                })
            }
            Some(Err(WsError::Capacity(e))) => {
                return Err(RecvError {
                    error: Error::Protocol(e.to_string()),
                    close_code: Some(close::TOO_BIG),
                })
            }
            Some(Err(WsError::Utf8(_))) => {
                return Err(violation(1007, "text frame is not UTF-8"));
            }
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                return Err(RecvError {
                    error: Error::ConnectionClosed(CloseReason::remote(
                        close::ABNORMAL,
                        "connection reset",
                    )),
                    close_code: None,
                })
            }
            Some(Err(WsError::Protocol(e))) => {
                return Err(violation(close::PROTOCOL_ERROR, e.to_string()));
            }
            Some(Err(e)) => {
                return Err(RecvError {
                    error: e.into(),
                    close_code: None,
                })
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => {
                return codec::decode(t.as_str())
                    .map_err(|e| violation(close::PROTOCOL_ERROR, e.to_string()));
            }
            Message::Binary(_) => {
                return Err(violation(
                    close::PROTOCOL_ERROR,
                    "binary frames are not supported in protocol v1",
                ))
            }
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (close::NORMAL, String::new()),
                };
                return Err(RecvError {
                    error: Error::ConnectionClosed(CloseReason::remote(code, reason)),
                    close_code: None,
                });
            }
            _ => continue,
        }
    }
}

/// Sends a close frame and waits up to `timeout` for the peer's reply, so the
/// close code reaches the peer before the socket drops.
pub async fn close<S>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
    timeout: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close::truncate_reason(reason).to_owned().into(),
    };
    let wait = async {
        if ws.close(Some(frame)).await.is_ok() {
            // Drain until the peer's reply or the end of the stream.
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(timeout, wait).await;
}

/// A TCP stream, or a TLS stream over one: what both sides run WebSocket on.
#[derive(Debug)]
pub enum MaybeTls<T> {
    /// Plain TCP (`ws://`).
    Plain(tokio::net::TcpStream),
    /// TLS over TCP (`wss://`).
    Tls(Box<T>),
}

impl<T> MaybeTls<T> {
    /// True for the TLS variant.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}
