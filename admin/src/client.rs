//! A small client for this API over plain HTTP/1.1, for the `agent-tunnel`
//! binary and tests. Other languages need nothing but an HTTP client: see
//! the README for `curl` and Python.

use agent_protocol::Error;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;

/// Where the API is and the token to use. `Debug` never shows the token.
#[derive(Clone)]
pub struct Client {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("authority", &self.authority)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`null` when it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An answer whose body is read as it arrives, line by line.
#[derive(Debug)]
pub struct Lines {
    /// The HTTP status.
    pub status: u16,
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line without its newline, or `None` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).take(i).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Error::Transport(e.to_string())),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    let line = std::mem::take(&mut self.buf);
                    return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
                }
            }
        }
    }
}

impl Client {
    /// A client of the API at `url` (`http://host:port`), sending `token`
    /// as a bearer token when given. Fails with `CONFIG` for another scheme.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, Error> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::Config(format!("the API URL must start with http://: {url:?}")))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::Config(format!(
                "the API URL must be http://host:port: {url:?}"
            )));
        }
        Ok(Client {
            authority: authority.to_owned(),
            token,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin API connection ended");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(accept) = accept {
            req = req.header(header::ACCEPT, accept);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Config(format!("request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, Error> {
        let res = self.send(method, path, body, None).await?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Reply { status, body })
    }

    /// Sends a request asking for `accept` and returns the answer to read
    /// line by line as it arrives.
    pub async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<Lines, Error> {
        let res = self.send(method, path, body, Some(accept)).await?;
        Ok(Lines {
            status: res.status().as_u16(),
            body: res.into_body(),
            buf: Vec::new(),
        })
    }
}

/// Re-exported so callers name methods without depending on hyper.
pub use hyper::Method as HttpMethod;
