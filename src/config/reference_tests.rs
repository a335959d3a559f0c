//! The reference config, `packaging/keyward.toml.example` (shown in this
//! module's docs and installed with the package), loads with the real
//! loader, and the values it says are the defaults are.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

/// The reference as shipped.
const REFERENCE: &str = include_str!("../../packaging/keyward.toml.example");

/// `from` replaced by `to` in `text`, which must hold it: a swap that
/// stops matching fails the test instead of leaving a line unchecked.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the reference no longer has {from:?}: update this test"
    );
    text.replace(from, to)
}

#[test]
fn the_reference_config_loads_and_shows_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // Accounts and token files that exist on every test machine in place
    // of the reference's own.
    let mut text = REFERENCE.to_owned();
    for (from, to) in [
        ("service_group = \"keyward\"", "service_group = \"root\""),
        ("admin_group = \"keyward-admin\"", "admin_group = \"root\""),
        ("users = [\"billing\"]", "users = [\"root\"]"),
        ("groups = [\"billing\"]", "groups = [\"root\"]"),
    ] {
        text = swap(&text, from, to);
    }
    for (file, content) in [
        ("webhook-url", "https://hooks.example.com/alerts"),
        ("slack-url", "https://hooks.slack.example.com/services/T0/B0/x"),
        ("pagerduty-key", "routing-key"),
        ("smtp-password", "password"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        text = swap(
            &text,
            &format!("\"/etc/keyward/{file}\""),
            &format!("{:?}", path.display().to_string()),
        );
    }
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, &text).unwrap();

    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));

    // "The values shown are the defaults": the tables that list every
    // setting equal their defaults.
    assert_eq!(c.paths, Paths::default());
    assert_eq!(c.service_socket_mode, DEFAULT_SERVICE_MODE);
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert!(c.lock_memory && !c.credentials_socket);
    assert_eq!(c.audit, AuditSettings::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.rotation.defaults, RotationDefaults::default());
    assert_eq!(
        c.alerts.detect,
        DetectSettings {
            max_age: Some(Duration::from_secs(90 * 86400)),
            ..DetectSettings::default()
        }
    );
    assert_eq!(c.backend, BackendConfig::Local);

    // And every table is there.
    assert_eq!(c.extra_recipients.len(), 1);
    assert_eq!(c.service_socket_group, Some(0));
    assert_eq!(c.admin_group, Some(0));
    let envs: Vec<&str> = c.environments.keys().map(String::as_str).collect();
    assert_eq!(envs, ["dev", "prod", "staging"]);
    assert_eq!(c.environments["prod"].grace, Some(Duration::from_secs(3600)));
    assert_eq!(c.policy.grants.len(), 1);
    assert_eq!(c.rotation.keys.len(), 1);
    assert!(c.rotation.keys[0].generator.is_some());
    let schedule = c.rotation_for(&"prod/billing-api".parse().unwrap()).schedule.unwrap();
    assert_eq!(
        schedule.to_string(),
        "every 30days, window Mon-Fri 09:00-12:00, jitter 2h"
    );
    assert!(c.schedule_problem(&"prod/billing-api".parse().unwrap()).is_none());
    let kinds: Vec<&str> = c.alerts.sinks.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["webhook", "slack", "pagerduty", "smtp", "exec", "log"]);
    assert_eq!(
        c.metrics_listen.map(|l| l.to_string()).as_deref(),
        Some("127.0.0.1:9464")
    );
}
