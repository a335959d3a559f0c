//! Alert sinks: where notifications go, and the dispatcher that feeds them.
//!
//! # Layout
//!
//! - `payload`: the formats, as pure functions of an
//!   [`Alert`]: the generic JSON payload ([`payload_json`]), Slack's
//!   incoming-webhook message ([`slack_json`]), the PagerDuty Events v2
//!   event ([`pagerduty_json`]), the email's subject and body
//!   ([`email_subject`], [`email_body`]).
//! - `http`: the webhook, Slack and PagerDuty sinks (one `reqwest` client
//!   each: own timeout and CA roots, no redirects).
//! - `smtp`: the email sink (`lettre`; STARTTLS required when configured).
//! - `exec`: the exec sink (the payload on a hook's stdin, run like the
//!   rotation hooks).
//! - `log`: the log sink (one structured `tracing` event per notification).
//! - `retry`: backoff and the rate limit on "queue full" warnings.
//! - `dispatch`: the [`Dispatcher`]: a bounded queue and a worker per sink.
//! - `sink`: one built sink of any kind, as the dispatcher drives it.
//! - `error`: [`SinkError`], delivery errors and the scrubbing of tokens.
//!
//! Invariants: [`Dispatcher::send`] never blocks, so a slow or hanging sink
//! never slows the agent; and no [`Sensitive`] setting (a webhook URL, a
//! header, a routing key, a password) ever appears in a log line, an error
//! or `Debug` output. Sinks are described by their name and
//! `scheme://host:port` only.
//!
//! [`Alert`]: crate::alerts::Alert
//! [`Sensitive`]: crate::alerts::Sensitive

mod dispatch;
mod error;
mod exec;
mod http;
mod log;
mod payload;
mod retry;
mod sink;
mod smtp;

pub use dispatch::Dispatcher;
pub use error::SinkError;
pub use payload::{email_body, email_subject, pagerduty_json, payload_json, rfc3339, slack_json};
pub use retry::{backoff_delay, with_jitter, DROP_WARNING_EVERY, MAX_BACKOFF};

use crate::alerts::SinkConfig;
use sink::Sink;

pub use crate::outbound::USER_AGENT;

/// Checks a sink's settings as [`Dispatcher::start`] would use them (the
/// URL, headers, addresses, `ca_file`), without sending anything: for
/// config validation and reload.
pub fn check(config: &SinkConfig) -> Result<(), SinkError> {
    Sink::build(config).map(drop)
}

#[cfg(test)]
pub(crate) mod testing;
