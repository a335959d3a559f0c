//! Reloading the config on SIGHUP.
//!
//! Invariant: the running config is only ever replaced by a valid one, and
//! only in the settings that can change while the agent runs. A file that
//! does not load or validate changes nothing. Settings that were used once
//! at start (paths, sockets, the audit log, limits, memory locking, the
//! recipients, the list of environments) are kept from the running config
//! and reported as needing a restart; everything else (the policy above
//! all) is swapped in as a whole, and the config epoch is bumped so that
//! every live `WatchKeys` stream re-checks its caller's access.

use crate::config::backend::BackendConfig;
use std::path::PathBuf;

use crate::audit::AuditEvent;
use crate::config::{Config, ConfigError};

use super::Agent;
use crate::audit::{Event, Outcome};

/// How the running config was built, so that a reload builds the new one
/// the same way.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// System mode: `--config FILE`.
    File(PathBuf),
    /// Dev mode: `--dev DIR` for uid `uid`, on top of `--config FILE` if
    /// one was given.
    Dev {
        /// The dev directory.
        dir: PathBuf,
        /// The uid that may read every key.
        uid: u32,
        /// The explicit config file, if any.
        file: Option<PathBuf>,
    },
}

impl ConfigSource {
    /// Loads and validates the config this source names.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Dev {
                dir,
                uid,
                file: Some(path),
            } => Ok(Config::load(path)?.into_dev(dir, *uid)),
            ConfigSource::Dev { dir, uid, file: None } => Ok(Config::dev(dir, *uid)),
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The agent was not told where its config came from.
    #[error("this agent was started without a config source, so there is nothing to reload: restart keywardd to apply changes")]
    NoSource,
    /// The new config does not load or validate.
    #[error("{0}; the running config is unchanged")]
    Config(#[from] ConfigError),
    /// A stored key's new schedule cannot be followed.
    #[error("{0}; the running config is unchanged")]
    Schedule(String),
}

/// What a successful reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed and now apply.
    pub applied: Vec<String>,
    /// Settings that changed in the file but only apply at start: the
    /// running values are kept until keywardd is restarted.
    pub needs_restart: Vec<String>,
}

impl ReloadReport {
    /// One line for the log and the audit.
    pub fn summary(&self) -> String {
        let mut s = if self.applied.is_empty() {
            "no live setting changed".to_owned()
        } else {
            format!("applied: {}", self.applied.join(", "))
        };
        if !self.needs_restart.is_empty() {
            s.push_str(&format!(
                "; changed but kept until keywardd restarts: {}",
                self.needs_restart.join(", ")
            ));
        }
        s
    }
}

