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
/// Default bound on a link's queued outbound bytes, as a multiple of
/// `max_message_bytes` (so 4 MiB at the default message limit).
pub const DEFAULT_QUEUED_MESSAGES: usize = 4;
/// Default time a peer that does not read gets to drain its link's full
/// queue before the link is closed with 4011: as long as the default
/// heartbeat gives a silent peer.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest time a hook may run for a peer's request, whatever
/// timeout the peer asked for.
pub const DEFAULT_MAX_HOOK_TIME: Duration = Duration::from_secs(300);

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
    /// closed as dead (close code 4009). Default 2. Intervals in which this
    /// side read nothing because its outbound queue was full do not count:
    /// `drain_timeout` covers those.
    pub missed_pongs: u32,
    /// How long a close waits for the peer's close reply. Default 2 s.
    pub close_timeout: Duration,
    /// Frames queued in front of the writer task. Default 1024.
    pub write_queue: usize,
    /// Most bytes of frames a link holds waiting to be written (requests,
    /// answers, from callers, hook tasks and the link itself), counted
    /// before any signed envelope; `None` means
    /// [`DEFAULT_QUEUED_MESSAGES`] times `max_message_bytes` (4 MiB by
    /// default). At least `max_message_bytes`. Once that many are queued
    /// the link stops reading from the peer (no new requests are served)
    /// and callers and hook tasks wait for room instead of growing memory;
    /// nothing queued is dropped. The WebSocket layer's own buffer (about
    /// `write_buffer` plus one message) comes on top. See `drain_timeout`
    /// for a peer that never makes room.
    pub max_queued_bytes: Option<usize>,
    /// How long the queue may stay full, the peer reading none of it,
    /// before the link is closed with 4011 ("peer does not read"), whatever
    /// else the peer sends meanwhile (pings included). Default 10 s.
    pub drain_timeout: Duration,
    /// Longest a hook runs for a request of the peer: a request whose
    /// `timeout_ms` is longer, or that has none, is held to this, and a
    /// hook still running then is dropped and answers `TIMEOUT`.
    /// Default 5 min.
    pub max_hook_time: Duration,
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
            max_queued_bytes: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_hook_time: DEFAULT_MAX_HOOK_TIME,
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
        if self
            .max_queued_bytes
            .is_some_and(|n| n < self.max_message_bytes)
        {
            return fail("max_queued_bytes must be at least max_message_bytes");
        }
        if self.drain_timeout < MIN_PING_INTERVAL {
            return fail("drain_timeout must be at least 1 ms");
        }
        if self.max_hook_time.is_zero() {
            return fail("max_hook_time must not be zero");
        }
        Ok(())
    }

    /// The bound on queued outbound bytes: `max_queued_bytes`, or
    /// [`DEFAULT_QUEUED_MESSAGES`] times `max_message_bytes` when unset.
    ///
    /// ```
    /// use agent_protocol::LinkConfig;
    /// let config = LinkConfig::default();
    /// assert_eq!(config.queued_bytes_limit(), 4 << 20);
    /// ```
    pub fn queued_bytes_limit(&self) -> usize {
        self.max_queued_bytes.unwrap_or_else(|| {
            self.max_message_bytes
                .saturating_mul(DEFAULT_QUEUED_MESSAGES)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: &LinkConfig) -> String {
        match config.validate() {
            Err(crate::Error::Config(what)) => what,
            other => panic!("expected a CONFIG error, got {other:?}"),
        }
    }

    #[test]
    fn the_defaults_validate() {
        assert!(LinkConfig::default().validate().is_ok());
    }

    #[test]
    fn a_zero_ping_interval_is_refused() {
        let mut config = LinkConfig {
            ping_interval: Some(Duration::ZERO),
            ..LinkConfig::default()
        };
        assert!(refused(&config).contains("ping_interval"));
        config.ping_interval = None;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_queue_smaller_than_one_message_is_refused() {
        let mut config = LinkConfig {
            max_queued_bytes: Some(DEFAULT_MAX_MESSAGE_BYTES - 1),
            ..LinkConfig::default()
        };
        assert!(refused(&config).contains("max_queued_bytes"));
        config.max_queued_bytes = Some(config.max_message_bytes);
        assert!(config.validate().is_ok());
        assert_eq!(config.queued_bytes_limit(), config.max_message_bytes);
    }

    #[test]
    fn the_default_queue_follows_the_message_limit() {
        let config = LinkConfig {
            max_message_bytes: 16 << 20,
            ..LinkConfig::default()
        };
        assert!(config.validate().is_ok());
        assert_eq!(config.queued_bytes_limit(), 64 << 20);
    }

    #[test]
    fn zero_drain_and_hook_times_are_refused() {
        let config = LinkConfig {
            drain_timeout: Duration::ZERO,
            ..LinkConfig::default()
        };
        assert!(refused(&config).contains("drain_timeout"));
        let config = LinkConfig {
            max_hook_time: Duration::ZERO,
            ..LinkConfig::default()
        };
        assert!(refused(&config).contains("max_hook_time"));
    }
}
