//! What each sink sends: the generic JSON payload, Slack's incoming-webhook
//! message, the PagerDuty Events v2 event and the email's subject and body.
//!
//! Pure functions of an [`Alert`] (and, for PagerDuty, the routing key), so
//! that every format is unit-tested without a network. An alert holds no
//! secret, so neither does anything built here except the PagerDuty event,
//! which carries the routing key it is addressed with.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::alerts::{Alert, AlertStatus, Severity};

/// Longest PagerDuty `payload.summary` the Events API accepts.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// Longest text of a Slack header block.
const SLACK_HEADER_MAX: usize = 150;
/// Longest text of a Slack section block.
const SLACK_SECTION_MAX: usize = 3000;
/// Latest time RFC 3339 can write (9999-12-31T23:59:59Z).
const LATEST_RFC3339: Duration = Duration::from_secs(253_402_300_799);

/// An RFC 3339 UTC timestamp to the second (`2025-01-31T08:15:00Z`).
/// Times outside what the format can write are clamped into it.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let clamped = UNIX_EPOCH + since_epoch.min(LATEST_RFC3339);
    humantime::format_rfc3339_seconds(clamped).to_string()
}

/// What the alert is about, for titles: the key (`prod/billing-api`), or
/// `agent HOST` for the agent's own alerts.
fn subject_of(alert: &Alert) -> String {
    match &alert.key {
        Some(key) => key.to_string(),
        None => format!("agent {}", alert.agent_host),
    }
}

/// One line, without control characters (a title or a subject never
/// spans lines, whatever a detector wrote).
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// At most `max` characters, an ellipsis marking a cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The generic JSON payload: what the webhook posts, the exec hook reads on
/// stdin and the log sink records.
///
/// Fields: `service`, `error`, `timestamp` (RFC 3339 UTC), `environment`,
/// `key` (`ENV/NAME`), `version`, `signal`, `severity`, `agent_host`,
/// `status` (`firing`, `repeat`, `resolved`), `summary`, `details` (an
/// object of strings), `dedup_key`, `opened_at` and `repeat`. `environment`,
/// `key` and `version` are `null` when the alert has none.
pub fn payload_json(alert: &Alert) -> Value {
    json!({
        "service": alert.service,
        "error": alert.error,
        "timestamp": rfc3339(alert.timestamp),
        "environment": alert.environment,
        "key": alert.key.as_ref().map(ToString::to_string),
        "version": alert.version,
        "signal": alert.signal.as_str(),
        "severity": alert.severity.as_str(),
        "agent_host": alert.agent_host,
        "status": alert.status.as_str(),
        "summary": alert.summary,
        "details": alert.details,
        "dedup_key": alert.dedup_key,
        "opened_at": rfc3339(alert.opened_at),
        "repeat": alert.repeat,
    })
}

/// The label in titles: the severity in capitals, or `RESOLVED`.
fn headline(alert: &Alert) -> &'static str {
    match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => "RESOLVED",
        (_, Severity::Critical) => "CRITICAL",
        (_, Severity::Warning) => "WARNING",
        (_, Severity::Info) => "INFO",
    }
}

/// Slack's escaping of `&`, `<` and `>` in message text (the rest is
/// literal), so a caller-supplied name cannot form a link or a mention.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (the notification line) and
/// blocks a human reads at a glance: a header with the severity (or
/// RESOLVED), the key and the signal; the summary (what broke, what to do)
/// and the error; the facts as fields; the details; the dedup key and times.
pub fn slack_json(alert: &Alert) -> Value {
    let label = headline(alert);
    let subject = subject_of(alert);
    let signal = alert.signal.as_str();
    let emoji = match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => ":white_check_mark:",
        (_, Severity::Critical) => ":red_circle:",
        (_, Severity::Warning) => ":warning:",
        (_, Severity::Info) => ":information_source:",
    };
    let status_note = match alert.status {
        AlertStatus::Firing => String::new(),
        AlertStatus::Repeat => format!(" (still open, repeat {})", alert.repeat),
        AlertStatus::Resolved => " (cleared)".to_owned(),
    };
    let text = slack_escape(&one_line(&format!(
        "[{label}] {subject}: {signal}{status_note} — {}",
        alert.summary
    )));
    let header = truncate(
        &one_line(&format!("{emoji} {label}: {subject} — {signal}{status_note}")),
        SLACK_HEADER_MAX,
    );
    let mut what = String::new();
    if alert.status == AlertStatus::Resolved {
        what.push_str("*Resolved:* this alert has cleared.\n");
    }
    let _ = write!(
        what,
        "{}\n*Error:* {}",
        slack_escape(&alert.summary),
        slack_escape(&alert.error)
    );
    let field = |name: &str, value: &str| json!({"type": "mrkdwn", "text": truncate(&format!("*{name}*\n{}", slack_escape(value)), 2000)});
    let mut fields = vec![
        field("Severity", alert.severity.as_str()),
        field("Status", alert.status.as_str()),
        field(
            "Key",
            alert
                .key
                .as_ref()
                .map_or("(agent-wide)".to_owned(), ToString::to_string)
                .as_str(),
        ),
        field("Signal", signal),
        field("Service", &alert.service),
        field("Host", &alert.agent_host),
    ];
    if let Some(version) = alert.version {
        fields.push(field("Version", &format!("v{version}")));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&what, SLACK_SECTION_MAX)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !alert.details.is_empty() {
        let mut lines = String::new();
        for (name, value) in &alert.details {
            let _ = writeln!(lines, "• *{}:* {}", slack_escape(name), slack_escape(value));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(lines.trim_end(), SLACK_SECTION_MAX)}}));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(&format!(
            "dedup key {} · opened {} · sent {} · repeat {}",
            alert.dedup_key,
            rfc3339(alert.opened_at),
            rfc3339(alert.timestamp),
            alert.repeat
        ))}]}),
    );
    json!({"text": text, "blocks": blocks})
}

