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
//! - `error`: [`SinkError`], delivery errors and the scrubbing of tokens.
//!
//! Invariants: [`Dispatcher::send`] never blocks, so a slow or hanging sink
//! never slows the agent; and no [`Sensitive`] setting (a webhook URL, a
//! header, a routing key, a password) ever appears in a log line, an error
//! or `Debug` output. Sinks are described by their name and
//! `scheme://host:port` only.
//!
//! [`Sensitive`]: crate::alerts::Sensitive

mod dispatch;
mod error;
mod exec;
mod http;
mod log;
mod payload;
mod retry;
mod smtp;

use std::sync::Once;
use std::time::Duration;

pub use dispatch::Dispatcher;
pub use error::SinkError;
pub use payload::{email_body, email_subject, pagerduty_json, payload_json, rfc3339, slack_json};
pub use retry::{backoff_delay, with_jitter, DROP_WARNING_EVERY, MAX_BACKOFF};

use crate::alerts::{Alert, SinkConfig, SinkKind};
use error::DeliveryError;
use exec::ExecSink;
use http::{Format, HttpSink};
use smtp::{SmtpSettings, SmtpSink};

/// The User-Agent of every HTTP sink: `keywardd/VERSION`.
pub const USER_AGENT: &str = concat!("keywardd/", env!("CARGO_PKG_VERSION"));

/// Makes `ring` the process's rustls crypto provider (once; if another one
/// was installed first, that one stays).
pub(crate) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Checks a sink's settings as [`Dispatcher::start`] would use them (the
/// URL, headers, addresses, `ca_file`), without sending anything: for
/// config validation and reload.
pub fn check(config: &SinkConfig) -> Result<(), SinkError> {
    Sink::build(config).map(drop)
}

/// A sink built from its settings, ready to deliver. No `Debug`: most hold
/// a token.
pub(crate) enum Sink {
    /// Webhook, Slack, PagerDuty.
    Http(HttpSink),
    /// Email.
    Smtp(SmtpSink),
    /// A program.
    Exec(ExecSink),
    /// The agent's log; holds the sink's name.
    Log(String),
}

impl Sink {
    /// Builds the sink (no network).
    pub(crate) fn build(config: &SinkConfig) -> Result<Sink, SinkError> {
        let name = config.name.as_str();
        Ok(match &config.kind {
            SinkKind::Webhook { url, headers, ca_file } => Sink::Http(HttpSink::build(
                name,
                url,
                headers,
                ca_file.as_deref(),
                Format::Generic,
                config.timeout,
            )?),
            SinkKind::Slack { url, ca_file } => Sink::Http(HttpSink::build(
                name,
                url,
                &[],
                ca_file.as_deref(),
                Format::Slack,
                config.timeout,
            )?),
            SinkKind::PagerDuty {
                url,
                routing_key,
                ca_file,
            } => Sink::Http(HttpSink::build(
                name,
                url,
                &[],
                ca_file.as_deref(),
                Format::PagerDuty {
                    routing_key: routing_key.clone(),
                },
                config.timeout,
            )?),
            SinkKind::Smtp {
                host,
                port,
                tls,
                username,
                password,
                from,
                to,
                ca_file,
            } => Sink::Smtp(SmtpSink::build(
                name,
                SmtpSettings {
                    host,
                    port: *port,
                    tls: *tls,
                    username: username.as_deref(),
                    password: password.as_ref(),
                    from,
                    to,
                    ca_file: ca_file.as_deref(),
                },
                config.timeout,
            )?),
            SinkKind::Exec { command } => Sink::Exec(ExecSink::new(command.clone(), config.timeout)),
            SinkKind::Log => Sink::Log(config.name.clone()),
        })
    }

    /// What logs say it delivers to.
    pub(crate) fn endpoint(&self) -> &str {
        match self {
            Sink::Http(sink) => sink.endpoint(),
            Sink::Smtp(sink) => sink.endpoint(),
            Sink::Exec(sink) => sink.endpoint(),
            Sink::Log(_) => "the log",
        }
    }

    /// Why an attempt that ran out of time failed, and what to do.
    pub(crate) fn timed_out(&self, after: Duration) -> String {
        let after = humantime::format_duration(after);
        match self {
            Sink::Exec(sink) => format!(
                "the alert hook {} did not finish within {after} and was killed with its process group: make it faster, or raise the sink's timeout",
                sink.endpoint()
            ),
            _ => format!(
                "{}: no answer within {after}: check that it is up and reachable, or raise the sink's timeout",
                self.endpoint()
            ),
        }
    }

    /// One delivery attempt (the caller bounds its time).
    pub(crate) async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        match self {
            Sink::Http(sink) => sink.deliver(alert).await,
            Sink::Smtp(sink) => sink.deliver(alert).await,
            Sink::Exec(sink) => sink.deliver(alert).await,
            Sink::Log(name) => {
                log::log_alert(name, alert);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
