//! Per-link limits and timers, with their defaults.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Default largest message: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default most requests in flight per link and direction.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default interval between pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of ping intervals without any sign of life before the peer
/// is declared dead.
pub const DEFAULT_MISSED_PONGS: u32 = 2;
/// Default time to wait for the peer's close reply.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default size of the queue in front of the writer task, in frames.
pub const DEFAULT_WRITE_QUEUE: usize = 1024;
/// Default read buffer per connection.
pub const DEFAULT_READ_BUFFER: usize = 4 * 1024;
/// Default write buffer per connection (frames are flushed past it).
pub const DEFAULT_WRITE_BUFFER: usize = 4 * 1024;

/// Smallest `max_message_bytes` a builder accepts: room for a frame's
/// envelope and a small body.
pub const MIN_MESSAGE_BYTES: usize = 256;
/// Shortest ping interval a builder accepts.
pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(1);

/// Bytes a frame may add to a message: WebSocket header and signed envelope.
pub const FRAME_OVERHEAD: usize = 256;

/// Limits and timers of one link. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Largest message accepted; a bigger one closes the link with 1009.
    /// Default 1 MiB.
    pub max_message_bytes: usize,
    /// Most requests in flight at once, counted separately for requests this
    /// side sends (beyond it the caller gets `BUSY` at once) and requests it
    /// serves (beyond it the peer gets `BUSY`). Default 256.
    pub max_in_flight: usize,
    /// Interval between pings; `None` turns heartbeats off. Default 5 s.
    pub ping_interval: Option<Duration>,
    /// Ping intervals without any frame from the peer before the link is
    /// closed as dead (close code 4009). Default 2.
    pub missed_pongs: u32,
    /// How long a close waits for the peer's close reply. Default 2 s.
    pub close_timeout: Duration,
    /// Frames queued in front of the writer task. Default 1024.
    pub write_queue: usize,
    /// Read buffer of the WebSocket layer, in bytes. Default 4 KiB.
    pub read_buffer: usize,
    /// Write buffer of the WebSocket layer, in bytes. Default 4 KiB.
    pub write_buffer: usize,
    /// Largest message the peer said it accepts, when it said so (an agent
    /// learns the server's from `welcome.limits`). This side sends nothing
    /// bigger than the smaller of this and `max_message_bytes`: a request
    /// over it fails at once with `INVALID_MESSAGE` instead of making the
    /// peer close the link with 1009. Default `None`.
    pub peer_max_message_bytes: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            missed_pongs: DEFAULT_MISSED_PONGS,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            write_queue: DEFAULT_WRITE_QUEUE,
            read_buffer: DEFAULT_READ_BUFFER,
            write_buffer: DEFAULT_WRITE_BUFFER,
            peer_max_message_bytes: None,
        }
    }
}

impl LinkConfig {
    /// Checks that these limits can run: a link built from a config that
    /// fails here would misbehave (a zero ping interval spins, a zero queue
    /// cannot carry a frame), so both builders refuse it with `CONFIG`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use agent_protocol::LinkConfig;
    /// let mut config = LinkConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.ping_interval = Some(Duration::ZERO);
    /// assert_eq!(config.validate().unwrap_err().code(), "CONFIG");
    /// ```
    pub fn validate(&self) -> Result<(), crate::Error> {
        let fail = |what: &str| Err(crate::Error::Config(what.to_owned()));
        if self.max_in_flight == 0 {
            return fail("max_in_flight must be at least 1");
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return fail("max_message_bytes must be at least 256");
        }
        if self.ping_interval.is_some_and(|d| d < MIN_PING_INTERVAL) {
            return fail(
                "ping_interval must be at least 1 ms (use no heartbeat to turn pings off)",
            );
        }
        if self.write_queue == 0 {
            return fail("write_queue must be at least 1");
        }
        Ok(())
    }

    /// Largest message this side sends: its own limit, or the peer's when
    /// that is smaller.
    pub fn send_limit(&self) -> usize {
        match self.peer_max_message_bytes {
            Some(peer) => peer.min(self.max_message_bytes),
            None => self.max_message_bytes,
        }
    }

    /// The WebSocket layer's configuration for these limits.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(self.write_buffer)
            // Frames queue up to `write_buffer` before they go out, so the cap
            // must leave room for one more whole message (plus its header and
            // a signed envelope) on top of that.
            .max_write_buffer_size(
                self.write_buffer
                    .saturating_add(self.max_message_bytes)
                    .saturating_add(FRAME_OVERHEAD),
            )
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}
