//! `[alerts]`, `[alerts.detect]`, `[[alerts.sink]]` and the per-key
//! `alerts = {…}` overrides: raw to typed, every error with its line.
//!
//! Sink settings may hold tokens (webhook URLs, routing keys, passwords):
//! no message here ever quotes their values.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{RawAlerts, RawDetect, RawSink};
use super::validate::{absolute_path, duration, hook_command, positive_duration, Source};
use super::ConfigError;
use crate::alerts::{
    host_name, AlertsConfig, DetectOverrides, DetectSettings, Sensitive, Severity, Signal, SinkConfig, SinkKind,
    SmtpTls, DEFAULT_REPEAT_INTERVAL, DEFAULT_REPORT_BURST, DEFAULT_REPORT_RATE, DEFAULT_SINK_BACKOFF,
    DEFAULT_SINK_QUEUE, DEFAULT_SINK_RETRIES, DEFAULT_SINK_TIMEOUT, PAGERDUTY_EVENTS_URL,
};

/// Largest token file read (a URL or key is far smaller).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

impl RawAlerts {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<AlertsConfig, ConfigError> {
        let agent_host = match self.agent_host {
            None => host_name(),
            Some(h) => {
                let name = h.get_ref().trim();
                if name.is_empty() || name.chars().any(char::is_control) {
                    return Err(src.invalid(
                        &h.span(),
                        format!(
                            "agent_host at {} is empty or has control characters: give the name alerts should show, or remove the line to use the host name",
                            src.at(&h.span())
                        ),
                    ));
                }
                name.to_owned()
            }
        };
        let repeat_interval = match self.repeat_interval {
            None => DEFAULT_REPEAT_INTERVAL,
            Some(v) => positive_duration(src, &v, "repeat_interval")?,
        };
        let positive = |v: Option<Spanned<u32>>, key: &str, default: u32| match v {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(src.invalid(
                &v.span(),
                format!(
                    "{key} at {} is 0: give a positive number (default {default}), or remove the line",
                    src.at(&v.span())
                ),
            )),
            Some(v) => Ok(v.into_inner()),
        };
        let report_rate = positive(self.report_rate, "report_rate", DEFAULT_REPORT_RATE)?;
        let report_burst = positive(self.report_burst, "report_burst", DEFAULT_REPORT_BURST)?;
        let detect = self
            .detect
            .unwrap_or_default()
            .overrides(src, "[alerts.detect]")?
            .apply(&DetectSettings::default());

        let mut sinks = Vec::with_capacity(self.sinks.len());
        let mut names = BTreeSet::new();
        for (i, raw) in self.sinks.into_iter().enumerate() {
            let span = raw.span();
            let sink = sink(src, raw, i + 1)?;
            if !names.insert(sink.name.clone()) {
                return Err(src.invalid(
                    &span,
                    format!(
                        "[[alerts.sink]] at {} is named {:?} like an earlier sink: give each sink its own name",
                        src.at(&span),
                        sink.name
                    ),
                ));
            }
            sinks.push(sink);
        }
        if sinks.is_empty() {
            sinks.push(SinkConfig::log());
        }
        Ok(AlertsConfig {
            agent_host,
            repeat_interval,
            detect,
            report_rate,
            report_burst,
            sinks,
        })
    }
}

