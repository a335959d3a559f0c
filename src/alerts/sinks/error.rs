//! The sinks' errors, and the scrubbing that keeps tokens out of them.
//!
//! Invariant: no error text built here holds a [`Sensitive`] value. Errors
//! are written from parts that hold none (a sink's name, `scheme://host:port`,
//! a status code, a library's message with the URL removed); as a second
//! line of defence every delivery error goes through a [`Redactor`] that
//! replaces whatever the sink's tokens look like with `[redacted]`, in case
//! a library or a server echoed one back.
//!
//! [`Sensitive`]: crate::alerts::Sensitive

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

/// What replaces a token found in a message.
const REDACTED: &str = "[redacted]";
/// Values shorter than this are not scrubbed: replacing every `a` of a
/// message would hide the message, not a token.
const SCRUB_MIN_CHARS: usize = 4;
/// Pieces of a URL (a path segment, a query value) shorter than this are
/// not scrubbed on their own: they are words like `services` or `v2`, and
/// the whole path and query are scrubbed anyway.
const URL_PIECE_MIN_CHARS: usize = 9;

/// Why a sink cannot be set up from its settings. Messages name the sink
/// and the setting, never a token.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The URL does not parse, or is not `http(s)://` with a host.
    #[error("alert sink {sink}: its url is not a usable http:// or https:// URL ({reason}): fix `url` in its [[alerts.sink]]")]
    Url {
        /// The sink's name.
        sink: String,
        /// What is wrong (never the URL).
        reason: String,
    },
    /// An extra header has an invalid name or value.
    #[error("alert sink {sink}: header {header:?} {reason}: fix `headers` in its [[alerts.sink]]")]
    Header {
        /// The sink's name.
        sink: String,
        /// The header's name (not secret; its value may be).
        header: String,
        /// What is wrong (never the value).
        reason: &'static str,
    },
    /// The extra CA file cannot be read or holds no certificate.
    #[error("alert sink {sink}: cannot use ca_file {}: {reason}: give a readable PEM file of CA certificates", path.display())]
    CaFile {
        /// The sink's name.
        sink: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An email address does not parse.
    #[error("alert sink {sink}: the {field} address {address:?} is not a valid email address ({reason}): fix it in its [[alerts.sink]]")]
    Address {
        /// The sink's name.
        sink: String,
        /// `from` or `to`.
        field: &'static str,
        /// The address as written.
        address: String,
        /// What the parser said.
        reason: String,
    },
    /// The HTTP client or the TLS settings could not be built.
    #[error("alert sink {sink}: cannot set up its {what}: {reason}")]
    Setup {
        /// The sink's name.
        sink: String,
        /// `HTTP client`, `TLS settings`, …
        what: &'static str,
        /// What went wrong (scrubbed).
        reason: String,
    },
}

/// One failed delivery attempt: what happened, and whether another attempt
/// may succeed (a timeout, a refused connection, a 5xx or 429) or not (a
/// 4xx, a rejected login, a server that refuses STARTTLS).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DeliveryError {
    /// Worth retrying.
    pub(crate) retry: bool,
    /// For the log: scrubbed, names no token.
    pub(crate) message: String,
}

impl DeliveryError {
    /// A failure another attempt may not have.
    pub(crate) fn transient(message: impl Into<String>) -> DeliveryError {
        DeliveryError {
            retry: true,
            message: message.into(),
        }
    }

    /// A failure every attempt would have.
    pub(crate) fn permanent(message: impl Into<String>) -> DeliveryError {
        DeliveryError {
            retry: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryError")
            .field("retry", &self.retry)
            .field("message", &self.message)
            .finish()
    }
}

/// An error and its sources, as one line: `a: b: c` (a source that repeats
/// its parent's message is skipped).
pub(crate) fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Replaces a sink's token-bearing values in text. Holds the tokens, so it
/// has no `Debug`.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// Longest first, so that a token containing another is replaced whole.
    values: Vec<String>,
}

impl Redactor {
    /// Scrubs `value` from now on (unless too short to be a token).
    pub(crate) fn add(&mut self, value: &str) {
        if value.chars().count() >= SCRUB_MIN_CHARS && !self.values.iter().any(|v| v == value) {
            self.values.push(value.to_owned());
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// Scrubs a URL as written and every part of it that may carry a token:
    /// user, password, path and its segments, query and its values, fragment.
    pub(crate) fn add_url(&mut self, written: &str, url: &reqwest::Url) {
        self.add(written);
        self.add(url.as_str());
        self.add(url.username());
        self.add(url.password().unwrap_or_default());
        if url.path() != "/" {
            self.add(url.path());
        }
        for segment in url.path_segments().into_iter().flatten() {
            self.add_piece(segment);
        }
        if let Some(query) = url.query() {
            self.add(query);
            for pair in query.split('&') {
                self.add_piece(pair);
                if let Some((_, value)) = pair.split_once('=') {
                    self.add_piece(value);
                }
            }
        }
        self.add(url.fragment().unwrap_or_default());
    }

    /// Scrubs a piece of a URL, if long enough to be a token on its own.
    fn add_piece(&mut self, piece: &str) {
        if piece.chars().count() >= URL_PIECE_MIN_CHARS {
            self.add(piece);
        }
    }

    /// `text` with every scrubbed value replaced by `[redacted]`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redactor_scrubs_every_part_of_a_url_that_may_hold_a_token() {
        let written = "https://bot:pa55word@hooks.example.com/services/T0/B1/tok3nPATHx?sig=tok3nQUERY&x=1#frag3nt";
        let url = reqwest::Url::parse(written).unwrap();
        let mut r = Redactor::default();
        r.add_url(written, &url);
        let text = format!(
            "{written} then tok3nPATHx, sig=tok3nQUERY, pa55word, frag3nt; services, port 443 and host hooks.example.com stay"
        );
        let scrubbed = r.scrub(&text);
        for token in ["tok3nPATHx", "tok3nQUERY", "pa55word", "frag3nt"] {
            assert!(!scrubbed.contains(token), "{token} in {scrubbed}");
        }
        assert!(
            scrubbed.contains("services, port 443 and host hooks.example.com stay"),
            "{scrubbed}"
        );
    }

    #[test]
    fn short_values_are_not_scrubbed() {
        let mut r = Redactor::default();
        r.add("a");
        r.add("");
        assert_eq!(r.scrub("a cat"), "a cat");
    }

    #[test]
    fn the_chain_joins_sources_without_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = SinkError::Setup {
            sink: "w".into(),
            what: "HTTP client",
            reason: "x".into(),
        };
        assert_eq!(chain(&inner), "refused");
        assert_eq!(chain(&outer), outer.to_string());
    }
}