/// The config to run with after a reload: `new`, with the settings that
/// only apply at start taken from `old`, and what changed.
pub fn merge(old: &Config, mut new: Config) -> (Config, ReloadReport) {
    let mut report = ReloadReport::default();
    macro_rules! keep {
        ($field:ident, $name:expr) => {
            if new.$field != old.$field {
                report.needs_restart.push($name.to_owned());
                new.$field = old.$field.clone();
            }
        };
    }
    keep!(paths, "paths (state_dir, runtime_dir, audit_file)");
    keep!(service_socket_group, "sockets.service_group");
    keep!(service_socket_mode, "sockets.service_mode");
    keep!(admin_group, "sockets.admin_group");
    keep!(credentials_socket, "sockets.credentials");
    keep!(audit, "[audit]");
    keep!(limits, "[limits]");
    keep!(lock_memory, "lock_memory");
    keep!(extra_recipients, "extra_recipients");
    keep!(dev_mode, "dev mode");
    keep!(metrics_listen, "[metrics] listen");
    // The fleet's members (and the extra recipients) are live: a member
    // removed is no longer trusted from this reload on. The rest of
    // [backend] (where OpenBao is, how to log in) applies at start.
    match (&old.backend, &mut new.backend) {
        (BackendConfig::OpenBao(o), BackendConfig::OpenBao(n)) => {
            let (members, recipients) = (n.members.clone(), n.recipients.clone());
            let mut rest = (**n).clone();
            rest.members = o.members.clone();
            rest.recipients = o.recipients.clone();
            if rest != **o {
                report
                    .needs_restart
                    .push("[backend] (all but member and recipients)".to_owned());
            }
            if members != o.members || recipients != o.recipients {
                report.applied.push(format!(
                    "[backend] member ({} members, was {}) and recipients",
                    members.len(),
                    o.members.len()
                ));
            }
            **n = (**o).clone();
            n.members = members;
            n.recipients = recipients;
        }
        _ => keep!(backend, "[backend]"),
    }
    if new.alerts.agent_host != old.alerts.agent_host {
        report.needs_restart.push("[alerts] agent_host".to_owned());
        new.alerts.agent_host = old.alerts.agent_host.clone();
    }
    if new.alerts != old.alerts {
        report
            .applied
            .push("[alerts] (thresholds, report limits, sinks)".to_owned());
    }
    // The store was opened for the environments configured at start; an
    // environment's failure mode is read at each fetch and may change.
    if !new.environments.keys().eq(old.environments.keys()) {
        report.needs_restart.push("the list of [environments]".to_owned());
        new.environments = old.environments.clone();
    } else if new.environments != old.environments {
        report.applied.push("environment on_audit_failure modes".to_owned());
    }

    if new.policy != old.policy {
        report.applied.push(format!(
            "policy ({} grants, was {})",
            new.policy.grants.len(),
            old.policy.grants.len()
        ));
    }
    if new.shutdown_grace != old.shutdown_grace {
        report.applied.push("shutdown_grace".to_owned());
    }
    // Whatever else Config holds (rotation settings, hooks…) is live too;
    // Config has no PartialEq, but its Debug form covers every field and
    // holds no secret.
    let mut rest = new.clone();
    rest.policy = old.policy.clone();
    rest.shutdown_grace = old.shutdown_grace;
    rest.environments = old.environments.clone();
    rest.alerts = old.alerts.clone();
    rest.backend = old.backend.clone();
    if format!("{rest:?}") != format!("{old:?}") {
        report.applied.push("other settings (rotation, hooks)".to_owned());
    }
    (new, report)
}

