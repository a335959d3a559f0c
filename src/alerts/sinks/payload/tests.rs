use serde_json::json;

use super::*;
use crate::alerts::sinks::testing::{alert, resolved};
use crate::alerts::Signal;

#[test]
fn the_generic_payload_has_every_field() {
    let payload = payload_json(&alert());
    assert_eq!(
        payload,
        json!({
            "service": "billing",
            "error": "HTTP 401 on primary v3 (7 reports in 1m)",
            "timestamp": "2025-01-31T08:15:00Z",
            "environment": "prod",
            "key": "prod/billing-api",
            "version": 3,
            "signal": "spike",
            "severity": "critical",
            "agent_host": "web-1",
            "status": "firing",
            "summary": "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)",
            "details": {"callers": "billing-worker (uid 1001)", "reports": "7"},
            "dedup_key": "keyward/web-1/prod/billing-api/spike",
            "opened_at": "2025-01-31T08:10:00Z",
            "repeat": 0,
        })
    );
}

#[test]
fn an_agent_wide_alert_has_null_key_environment_and_version() {
    let a = Alert {
        key: None,
        environment: None,
        version: None,
        signal: Signal::AgentHealth,
        ..alert()
    };
    let payload = payload_json(&a);
    assert_eq!(payload["key"], Value::Null);
    assert_eq!(payload["environment"], Value::Null);
    assert_eq!(payload["version"], Value::Null);
    assert_eq!(payload["signal"], "agent_health");
    assert_eq!(email_subject(&a), "[keyward CRITICAL] agent web-1: agent_health");
}

#[test]
fn timestamps_are_rfc3339_utc_and_clamped() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_738_311_300_999)),
        "2025-01-31T08:15:00Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100)),
        "9999-12-31T23:59:59Z"
    );
}

/// Every string in a JSON value, concatenated: what a human sees.
fn all_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(all_text).collect::<Vec<_>>().join("\n"),
        Value::Object(map) => map.values().map(all_text).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    }
}

