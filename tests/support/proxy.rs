//! A TCP proxy between agents and the server that a test can cut (close every
//! current connection) or freeze (stop forwarding while keeping the sockets
//! open: a half-open, silent peer). New connections are forwarded normally.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Forward,
    Frozen,
    Cut,
}

pub struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<watch::Sender<Mode>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<watch::Sender<Mode>>>> = Arc::default();
        let conns2 = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (tx, rx) = watch::channel(Mode::Forward);
                conns2.lock().unwrap().push(tx);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx));
            }
        });
        Proxy {
            addr,
            conns,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn set_all(&self, mode: Mode) {
        let mut conns = self.conns.lock().unwrap();
        for c in conns.iter() {
            let _ = c.send(mode);
        }
        if mode == Mode::Cut {
            conns.clear();
        }
    }

    /// Closes every current connection (both sides see the TCP close).
    pub fn cut(&self) {
        self.set_all(Mode::Cut);
    }

    /// Stops forwarding on every current connection, keeping them open.
    pub fn freeze(&self) {
        self.set_all(Mode::Frozen);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *mode.borrow() == Mode::Frozen {
            // Hold both sockets open and silent until cut.
            let _ = mode.wait_for(|m| *m == Mode::Cut).await;
            return;
        }
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Cut {
                    return;
                }
            }
            n = from.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                if *mode.borrow() != Mode::Forward {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
