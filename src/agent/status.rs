//! What the agent is, serves and holds open: `GetStatus`, and the state
//! behind each metrics scrape.

use std::time::SystemTime;

use crate::proto;
use crate::wire::timestamp;

use super::Agent;

impl Agent {
    /// The agent's status, for `keyward status` and `doctor`.
    pub fn status(&self) -> proto::AgentStatus {
        let a = self;
        let audit = a.audit.status();
        let config = a.config();
        let p = &config.paths;
        proto::AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: Some(timestamp(a.started_at)),
            service_socket: p.service_socket.display().to_string(),
            admin_socket: p.admin_socket.display().to_string(),
            store_dir: p.store_dir.display().to_string(),
            audit_file: p.audit_file.display().to_string(),
            environments: config.environments.keys().cloned().collect(),
            keys: a.store.len() as u64,
            connections: a.connections.total() as u64,
            audit_sequence: audit.sequence,
            audit_head: audit.head,
            audit_error: audit.error.unwrap_or_default(),
            memory_locked: a.memory_locked,
            agent_recipient: a.recipient.clone(),
            open_alerts: a
                .alerting
                .open_alert_list()
                .into_iter()
                .map(|alert| proto::OpenAlert {
                    dedup_key: alert.dedup_key,
                    signal: alert.signal.as_str().to_owned(),
                    severity: alert.severity.as_str().to_owned(),
                    key: alert.key.map(|k| k.to_string()).unwrap_or_default(),
                    summary: alert.summary,
                    opened_at: Some(timestamp(alert.opened_at)),
                    repeats: alert.repeat,
                })
                .collect(),
            sinks: a
                .alerting
                .sink_stats()
                .into_iter()
                .map(|s| proto::SinkStatus {
                    name: s.name,
                    kind: s.kind.to_owned(),
                    delivered: s.delivered,
                    failed: s.failed,
                    dropped: s.dropped,
                    retries: s.retries,
                    queued: s.queued,
                })
                .collect(),
            backend: Some(match &a.fleet {
                Some(fleet) => fleet.status(&crate::agent::fleet::Fleet::members(a)),
                None => proto::BackendStatus {
                    kind: config.backend.kind().to_owned(),
                    ..Default::default()
                },
            }),
        }
    }

    /// The counters behind the metrics listener.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.alerting.metrics
    }

    /// The agent's state for one metrics scrape.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        use crate::alerts::{Severity, Signal};
        let now = SystemTime::now();
        let secs = |a: SystemTime, b: SystemTime| match a.duration_since(b) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let keys = self
            .store
            .list(None)
            .iter()
            .map(|s| crate::metrics::KeyGauges {
                environment: s.key.env().to_owned(),
                key: s.key.name().to_owned(),
                age_seconds: secs(now, s.primary.promoted_at.unwrap_or(s.primary.created_at)),
                expires_in_seconds: s.primary.expires_at.map(|e| secs(e, now)),
                generation: s.generation,
                job_step: self.jobs.step_of(&s.key).map_or(0, |step| step.number()),
            })
            .collect();
        let open = self.alerting.open_alerts();
        let mut open_alerts = Vec::new();
        for signal in Signal::ALL {
            for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
                let n = open.iter().filter(|(g, v)| *g == signal && *v == severity).count() as u64;
                open_alerts.push((signal, severity, n));
            }
        }
        crate::metrics::Snapshot {
            watchers: self.watchers.count() as u64,
            connections: self.connections.total() as u64,
            open_alerts,
            keys,
            sinks: self.alerting.sink_stats(),
            backend: self.fleet.as_ref().map(|f| f.gauges()),
            audit_disk_free_bytes: self.audit_disk.free_bytes(),
        }
    }
}
