//! The log sink: one `tracing` event per notification, with every field of
//! the generic payload as a structured field.
//!
//! Level: `error` for a critical alert that opens or repeats, `warn` for a
//! warning one, `info` for an info one and for every resolve.

use tracing::Level;

use super::payload::payload_json;
use crate::alerts::{Alert, AlertStatus, Severity};

/// The level a notification is logged at.
pub(crate) fn level_of(alert: &Alert) -> Level {
    match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => Level::INFO,
        (_, Severity::Critical) => Level::ERROR,
        (_, Severity::Warning) => Level::WARN,
        (_, Severity::Info) => Level::INFO,
    }
}

/// Logs one notification (target `keyward::alert`).
pub(crate) fn log_alert(sink: &str, alert: &Alert) {
    let payload = payload_json(alert);
    let text = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
    let key = text("key");
    let environment = text("environment");
    let timestamp = text("timestamp");
    let opened_at = text("opened_at");
    let details = payload["details"].to_string();
    let version = alert.version.map(|v| v.to_string()).unwrap_or_default();
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: "keyward::alert",
                $level,
                sink,
                status = alert.status.as_str(),
                severity = alert.severity.as_str(),
                signal = alert.signal.as_str(),
                key = key.as_str(),
                environment = environment.as_str(),
                version = version.as_str(),
                service = alert.service.as_str(),
                error = alert.error.as_str(),
                details = details.as_str(),
                dedup_key = alert.dedup_key.as_str(),
                agent_host = alert.agent_host.as_str(),
                timestamp = timestamp.as_str(),
                opened_at = opened_at.as_str(),
                repeat = alert.repeat,
                "alert {}: {}",
                alert.status.as_str(),
                alert.summary
            )
        };
    }
    match level_of(alert) {
        Level::ERROR => event!(Level::ERROR),
        Level::WARN => event!(Level::WARN),
        _ => event!(Level::INFO),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::alerts::sinks::testing::{alert, resolved};

    #[test]
    fn levels_follow_severity_and_resolves_are_info() {
        let cases = [
            (AlertStatus::Firing, Severity::Critical, Level::ERROR),
            (AlertStatus::Repeat, Severity::Critical, Level::ERROR),
            (AlertStatus::Firing, Severity::Warning, Level::WARN),
            (AlertStatus::Repeat, Severity::Warning, Level::WARN),
            (AlertStatus::Firing, Severity::Info, Level::INFO),
            (AlertStatus::Resolved, Severity::Critical, Level::INFO),
            (AlertStatus::Resolved, Severity::Warning, Level::INFO),
        ];
        for (status, severity, level) in cases {
            let a = Alert {
                status,
                severity,
                ..alert()
            };
            assert_eq!(level_of(&a), level, "{status:?} {severity}");
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `log_alert` writes through a plain-text subscriber.
    fn logged(a: &Alert) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || log_alert("log", a));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn one_event_per_notification_with_every_field() {
        let text = logged(&alert());
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(" ERROR keyward::alert: alert firing: prod/billing-api v3 is refused"),
            "{text}"
        );
        for field in [
            "sink=\"log\"",
            "status=\"firing\"",
            "severity=\"critical\"",
            "signal=\"spike\"",
            "key=\"prod/billing-api\"",
            "environment=\"prod\"",
            "version=\"3\"",
            "service=\"billing\"",
            "error=\"HTTP 401 on primary v3 (7 reports in 1m)\"",
            "dedup_key=\"keyward/web-1/prod/billing-api/spike\"",
            "agent_host=\"web-1\"",
            "timestamp=\"2025-01-31T08:15:00Z\"",
            "opened_at=\"2025-01-31T08:10:00Z\"",
            "repeat=0",
            "\\\"reports\\\":\\\"7\\\"",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let text = logged(&resolved());
        assert!(text.contains(" INFO keyward::alert: alert resolved: "), "{text}");
    }
}
