//! agent-protocol: everything the server and the agents share, no listeners
//! and no dialing.
//!
//! # Layout
//!
//! * [`frame`] and [`codec`]: the frames of wire protocol v1 and their pure
//!   encoding, tested with string literals; [`binary`]: the binary frames
//!   that carry bytes, and [`body`]: bodies that are JSON or bytes.
//! * [`crypto`], [`handshake`] and [`signed`]: the MACs, the challenge-response
//!   handshake as frame-in/frame-out state machines, and signed frames.
//! * [`name`]: the `A####` name format and name syntax.
//! * [`labels`] and [`selector`]: agent labels and the selectors that pick
//!   agents by name and labels, as values that evaluate anywhere.
//! * [`store`]: the [`NameStore`] trait with [`MemoryStore`] and [`FileStore`].
//! * [`hooks`]: the handler registry and its chain rules.
//! * [`relay`]: the reserved action and body of agent-to-agent calls.
//! * [`caps`]: the optional features each side announces in the handshake
//!   (cancellation, notifications).
//! * [`link`]: one authenticated connection: the driver task that owns the
//!   socket both ways, the pending map that matches responses to requests,
//!   the byte budget of what waits to be written, and the hook tasks tied to
//!   the link. Both sides use it.
//! * [`error`] and [`close`]: error codes and close codes.
//! * [`log_limit`]: rate limits and clipping for log lines a peer can trigger.
//! * [`time`]: deadline arithmetic that saturates instead of overflowing.
//!
//! `agent-server` and `agent-client` build on this crate; applications use
//! those (or the `agent-tunnel` crate, which re-exports both).

#![warn(missing_docs)]

pub mod binary;
pub mod body;
pub mod caps;
pub mod close;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod hooks;
pub mod labels;
pub mod link;
pub mod log_limit;
pub mod name;
pub mod relay;
pub mod selector;
pub mod signed;
pub mod store;
pub mod time;
pub mod transport;

pub use body::{Body, BodyRef, Bytes};
pub use caps::Caps;
pub use close::CloseReason;
pub use crypto::Secret;
pub use error::{codes, Error, HookError, Result};
pub use frame::{Frame, SUBPROTOCOL};
pub use frame::{StreamOpen, MAX_CREDIT};
pub use hooks::{handler, Call, Handler, Hooks};
pub use labels::{LabelError, Labels};
pub use link::{
    CallHandle, CallStream, Canceller, Event, ItemSink, LinkConfig, LinkHandle, Role,
    StreamOptions, DEFAULT_CREDIT,
};
pub use name::NameFormat;
pub use selector::{Selector, SelectorError};
pub use store::{FileStore, MemoryStore, NameStore};

pub use serde_json::value::RawValue;
