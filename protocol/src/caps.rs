//! Capabilities: the optional protocol features a side announces in the
//! handshake (`hello.caps`, `auth.caps`, and the agreed set in
//! `welcome.caps`; see `docs/PROTOCOL.md` 5.1 to 5.3).
//!
//! A side sends a frame of an optional feature only to a peer that agreed
//! to it, so a peer that announces nothing (any protocol v1 peer written
//! before capabilities) never receives one. Names this implementation does
//! not know are ignored, so a newer peer's extra capabilities do no harm.

use std::fmt;

/// A set of capabilities. `Caps::default()` is the empty set: what a peer
/// that announces nothing supports.
///
/// ```
/// use agent_protocol::Caps;
/// let theirs = Caps::from_names(["note", "streams"]);
/// assert_eq!(theirs, Caps::NOTE);
/// let agreed = Caps::SUPPORTED.intersect(theirs);
/// assert!(agreed.contains(Caps::NOTE) && !agreed.contains(Caps::CANCEL));
/// assert_eq!(Caps::SUPPORTED.names(), ["cancel", "note", "stream", "binary"]);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Caps(u8);

/// Each known capability with its wire name, in the order they are sent.
const NAMES: [(Caps, &str); 4] = [
    (Caps::CANCEL, "cancel"),
    (Caps::NOTE, "note"),
    (Caps::STREAM, "stream"),
    (Caps::BINARY, "binary"),
];

impl Caps {
    /// No capability: a protocol v1 peer that announces none.
    pub const NONE: Caps = Caps(0);
    /// `"cancel"`: the peer acts on `cancel {id}` and answers a cancelled
    /// request with `CANCELLED` (`docs/PROTOCOL.md` 5.8).
    pub const CANCEL: Caps = Caps(1);
    /// `"note"`: the peer serves `note {action, body}`, fire-and-forget
    /// (`docs/PROTOCOL.md` 5.7).
    pub const NOTE: Caps = Caps(2);
    /// `"stream"`: the peer serves `req.stream` with `item`, `prog` and
    /// `credit` frames, and takes them as a caller (`docs/PROTOCOL.md`
    /// 5.11). A side announces it only together with `"cancel"`: dropping
    /// a stream cancels its request.
    pub const STREAM: Caps = Caps(4);
    /// `"binary"`: the peer takes bodies, results and stream items that
    /// are bytes as WebSocket binary frames (`docs/PROTOCOL.md` 5.13); to a
    /// peer without it, bytes go as JSON arrays of numbers.
    pub const BINARY: Caps = Caps(8);
    /// Everything this implementation supports, which both sides announce.
    pub const SUPPORTED: Caps =
        Caps(Caps::CANCEL.0 | Caps::NOTE.0 | Caps::STREAM.0 | Caps::BINARY.0);

    /// The capabilities among `names` that this implementation knows; the
    /// others are ignored.
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Caps {
        let mut caps = Caps::NONE;
        for name in names {
            if let Some((cap, _)) = NAMES.iter().find(|(_, n)| *n == name.as_ref()) {
                caps = caps.union(*cap);
            }
        }
        caps
    }

    /// The wire names of this set, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .filter(|(cap, _)| self.contains(*cap))
            .map(|(_, name)| *name)
            .collect()
    }

    /// The wire names as owned strings, for a frame's `caps` member.
    pub fn to_wire(self) -> Vec<String> {
        self.names().into_iter().map(str::to_owned).collect()
    }

    /// True when every capability of `other` is in this set.
    pub fn contains(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }

    /// The capabilities in both sets: what two sides agree on.
    #[must_use]
    pub fn intersect(self, other: Caps) -> Caps {
        Caps(self.0 & other.0)
    }

    /// The capabilities in either set.
    #[must_use]
    pub fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_ignored() {
        assert_eq!(Caps::from_names(Caps::SUPPORTED.names()), Caps::SUPPORTED);
        assert_eq!(Caps::from_names(["cancel", "cancel", "x"]), Caps::CANCEL);
        assert_eq!(Caps::from_names(Vec::<String>::new()), Caps::NONE);
        assert!(Caps::NONE.is_empty() && Caps::NONE.to_wire().is_empty());
        assert_eq!(
            format!("{:?}", Caps::SUPPORTED),
            r#"{"cancel", "note", "stream", "binary"}"#
        );
    }
}
