//! `[[alerts.sink]]`: where alerts go. Each kind takes its own settings
//! and refuses the others' (a pagerduty sink with `to = [...]` is a
//! mistake worth hearing about); settings that may hold a token are never
//! quoted.
//!
//! [`kind`] holds the typed form; `smtp.rs` checks an smtp sink's settings.

pub mod kind;
mod smtp;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

pub use kind::{
    SinkConfig, SinkKind, SmtpTls, DEFAULT_SINK_BACKOFF, DEFAULT_SINK_QUEUE, DEFAULT_SINK_RETRIES,
    DEFAULT_SINK_TIMEOUT, PAGERDUTY_EVENTS_URL,
};

use super::routing::{Severity, Signal};
use super::tokens::{http_url, token, Sensitive};
use crate::config::error::{ConfigError, Source};
use crate::config::hooks::{hook_command, RawArgv};
use crate::config::value::{absolute_path, positive_duration, RawList};
use smtp::{smtp, RawSmtp};

/// One `[[alerts.sink]]`: the union of every kind's settings; validation
/// refuses the ones its kind does not take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    min_severity: Option<Spanned<String>>,
    signals: RawList<String>,
    queue: Option<Spanned<usize>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    backoff: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    url_file: Option<Spanned<PathBuf>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    routing_key: Option<Spanned<String>>,
    routing_key_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    host: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    tls: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    from: Option<Spanned<String>>,
    to: RawList<String>,
    command: RawArgv,
}

/// The settings each kind takes, beyond the common ones.
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "webhook" => &["url", "url_file", "headers", "ca_file"],
        "slack" => &["url", "url_file", "ca_file"],
        "pagerduty" => &["url", "routing_key", "routing_key_file", "ca_file"],
        "smtp" => &[
            "host",
            "port",
            "tls",
            "username",
            "password",
            "password_file",
            "from",
            "to",
            "ca_file",
        ],
        "exec" => &["command"],
        _ => &[],
    }
}

