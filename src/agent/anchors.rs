//! The audit log's upkeep beside the records: publishing the chain head to
//! the `[[audit.anchor]]`s (and in fleet mode to the backend, see
//! [`crate::agent::fleet::anchors`]) every `anchor_interval` and after each
//! seal, and deleting the segments `[audit] retain` no longer keeps.
//!
//! Invariant: none of this is on a fetch's path. It runs in its own task;
//! a slow or failing anchor only delays the next publication, is logged and
//! counted (`keyward_audit_anchor_publications{result="failed"}`), and is
//! tried again at the next interval.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::Agent;
use crate::audit::anchor::AnchorHead;
use crate::config::audit::AuditSettings;
use crate::config::audit_anchor::{AnchorConfig, AnchorKind};

/// How often retention looks for expired segments besides after each seal
/// (an age limit expires segments with no new seal).
const RETENTION_CHECK: Duration = Duration::from_secs(60);

/// Runs until `stop` turns true.
pub(super) async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let settings: AuditSettings = agent.config().audit.clone();
    let metrics = agent.alerting.metrics.clone();
    let mut anchors: Vec<Anchor> = settings.anchors.iter().cloned().map(Anchor::new).collect();
    let mut backend = agent
        .fleet()
        .cloned()
        .map(|fleet| BackendAnchor { fleet, published: None });
    metrics.anchors_configured(
        settings
            .anchors
            .iter()
            .map(|a| a.name.as_str())
            .chain(backend.as_ref().map(|_| BACKEND)),
    );
    let mut seals = agent.audit.seals();
    let mut publish_tick = tokio::time::interval(settings.anchor_interval);
    publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention_tick = tokio::time::interval(RETENTION_CHECK);
    retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            break;
        }
        let sealed = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() { break }
                continue;
            }
            _ = publish_tick.tick() => false,
            changed = seals.changed() => {
                if changed.is_err() { break }
                true
            }
            _ = retention_tick.tick() => {
                retain(&agent, &settings).await;
                continue;
            }
        };
        if sealed {
            retain(&agent, &settings).await;
        }
        publish(&agent, &mut anchors, backend.as_mut(), &metrics).await;
    }
}

/// Deletes the segments `[audit] retain` no longer keeps.
async fn retain(agent: &Agent, settings: &AuditSettings) {
    let Some(retain) = settings.retain else { return };
    if let Err(e) = agent.audit.enforce_retention(retain).await {
        tracing::error!(error = %e, "audit retention stopped: a deletion could not be recorded");
    }
}

/// Publishes the chain head to every anchor that has not seen it yet.
async fn publish(
    agent: &Agent,
    anchors: &mut [Anchor],
    backend: Option<&mut BackendAnchor>,
    metrics: &crate::metrics::Metrics,
) {
    // Only a record on disk: one a power loss could still take back would
    // make an honest log look rewritten against its anchor.
    let Some((seq, hash)) = agent.audit.durable_head().filter(|(seq, _)| *seq > 0) else {
        return;
    };
    let head = AnchorHead {
        seq,
        hash,
        time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        install_id: agent.audit.install_id().to_owned(),
    };
    let mut line = serde_json::to_vec(&head).expect("a head serializes");
    line.push(b'\n');
    for anchor in anchors.iter_mut() {
        if anchor.published == Some(head.seq) {
            continue;
        }
        match anchor.send(&line).await {
            Ok(()) => {
                anchor.published = Some(head.seq);
                metrics.anchor_published(&anchor.config.name, true);
                tracing::debug!(anchor = %anchor.config.name, seq = head.seq, "audit chain head anchored");
            }
            Err(e) => {
                metrics.anchor_published(&anchor.config.name, false);
                tracing::warn!(anchor = %anchor.config.name, seq = head.seq, error = %e,
                    "could not publish the audit chain head to an anchor; trying again at the next anchor_interval");
            }
        }
    }
    if let Some(backend) = backend.filter(|b| b.published != Some(head.seq)) {
        match backend.fleet.publish_anchor(&head).await {
            Ok(()) => {
                backend.published = Some(head.seq);
                metrics.anchor_published(BACKEND, true);
                tracing::debug!(
                    anchor = BACKEND,
                    seq = head.seq,
                    "audit chain head anchored in the fleet backend"
                );
            }
            Err(e) => {
                metrics.anchor_published(BACKEND, false);
                tracing::error!(anchor = BACKEND, seq = head.seq, error = %e,
                    "could not publish the audit chain head to the fleet backend; trying again at the next anchor_interval");
            }
        }
    }
}

/// The metric label of the fleet backend's anchors (a name
/// `[[audit.anchor]]` may not take).
const BACKEND: &str = crate::config::audit_anchor::BACKEND_ANCHOR;

/// In fleet mode: the backend, an anchor of every agent.
struct BackendAnchor {
    fleet: Arc<crate::agent::fleet::Fleet>,
    published: Option<u64>,
}

/// One anchor and what it last accepted.
struct Anchor {
    config: AnchorConfig,
    client: Option<reqwest::Client>,
    published: Option<u64>,
}

impl Anchor {
    fn new(config: AnchorConfig) -> Anchor {
        let client = match &config.kind {
            AnchorKind::Exec(_) => None,
            AnchorKind::Webhook { .. } => {
                crate::outbound::install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(crate::outbound::USER_AGENT)
                    .build()
                    .map_err(|e| tracing::error!(anchor = %config.name, error = %e.without_url(), "cannot build the anchor's HTTP client"))
                    .ok()
            }
        };
        Anchor {
            config,
            client,
            published: None,
        }
    }

    /// One attempt. Errors never hold the URL or a header value.
    async fn send(&self, line: &[u8]) -> Result<(), String> {
        match &self.config.kind {
            AnchorKind::Exec(command) => {
                let mut command = command.clone();
                command.env.push(("KEYWARD_HOOK".into(), "audit_anchor".into()));
                crate::hooks::notify(&command, line, self.config.timeout)
                    .await
                    .map_err(|e| e.to_string())
            }
            AnchorKind::Webhook { url, headers } => {
                let client = self.client.as_ref().ok_or("the HTTP client could not be built")?;
                let mut request = client
                    .post(url.expose())
                    .header("content-type", "application/json")
                    .body(line.trim_ascii_end().to_vec());
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.expose());
                }
                let response = request.send().await.map_err(|e| e.without_url().to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the receiver answered {}", response.status()))
                }
            }
        }
    }
}
