//! Key-use reports (`ReportKeyUse`) against a real agent: a success tells
//! the agent which version worked, once per version per interval, and a
//! report the agent refuses never reaches the caller.

use std::path::Path;
use std::time::{Duration, Instant};

use keyward_client::{auth_rejection, Client, HttpStatus};
use keyward_testkit::{eventually, scrape, TestAgent};

const WAIT: Duration = Duration::from_secs(5);

/// The `key_use` audit records of `key`'s `version`.
fn uses(agent: &TestAgent, key: &str, version: u64) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "key_use" && r["key"] == key && r["versions"][0]["version"] == version)
        .collect()
}

/// A service that accepts one secret and answers 401 to any other.
fn accepts(good: &'static str) -> impl FnMut(&keyward_client::Secret) -> std::future::Ready<Result<(), HttpError>> {
    move |secret| {
        std::future::ready(match secret.expose() == good.as_bytes() {
            true => Ok(()),
            false => Err(HttpError(401)),
        })
    }
}

#[tokio::test]
async fn a_success_reports_the_version_that_worked() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_old");
    agent.stage_raw("prod/billing-api", "sk_new");
    let client = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .with_service("billing-worker");
    let handle = client.handle("prod/billing-api").await.unwrap();

    // The provider already switched: the fallback (v2) is what works.
    client
        .call_with_fallback(&handle, accepts("sk_new"), auth_rejection)
        .await
        .unwrap();

    let found = eventually(WAIT, || uses(&agent, "prod/billing-api", 2).into_iter().next()).await;
    let record = found.unwrap_or_else(|| panic!("no key_use record in {:#?}", agent.audit_lines()));
    assert_eq!(record["outcome"], "reported");
    assert_eq!(record["versions"][0]["role"], "fallback");
    let detail = record["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 successful call") && detail.contains("billing-worker"),
        "{detail}"
    );
    // The refused primary is an auth failure, never a use.
    assert!(uses(&agent, "prod/billing-api", 1).is_empty());

    // By key name, the primary working: its own report.
    client
        .call_with_fallback("prod/billing-api", accepts("sk_old"), auth_rejection)
        .await
        .unwrap();
    let found = eventually(WAIT, || uses(&agent, "prod/billing-api", 1).into_iter().next()).await;
    assert!(found.is_some(), "no key_use record of v1");
    assert_eq!(uses(&agent, "prod/billing-api", 2).len(), 1);
}

#[tokio::test]
async fn a_burst_of_successes_is_one_report() {
    let metrics = tempfile::tempdir().unwrap();
    let agent = TestAgent::start_traversable(Some(&metrics_config(metrics.path(), "")));
    agent.put_raw("prod/x", "sk_1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let handle = client.handle("prod/x").await.unwrap();

    let started = Instant::now();
    for _ in 0..50 {
        client
            .call_with_fallback(&handle, accepts("sk_1"), auth_rejection)
            .await
            .unwrap();
    }
    let sock = metrics.path().join("metrics.sock");
    let reported = eventually(WAIT, || Some(key_use_reports(&sock)).filter(|&n| n >= 1.0)).await;
    assert_eq!(reported, Some(1.0));
    // The handle shares the client's count.
    for _ in 0..10 {
        handle.report_use(1);
    }
    assert!(
        started.elapsed() < keyward_client::USE_REPORT_INTERVAL,
        "the burst took longer than the interval"
    );
    // Nothing else is on its way: a report is sent right after the
    // success that makes it due, if at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(key_use_reports(&sock), 1.0);
    assert_eq!(uses(&agent, "prod/x", 1).len(), 1);
}

#[tokio::test]
async fn a_handle_reports_the_version_the_application_used() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/x", "sk_old");
    agent.stage_raw("prod/x", "sk_new");
    agent.promote("prod/x");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let handle = client.handle("prod/x").await.unwrap();
    let keys = handle.current();
    let new = keys.primary.version;

    handle.report_use(new);

    let found = eventually(WAIT, || uses(&agent, "prod/x", new).into_iter().next()).await;
    let record = found.unwrap_or_else(|| panic!("no key_use record in {:#?}", agent.audit_lines()));
    assert_eq!(record["versions"][0]["role"], "primary");
}

#[tokio::test]
async fn a_refused_report_does_not_fail_the_call() {
    // One report per uid, then one a second: the agent refuses the rest.
    let metrics = tempfile::tempdir().unwrap();
    let agent = TestAgent::start_traversable(Some(&metrics_config(
        metrics.path(),
        "[alerts]\nreport_rate = 1\nreport_burst = 1\n",
    )));
    agent.put_raw("prod/x", "sk_1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let handle = client.handle("prod/x").await.unwrap();
    // The one report allowed.
    client
        .report_auth_failure("prod/x", 1, 401, "test", "uses up the burst")
        .await
        .unwrap();

    let started = Instant::now();
    let result = client
        .call_with_fallback(&handle, accepts("sk_1"), auth_rejection)
        .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the report delayed the call"
    );

    // The report was sent, and refused.
    let sock = metrics.path().join("metrics.sock");
    let dropped = eventually(WAIT, || {
        Some(sum(&scrape(&sock), "keyward_auth_failure_reports_dropped_total")).filter(|&n| n >= 1.0)
    })
    .await;
    assert!(dropped.is_some(), "the key-use report was not refused");
    assert!(uses(&agent, "prod/x", 1).is_empty());
}

/// A config with the metrics endpoint on `dir/metrics.sock`, and `extra`.
fn metrics_config(dir: &Path, extra: &str) -> String {
    format!("[metrics]\nlisten = \"unix:{}/metrics.sock\"\n{extra}", dir.display())
}

/// Accepted `ReportKeyUse` reports, all keys and classes.
fn key_use_reports(sock: &Path) -> f64 {
    sum(&scrape(sock), "keyward_key_use_reports_total")
}

/// The sum of every sample of `name`, whatever its labels.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// An HTTP error with its status, as a service client would have.
#[derive(Debug)]
struct HttpError(u16);

impl HttpStatus for HttpError {
    fn http_status(&self) -> Option<u16> {
        Some(self.0)
    }
}