/// Loads the config the agent was started with, swaps in its live settings
/// and audits the outcome. See [`Agent::reload_config`].
pub(super) async fn reload(agent: &Agent) -> Result<ReloadReport, ReloadError> {
    let loaded = match &agent.config_source {
        Some(source) => source.load().map_err(ReloadError::from),
        None => Err(ReloadError::NoSource),
    };
    let record = |outcome: Outcome, detail: String| AuditEvent {
        detail: Some(detail),
        ..AuditEvent::new(Event::ConfigReload, outcome)
    };
    let loaded = loaded.and_then(
        |c| match agent.store.list(None).iter().find_map(|s| c.schedule_problem(&s.key)) {
            Some(problem) => Err(ReloadError::Schedule(problem)),
            None => Ok(c),
        },
    );
    let new = match loaded {
        Ok(c) => c,
        Err(e) => {
            // A rejected reload changes nothing, audited or not.
            agent.alerting.health(
                crate::alerts::detect::Subject::Agent("config"),
                crate::alerts::Severity::Warning,
                format!("the config reload was rejected, the previous config keeps serving: {e}"),
            );
            let _ = agent.audit.record(record(Outcome::Rejected, e.to_string())).await;
            return Err(e);
        }
    };
    let (next, report) = merge(&agent.config(), new);
    if let Some(w) = crate::hygiene::executable_grants_warning(&next.policy) {
        tracing::warn!("{w}");
    }
    agent.replace_config(next);
    if let Some(fleet) = agent.fleet() {
        fleet.trust_changed(agent);
    }
    let _ = agent.audit.record(record(Outcome::Ok, report.summary())).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "keyward.toml").unwrap()
    }

    #[test]
    fn nothing_changed() {
        let c = parse("[[grant]]\nuids = [1]\nkeys = [\"prod/*\"]\n");
        let (next, report) = merge(&c, c.clone());
        assert_eq!(report, ReloadReport::default());
        assert_eq!(report.summary(), "no live setting changed");
        assert_eq!(next.policy, c.policy);
    }

    #[test]
    fn policy_applies_and_start_only_settings_are_kept() {
        let old = parse("[[grant]]\nuids = [1]\nkeys = [\"prod/*\"]\n");
        let new = parse(
            "state_dir = \"/srv/kw\"\nlock_memory = false\nshutdown_grace = \"3s\"\n[limits]\nmax_connections = 9\n[audit]\nmax_batch = 7\n[sockets]\nservice_mode = \"0600\"\n",
        );
        let (next, report) = merge(&old, new);
        assert!(next.policy.grants.is_empty());
        assert_eq!(next.shutdown_grace, std::time::Duration::from_secs(3));
        assert_eq!(next.paths, old.paths);
        assert_eq!(next.limits, old.limits);
        assert_eq!(next.audit, old.audit);
        assert_eq!(next.service_socket_mode, old.service_socket_mode);
        assert!(next.lock_memory);
        assert_eq!(report.applied, ["policy (0 grants, was 1)", "shutdown_grace"]);
        assert_eq!(
            report.needs_restart,
            [
                "paths (state_dir, runtime_dir, audit_file)",
                "sockets.service_mode",
                "[audit]",
                "[limits]",
                "lock_memory"
            ]
        );
        assert!(
            report.summary().contains("kept until keywardd restarts: paths"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn fleet_members_are_live_and_the_rest_of_backend_is_start_only() {
        let member = |name: &str, seed: u8| {
            let key = crate::config::backend::format_signing_key(
                &ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key(),
            );
            format!("[[backend.member]]\nname = {name:?}\nrecipient = \"age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d\"\nsigning_key = {key:?}\n")
        };
        let backend = |address: &str, members: &str| {
            parse(&format!(
                "[backend]\nkind = \"openbao\"\naddress = {address:?}\ntoken_file = \"/t\"\n{members}"
            ))
        };
        let old = backend("http://127.0.0.1:8200", &(member("a", 1) + &member("b", 2)));
        // A member removed: applied at once.
        let (next, report) = merge(&old, backend("http://127.0.0.1:8200", &member("a", 1)));
        let BackendConfig::OpenBao(b) = &next.backend else {
            panic!()
        };
        assert_eq!(b.members.len(), 1);
        assert_eq!(report.applied, ["[backend] member (1 members, was 2) and recipients"]);
        assert!(report.needs_restart.is_empty(), "{report:?}");
        // The address is start-only: kept, while the members still apply.
        let (next, report) = merge(&old, backend("http://127.0.0.1:9999", &member("b", 2)));
        let BackendConfig::OpenBao(b) = &next.backend else {
            panic!()
        };
        assert_eq!(b.address, "http://127.0.0.1:8200");
        assert_eq!(b.members[0].name, "b");
        assert_eq!(report.needs_restart, ["[backend] (all but member and recipients)"]);
    }

    #[test]
    fn environments_list_is_start_only_but_modes_are_live() {
        let old = parse("[environments.prod]\n[environments.dev]\n");
        let (next, report) = merge(&old, parse("[environments.prod]\n[environments.qa]\n"));
        assert_eq!(next.environments, old.environments);
        assert_eq!(report.needs_restart, ["the list of [environments]"]);
        let (next, report) = merge(
            &old,
            parse("[environments.prod]\non_audit_failure = \"fail-open\"\n[environments.dev]\n"),
        );
        assert_ne!(next.environments, old.environments);
        assert_eq!(report.applied, ["environment on_audit_failure modes"]);
    }

    #[test]
    fn dev_source_reapplies_dev_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("keyward.toml");
        std::fs::write(&file, "[[grant]]\nuids = [5]\nkeys = [\"prod/a\"]\n").unwrap();
        let dir = Path::new("/tmp/kw-reload-dev");
        let c = ConfigSource::Dev {
            dir: dir.into(),
            uid: 1000,
            file: Some(file.clone()),
        }
        .load()
        .unwrap();
        assert!(c.dev_mode);
        assert_eq!(c.policy.grants.len(), 2);
        assert_eq!(c.paths.state_dir, dir);
        let c = ConfigSource::Dev {
            dir: dir.into(),
            uid: 1000,
            file: None,
        }
        .load()
        .unwrap();
        assert_eq!(c.policy.grants.len(), 1);
        let e = ConfigSource::File(tmp.path().join("missing.toml")).load().unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }));
    }
}
