//! `[limits]`: what one caller, one connection and the whole agent may
//! hold (sizes, connections, streams, watches) and the connection timers.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::value::{at_least_one, positive_duration};

/// How much larger than a secret a message must be allowed to be (the
/// KeySet's metadata and framing).
pub const MESSAGE_OVERHEAD_BYTES: usize = 16 * 1024;

/// The `[limits]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest secret accepted by `put` and `stage`.
    pub max_secret_bytes: usize,
    /// Largest gRPC message, either way.
    pub max_message_bytes: usize,
    /// Most simultaneous connections from one uid.
    pub max_connections_per_uid: usize,
    /// Most simultaneous connections in all.
    pub max_connections: usize,
    /// Most open HTTP/2 streams (calls) on one connection: the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the agent announces. Clients wait
    /// for a free stream; a peer that opens more gets them refused.
    pub max_streams_per_connection: u32,
    /// Most open calls of one uid, on all its connections together: what
    /// bounds the memory one uid can make the agent hold, however it
    /// spreads its calls. Over it a call is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_uid: usize,
    /// Most live `WatchKeys` subscriptions of one uid.
    pub max_watches_per_uid: usize,
    /// Most live `WatchKeys` subscriptions in all.
    pub max_watches: usize,
    /// An HTTP/2 PING goes to each connection this often...
    pub keepalive_interval: Duration,
    /// ...and a connection that does not answer it within this is closed.
    pub keepalive_timeout: Duration,
    /// A connection with no open call for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_secret_bytes: 65536,
            max_message_bytes: 1024 * 1024,
            max_connections_per_uid: 64,
            max_connections: 4096,
            max_streams_per_connection: 64,
            max_streams_per_uid: 2048,
            max_watches_per_uid: 1024,
            max_watches: 16384,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// `[limits]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_secret_bytes: Option<Spanned<usize>>,
    max_message_bytes: Option<Spanned<usize>>,
    max_connections_per_uid: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_streams_per_connection: Option<Spanned<u32>>,
    max_streams_per_uid: Option<Spanned<usize>>,
    max_watches_per_uid: Option<Spanned<usize>>,
    max_watches: Option<Spanned<usize>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
}

impl RawLimits {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let take = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
            None => Ok(default),
            Some(v) => at_least_one(src, v, key),
        };
        let period = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => positive_duration(src, v, key),
        };
        let limits = Limits {
            max_secret_bytes: take(&self.max_secret_bytes, "max_secret_bytes", default.max_secret_bytes)?,
            max_message_bytes: take(&self.max_message_bytes, "max_message_bytes", default.max_message_bytes)?,
            max_connections_per_uid: take(
                &self.max_connections_per_uid,
                "max_connections_per_uid",
                default.max_connections_per_uid,
            )?,
            max_connections: take(&self.max_connections, "max_connections", default.max_connections)?,
            max_streams_per_connection: match &self.max_streams_per_connection {
                None => default.max_streams_per_connection,
                Some(v) => streams_per_connection(src, v)?,
            },
            max_streams_per_uid: take(
                &self.max_streams_per_uid,
                "max_streams_per_uid",
                default.max_streams_per_uid,
            )?,
            max_watches_per_uid: take(
                &self.max_watches_per_uid,
                "max_watches_per_uid",
                default.max_watches_per_uid,
            )?,
            max_watches: take(&self.max_watches, "max_watches", default.max_watches)?,
            keepalive_interval: period(
                &self.keepalive_interval,
                "keepalive_interval",
                default.keepalive_interval,
            )?,
            keepalive_timeout: period(&self.keepalive_timeout, "keepalive_timeout", default.keepalive_timeout)?,
            idle_timeout: period(&self.idle_timeout, "idle_timeout", default.idle_timeout)?,
        };
        let needed = limits.max_secret_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES);
        if limits.max_message_bytes < needed {
            // Point at max_message_bytes if it was written, else at the
            // secret limit that outgrew the default message size.
            let span = (self.max_message_bytes.as_ref())
                .or(self.max_secret_bytes.as_ref())
                .map_or(0..0, Spanned::span);
            let message = format!(
                "max_message_bytes ({}) is too small for max_secret_bytes ({}) at {}: set max_message_bytes to at least {needed} (the secret plus {MESSAGE_OVERHEAD_BYTES} bytes for metadata)",
                limits.max_message_bytes,
                limits.max_secret_bytes,
                src.at(&span),
            );
            return Err(src.invalid(&span, message));
        }
        Ok(limits)
    }
}

/// The HTTP/2 stream limit: RFC 9113 advises at least 100, and below a
/// handful a client's watches would leave no stream for its other calls.
fn streams_per_connection(src: &Source<'_>, v: &Spanned<u32>) -> Result<u32, ConfigError> {
    const MIN: u32 = 8;
    if *v.get_ref() < MIN {
        return Err(src.invalid(
            &v.span(),
            format!(
                "max_streams_per_connection at {} is {}: give at least {MIN} (a client's watches each hold a stream for as long as they last), or remove the line for the default",
                src.at(&v.span()),
                v.get_ref()
            ),
        ));
    }
    Ok(*v.get_ref())
}
