//! Alerting end to end: a real agent, real reports over its socket, real
//! HTTP receivers on loopback for the sinks, and the metrics endpoint
//! scraped over its Unix socket.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::receiver::{Received, Receiver};
use common::tools::test_python;
use common::*;
use keyward::proto;
use serde_json::Value;

const SECRET_V1: &str = "sk_live_alerts_v1_5b1f0c";
const SECRET_V2: &str = "sk_live_alerts_v2_9e2d4a";
const NOBODY: u32 = 65534;

/// The three HTTP sinks pointed at `r` (paths /webhook, /slack, /pd).
fn http_sinks(r: &Receiver) -> String {
    format!(
        r#"
[[alerts.sink]]
kind = "webhook"
name = "hook"
url = "{}"
headers = {{ Authorization = "Bearer hook-token-123" }}
[[alerts.sink]]
kind = "slack"
url = "{}"
[[alerts.sink]]
kind = "pagerduty"
url = "{}"
routing_key = "pd-routing-key-456"
"#,
        r.url("/webhook?token=url-token-789"),
        r.url("/slack"),
        r.url("/pd")
    )
}

/// Reports a 401 on `version` of `key`. The agent takes reports only on
/// versions the reporter was served: fetch the key first (or before a
/// rotation, see [`make_v1_stale`]).
async fn report(agent: &TestAgent, key: &str, version: u64, service: &str) -> Result<(), tonic::Status> {
    let (env, name) = key.split_once('/').unwrap();
    agent
        .keys()
        .await
        .report_auth_failure(proto::AuthFailureReport {
            key: common::key(env, name),
            version,
            status_code: 401,
            service: service.to_owned(),
            detail: "GET /v1/charges".to_owned(),
            misdirected_to: String::new(),
        })
        .await
        .map(|_| ())
}

fn by_path<'a>(got: &'a [Received], prefix: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.path.starts_with(prefix)).collect()
}

/// Waits until `pred` holds for what the receiver got (10 s at most).
async fn wait_until(r: &Receiver, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    r.wait_until(what, Duration::from_secs(10), pred).await
}

fn webhook_with(got: &[Received], signal: &str, status: &str) -> Option<Value> {
    by_path(got, "/webhook")
        .into_iter()
        .map(|r| r.body.clone())
        .find(|b| b["signal"] == signal && b["status"] == status)
}

