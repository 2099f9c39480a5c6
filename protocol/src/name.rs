//! Agent names: the `A####` format the server assigns from, and the syntax a
//! chosen name must follow.

use std::fmt;

use crate::error::Error;

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Digits of the largest counter (`u64::MAX`).
const MAX_COUNTER_DIGITS: usize = 20;

/// True for a name of 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
///
/// ```
/// use agent_protocol::name::is_valid_name;
/// assert!(is_valid_name("worker-7.eu"));
/// assert!(!is_valid_name(""));
/// assert!(!is_valid_name("has space"));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Longest action name, in bytes.
pub const MAX_ACTION_LEN: usize = 128;

/// True for an action name of 1 to 128 printable ASCII characters, space
/// excluded (bytes `0x21` to `0x7E`; regular expression `^[!-~]{1,128}$`):
/// what a hook may be registered for and a request or note may name. No
/// whitespace, control character or non-ASCII byte, so an action reads the
/// same in every log line. Both sides
/// check it: a call with another action fails locally with
/// `INVALID_MESSAGE`, and a request for one is answered with that error.
///
/// ```
/// use agent_protocol::name::is_valid_action;
/// assert!(is_valid_action("deploy"));
/// assert!(is_valid_action("svc/nginx:restart"));
/// assert!(is_valid_action("tls?"));
/// assert!(!is_valid_action(""));
/// assert!(!is_valid_action("has space"));
/// assert!(!is_valid_action("line\nbreak"));
/// assert!(!is_valid_action("é"));
/// assert!(!is_valid_action(&"x".repeat(129)));
/// ```
pub fn is_valid_action(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= MAX_ACTION_LEN
        && action.bytes().all(|b| b.is_ascii_graphic())
}

/// The error text for an action name [`is_valid_action`] refuses; the name
/// itself is clipped, as it may be a peer's.
pub fn invalid_action(action: &str) -> String {
    format!(
        "invalid action name {:?}: actions are 1 to {MAX_ACTION_LEN} printable ASCII characters without spaces",
        crate::log_limit::clip(action, 64)
    )
}

/// A name format such as `A####`: its one run of `#` is a counter,
/// zero-padded to the run's width and growing past it; text may stand on
/// both sides of it.
///
/// ```
/// use agent_protocol::NameFormat;
/// let f: NameFormat = "A###".parse().unwrap();
/// assert_eq!(f.format(1), "A001");
/// assert_eq!(f.format(1000), "A1000");
/// assert_eq!(f.parse_name("A042"), Some(42));
/// assert_eq!(f.parse_name("A42"), None);
/// assert!("agent".parse::<NameFormat>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameFormat {
    prefix: String,
    width: usize,
    suffix: String,
}

impl NameFormat {
    /// The name for counter value `n`.
    pub fn format(&self, n: u64) -> String {
        format!(
            "{}{:0width$}{}",
            self.prefix,
            n,
            self.suffix,
            width = self.width
        )
    }

    /// The counter value `name` was formatted from, if it was.
    pub fn parse_name(&self, name: &str) -> Option<u64> {
        let digits = name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        (self.format(n) == name).then_some(n)
    }
}

impl std::str::FromStr for NameFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let start = s.find('#').ok_or_else(|| {
            Error::Config(format!("name format {s:?} has no `#` run for the counter"))
        })?;
        let width = s[start..].bytes().take_while(|&b| b == b'#').count();
        let prefix = &s[..start];
        let suffix = &s[start + width..];
        let literal_ok = |t: &str| {
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !literal_ok(prefix) || !literal_ok(suffix) {
            return Err(Error::Config(format!(
                "name format {s:?} must have one run of `#` and otherwise only letters, digits, `-`, `_` and `.`"
            )));
        }
        // Every name it yields must be a valid name, up to the largest counter.
        if prefix.len() + suffix.len() + width.max(MAX_COUNTER_DIGITS) > MAX_NAME_LEN {
            return Err(Error::Config(format!(
                "name format {s:?} is too long: its names could exceed {MAX_NAME_LEN} bytes"
            )));
        }
        Ok(NameFormat {
            prefix: prefix.to_owned(),
            width,
            suffix: suffix.to_owned(),
        })
    }
}

impl fmt::Display for NameFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.prefix,
            "#".repeat(self.width),
            self.suffix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let f: NameFormat = "A#".parse().unwrap();
        assert_eq!(f.format(1), "A1");
        assert_eq!(f.format(12), "A12");
        let f: NameFormat = "node-##-eu".parse().unwrap();
        assert_eq!(f.format(3), "node-03-eu");
        assert_eq!(f.format(123), "node-123-eu");
        assert_eq!(f.parse_name("node-03-eu"), Some(3));
        assert_eq!(f.parse_name("node-3-eu"), None);
        assert_eq!(f.parse_name("node-003-eu"), None);
        assert_eq!(f.parse_name("node-03"), None);
        assert_eq!(f.to_string(), "node-##-eu");
        // One run of `#` only, so every name it yields is a valid name.
        assert!("A##x#".parse::<NameFormat>().is_err());
        assert!(format!("{}#", "a".repeat(44)).parse::<NameFormat>().is_ok());
        assert!(format!("{}#", "a".repeat(45))
            .parse::<NameFormat>()
            .is_err());
        let f: NameFormat = format!("{}#", "a".repeat(44)).parse().unwrap();
        assert!(is_valid_name(&f.format(u64::MAX)));
    }

    #[test]
    fn format_without_counter_is_a_config_error() {
        let e = "agent".parse::<NameFormat>().unwrap_err();
        assert_eq!(e.code(), "CONFIG");
        assert!("a b#".parse::<NameFormat>().is_err());
    }
}