#[test]
fn slack_says_severity_key_what_broke_and_what_to_do() {
    let message = slack_json(&alert());
    let text = message["text"].as_str().unwrap();
    assert!(text.starts_with("[CRITICAL] prod/billing-api: spike"), "{text}");
    assert!(text.contains("rotate it now"), "{text}");
    let blocks = message["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let header = blocks[0]["text"]["text"].as_str().unwrap();
    assert_eq!(header, ":red_circle: CRITICAL: prod/billing-api — spike");
    let shown = all_text(&message);
    for needle in [
        "HTTP 401 on primary v3 (7 reports in 1m)",
        "rotate it now (keyward rotate prod/billing-api)",
        "*Severity*\ncritical",
        "*Key*\nprod/billing-api",
        "*Version*\nv3",
        "*Service*\nbilling",
        "*Host*\nweb-1",
        "*callers:* billing-worker (uid 1001)",
        "keyward/web-1/prod/billing-api/spike",
        "2025-01-31T08:10:00Z",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from {shown}");
    }
    assert!(!shown.to_lowercase().contains("resolved"), "{shown}");
}

#[test]
fn slack_says_when_an_alert_is_resolved() {
    let message = slack_json(&resolved());
    let text = message["text"].as_str().unwrap();
    assert!(
        text.starts_with("[RESOLVED] prod/billing-api: spike (cleared)"),
        "{text}"
    );
    let header = message["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.starts_with(":white_check_mark: RESOLVED"), "{header}");
    let section = message["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(section.starts_with("*Resolved:* this alert has cleared."), "{section}");
}

#[test]
fn slack_escapes_markup_and_keeps_within_block_limits() {
    let a = Alert {
        summary: format!("<!channel> & <https://evil|click> {}", "x".repeat(5000)),
        ..alert()
    };
    let message = slack_json(&a);
    let shown = all_text(&message);
    assert!(!shown.contains("<!channel>"), "mention not escaped");
    assert!(shown.contains("&lt;!channel&gt; &amp; &lt;https://evil|click&gt;"));
    for block in message["blocks"].as_array().unwrap() {
        if let Some(text) = block["text"]["text"].as_str() {
            assert!(text.chars().count() <= SLACK_SECTION_MAX, "block too long");
        }
    }
    assert!(message["blocks"][0]["text"]["text"].as_str().unwrap().chars().count() <= SLACK_HEADER_MAX);
}

#[test]
fn pagerduty_trigger_has_the_events_v2_fields() {
    let event = pagerduty_json(&alert(), "R0UT1NGKEY");
    assert_eq!(
        event,
        json!({
            "routing_key": "R0UT1NGKEY",
            "event_action": "trigger",
            "dedup_key": "keyward/web-1/prod/billing-api/spike",
            "client": "keyward",
            "payload": {
                "summary": "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)",
                "source": "web-1",
                "severity": "critical",
                "timestamp": "2025-01-31T08:15:00Z",
                "component": "prod/billing-api",
                "group": "prod",
                "class": "spike",
                "custom_details": {
                    "status": "firing",
                    "service": "billing",
                    "error": "HTTP 401 on primary v3 (7 reports in 1m)",
                    "key": "prod/billing-api",
                    "environment": "prod",
                    "version": 3,
                    "opened_at": "2025-01-31T08:10:00Z",
                    "repeat": 0,
                    "details": {"callers": "billing-worker (uid 1001)", "reports": "7"},
                },
            },
        })
    );
}

#[test]
fn pagerduty_repeat_triggers_and_resolve_resolves_with_the_same_dedup_key() {
    let firing = pagerduty_json(&alert(), "k");
    let repeat = pagerduty_json(
        &Alert {
            status: AlertStatus::Repeat,
            repeat: 1,
            ..alert()
        },
        "k",
    );
    let resolve = pagerduty_json(&resolved(), "k");
    assert_eq!(repeat["event_action"], "trigger");
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(firing["dedup_key"], resolve["dedup_key"]);
    assert_eq!(repeat["dedup_key"], resolve["dedup_key"]);
    assert_eq!(resolve["payload"]["custom_details"]["status"], "resolved");
}

#[test]
fn pagerduty_severities_and_limits() {
    for (severity, expected) in [
        (Severity::Critical, "critical"),
        (Severity::Warning, "warning"),
        (Severity::Info, "info"),
    ] {
        let event = pagerduty_json(&Alert { severity, ..alert() }, "k");
        assert_eq!(event["payload"]["severity"], expected);
    }
    let long = pagerduty_json(
        &Alert {
            summary: "é".repeat(3000),
            ..alert()
        },
        "k",
    );
    let summary = long["payload"]["summary"].as_str().unwrap();
    assert_eq!(summary.chars().count(), PAGERDUTY_SUMMARY_MAX);
    assert!(summary.ends_with('…'));
    // Agent-wide: no component, no group (PagerDuty rejects nulls there).
    let agent = pagerduty_json(
        &Alert {
            key: None,
            environment: None,
            ..alert()
        },
        "k",
    );
    let payload = agent["payload"].as_object().unwrap();
    assert!(!payload.contains_key("component") && !payload.contains_key("group"));
}

#[test]
fn email_subject_names_severity_key_and_signal_or_resolved() {
    assert_eq!(email_subject(&alert()), "[keyward CRITICAL] prod/billing-api: spike");
    assert_eq!(email_subject(&resolved()), "[keyward RESOLVED] prod/billing-api: spike");
    let warning = Alert {
        severity: Severity::Warning,
        signal: Signal::StaleVersion,
        status: AlertStatus::Repeat,
        ..alert()
    };
    assert_eq!(
        email_subject(&warning),
        "[keyward WARNING] prod/billing-api: stale_version"
    );
    let sneaky = Alert {
        agent_host: "h\r\nBcc: x@example.com".to_owned(),
        key: None,
        ..alert()
    };
    assert!(!email_subject(&sneaky).contains('\n'));
}

#[test]
fn email_body_has_every_field() {
    let body = email_body(&alert());
    assert!(
        body.starts_with("prod/billing-api v3 is refused: rotate it now"),
        "{body}"
    );
    for line in [
        "Status:      firing",
        "Severity:    critical",
        "Signal:      spike",
        "Key:         prod/billing-api",
        "Environment: prod",
        "Version:     3",
        "Service:     billing",
        "Error:       HTTP 401 on primary v3 (7 reports in 1m)",
        "Agent host:  web-1",
        "Opened at:   2025-01-31T08:10:00Z",
        "Sent at:     2025-01-31T08:15:00Z",
        "Repeat:      0",
        "Dedup key:   keyward/web-1/prod/billing-api/spike",
        "  callers: billing-worker (uid 1001)",
        "  reports: 7",
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} missing from\n{body}");
    }
    let resolved = email_body(&resolved());
    assert!(resolved.starts_with("RESOLVED: this alert has cleared."), "{resolved}");
    assert!(resolved.contains("Status:      resolved"));
}
