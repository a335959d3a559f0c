//! The task that keeps a subscriber that takes nothing from holding up
//! rotations: twice a second it evicts every `WatchKeys` subscription that
//! has had a change of a key waiting for longer than that key's
//! propagation timeout (see [`crate::watch`]), audits each eviction, and
//! closes the connection of an evicted stream still open a timeout later.
//!
//! Why the connection: hyper takes a response stream's next event only once
//! the one before found room in the client's HTTP/2 window, so an evicted
//! stream whose client keeps its window closed is never polled again and
//! cannot end by itself. It
//! would keep its stream slot, its memory and its place under the uid's
//! watch cap for as long as the client likes. Closing the connection frees
//! them; the client's other calls on it fail once and its libraries
//! reconnect. A client that reads again before then gets the `ABORTED`
//! status that says why instead.
//!
//! Invariants: an eviction is audited (event `watch`, outcome `evicted`,
//! the generation it did not take as `generation_after`) after it took
//! effect, so `keyward rotate` may move on before the record is written;
//! the task never waits on a subscriber.

use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use crate::audit::AuditEvent;
use crate::watch::Eviction;

/// How often subscribers are checked: an eviction lands at most this long
/// after the timeout.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true.
pub async fn run(agent: Arc<Agent>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        check(&agent).await;
    }
}

/// One round: evict, audit, close overdue connections.
pub async fn check(agent: &Agent) {
    let config = agent.config();
    let evictions = agent
        .watchers
        .evict_stalled(|key| config.rotation_for(key).propagation_timeout);
    for close in agent.watchers.overdue_connections() {
        tracing::info!("closing the connection of an evicted watch that still reads nothing");
        close();
    }
    for e in evictions {
        tracing::warn!(key = %e.key, uid = e.who.uid, pid = e.who.pid, waiting = ?e.waiting_generation,
            "evicted a watch that took no event within the key's propagation timeout");
        let _ = agent.audit.record(record(&e)).await;
    }
}

/// The audit record of an eviction.
fn record(e: &Eviction) -> AuditEvent {
    let waiting = match e.waiting_generation {
        Some(g) => format!("generation {g}"),
        None => "the key's deletion".to_owned(),
    };
    AuditEvent {
        event: "watch",
        caller: Some(e.who.clone()),
        key: Some(e.key.to_string()),
        generation_before: Some(e.delivered_generation),
        generation_after: e.waiting_generation,
        outcome: "evicted",
        detail: Some(format!(
            "took no event for {} ms while {waiting} waited (propagation timeout {} ms); removed from the subscribers, its stream ends with ABORTED",
            e.waited.as_millis(),
            e.timeout.as_millis()
        )),
        ..Default::default()
    }
}
