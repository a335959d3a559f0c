//! The exec sink: an operator's program gets the generic JSON payload on
//! stdin.
//!
//! It runs like the rotation hooks ([`crate::hooks`]): by absolute path,
//! with a minimal environment (`KEYWARD_HOOK=alert`, plus
//! `KEYWARD_ALERT_STATUS`, `KEYWARD_ALERT_SEVERITY`, `KEYWARD_ALERT_SIGNAL`
//! and `KEYWARD_ALERT_DEDUP_KEY` so a shell script can branch without
//! parsing JSON), in its own process group that is killed when the
//! attempt's time is up. Exit 0 is a delivery.

use std::time::Duration;

use super::error::DeliveryError;
use super::payload::payload_json;
use crate::alerts::Alert;
use crate::hooks::{self, HookCommand, HookError};

/// An exec sink.
pub(crate) struct ExecSink {
    command: HookCommand,
    timeout: Duration,
}

impl ExecSink {
    /// Runs `command` for each notification, within `timeout`.
    pub(crate) fn new(command: HookCommand, timeout: Duration) -> ExecSink {
        ExecSink { command, timeout }
    }

    /// The program, for logs.
    pub(crate) fn endpoint(&self) -> &str {
        self.command.program()
    }

    /// One attempt: runs the program with the payload (one JSON line) on
    /// stdin.
    pub(crate) async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let mut command = self.command.clone();
        command.env.retain(|(k, _)| !k.starts_with("KEYWARD_ALERT_"));
        command.env.extend([
            ("KEYWARD_ALERT_STATUS".to_owned(), alert.status.as_str().to_owned()),
            ("KEYWARD_ALERT_SEVERITY".to_owned(), alert.severity.as_str().to_owned()),
            ("KEYWARD_ALERT_SIGNAL".to_owned(), alert.signal.as_str().to_owned()),
            ("KEYWARD_ALERT_DEDUP_KEY".to_owned(), alert.dedup_key.clone()),
        ]);
        let mut input = payload_json(alert).to_string().into_bytes();
        input.push(b'\n');
        match hooks::notify(&command, &input, self.timeout).await {
            Ok(()) => Ok(()),
            // It may appear, or become executable, by the next attempt; but
            // most likely the path is wrong.
            Err(e @ HookError::Spawn { .. }) => Err(DeliveryError::permanent(e.to_string())),
            Err(HookError::TimedOut { program, after, .. }) => Err(DeliveryError::transient(format!(
                "the alert hook {program} did not finish within {} and was killed with its process group: make it faster, or raise the sink's timeout",
                humantime::format_duration(after)
            ))),
            Err(e) => Err(DeliveryError::transient(e.to_string())),
        }
    }
}