#[tokio::test]
async fn spike_reaches_webhook_slack_and_pagerduty_then_repeats_and_resolves() {
    let r = Receiver::start();
    let agent = TestAgent::start_with_config(&format!(
        "[alerts]\nagent_host = \"test-host\"\nrepeat_interval = \"1s\"\n[alerts.detect]\nwindow = \"2s\"\nspike_threshold = 3\n{}",
        http_sinks(&r)
    ));
    agent.put("prod/billing", SECRET_V1);
    agent.fetch("prod", "billing").await.unwrap();

    for _ in 0..2 {
        report(&agent, "prod/billing", 1, "billing-worker").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.received().is_empty(), "below the threshold, nothing is sent");
    report(&agent, "prod/billing", 1, "billing-worker").await.unwrap();
    let got = wait_until(&r, "one firing per sink", |g| g.len() >= 3).await;

    // The generic payload.
    let hook = by_path(&got, "/webhook");
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0].header("authorization"), Some("Bearer hook-token-123"));
    let b = &hook[0].body;
    assert_eq!(b["signal"], "spike");
    assert_eq!(b["status"], "firing");
    assert_eq!(b["severity"], "critical");
    assert_eq!(b["key"], "prod/billing");
    assert_eq!(b["environment"], "prod");
    assert_eq!(b["version"], 1);
    assert_eq!(b["service"], "billing-worker");
    assert_eq!(b["agent_host"], "test-host");
    assert_eq!(b["dedup_key"], "keyward/test-host/prod/billing/spike");
    assert!(b["error"].as_str().unwrap().contains("HTTP 401"), "{b}");
    assert!(
        b["summary"].as_str().unwrap().contains("keyward rotate prod/billing"),
        "{b}"
    );
    let ts = b["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() >= 20, "RFC 3339 UTC: {ts}");

    // Slack and PagerDuty formats.
    let slack = &by_path(&got, "/slack")[0].body;
    assert!(slack["text"].as_str().unwrap().contains("prod/billing"), "{slack}");
    let pd = &by_path(&got, "/pd")[0].body;
    assert_eq!(pd["routing_key"], "pd-routing-key-456");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], "keyward/test-host/prod/billing/spike");
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["source"], "test-host");

    // Still failing a second later: one repeat per sink, same dedup key.
    report(&agent, "prod/billing", 1, "billing-worker").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        report(&agent, "prod/billing", 1, "billing-worker").await.unwrap();
    }
    let got = wait_until(&r, "a repeat", |g| webhook_with(g, "spike", "repeat").is_some()).await;
    let repeat = webhook_with(&got, "spike", "repeat").unwrap();
    assert_eq!(repeat["repeat"], 1);
    assert_eq!(repeat["dedup_key"], "keyward/test-host/prod/billing/spike");
    assert_eq!(repeat["opened_at"], b["opened_at"]);

    // Reports stop: the window empties, then a window of calm, then resolve.
    // Each sink delivers on its own: wait for both resolves.
    let got = wait_until(&r, "a resolve at PagerDuty and the webhook", |g| {
        by_path(g, "/pd").iter().any(|p| p.body["event_action"] == "resolve")
            && webhook_with(g, "spike", "resolved").is_some()
    })
    .await;
    let resolve = by_path(&got, "/pd")
        .into_iter()
        .find(|p| p.body["event_action"] == "resolve")
        .unwrap();
    assert_eq!(resolve.body["dedup_key"], "keyward/test-host/prod/billing/spike");
    assert!(webhook_with(&got, "spike", "resolved").is_some());

    // Tokens and secrets appear in no log line; secrets in no payload.
    let logs = agent.logs();
    assert_no_secret(
        "agent log",
        logs.as_bytes(),
        &[SECRET_V1, "hook-token-123", "url-token-789", "pd-routing-key-456"],
    );
    for g in &got {
        assert_no_secret("payload", g.raw.as_bytes(), &[SECRET_V1]);
    }
    // Every report is audited.
    let audited = agent
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "auth_failure" && l["outcome"] == "reported")
        .count();
    assert_eq!(audited, 7);
}

/// An agent whose keys.sock uid 65534 may reach; the policy grants it
/// prod/shared only.
fn agent_for_nobody(r: &Receiver) -> TestAgent {
    TestAgent::start_with_config(&format!(
        "[sockets]\nservice_group = \"65534\"\nservice_mode = \"0660\"\n[[grant]]\nuids = [{NOBODY}]\nkeys = [\"prod/shared\"]\n{}",
        http_sinks(r)
    ))
}

fn report_as_nobody(agent: &TestAgent, key: &str, version: u64) -> std::process::Output {
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    run_cli(
        Command::new(cli)
            .arg("--socket")
            .arg(agent.keys_sock())
            .args([
                "report",
                key,
                "--version",
                &version.to_string(),
                "--service",
                "old-worker",
            ])
            .uid(NOBODY)
            .gid(NOBODY),
        None,
    )
}

/// A client fetched v1 of `key`, then the key was rotated to v2: v1 is a
/// version that client was served and the key no longer serves.
async fn make_v1_stale(agent: &TestAgent, key: &str) {
    let (env, name) = key.split_once('/').unwrap();
    agent.fetch(env, name).await.unwrap();
    rotate_to_v2(agent, key);
}

