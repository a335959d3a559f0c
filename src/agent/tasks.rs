//! The agent's own work beside the calls it answers: hot reload or fleet
//! follow, the alerting tick, refusal windows and watch evictions; started
//! before the sockets serve, finished after they drained.
//!
//! Invariant: the first audit record of a run is `agent_start` and the last
//! `agent_stop`; every refusal still counted in an open window is written
//! between them.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{alerting, fleet, hot_reload, jobs, refusals, watch_evict, Agent};
use crate::audit::AuditEvent;
use crate::audit::{Event, Outcome};

/// The agent's running tasks; [`Running::finish`] ends them.
pub struct Running {
    agent: Arc<Agent>,
    hot_reload: Option<hot_reload::HotReload>,
    fleet: Option<fleet::sync::FleetTasks>,
    ticks: JoinHandle<()>,
    refusal_windows: JoinHandle<()>,
    evictions: JoinHandle<()>,
    audit_upkeep: JoinHandle<()>,
}

impl Agent {
    /// Starts the agent's tasks, which run until `stop` turns true. In fleet
    /// mode, waits up to `initial_sync_timeout` for a first sync so that
    /// what the backend holds serves from the start.
    pub async fn start(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Running {
        // Changes left in doubt by a crash get their records before
        // anything is served.
        self.settle_intents().await;
        self.record_loaded_keys().await;
        // Files written into the store by other tools: applied until
        // shutdown. In fleet mode the store directory is only the local
        // copy of what the backend holds: changes come from there instead.
        let hot_reload = match &self.fleet {
            None => Some(hot_reload::spawn(self.clone(), stop.clone())),
            Some(_) => None,
        };
        let mut fleet_tasks = self
            .fleet
            .clone()
            .map(|fleet| fleet::sync::spawn(self.clone(), fleet, stop.clone()));
        if let (Some(tasks), Some(fleet)) = (fleet_tasks.as_mut(), self.fleet.as_ref()) {
            // Serve what OpenBao holds from the start if it answers soon;
            // otherwise the local copy, and say so.
            let limit = fleet.config().initial_sync_timeout;
            if !tasks.first_round(limit).await || !fleet.in_sync() {
                tracing::warn!(address = %fleet.config().address, keys = self.store.len(),
                    "not in sync with OpenBao yet; serving the local copy until it is");
            } else {
                tracing::info!(address = %fleet.config().address, keys = self.store.len(), "in sync with OpenBao");
            }
        }
        self.alerting.start_sinks(&self.config().alerts);
        // Rotation jobs that were running resume; the schedule starts.
        jobs::start_tasks(self, stop.clone());
        Running {
            agent: self.clone(),
            hot_reload,
            fleet: fleet_tasks,
            ticks: tokio::spawn(alerting::run_ticks(self.clone(), stop.clone())),
            refusal_windows: tokio::spawn(refusals::run(self.clone(), stop.clone())),
            audit_upkeep: tokio::spawn(super::anchors::run(self.clone(), stop.clone())),
            evictions: tokio::spawn(watch_evict::run(self.clone(), stop)),
        }
    }

    /// Ends every watch stream (they never end by themselves), so that a
    /// shutdown can drain.
    pub fn close_watches(&self) {
        self.watchers.close();
    }
}

impl Running {
    /// Audits that the agent serves (once its sockets do).
    pub async fn started(&self) {
        let agent = &self.agent;
        let _ = agent
            .audit
            .record(AuditEvent {
                detail: Some(format!("pid {}, {} keys", std::process::id(), agent.store.len())),
                ..AuditEvent::new(Event::AgentStart, Outcome::Ok)
            })
            .await;
    }

    /// After `stop` turned true and the calls drained: waits for the tasks,
    /// stops the sinks, writes the refusals still counted and the last
    /// record, and closes the audit log.
    pub async fn finish(self) {
        let agent = self.agent;
        if let Some(hot_reload) = self.hot_reload {
            hot_reload.finish().await;
        }
        if let Some(tasks) = self.fleet {
            tasks.finish().await;
        }
        let _ = self.ticks.await;
        let _ = self.evictions.await;
        let _ = self.audit_upkeep.await;
        // A step under way gets a few seconds; one cut short is taken
        // again when the agent starts (see jobs).
        agent.jobs.finish(std::time::Duration::from_secs(5)).await;
        agent.alerting.stop_sinks().await;
        // The refusals counted in windows still open: after every call has
        // ended, before the last record.
        let _ = self.refusal_windows.await;
        agent.refusals.flush(&agent, true).await;
        let _ = agent
            .audit
            .record(AuditEvent {
                ..AuditEvent::new(Event::AgentStop, Outcome::Ok)
            })
            .await;
        agent.audit.close().await;
    }
}
