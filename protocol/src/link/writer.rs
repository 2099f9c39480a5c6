//! The writer task: the only owner of the socket's sink.
//!
//! It drains the bounded queue in batches (feed every queued frame, then flush
//! once), signs frames when the session asks for it, and sends the close frame
//! when the link is asked to close.

use std::sync::Arc;

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use super::{Outbound, Shared};
use crate::close::{CloseReason, ABNORMAL};
use crate::signed::Signer;

/// Most frames written between two flushes.
const BATCH: usize = 64;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

fn to_message(out: Outbound, signer: &mut Option<Signer>) -> Message {
    match out {
        Outbound::Text(text) => match signer {
            Some(s) => Message::text(s.sign(&text)),
            None => Message::text(text),
        },
        Outbound::Ping => Message::Ping(Bytes::new()),
        Outbound::Unsigned(text) => Message::text(text),
    }
}

pub(crate) async fn run<S>(
    mut sink: Sink<S>,
    mut rx: mpsc::Receiver<Outbound>,
    mut close_rx: watch::Receiver<Option<(u16, String)>>,
    shared: Arc<Shared>,
    mut signer: Option<Signer>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = loop {
        tokio::select! {
            biased;
            // Cancel-safe: `changed` only observes the watch.
            _ = close_rx.changed() => {
                let requested = close_rx.borrow_and_update().clone();
                if let Some(close) = requested {
                    break close;
                }
            }
            // Cancel-safe: a token only observes. The reader saw the socket end;
            // flush any close reply tungstenite queued, then stop.
            _ = shared.stop.cancelled() => {
                let _ = tokio::time::timeout(shared.config.close_timeout, sink.close()).await;
                return;
            }
            // Cancel-safe: `recv` loses nothing when another branch wins.
            msg = rx.recv() => {
                let Some(first) = msg else { break (ABNORMAL, String::new()) };
                if let Err(e) = write_batch(&mut sink, &mut rx, first, &mut signer).await {
                    tracing::debug!(error = %e, "write failed");
                    shared.finish(CloseReason::remote(ABNORMAL, format!("write failed: {e}")));
                    shared.stop.cancel();
                    return;
                }
            }
        }
    };
    let (code, reason) = close;
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let timeout = shared.config.close_timeout;
    let _ = tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await;
    // Wait for the reader to see the peer's close reply (or give up), then let
    // go of the socket.
    let _ = tokio::time::timeout(timeout, shared.stop.cancelled()).await;
    shared.stop.cancel();
}

async fn write_batch<S>(
    sink: &mut Sink<S>,
    rx: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
    signer: &mut Option<Signer>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    sink.feed(to_message(first, signer)).await?;
    for _ in 1..BATCH {
        match rx.try_recv() {
            Ok(next) => sink.feed(to_message(next, signer)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}