fn rotate_to_v2(agent: &TestAgent, key: &str) {
    for (args, input) in [
        (vec!["stage", key], Some(SECRET_V2.as_bytes())),
        (vec!["promote", key], None),
        (vec!["retire", key, "--force"], None),
    ] {
        let out = agent.cli(&args, input);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

#[tokio::test]
async fn stale_version_names_the_caller_and_refuses_callers_without_access() {
    let r = Receiver::start();
    let agent = agent_for_nobody(&r);
    agent.put("prod/shared", SECRET_V1);
    agent.put("prod/other", SECRET_V1);
    // uid 65534 fetches v1, then the key is rotated.
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    let out = run_cli(
        Command::new(cli)
            .arg("--socket")
            .arg(agent.keys_sock())
            .args(["get", "prod/shared"])
            .uid(NOBODY)
            .gid(NOBODY),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    rotate_to_v2(&agent, "prod/shared");

    // uid 65534 still uses v1 after the rotation.
    let out = report_as_nobody(&agent, "prod/shared", 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One per sink: the webhook, Slack and PagerDuty.
    let got = wait_until(&r, "a stale-version alert", |g| {
        webhook_with(g, "stale_version", "firing").is_some() && g.len() >= 3
    })
    .await;
    let b = webhook_with(&got, "stale_version", "firing").unwrap();
    assert_eq!(b["severity"], "warning");
    assert_eq!(b["version"], 1);
    assert_eq!(b["service"], "old-worker");
    let summary = b["summary"].as_str().unwrap();
    assert!(summary.contains("uid 65534"), "{summary}");
    assert!(
        summary.contains("still uses v1") && summary.contains("primary is v2"),
        "{summary}"
    );
    assert!(b["details"]["callers"].as_str().unwrap().contains("uid 65534"), "{b}");

    // A caller without access to the key is refused, audited, and raises
    // nothing.
    let before = r.received().len();
    let out = report_as_nobody(&agent, "prod/other", 1);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("may not read prod/other") && err.contains("PermissionDenied"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.received().len(), before, "a refused report raises no alert");
    let denied: Vec<Value> = agent
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "auth_failure" && l["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["caller"]["uid"], NOBODY);
    assert_eq!(denied[0]["key"], "prod/other");
}

#[tokio::test]
async fn failures_on_primary_and_fallback_are_a_critical_outage() {
    let r = Receiver::start();
    let agent = TestAgent::start_with_config(&http_sinks(&r));
    agent.put("prod/crm", SECRET_V1);
    let out = agent.cli(&["stage", "prod/crm"], Some(SECRET_V2.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    agent.fetch("prod", "crm").await.unwrap();
    report(&agent, "prod/crm", 1, "crm-sync").await.unwrap();
    report(&agent, "prod/crm", 2, "crm-sync").await.unwrap();
    let got = wait_until(&r, "fallback_failing", |g| {
        webhook_with(g, "fallback_failing", "firing").is_some()
    })
    .await;
    let b = webhook_with(&got, "fallback_failing", "firing").unwrap();
    assert_eq!(b["severity"], "critical");
    assert!(b["summary"].as_str().unwrap().contains("both keys are refused"), "{b}");

    // `keyward status` shows the open alert and the sinks' counters.
    let out = agent.cli(&["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let open = status["open_alerts"].as_array().unwrap();
    let alert = open.iter().find(|a| a["signal"] == "fallback_failing").expect("listed");
    assert_eq!(alert["key"], "prod/crm");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["dedup_key"], b["dedup_key"]);
    let sinks = status["sinks"].as_array().unwrap();
    let names: Vec<&str> = sinks.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hook", "slack-2", "pagerduty-3"]);
    assert!(sinks[0]["delivered"].as_u64().unwrap() >= 1, "{status}");
    let out = agent.cli(&["status"], None);
    let human = text(&out.stdout);
    assert!(human.contains("CRITICAL fallback_failing since"), "{human}");
    assert_no_secret(
        "status",
        &out.stdout,
        &["hook-token-123", "url-token-789", "pd-routing-key-456"],
    );
}

#[tokio::test]
async fn expiry_and_max_age_warnings_fire_before_the_key_breaks() {
    let r = Receiver::start();
    let agent = TestAgent::start_with_config(&format!(
        "[alerts.detect]\nexpiry_lead = \"1h\"\n[[key]]\nkeys = [\"prod/old\"]\nalerts = {{ max_age = \"1s\" }}\n{}",
        http_sinks(&r)
    ));
    let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1800)).to_string();
    let out = agent.cli(
        &["put", "prod/expiring", "--expires", &soon],
        Some(SECRET_V1.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(30 * 86400)).to_string();
    let out = agent.cli(&["put", "prod/fine", "--expires", &later], Some(SECRET_V1.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    agent.put("prod/old", SECRET_V1);

    let got = wait_until(&r, "expiry and max-age warnings", |g| {
        webhook_with(g, "expiry_ahead", "firing").is_some() && webhook_with(g, "max_age_overdue", "firing").is_some()
    })
    .await;
    let e = webhook_with(&got, "expiry_ahead", "firing").unwrap();
    assert_eq!(e["key"], "prod/expiring");
    assert_eq!(e["severity"], "warning");
    assert_eq!(e["details"]["expires_at"], soon.as_str());
    assert!(e["summary"].as_str().unwrap().contains("expires in 29m"), "{e}");
    let m = webhook_with(&got, "max_age_overdue", "firing").unwrap();
    assert_eq!(m["key"], "prod/old");
    assert!(
        by_path(&got, "/webhook").iter().all(|w| w.body["key"] != "prod/fine"),
        "a key 30 days from expiry raises nothing"
    );
}

#[tokio::test]
async fn a_rejected_key_file_raises_an_agent_health_alert() {
    let r = Receiver::start();
    let agent = TestAgent::start_with_config(&http_sinks(&r));
    agent.put("prod/crm", SECRET_V1);
    let file = agent.dir.join("store/prod/crm.age");
    let tmp = agent.dir.join("store/prod/.crm.tmp");
    std::fs::write(&tmp, b"this is not an age file").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let got = wait_until(&r, "agent_health", |g| {
        webhook_with(g, "agent_health", "firing").is_some()
    })
    .await;
    let b = webhook_with(&got, "agent_health", "firing").unwrap();
    assert_eq!(b["key"], "prod/crm");
    assert!(b["error"].as_str().unwrap().contains("crm.age"), "{b}");
    // The last good state keeps serving.
    let set = agent.fetch("prod", "crm").await.unwrap();
    assert_eq!(&set.primary.unwrap().secret[..], SECRET_V1.as_bytes());
}

/// p50 of `n` sequential GetKey calls over one connection, in µs.
async fn get_key_p50(agent: &TestAgent, n: usize) -> f64 {
    let mut c = agent.keys().await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.get_key(proto::GetKeyRequest {
            key: common::key("prod", "hot"),
        })
        .await
        .unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[n / 2]
}

#[tokio::test]
async fn a_hanging_sink_does_not_slow_fetches() {
    let hang = Receiver::hanging();
    let ok = Receiver::start();
    let metrics_dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start_with_config(&format!(
        r#"
[metrics]
listen = "unix:{}/metrics.sock"
[[alerts.sink]]
kind = "webhook"
name = "hangs"
url = "{}"
timeout = "30s"
queue = 5
[[alerts.sink]]
kind = "webhook"
name = "works"
url = "{}"
"#,
        metrics_dir.path().display(),
        hang.url("/hang"),
        ok.url("/webhook")
    ));
    agent.put("prod/hot", SECRET_V1);
    for i in 0..20 {
        agent.put(&format!("prod/k{i}"), SECRET_V1);
    }
    let without = get_key_p50(&agent, 300).await;

    // 20 alerts (a stale report on each key): the hanging sink holds one
    // and queues 5, the rest are dropped; the working sink gets all 20.
    for i in 0..20 {
        make_v1_stale(&agent, &format!("prod/k{i}")).await;
    }
    for i in 0..20 {
        report(&agent, &format!("prod/k{i}"), 1, "svc").await.unwrap();
    }
    let got = wait_until(&ok, "20 alerts on the working sink", |g| g.len() >= 20).await;
    assert_eq!(got.len(), 20);
    assert!(hang.connections() >= 1, "the hanging sink was tried");
    let with = get_key_p50(&agent, 300).await;
    assert!(
        with < without * 3.0 + 1000.0,
        "GetKey p50 {with:.0} µs with a hanging sink, {without:.0} µs before"
    );
    let m = scrape(&metrics_dir.path().join("metrics.sock"));
    let dropped = sample(
        &m,
        "keyward_alert_deliveries_total",
        &[("sink", "hangs"), ("result", "dropped")],
    );
    assert!(dropped >= 10.0, "dropped {dropped}\n{m}");
    assert_eq!(
        sample(
            &m,
            "keyward_alert_deliveries_total",
            &[("sink", "works"), ("result", "delivered")]
        ),
        20.0
    );
}

/// The value of the sample of `name` whose labels include `labels` (0 if
/// there is none). Panics on a malformed sample line.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            return value;
        }
    }
    0.0
}

#[tokio::test]
async fn metrics_count_fetches_denials_reports_alerts_and_keys() {
    let r = Receiver::start();
    let metrics_dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start_with_config(&format!(
        "[sockets]\nservice_group = \"65534\"\n[metrics]\nlisten = \"unix:{}/metrics.sock\"\n[alerts]\nreport_rate = 1\nreport_burst = 2\n{}",
        metrics_dir.path().display(),
        http_sinks(&r)
    ));
    let sock = metrics_dir.path().join("metrics.sock");
    agent.put("prod/billing", SECRET_V1);
    for _ in 0..3 {
        agent.fetch("prod", "billing").await.unwrap();
    }
    assert_eq!(
        agent.fetch("prod", "nope").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A denial: uid 65534 has no grant.
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    let out = run_cli(
        Command::new(cli)
            .arg("--socket")
            .arg(agent.keys_sock())
            .args(["get", "prod/billing"])
            .uid(NOBODY)
            .gid(NOBODY),
        None,
    );
    assert!(!out.status.success());
    // Reports: the burst of 2 is accepted (a stale version: one alert),
    // the third is over the limit. v1 was served by the fetches above.
    rotate_to_v2(&agent, "prod/billing");
    report(&agent, "prod/billing", 1, "svc").await.unwrap();
    report(&agent, "prod/billing", 1, "svc").await.unwrap();
    let over = report(&agent, "prod/billing", 1, "svc").await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    assert!(over.message().contains("report_rate"), "{}", over.message());
    wait_until(&r, "the alert", |g| g.len() >= 3).await;
    let _watch = agent
        .keys()
        .await
        .watch_keys(proto::WatchKeysRequest {
            keys: vec![common::key("prod", "billing").unwrap()],
        })
        .await
        .unwrap();

    let m = scrape(&sock);
    let ok = [("environment", "prod"), ("key", "billing"), ("outcome", "ok")];
    assert_eq!(sample(&m, "keyward_fetches_total", &ok), 3.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "keyward_fetches_total",
            &[("environment", "prod"), ("key", ""), ("outcome", "not_found")]
        ),
        1.0,
        "an unknown key is counted without its name"
    );
    assert!(!m.contains("key=\"nope\""), "made-up key names never become labels");
    assert_eq!(
        sample(
            &m,
            "keyward_denials_total",
            &[("socket", "service"), ("event", "fetch")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "keyward_auth_failure_reports_total",
            &[("key", "billing"), ("class", "stale")]
        ),
        2.0
    );
    assert_eq!(
        sample(&m, "keyward_auth_failure_reports_dropped_total", &[("uid", "0")]),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "keyward_alert_notifications_total",
            &[("signal", "stale_version"), ("status", "firing")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "keyward_alerts_open",
            &[("signal", "stale_version"), ("severity", "warning")]
        ),
        1.0
    );
    // put, then stage, promote and retire.
    assert_eq!(sample(&m, "keyward_key_generation", &[("key", "billing")]), 4.0);
    assert!(sample(&m, "keyward_key_age_seconds", &[("key", "billing")]) >= 0.0);
    assert!(
        m.contains("keyward_key_age_seconds{environment=\"prod\",key=\"billing\"}"),
        "{m}"
    );
    assert!(sample(&m, "keyward_audit_write_seconds_count", &[]) >= 5.0, "{m}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&scrape(&sock), "keyward_watchers", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the watcher never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_no_secret("metrics", m.as_bytes(), &[SECRET_V1]);
}

#[tokio::test]
async fn sighup_replaces_the_sinks() {
    let first = Receiver::start();
    let second = Receiver::start();
    let mut agent = TestAgent::start_with_config(&http_sinks(&first));
    agent.put("prod/a", SECRET_V1);
    agent.put("prod/b", SECRET_V1);
    make_v1_stale(&agent, "prod/a").await;
    make_v1_stale(&agent, "prod/b").await;
    report(&agent, "prod/a", 1, "svc").await.unwrap();
    wait_until(&first, "the first alert", |g| g.len() >= 3).await;

    agent.rewrite_config(&format!(
        "[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        second.url("/webhook")
    ));
    agent.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.logs().contains("alert sinks ready") || agent.logs().matches("alert sinks ready").count() < 2 {
        assert!(Instant::now() < deadline, "no reload: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(&agent, "prod/b", 1, "svc").await.unwrap();
    let got = wait_until(&second, "the alert on the new sink", |g| !g.is_empty()).await;
    assert_eq!(got[0].body["key"], "prod/b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        first.received().iter().all(|g| g.body["key"] != "prod/b"),
        "the old sinks are gone"
    );
    agent.stop();
}

/// The HTTPS receiver of tests/support/https_receiver.py: its port, the CA
/// that signed its certificate, and the file it logs requests to.
struct HttpsReceiver {
    port: u16,
    ca_file: std::path::PathBuf,
    log: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HttpsReceiver {
    fn start() -> HttpsReceiver {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, log) = (dir.path().join("ca.pem"), dir.path().join("requests.jsonl"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/https_receiver.py");
        let mut child = Command::new(test_python())
            .arg(&script)
            .arg("--ca-out")
            .arg(&ca_file)
            .arg("--log")
            .arg(&log)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the HTTPS receiver printed {line:?}"));
        HttpsReceiver {
            port,
            ca_file,
            log,
            child,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_https_webhook_is_trusted_through_ca_file_and_refused_without_it() {
    let https = HttpsReceiver::start();
    let url = format!("https://localhost:{}/hook?token=tls-token-321", https.port);
    let agent = TestAgent::start_with_config(&format!(
        r#"
[[alerts.sink]]
kind = "webhook"
name = "trusted"
url = "{url}"
ca_file = "{}"
[[alerts.sink]]
kind = "webhook"
name = "untrusted"
url = "{url}"
retries = 0
"#,
        https.ca_file.display()
    ));
    agent.put("prod/tls", SECRET_V1);
    make_v1_stale(&agent, "prod/tls").await;
    report(&agent, "prod/tls", 1, "svc").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = https.requests();
        let status = agent.cli(&["status", "--json"], None);
        let status: Value = serde_json::from_slice(&status.stdout).unwrap();
        let failed = status["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "untrusted")
            .map_or(0, |k| k["failed"].as_u64().unwrap());
        if !got.is_empty() && failed == 1 {
            break got;
        }
        assert!(Instant::now() < deadline, "received {got:?}; status {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Only the sink that trusts the test CA got through.
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["path"], "/hook?token=tls-token-321");
    assert_eq!(got[0]["body"]["signal"], "stale_version");
    assert_eq!(got[0]["body"]["key"], "prod/tls");
    // The refused delivery is logged by host and port, never with its token.
    let logs = agent.logs();
    assert!(logs.contains(&format!("localhost:{}", https.port)), "{logs}");
    assert_no_secret("agent log", logs.as_bytes(), &["tls-token-321", SECRET_V1]);
}

/// Every sticky fallback (the three clients and `keyward proxy`) has the
/// same default cool-down, and it is short enough that one caller alone,
/// reporting once per cool-down, reaches the default `spike_threshold`
/// within the default `window` (reports at 0, c, 2c, …: the threshold's
/// report comes at (threshold − 1) × c). A longer default would silence
/// `spike` for an early revocation seen by a few callers.
#[test]
fn the_default_fallback_cooldown_lets_one_caller_raise_spike() {
    let detect = keyward::config::alerts::DetectSettings::default();
    let rust = keyward_client::DEFAULT_FALLBACK_COOLDOWN;
    assert!(
        rust * (detect.spike_threshold as u32 - 1) < detect.window,
        "{rust:?} x {} reports do not fit in the {:?} window",
        detect.spike_threshold - 1,
        detect.window
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap();
    let secs = rust.as_secs_f64();
    let python = read("clients/python/keyward/sticky.py");
    assert!(
        python.contains(&format!("\nDEFAULT_FALLBACK_COOLDOWN = {secs:.1}\n")),
        "the Python client's default cool-down is not {secs} s"
    );
    let node = read("clients/node/src/sticky.ts");
    let ms = rust.as_millis();
    assert!(
        node.contains(&format!(
            "DEFAULT_FALLBACK_COOLDOWN_MS = {}_{:03};",
            ms / 1000,
            ms % 1000
        )),
        "the Node client's default cool-down is not {ms} ms"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["proxy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains(&format!("[default: {}s]", rust.as_secs())),
        "keyward proxy's --fallback-cooldown default is not {secs} s:\n{help}"
    );
}
