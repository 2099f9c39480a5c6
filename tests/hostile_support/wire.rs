//! A WebSocket peer written by hand on a raw TCP socket: the HTTP upgrade,
//! client frames (masked as RFC 6455 requires, or deliberately not), and a
//! reader of the server's frames.
//!
//! It sends exactly the bytes a test asks for, including ones no WebSocket
//! library would ever produce: text that is not UTF-8, unmasked frames,
//! reserved bits and opcodes, a header that announces a gigabyte, an upgrade
//! request one byte at a time.

use std::net::SocketAddr;

use agent_tunnel::protocol::codec;
use agent_tunnel::protocol::handshake::{ClientHandshake, Established, Identity};
use agent_tunnel::protocol::{Secret, SUBPROTOCOL};
use serde_json::Map;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::common::within;

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

/// The key of every hand-made upgrade, and the accept value RFC 6455 §1.3
/// derives from it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The upgrade request of a well-behaved agent, as bytes.
pub fn upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\
         \r\n"
    )
    .into_bytes()
}

/// A client frame header. `mask: None` leaves the frame unmasked, which a
/// server must refuse.
pub fn header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0x7) << 4) | (opcode & 0xf)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
    out
}

/// A complete client frame: header and payload, masked unless `masked` is
/// false.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const MASK: [u8; 4] = [0x3a, 0x5c, 0x91, 0xe7];
    let mask = masked.then_some(MASK);
    let mut out = header(fin, 0, opcode, payload.len() as u64, mask);
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame from the server.
#[derive(Debug)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses one frame from the front of `buf`; `None` until it is complete.
fn parse(buf: &[u8]) -> Option<(usize, ServerFrame)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask: Option<[u8; 4]> = if masked {
        let m = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let mut payload = buf.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        at + len,
        ServerFrame {
            fin,
            opcode,
            payload,
        },
    ))
}

/// How the server ended a hand-made WebSocket.
#[derive(Debug)]
pub struct WireClosed {
    pub code: u16,
    /// Text messages received before the close frame.
    pub texts: Vec<String>,
}

/// A raw TCP connection to the server that the test drives byte by byte.
///
/// Its halves are separate fields, so an attacker can write (`tx`) while it
/// waits for the server to hang up (`rx`).
pub struct Wire {
    pub rx: WireRx,
    pub tx: WireTx,
    local: SocketAddr,
}

/// The reading half: frames and bytes from the server.
pub struct WireRx {
    read: OwnedReadHalf,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
}

/// The writing half: bytes to the server, exactly as given.
pub struct WireTx {
    write: OwnedWriteHalf,
}

impl Wire {
    /// Opens the TCP connection; nothing is sent.
    pub async fn connect(addr: SocketAddr) -> Wire {
        let tcp = within(TcpStream::connect(addr)).await.expect("tcp connect");
        Wire::from_tcp(tcp)
    }

    /// Wraps a connected socket.
    pub fn from_tcp(tcp: TcpStream) -> Wire {
        tcp.set_nodelay(true).expect("nodelay");
        let local = tcp.local_addr().expect("local addr");
        let (read, write) = tcp.into_split();
        Wire {
            rx: WireRx {
                read,
                buf: Vec::new(),
            },
            tx: WireTx { write },
            local,
        }
    }