/// A PagerDuty Events API v2 event: `trigger` for a firing or repeating
/// alert, `resolve` for a resolved one, always with the alert's stable
/// `dedup_key` so PagerDuty folds them into one incident.
///
/// `payload`: `summary` (at most 1024 characters), `source` (the agent's
/// host), `severity` (`critical`, `warning`, `info`), `timestamp`,
/// `component` (the key), `group` (the environment), `class` (the signal)
/// and `custom_details` (every other field). `component` and `group` are
/// left out for agent-wide alerts.
pub fn pagerduty_json(alert: &Alert, routing_key: &str) -> Value {
    let event_action = match alert.status {
        AlertStatus::Firing | AlertStatus::Repeat => "trigger",
        AlertStatus::Resolved => "resolve",
    };
    let mut custom_details = Map::new();
    custom_details.insert("status".into(), json!(alert.status.as_str()));
    custom_details.insert("service".into(), json!(alert.service));
    custom_details.insert("error".into(), json!(alert.error));
    custom_details.insert("key".into(), json!(alert.key.as_ref().map(ToString::to_string)));
    custom_details.insert("environment".into(), json!(alert.environment));
    custom_details.insert("version".into(), json!(alert.version));
    custom_details.insert("opened_at".into(), json!(rfc3339(alert.opened_at)));
    custom_details.insert("repeat".into(), json!(alert.repeat));
    custom_details.insert("details".into(), json!(alert.details));

    let mut payload = Map::new();
    payload.insert(
        "summary".into(),
        json!(truncate(&one_line(&alert.summary), PAGERDUTY_SUMMARY_MAX)),
    );
    payload.insert("source".into(), json!(alert.agent_host));
    payload.insert("severity".into(), json!(alert.severity.as_str()));
    payload.insert("timestamp".into(), json!(rfc3339(alert.timestamp)));
    if let Some(key) = &alert.key {
        payload.insert("component".into(), json!(key.to_string()));
    }
    if let Some(environment) = &alert.environment {
        payload.insert("group".into(), json!(environment));
    }
    payload.insert("class".into(), json!(alert.signal.as_str()));
    payload.insert("custom_details".into(), Value::Object(custom_details));

    json!({
        "routing_key": routing_key,
        "event_action": event_action,
        "dedup_key": alert.dedup_key,
        "client": "keyward",
        "payload": payload,
    })
}

/// The email subject: `[keyward CRITICAL] prod/billing-api: spike`, or
/// `[keyward RESOLVED] …` when the alert has cleared. Stable across repeats
/// so that mail clients thread one alert together.
pub fn email_subject(alert: &Alert) -> String {
    one_line(&format!(
        "[keyward {}] {}: {}",
        headline(alert),
        subject_of(alert),
        alert.signal
    ))
}

/// The email body, plain text: the summary first, then every field on its
/// own line, then the details.
pub fn email_body(alert: &Alert) -> String {
    let mut body = String::new();
    if alert.status == AlertStatus::Resolved {
        body.push_str("RESOLVED: this alert has cleared.\n\n");
    }
    let _ = writeln!(body, "{}\n", alert.summary);
    let none = "-".to_owned();
    let rows = [
        ("Status", alert.status.as_str().to_owned()),
        ("Severity", alert.severity.as_str().to_owned()),
        ("Signal", alert.signal.as_str().to_owned()),
        (
            "Key",
            alert
                .key
                .as_ref()
                .map_or("(agent-wide)".to_owned(), ToString::to_string),
        ),
        ("Environment", alert.environment.clone().unwrap_or_else(|| none.clone())),
        ("Version", alert.version.map_or(none.clone(), |v| v.to_string())),
        ("Service", alert.service.clone()),
        ("Error", alert.error.clone()),
        ("Agent host", alert.agent_host.clone()),
        ("Opened at", rfc3339(alert.opened_at)),
        ("Sent at", rfc3339(alert.timestamp)),
        ("Repeat", alert.repeat.to_string()),
        ("Dedup key", alert.dedup_key.clone()),
    ];
    for (name, value) in rows {
        let _ = writeln!(body, "{:<13}{value}", format!("{name}:"));
    }
    if !alert.details.is_empty() {
        body.push_str("\nDetails:\n");
        for (name, value) in &alert.details {
            let _ = writeln!(body, "  {name}: {value}");
        }
    }
    let _ = write!(body, "\n-- \nSent by keywardd on {}.\n", alert.agent_host);
    body
}

#[cfg(test)]
mod tests;
