//! Alerts across restarts (issue 18, item 4): an open alert is taken back
//! at start, not sent again as new; one whose signal cleared while the
//! agent was down resolves at start; the dedup key the sinks see stays the
//! same; a damaged or foreign alert state file is set aside with a warning.

use crate::common;

use std::time::{Duration, Instant};

use common::receiver::{Received, Receiver};
use common::*;
use keyward::proto;
use serde_json::Value;

const SECRET: &str = "sk_live_restart_v1_71c3aa";

/// A webhook and a PagerDuty sink pointed at `r`, a spike of 3 reports in
/// `window`, repeats only after an hour.
fn config(r: &Receiver, window: &str) -> String {
    format!(
        r#"[alerts]
agent_host = "restart-host"
repeat_interval = "1h"
[alerts.detect]
window = "{window}"
spike_threshold = 3
expiry_lead = "1h"
[[alerts.sink]]
kind = "webhook"
url = "{}"
[[alerts.sink]]
kind = "pagerduty"
url = "{}"
routing_key = "pd-routing-key-restart"
"#,
        r.url("/webhook"),
        r.url("/pd")
    )
}

/// Fetches `prod/billing` (reports count only on served versions) and
/// reports three 401s on v1: a spike.
async fn provoke_spike(agent: &TestAgent) {
    agent.fetch("prod", "billing").await.unwrap();
    for _ in 0..3 {
        agent
            .keys()
            .await
            .report_auth_failure(proto::AuthFailureReport {
                key: key("prod", "billing"),
                version: 1,
                status_code: 401,
                service: "billing-worker".to_owned(),
                detail: "GET /v1/charges".to_owned(),
                misdirected_to: String::new(),
            })
            .await
            .unwrap();
    }
}

/// The webhook notifications about `signal` with `status`.
fn hooks(got: &[Received], signal: &str, status: &str) -> Vec<Value> {
    got.iter()
        .filter(|r| r.path.starts_with("/webhook"))
        .map(|r| r.body.clone())
        .filter(|b| b["signal"] == signal && b["status"] == status)
        .collect()
}

/// Waits (`limit` at most) until `n` webhook notifications about `signal`
/// with `status` have arrived.
async fn wait_for(r: &Receiver, signal: &str, status: &str, n: usize, limit: Duration) -> Vec<Received> {
    let what = format!("{n} {signal} {status}");
    r.wait_until(&what, limit, |got| hooks(got, signal, status).len() >= n)
        .await
}

/// Waits (10 s at most) until PagerDuty has been sent `n` events with
/// `action`, and returns everything received.
async fn wait_for_pd(r: &Receiver, action: &str, n: usize) -> Vec<Received> {
    let what = format!("{n} PagerDuty {action} events");
    let sent = |got: &[Received]| {
        got.iter()
            .filter(|g| g.path == "/pd" && g.body["event_action"] == action)
            .count()
    };
    r.wait_until(&what, Duration::from_secs(10), |got| sent(got) >= n).await
}

/// An open spike across a `kill -9` and across a graceful stop: no second
/// firing at the webhook or PagerDuty, and it resolves once its window has
/// passed, under the same dedup key it opened with.
#[tokio::test]
async fn an_open_spike_is_taken_back_after_a_restart_and_resolves_later() {
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&config(&r, "4s"));
    agent.put("prod/billing", SECRET);
    for (round, kill) in [true, false].into_iter().enumerate() {
        provoke_spike(&agent).await;
        let got = wait_for(&r, "spike", "firing", round + 1, Duration::from_secs(10)).await;
        let fired = Instant::now();
        // Delivered to PagerDuty too before the kill (a kill -9 loses what
        // a sink's queue still holds).
        wait_for_pd(&r, "trigger", round + 1).await;
        let dedup = hooks(&got, "spike", "firing")[round]["dedup_key"].clone();
        assert_eq!(dedup, "keyward/restart-host/prod/billing/spike");
        if kill {
            agent.kill9();
        } else {
            agent.stop();
        }
        agent.spawn().expect("restarts");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let got = r.received();
        assert_eq!(
            hooks(&got, "spike", "firing").len(),
            round + 1,
            "round {round} (kill -9: {kill}): the open spike was sent again as new after the restart"
        );
        let got = wait_for(&r, "spike", "resolved", round + 1, Duration::from_secs(10)).await;
        // Not before its window (4 s) has passed since it was last active.
        assert!(
            fired.elapsed() >= Duration::from_millis(3500),
            "resolved after {:?}",
            fired.elapsed()
        );
        let resolved = &hooks(&got, "spike", "resolved")[round];
        assert_eq!(resolved["dedup_key"], dedup, "one incident, one key");
        // PagerDuty folds trigger and resolve into one incident. Each sink
        // delivers on its own, so its resolve may come after the webhook's.
        let got = wait_for_pd(&r, "resolve", round + 1).await;
        let pd: Vec<&Value> = got.iter().filter(|g| g.path == "/pd").map(|g| &g.body).collect();
        let actions: Vec<&str> = pd.iter().map(|b| b["event_action"].as_str().unwrap()).collect();
        assert_eq!(
            actions.iter().filter(|a| **a == "trigger").count(),
            round + 1,
            "{actions:?}"
        );
        assert_eq!(
            actions.iter().filter(|a| **a == "resolve").count(),
            round + 1,
            "{actions:?}"
        );
        assert!(pd.iter().all(|b| b["dedup_key"] == dedup), "{pd:?}");
    }
}

