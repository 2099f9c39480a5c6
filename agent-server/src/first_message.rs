//! A small bound on the first message of a connection, enforced on its bytes
//! before the WebSocket layer buffers them.
//!
//! The WebSocket layer is built once, at the upgrade, with the link's limit
//! (`max_message_bytes`, 1 MiB by default), and tokio-tungstenite offers no
//! way to change it afterwards. The handshake needs far less: its only
//! message from the agent is `auth`, whose `meta` is parsed before the proof
//! is checked. So this stream sits between the socket (or TLS) and the
//! WebSocket layer and reads along: it finds the end of the HTTP request
//! head, then follows the agent's frame headers until the first data message
//! is complete. A data frame that would take that message over the limit
//! fails the read at its header, before any of its payload is handed up; the
//! connection then closes with 1009 (see [`FirstMessageLimit::tripped`]).
//! From the end of the first message on, bytes pass through untouched, so
//! frames the agent sends right after `auth` reach the link whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How far through the agent's bytes the scan is.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// In the HTTP request head. `newline` is true right after a line feed
    /// (a carriage return may sit between it and the next one): a second
    /// line feed there ends the head, as it does for the HTTP parser.
    Head { newline: bool },
    /// Collecting a frame header of up to 14 bytes.
    Header { buf: [u8; 14], len: usize },
    /// Skipping `left` payload bytes; `last` when the frame ends the first
    /// message.
    Payload { left: u64, last: bool },
    /// The first message is complete (or the limit tripped).
    Done,
}

/// A stream whose first WebSocket data message from the peer may hold at most
/// `limit` bytes; see the module docs.
#[derive(Debug)]
pub(crate) struct FirstMessageLimit<S> {
    inner: S,
    limit: u64,
    /// Payload bytes of the first message announced so far.
    message: u64,
    scan: Scan,
    tripped: bool,
}

impl<S> FirstMessageLimit<S> {
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        FirstMessageLimit {
            inner,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            message: 0,
            scan: Scan::Head { newline: false },
            tripped: false,
        }
    }

    /// True once the first message went over the limit: reads fail from
    /// then on, and the connection deserves close code 1009.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped
    }

    /// The stream underneath.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows `bytes`, the next ones from the peer; false when they take the
    /// first message over the limit.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Done => return true,
                Scan::Head { newline } => {
                    let [b, rest @ ..] = bytes else { break };
                    bytes = rest;
                    match b {
                        b'\n' if *newline => {
                            self.scan = Scan::Header {
                                buf: [0; 14],
                                len: 0,
                            }
                        }
                        b'\n' => *newline = true,
                        b'\r' => {}
                        _ => *newline = false,
                    }
                }
                Scan::Payload { left, last } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.scan = if *last {
                            Scan::Done
                        } else {
                            Scan::Header {
                                buf: [0; 14],
                                len: 0,
                            }
                        };
                    }
                }
                Scan::Header { buf, len } => {
                    let want = header_len(&buf[..*len]);
                    let n = (want - *len).min(bytes.len());
                    buf[*len..*len + n].copy_from_slice(&bytes[..n]);
                    *len += n;
                    bytes = &bytes[n..];
                    if *len < header_len(&buf[..*len]) {
                        continue;
                    }
                    let (fin, opcode, payload) = parse_header(&buf[..*len]);
                    let data = matches!(opcode, 0x0..=0x2);
                    if data {
                        self.message = self.message.saturating_add(payload);
                        if self.message > self.limit {
                            self.tripped = true;
                            self.scan = Scan::Done;
                            return false;
                        }
                    }
                    let last = data && fin;
                    self.scan = match (payload, last) {
                        (0, true) => Scan::Done,
                        (0, false) => Scan::Header {
                            buf: [0; 14],
                            len: 0,
                        },
                        (left, last) => Scan::Payload { left, last },
                    };
                }
            }
        }
        true
    }
}

/// Bytes in the frame header that starts with `head`: 2 until the second
/// byte is known, then 2 + extended length + mask key.
fn header_len(head: &[u8]) -> usize {
    let Some(&b1) = head.get(1) else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// FIN, opcode and payload length of a complete frame header.
fn parse_header(head: &[u8]) -> (bool, u8, u64) {
    let (b0, b1) = match head {
        [b0, b1, ..] => (*b0, *b1),
        _ => return (false, 0xf, 0),
    };
    let len = match b1 & 0x7f {
        126 => head.get(2..4).map_or(0, |b| {
            b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x))
        }),
        127 => head.get(2..10).map_or(0, |b| {
            b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x))
        }),
        n => u64::from(n),
    };
    (b0 & 0x80 != 0, b0 & 0x0f, len)
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the handshake message is over its size limit",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstMessageLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(too_big()));
        }
        if matches!(this.scan, Scan::Done) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let ok = this.follow(&buf.filled()[before..]);
                if ok {
                    Poll::Ready(Ok(()))
                } else {
                    // Hand up none of it: the connection is closing.
                    buf.set_filled(before);
                    Poll::Ready(Err(too_big()))
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstMessageLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    fn follow_all(limit: usize, bytes: &[u8], chunk: usize) -> FirstMessageLimit<()> {
        let mut f = FirstMessageLimit::new((), limit);
        for part in bytes.chunks(chunk.max(1)) {
            if !f.follow(part) {
                break;
            }
        }
        f
    }

    #[test]
    fn a_first_message_within_the_limit_passes_and_ends_the_scan() {
        for chunk in [1, 3, 7, 4096] {
            let mut bytes = HEAD.to_vec();
            bytes.extend(frame(true, 0x9, 125)); // a ping first: not counted
            bytes.extend(frame(true, 0x1, 1000));
            // After the first message anything goes, even a huge frame.
            bytes.extend(frame(true, 0x1, 70_000));
            let f = follow_all(1000, &bytes, chunk);
            assert!(!f.tripped(), "chunk {chunk}");
            assert!(matches!(f.scan, Scan::Done), "chunk {chunk}");
        }
    }

    #[test]
    fn a_first_message_over_the_limit_trips_at_its_header() {
        let lf_only: &[u8] = b"GET / HTTP/1.1\nHost: x\n\n";
        for head in [HEAD, lf_only] {
            let mut bytes = head.to_vec();
            bytes.extend(frame(true, 0x1, 1001));
            assert!(follow_all(1000, &bytes, 5).tripped());
            // The header alone is enough.
            let mut bytes = head.to_vec();
            bytes.extend(&frame(true, 0x1, 1 << 20)[..14]);
            assert!(follow_all(1000, &bytes, 4096).tripped());
        }
    }

    #[test]
    fn fragments_count_together() {
        let mut bytes = HEAD.to_vec();
        bytes.extend(frame(false, 0x1, 600));
        bytes.extend(frame(true, 0xa, 10)); // a pong between fragments
        bytes.extend(frame(true, 0x0, 600));
        assert!(follow_all(1000, &bytes, 64).tripped());
        let mut bytes = HEAD.to_vec();
        bytes.extend(frame(false, 0x1, 400));
        bytes.extend(frame(true, 0x0, 400));
        let f = follow_all(1000, &bytes, 64);
        assert!(!f.tripped() && matches!(f.scan, Scan::Done));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = HEAD.to_vec();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let _ = follow_all(100, &bytes, (seed % 9) as usize);
        }
    }
}