    /// Opens the TCP connection from `local` (an address of this machine,
    /// such as `127.0.0.2`; any port), with the socket's receive buffer set
    /// to `recv_buffer` bytes before connecting, so that the TCP window is
    /// small from the first packet on. Nothing is sent.
    pub async fn connect_with(
        addr: SocketAddr,
        local: Option<std::net::IpAddr>,
        recv_buffer: Option<u32>,
    ) -> std::io::Result<Wire> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = within(socket.connect(addr)).await?;
        Ok(Wire::from_tcp(tcp))
    }

    /// Opens the TCP connection and completes the WebSocket upgrade by hand.
    pub async fn upgrade(addr: SocketAddr) -> Wire {
        let wire = Wire::connect(addr).await;
        wire.upgraded(addr).await
    }

    /// Completes the WebSocket upgrade by hand on a connection opened with
    /// [`Wire::connect_with`] or [`Wire::connect`].
    pub async fn upgraded(self, addr: SocketAddr) -> Wire {
        let mut wire = self;
        wire.tx.send_raw(&upgrade_request(addr)).await;
        let head = wire.rx.read_http_head().await;
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 Switching Protocols, got {head:?}"
        );
        assert!(
            head.contains(ACCEPT),
            "wrong Sec-WebSocket-Accept: {head:?}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("sec-websocket-protocol: {SUBPROTOCOL}")),
            "subprotocol not selected: {head:?}"
        );
        wire
    }

    /// Upgrades and authenticates with `secret`, as an agent with no name.
    pub async fn authenticated(addr: SocketAddr, secret: &str) -> (Wire, Established) {
        let mut wire = Wire::upgrade(addr).await;
        let secret = Secret::from(secret);
        let mut hs = ClientHandshake::new(Identity::default(), Map::new());
        let hello = codec::decode(&wire.rx.read_text().await).expect("hello decodes");
        let auth = hs.on_hello(&secret, hello).expect("hello is valid");
        wire.tx.send_text(&codec::encode(&auth)).await;
        let answer = codec::decode(&wire.rx.read_text().await).expect("welcome decodes");
        let est = hs.on_answer(&secret, answer).expect("welcomed");
        (wire, est)
    }

    /// This side's address: the server's `peer_addr` for the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Reads until the server's close frame, answers it, reads until the end
    /// of the connection, and returns the code; panics when the connection
    /// ends without a close frame.
    pub async fn expect_close(&mut self) -> WireClosed {
        let closed = self.rx.expect_close_frame().await;
        // Answer like a polite peer; the server may be gone already.
        let _ = self
            .tx
            .try_send_raw(&frame(true, OP_CLOSE, &closed.code.to_be_bytes(), true))
            .await;
        while self.rx.read_frame().await.is_some() {}
        closed
    }
}

impl WireTx {
    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within(self.write.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Writes bytes, reporting a failure instead of panicking (the server may
    /// have dropped the connection already).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within(self.write.write_all(bytes)).await
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&frame(fin, opcode, payload, true)).await;
    }

    /// Writes one masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, OP_TEXT, text.as_bytes()).await;
    }

    /// Writes `count` masked pings of 125 bytes each (the most a control
    /// frame holds), in batches, without reading anything: each asks the
    /// server for a pong of the same size.
    pub async fn flood_pings(&mut self, count: usize) {
        let ping = frame(true, OP_PING, &[0x70; 125], true);
        let batch: Vec<u8> = ping.repeat(256);
        let mut left = count;
        while left > 0 {
            let n = left.min(256);
            self.send_raw(&batch[..n * ping.len()]).await;
            left -= n;
        }
    }
}

impl WireRx {
    /// Reads more bytes into the buffer; cancel-safe.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = within(self.read.read(&mut chunk)).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the HTTP response head (up to the blank line); the bytes after
    /// it stay buffered as WebSocket data.
    pub async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            let n = self.fill().await.expect("read the upgrade response");
            assert!(n > 0, "connection ended during the upgrade response");
        }
    }

    /// Reads the next frame; `None` when the connection ended. Cancel-safe:
    /// bytes read stay buffered.
    pub async fn read_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((used, f)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads the next text message; panics on anything else.
    pub async fn read_text(&mut self) -> String {
        let f = self.read_frame().await.expect("a text frame");
        assert_eq!(f.opcode, OP_TEXT, "expected a text frame, got {f:?}");
        assert!(f.fin, "the server does not fragment");
        String::from_utf8(f.payload).expect("the server sends UTF-8")
    }

    /// Reads until the server's close frame and returns it, without
    /// answering; panics when the connection ends without one.
    pub async fn expect_close_frame(&mut self) -> WireClosed {
        let mut texts = Vec::new();
        loop {
            let Some(f) = self.read_frame().await else {
                panic!("connection ended without a close frame (texts: {texts:?})");
            };
            match f.opcode {
                OP_TEXT => texts.push(String::from_utf8_lossy(&f.payload).into_owned()),
                OP_CLOSE => {
                    assert!(f.payload.len() >= 2, "close frame without a code");
                    return WireClosed {
                        code: u16::from_be_bytes([f.payload[0], f.payload[1]]),
                        texts,
                    };
                }
                _ => {}
            }
        }
    }

    /// Waits, without a bound of its own, until the server drops the
    /// connection (end of stream or reset), discarding what it sends; for
    /// connections the test expects to stay open a while (the caller bounds
    /// the wait).
    pub async fn closed(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = self.read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    }

    /// Reads until the server drops the connection (end of stream or reset)
    /// and returns every byte received before that.
    pub async fn expect_dropped(&mut self) -> Vec<u8> {
        loop {
            match self.fill().await {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
            }
        }
    }
}