/// A spike whose window passed while the agent was down resolves at start.
#[tokio::test]
async fn a_spike_whose_window_passed_while_down_resolves_at_start() {
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&config(&r, "2s"));
    agent.put("prod/billing", SECRET);
    provoke_spike(&agent).await;
    wait_for(&r, "spike", "firing", 1, Duration::from_secs(10)).await;
    agent.kill9();
    std::thread::sleep(Duration::from_secs(3));
    agent.spawn().expect("restarts");
    let started = Instant::now();
    let got = wait_for(&r, "spike", "resolved", 1, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "resolved {:?} after the start",
        started.elapsed()
    );
    assert_eq!(hooks(&got, "spike", "firing").len(), 1);
}

/// An expiry alert open before a restart is not sent again as new after it
/// (its repeat interval has not passed); one whose key was deleted while
/// the agent was down resolves at start.
#[tokio::test]
async fn an_expiry_alert_is_taken_back_and_resolves_when_its_key_went_while_down() {
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&config(&r, "2s"));
    let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1800)).to_string();
    agent.ok(&["put", "prod/expiring", "--expires", &soon], Some(SECRET.as_bytes()));
    wait_for(&r, "expiry_ahead", "firing", 1, Duration::from_secs(10)).await;

    agent.stop();
    agent.spawn().expect("restarts");
    agent.kill9();
    agent.spawn().expect("restarts after kill -9");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = r.received();
    assert_eq!(hooks(&got, "expiry_ahead", "firing").len(), 1, "sent again as new");
    assert!(
        hooks(&got, "expiry_ahead", "repeat").is_empty(),
        "repeated within the hour"
    );
    assert!(hooks(&got, "expiry_ahead", "resolved").is_empty());

    agent.stop();
    std::fs::remove_file(agent.dir.join("store/prod/expiring.age")).unwrap();
    agent.spawn().expect("restarts");
    let started = Instant::now();
    let got = wait_for(&r, "expiry_ahead", "resolved", 1, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    let resolved = &hooks(&got, "expiry_ahead", "resolved")[0];
    assert_eq!(resolved["dedup_key"], "keyward/restart-host/prod/expiring/expiry_ahead");
    assert_eq!(hooks(&got, "expiry_ahead", "firing").len(), 1);
}

/// A damaged alert state file, or one another uid owns, does not stop the
/// agent (it serves keys; the file only holds notifications): it is moved
/// aside as it was, a warning names it, and an agent-health alert says so.
#[tokio::test]
async fn a_damaged_or_foreign_alert_state_file_is_set_aside_with_a_warning() {
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&config(&r, "2s"));
    agent.put("prod/billing", SECRET);
    let file = agent.dir.join("alerts.json");
    let aside = agent.dir.join("alerts.json.rejected");
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let mut cases: Vec<(&str, Plant<'_>)> = vec![(
        "not an alert state file",
        Box::new(|| {
            std::fs::write(&file, b"{not json").unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }),
    )];
    if nix::unistd::geteuid().is_root() {
        cases.push((
            "chown",
            Box::new(|| {
                std::fs::write(&file, br#"{"format":1,"alerts":[]}"#).unwrap();
                std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
            }),
        ));
    }
    for (n, (why, plant)) in cases.iter().enumerate() {
        agent.stop();
        plant();
        let planted = std::fs::read(&file).unwrap();
        let logs_before = agent.logs().len();
        agent.spawn().expect("starts despite the alert state file");
        // stderr is read by its own thread: give it a moment.
        let named = |l: &str| l.contains("alert state file") && l.contains(why) && l.contains("alerts.json.rejected");
        let found = eventually(Duration::from_secs(5), || {
            let logs = agent.logs()[logs_before..].to_owned();
            named(&logs).then_some(())
        })
        .await;
        assert!(found.is_some(), "{}", &agent.logs()[logs_before..]);
        assert_eq!(std::fs::read(&aside).unwrap(), planted, "kept as it was");
        let got = wait_for(&r, "agent_health", "firing", n + 1, Duration::from_secs(10)).await;
        let b = &hooks(&got, "agent_health", "firing")[n];
        assert!(b["summary"].as_str().unwrap().contains("alert state file"), "{b}");
        // Keys still serve.
        agent.fetch("prod", "billing").await.unwrap();
    }
}
