//! One sink, built from its settings: the kinds behind one enum, so the
//! dispatcher drives them all alike.

use std::time::Duration;

use super::error::{DeliveryError, SinkError};
use super::exec::ExecSink;
use super::http::{Format, HttpSink};
use super::log;
use super::smtp::{SmtpSettings, SmtpSink};
use crate::alerts::{Alert, SinkConfig, SinkKind};

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
