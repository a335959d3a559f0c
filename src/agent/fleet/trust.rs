//! What this agent trusts: the members of its current config (a reload
//! swaps them), the recipients it seals to, and how it reports a value no
//! member signed.

use std::str::FromStr;

use age::x25519;

use super::Fleet;
use crate::agent::Agent;
use crate::config::backend::{BackendConfig, Member};
use crate::secret::KeyRef;

impl Fleet {
    /// The members in the agent's current config (a reload swaps them).
    pub fn members(agent: &Agent) -> Vec<Member> {
        match &agent.config().backend {
            BackendConfig::OpenBao(c) => c.members.clone(),
            BackendConfig::Local => Vec::new(),
        }
    }

    /// The recipients a record is sealed to besides this agent and the
    /// extra recipients (the store adds those itself): every member's and
    /// `[backend] recipients`, from the current config.
    pub(super) fn recipients(&self, agent: &Agent) -> Result<Vec<x25519::Recipient>, String> {
        let config = agent.config();
        let BackendConfig::OpenBao(cfg) = &config.backend else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = Vec::new();
        for r in cfg.members.iter().map(|m| &m.recipient).chain(cfg.recipients.iter()) {
            if *r != self.recipient && !config.extra_recipients.contains(r) && !out.contains(r) {
                out.push(r.clone());
            }
        }
        out.iter()
            .map(|r| x25519::Recipient::from_str(r).map_err(|e| format!("recipient {r:?}: {e}")))
            .collect()
    }

    /// After a reload: the members may have changed, so every refused
    /// record is looked at again and every key compared.
    pub fn trust_changed(&self, agent: &Agent) {
        self.check_listed(&Fleet::members(agent));
        {
            let mut h = self.health();
            h.settled.clear();
            h.publish_due = true;
        }
        self.poke();
    }

    /// A value not signed by a member, refused: reported in the log, an
    /// audit record and an `agent/fleet` alert, once per path and version.
    pub(super) async fn report_refused(
        &self,
        agent: &Agent,
        path: &str,
        key: Option<&KeyRef>,
        version: u64,
        why: &str,
    ) {
        let first = {
            let mut h = self.health();
            if h.refused_seen.len() >= 4096 {
                // Bounded whatever is written: at worst a refusal is
                // reported again.
                h.refused_seen.clear();
            }
            h.refused_seen.insert((path.to_owned(), version))
        };
        if !first {
            return;
        }
        let message = format!(
            "refused OpenBao's {}/{path} version {version}: {why}; the last good state keeps serving",
            self.cfg.mount
        );
        tracing::error!(path, version, reason = %why, "refused a fleet value not signed by a member");
        let event = crate::audit::AuditEvent {
            key: key.map(|k| k.to_string()),
            backend_version: Some(version),
            detail: Some(message.clone()),
            ..crate::audit::AuditEvent::new(crate::audit::Event::FleetSync, crate::audit::Outcome::Rejected)
        };
        if let Err(e) = agent.audit().record(event).await {
            tracing::error!(error = %e, "cannot audit a refused fleet value");
        }
        agent.alerting.health(
            crate::alerts::detect::Subject::Agent("fleet"),
            crate::alerts::Severity::Critical,
            message,
        );
    }
}