impl RawDetect {
    /// The thresholds as written; `context` names the table in messages.
    pub(super) fn overrides(self, src: &Source<'_>, context: &str) -> Result<DetectOverrides, ConfigError> {
        let at_least = |v: &Spanned<u64>, key: &str, min: u64| {
            if *v.get_ref() < min {
                Err(src.invalid(
                    &v.span(),
                    format!(
                        "{key} in {context} at {} is {}: give at least {min}",
                        src.at(&v.span()),
                        v.get_ref()
                    ),
                ))
            } else {
                Ok(*v.get_ref())
            }
        };
        Ok(DetectOverrides {
            window: self.window.map(|v| positive_duration(src, &v, "window")).transpose()?,
            spike_threshold: self
                .spike_threshold
                .map(|v| at_least(&v, "spike_threshold", 1))
                .transpose()?,
            rising_windows: self
                .rising_windows
                .map(|v| {
                    let wide = Spanned::new(v.span(), u64::from(*v.get_ref()));
                    at_least(&wide, "rising_windows", 2).map(|n| n as u32)
                })
                .transpose()?,
            rising_min: self.rising_min.map(|v| at_least(&v, "rising_min", 1)).transpose()?,
            expiry_lead: self.expiry_lead.map(|v| duration(src, &v, "expiry_lead")).transpose()?,
            max_age: self
                .max_age
                .map(|v| positive_duration(src, &v, "max_age"))
                .transpose()?,
        })
    }
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

fn sink(src: &Source<'_>, raw: Spanned<RawSink>, index: usize) -> Result<SinkConfig, ConfigError> {
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
        "smtp" => smtp(src, &here, &span, raw, ca_file)?,
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

/// A value given inline or in a file (`KEY` or `KEY_file`), exactly one.
fn token(
    src: &Source<'_>,
    here: &str,
    sink_span: &std::ops::Range<usize>,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    key: &str,
) -> Result<Sensitive, ConfigError> {
    match (inline, file) {
        (Some(v), None) => {
            if v.get_ref().trim().is_empty() {
                return Err(src.invalid(&v.span(), format!("{key} in {here} is empty: fill it in")));
            }
            Ok(Sensitive::new(v.get_ref().trim().to_owned()))
        }
        (None, Some(f)) => {
            let path = absolute_path(src, &f, &format!("{key}_file"))?;
            read_token_file(&path)
                .map_err(|why| src.invalid(&f.span(), format!("{key}_file {} in {here} {why}", path.display())))
        }
        (Some(v), Some(_)) => Err(src.invalid(
            &v.span(),
            format!("{here} has both {key} and {key}_file: keep one (the file keeps the token out of the config)"),
        )),
        (None, None) => Err(src.invalid(
            sink_span,
            format!("{here} needs {key} or {key}_file (a root-only file holding it)"),
        )),
    }
}

/// The token in `path`: the whole file, trimmed. The message says what is
/// wrong without quoting the content.
fn read_token_file(path: &Path) -> Result<Sensitive, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot be read ({e}): create it, readable by root only"))?;
    if !meta.is_file() || meta.len() > MAX_TOKEN_FILE {
        return Err(format!(
            "is not a regular file of at most {MAX_TOKEN_FILE} bytes: point it at the file holding the token"
        ));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        tracing::warn!(path = %path.display(), "a token file is readable by every local user: chmod 600 it");
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err("is empty: write the token in it".to_owned());
    }
    Ok(Sensitive::new(value.to_owned()))
}

/// An http(s) URL with a host, given inline or in a file. Messages never
/// quote the URL: it may hold a token.
fn http_url(
    src: &Source<'_>,
    here: &str,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    key: &str,
) -> Result<Sensitive, ConfigError> {
    let span = inline
        .as_ref()
        .map(Spanned::span)
        .or(file.as_ref().map(Spanned::span))
        .unwrap_or(0..0);
    let empty = 0..0;
    let url = token(src, here, if span == empty { &empty } else { &span }, inline, file, key)?;
    let problem = match reqwest::Url::parse(url.expose()) {
        Err(e) => Some(format!("is not a URL ({e})")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Some(format!("has scheme {:?}: use an https:// (or http://) URL", u.scheme()))
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("has no host".to_owned()),
        Ok(_) => None,
    };
    match problem {
        None => Ok(url),
        Some(p) => Err(src.invalid(
            &span,
            format!("{key} in {here} {p}: give the full endpoint, e.g. https://hooks.example.com/alerts (not quoted here: it may hold a token)"),
        )),
    }
}

fn smtp(
    src: &Source<'_>,
    here: &str,
    span: &std::ops::Range<usize>,
    raw: RawSink,
    ca_file: Option<PathBuf>,
) -> Result<SinkKind, ConfigError> {
    let host = match raw.host {
        Some(h) if !h.get_ref().trim().is_empty() => h.into_inner().trim().to_owned(),
        Some(h) => return Err(src.invalid(&h.span(), format!("host in {here} is empty: name the SMTP server"))),
        None => {
            return Err(src.invalid(
                span,
                format!("{here} is an smtp sink without host: add host = \"smtp.example.com\""),
            ))
        }
    };
    let tls = match &raw.tls {
        None => SmtpTls::StartTls,
        Some(v) => match v.get_ref().as_str() {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            "none" => SmtpTls::None,
            other => {
                return Err(src.invalid(
                    &v.span(),
                    format!("tls = {other:?} in {here} is not a mode: use \"starttls\" (default), \"tls\" (port 465) or \"none\" (loopback relays only)"),
                ))
            }
        },
    };
    let port = raw.port.map(Spanned::into_inner).unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let address = |v: &Spanned<String>, key: &str| {
        let a = v.get_ref().trim();
        let ok = a.parse::<lettre::Address>().is_ok();
        if ok {
            Ok(a.to_owned())
        } else {
            Err(src.invalid(
                &v.span(),
                format!("{key} = {a:?} in {here} is not an email address: write it as user@example.com"),
            ))
        }
    };
    let from = match &raw.from {
        Some(v) => address(v, "from")?,
        None => {
            return Err(src.invalid(
                span,
                format!("{here} is an smtp sink without from: add from = \"keyward@example.com\""),
            ))
        }
    };
    let mut to = Vec::new();
    if let Some(list) = &raw.to {
        for v in list.get_ref() {
            to.push(address(v, "to")?);
        }
    }
    if to.is_empty() {
        return Err(src.invalid(
            &raw.to.as_ref().map_or(span.clone(), Spanned::span),
            format!("{here} sends to no one: add to = [\"oncall@example.com\"]"),
        ));
    }
    let username = raw.username.map(Spanned::into_inner);
    let password = match (raw.password, raw.password_file) {
        (None, None) => None,
        (p, f) => Some(token(src, here, span, p, f, "password")?),
    };
    if username.is_some() != password.is_some() {
        return Err(src.invalid(
            span,
            format!("{here} has a username without a password or the other way round: give both to log in, or neither"),
        ));
    }
    if tls == SmtpTls::None && password.is_some() {
        return Err(src.invalid(
            span,
            format!("{here} would send its password without TLS: set tls = \"starttls\" or \"tls\""),
        ));
    }
    Ok(SinkKind::Smtp {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
        ca_file,
    })
}