pub(super) fn sink(src: &Source<'_>, raw: Spanned<RawSink>, index: usize) -> Result<SinkConfig, ConfigError> {
    let span = raw.span();
    let mut raw = raw.into_inner();
    let kind_name = raw.kind.get_ref().clone();
    let kind_name = kind_name.as_str();
    let here = format!("[[alerts.sink]] at {}", src.at(&span));
    if !matches!(kind_name, "webhook" | "slack" | "pagerduty" | "smtp" | "exec" | "log") {
        return Err(src.invalid(
            &raw.kind.span(),
            format!(
                "kind = {:?} in {here} is not a sink kind: use \"webhook\", \"slack\", \"pagerduty\", \"smtp\", \"exec\" or \"log\"",
                raw.kind.get_ref()
            ),
        ));
    }
    // Settings of another kind are refused, not ignored: a pagerduty
    // sink with `to = [...]` is a mistake worth hearing about.
    let present: [(&str, Option<std::ops::Range<usize>>); 17] = [
        ("url", raw.url.as_ref().map(Spanned::span)),
        ("url_file", raw.url_file.as_ref().map(Spanned::span)),
        ("headers", raw.headers.as_ref().map(Spanned::span)),
        ("routing_key", raw.routing_key.as_ref().map(Spanned::span)),
        ("routing_key_file", raw.routing_key_file.as_ref().map(Spanned::span)),
        ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
        ("host", raw.host.as_ref().map(Spanned::span)),
        ("port", raw.port.as_ref().map(Spanned::span)),
        ("tls", raw.tls.as_ref().map(Spanned::span)),
        ("username", raw.username.as_ref().map(Spanned::span)),
        ("password", raw.password.as_ref().map(Spanned::span)),
        ("password_file", raw.password_file.as_ref().map(Spanned::span)),
        ("from", raw.from.as_ref().map(Spanned::span)),
        ("to", raw.to.as_ref().map(Spanned::span)),
        ("command", raw.command.as_ref().map(Spanned::span)),
        ("retries", None),
        ("queue", None),
    ];
    for (name, span) in &present {
        if let Some(span) = span {
            if !allowed(kind_name).contains(name) {
                return Err(src.invalid(
                    span,
                    format!(
                        "{name} in {here} is not a setting of a {kind_name} sink (it takes {}): remove it, or fix the kind",
                        describe_allowed(kind_name)
                    ),
                ));
            }
        }
    }

    let name = match &raw.name {
        None => format!("{kind_name}-{index}"),
        Some(n) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref().len() <= 64
                && n.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(src.invalid(
                    &n.span(),
                    format!(
                        "name = {:?} in {here} is not a sink name: use 1 to 64 letters, digits, '-', '_' or '.'",
                        n.get_ref()
                    ),
                ));
            }
            n.get_ref().clone()
        }
    };
    let min_severity = match &raw.min_severity {
        None => Severity::Info,
        Some(v) => match v.get_ref().as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            other => {
                return Err(src.invalid(
                    &v.span(),
                    format!(
                    "min_severity = {other:?} in {here} is not a severity: use \"info\", \"warning\" or \"critical\""
                ),
                ))
            }
        },
    };
    let mut signals = Vec::new();
    if let Some(list) = raw.signals.take() {
        for v in list.into_inner() {
            match Signal::ALL.iter().find(|s| s.as_str() == v.get_ref()) {
                Some(s) => signals.push(*s),
                None => {
                    let all: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(src.invalid(
                        &v.span(),
                        format!(
                            "signal {:?} in {here} is not a signal: use some of {}",
                            v.get_ref(),
                            all.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    let queue = match &raw.queue {
        None => DEFAULT_SINK_QUEUE,
        Some(v) if *v.get_ref() == 0 => {
            return Err(src.invalid(
                &v.span(),
                format!(
                    "queue in {here} is 0: give how many alerts may wait for delivery (default {DEFAULT_SINK_QUEUE})"
                ),
            ))
        }
        Some(v) => *v.get_ref(),
    };
    let timeout = match &raw.timeout {
        None => DEFAULT_SINK_TIMEOUT,
        Some(v) => positive_duration(src, v, "timeout")?,
    };
    let backoff = match &raw.backoff {
        None => DEFAULT_SINK_BACKOFF,
        Some(v) => positive_duration(src, v, "backoff")?,
    };
    let retries = raw
        .retries
        .as_ref()
        .map_or(if kind_name == "log" { 0 } else { DEFAULT_SINK_RETRIES }, |v| {
            *v.get_ref()
        });
    let ca_file = raw
        .ca_file
        .as_ref()
        .map(|v| absolute_path(src, v, "ca_file"))
        .transpose()?;

    let kind = match kind_name {
        "webhook" | "slack" => {
            let url = http_url(src, &here, raw.url, raw.url_file, "url")?;
            if kind_name == "slack" {
                SinkKind::Slack { url, ca_file }
            } else {
                let mut headers = Vec::new();
                if let Some(h) = raw.headers {
                    let hspan = h.span();
                    for (k, v) in h.into_inner() {
                        let valid_name = !k.is_empty()
                            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
                        if !valid_name || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                            return Err(src.invalid(
                                &hspan,
                                format!(
                                    "header {k:?} in {here} is not a valid HTTP header (name of token characters, value without line breaks): fix it"
                                ),
                            ));
                        }
                        headers.push((k, Sensitive::new(v)));
                    }
                }
                SinkKind::Webhook { url, headers, ca_file }
            }
        }
        "pagerduty" => {
            let url = match raw.url {
                None => Sensitive::new(PAGERDUTY_EVENTS_URL.to_owned()),
                Some(u) => http_url(src, &here, Some(u), None, "url")?,
            };
            let routing_key = token(src, &here, &span, raw.routing_key, raw.routing_key_file, "routing_key")?;
            SinkKind::PagerDuty {
                url,
                routing_key,
                ca_file,
            }
        }
        "smtp" => {
            let raw = RawSmtp {
                host: raw.host,
                port: raw.port,
                tls: raw.tls,
                username: raw.username,
                password: raw.password,
                password_file: raw.password_file,
                from: raw.from,
                to: raw.to,
            };
            smtp(src, &here, &span, raw, ca_file)?
        }
        "exec" => match hook_command(src, raw.command, "command")? {
            Some(command) => SinkKind::Exec { command },
            None => {
                return Err(src.invalid(
                    &span,
                    format!("{here} is an exec sink without a command: add command = [\"/usr/local/bin/page-oncall\"] (it gets the alert as JSON on stdin)"),
                ))
            }
        },
        _ => SinkKind::Log,
    };
    Ok(SinkConfig {
        name,
        kind,
        min_severity,
        signals,
        queue,
        timeout,
        retries,
        backoff,
    })
}

fn describe_allowed(kind: &str) -> String {
    let a = allowed(kind);
    if a.is_empty() {
        "only the common settings".to_owned()
    } else {
        a.join(", ")
    }
}
