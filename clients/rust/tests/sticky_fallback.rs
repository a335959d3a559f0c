//! The sticky fallback of `call_with_fallback` against a real agent,
//! during an early revocation: the key is staged (v1 primary, v2 fallback)
//! and the provider already refuses v1 (401) and accepts v2. The provider
//! is a function that records every secret it is given.
//!
//! Prints the figures: calls to the revoked primary per caller, with and
//! without the cool-down (`sticky fallback: …`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_client::{CallError, Client, KeyHandle, Secret};
use keyward_testkit::{eventually, TestAgent};

const KEY: &str = "prod/sticky-api";
const REVOKED: &str = "sk_sticky_revoked_v1";
const ACCEPTED: &str = "sk_sticky_accepted_v2";
const WAIT: Duration = Duration::from_secs(5);
const CALLS: usize = 50;

/// The provider's refusal, with its HTTP status.
#[derive(Debug)]
struct Refused(u16);

/// A fake provider: accepts [`ACCEPTED`], refuses anything else with 401,
/// after `delay`. Records each secret it is given as the call starts.
#[derive(Default)]
struct Provider {
    seen: Mutex<Vec<String>>,
    delay: Duration,
}

impl Provider {
    fn with_delay(delay: Duration) -> Arc<Provider> {
        Arc::new(Provider {
            delay,
            ..Provider::default()
        })
    }

    fn call(self: &Arc<Self>, secret: &Secret) -> impl std::future::Future<Output = Result<&'static str, Refused>> {
        let token = secret.expose_str().unwrap().to_owned();
        self.seen.lock().unwrap().push(token.clone());
        let delay = self.delay;
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if token == ACCEPTED {
                Ok("ok")
            } else {
                Err(Refused(401))
            }
        }
    }

    /// How many calls it got with `secret`.
    fn calls_with(&self, secret: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| *s == secret).count()
    }
}

fn refused_401(e: &Refused) -> Option<u16> {
    (e.0 == 401).then_some(401)
}

/// `n` calls through `client` with `handle`, one after the other; each
/// must succeed (with the fallback).
async fn calls(client: &Client, handle: &KeyHandle, provider: &Arc<Provider>, n: usize) {
    for _ in 0..n {
        let got = client
            .call_with_fallback(handle, |s| provider.call(s), refused_401)
            .await;
        assert!(matches!(got, Ok("ok")), "{got:?}");
    }
}

/// The agent's `auth_failure` records of `version` of the key reported by
/// `service`.
fn reports(agent: &TestAgent, version: u64, service: &str) -> Vec<serde_json::Value> {
    let from = format!("from service {service:?}");
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| {
            r["event"] == "auth_failure"
                && r["key"] == KEY
                && r["versions"][0]["version"] == version
                && r["detail"].as_str().is_some_and(|d| d.contains(&from))
        })
        .collect()
}

/// Waits until the agent has `n` such records (the reports are sent in the
/// background), then a little longer to see that no more come; returns
/// them.
async fn settled_reports(agent: &TestAgent, version: u64, service: &str, n: usize) -> Vec<serde_json::Value> {
    let found = eventually(WAIT, || {
        let r = reports(agent, version, service);
        (r.len() >= n).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "fewer than {n} reports of v{version} from {service}: {:#?}",
        reports(agent, version, service)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reports(agent, version, service);
    assert_eq!(r.len(), n, "v{version} from {service}: {r:#?}");
    r
}

/// The count a report's detail names ("… (and N more refusals since the
/// last report)"), 0 when it names none.
fn held_count(record: &serde_json::Value) -> u64 {
    let detail = record["detail"].as_str().unwrap();
    detail
        .split_once("(and ")
        .and_then(|(_, rest)| rest.split_once(" more refusals since the last report)"))
        .map(|(n, _)| n.parse().unwrap())
        .unwrap_or(0)
}

fn staged_agent() -> TestAgent {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw(KEY, REVOKED);
    agent.stage_raw(KEY, ACCEPTED);
    agent
}

/// Waits until `handle` holds generation `generation`.
async fn handle_reaches(handle: &KeyHandle, generation: u64) {
    let reached = eventually(WAIT, || (handle.current().generation == generation).then_some(())).await;
    assert!(
        reached.is_some(),
        "the handle is at generation {}",
        handle.current().generation
    );
}

/// 50 calls within a cool-down give the revoked primary one call and the
/// agent one report; once the cool-down is over (0.5 s for one call, set on
/// a clone) it gets one more call, and a report; a pushed state (promote
/// then rollback: the same versions, a new generation) makes the next
/// call try it at once. With a cool-down of zero every call tries it, and
/// the reports are still one per interval, the later one naming the count.
/// Fails without the memory (50 calls to the primary, 50 reports), and
/// without the handle forgetting the marks on a push (the call after the
/// rollback skips the primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_primary_gets_one_call_per_caller_per_cool_down() {
    let agent = staged_agent();
    let provider = Provider::with_delay(Duration::ZERO);
    let client = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .with_service("sticky-worker")
        .with_fallback_cooldown(Duration::from_secs(3));
    let handle = client.handle(KEY).await.unwrap();

    // Within the cool-down: one call to the primary, one report.
    let started = Instant::now();
    calls(&client, &handle, &provider, CALLS).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the calls outlasted the cool-down"
    );
    let with_cooldown = provider.calls_with(REVOKED);
    assert_eq!(with_cooldown, 1, "the revoked primary's calls");
    assert_eq!(provider.calls_with(ACCEPTED), CALLS);
    let first = settled_reports(&agent, 1, "sticky-worker", 1).await;
    assert_eq!(held_count(&first[0]), 0);
    let detail = first[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("HTTP 401 (Refused) for the primary; trying the fallback"),
        "{detail}"
    );
    assert!(reports(&agent, 2, "sticky-worker").is_empty());

    // After a cool-down (0.5 s, for these calls only): tried once more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let short = client.clone().with_fallback_cooldown(Duration::from_millis(500));
    calls(&short, &handle, &provider, 10).await;
    assert_eq!(provider.calls_with(REVOKED), 2);
    settled_reports(&agent, 1, "sticky-worker", 2).await;
    // The client's own cool-down goes on from that refusal.
    calls(&client, &handle, &provider, 10).await;
    assert_eq!(provider.calls_with(REVOKED), 2);

    // A new state pushed to the handle: the primary is tried at once,
    // although its versions are those it was refused in.
    let generation = handle.current().generation;
    agent.promote(KEY);
    let rolled_back = agent.cli(&["rollback", KEY], None);
    assert!(
        rolled_back.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled_back.stderr)
    );
    handle_reaches(&handle, generation + 2).await;
    let now = handle.current();
    assert_eq!(
        (now.primary.version, now.fallback.as_ref().map(|f| f.version)),
        (1, Some(2))
    );
    calls(&client, &handle, &provider, 1).await;
    assert_eq!(provider.calls_with(REVOKED), 3, "tried again after the push");
    calls(&client, &handle, &provider, 10).await;
    assert_eq!(provider.calls_with(REVOKED), 3, "and marked again");

    // Without the cool-down: every call tries the primary first; the
    // reports are one per 200 ms, the later one naming the count.
    let plain = Provider::with_delay(Duration::ZERO);
    let no_memory = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .with_service("plain-worker")
        .with_fallback_cooldown(Duration::ZERO);
    let plain_handle = no_memory.handle(KEY).await.unwrap();
    calls(&no_memory, &plain_handle, &plain, CALLS).await;
    let without_cooldown = plain.calls_with(REVOKED);
    assert_eq!(without_cooldown, CALLS);
    tokio::time::sleep(keyward_client::MIN_REPORT_INTERVAL + Duration::from_millis(50)).await;
    calls(&no_memory, &plain_handle, &plain, 1).await;
    let plain_reports = eventually(WAIT, || {
        let r = reports(&agent, 1, "plain-worker");
        (r.iter().map(|r| 1 + held_count(r)).sum::<u64>() == CALLS as u64 + 1).then_some(r)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the reports do not account for every refusal: {:#?}",
            reports(&agent, 1, "plain-worker")
        )
    });
    assert!(plain_reports.len() < 10, "{} reports", plain_reports.len());
    let counted = held_count(plain_reports.last().unwrap());
    assert!(counted > 0, "{:#?}", plain_reports.last());

    let log = std::fs::read_to_string(agent.audit_file()).unwrap();
    assert!(!log.contains(REVOKED) && !log.contains(ACCEPTED));
    println!(
        "sticky fallback: calls={CALLS} primary_calls_with_cooldown={with_cooldown} primary_calls_without_cooldown={without_cooldown} reports_with_cooldown=1 reports_without_cooldown={} last_report_counts={counted}",
        plain_reports.len()
    );
}

/// Calls already in flight when the first refusal comes all reach the
/// primary (nothing was known yet); their refusals are one report, and the
/// next report of that version, after the cool-down, names how many were
/// held back. By key name (one `get` per call): the memory works without a
/// handle too. Fails when each refusal is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_held_back_are_counted_in_the_next_report() {
    let agent = staged_agent();
    // Slow enough that every call of the burst has its key before the
    // first refusal comes back.
    let provider = Provider::with_delay(Duration::from_millis(300));
    let client = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .with_service("burst-worker")
        .with_fallback_cooldown(Duration::from_secs(1));
    let in_flight = 20;
    let burst: Vec<_> = (0..in_flight)
        .map(|_| client.call_with_fallback(KEY, |s| provider.call(s), refused_401))
        .collect();
    for got in futures_join_all(burst).await {
        assert!(matches!(got, Ok("ok")), "{got:?}");
    }
    assert_eq!(provider.calls_with(REVOKED), in_flight);
    settled_reports(&agent, 1, "burst-worker", 1).await;

    // Within the cool-down: straight to the fallback.
    let got = client.call_with_fallback(KEY, |s| provider.call(s), refused_401).await;
    assert!(matches!(got, Ok("ok")), "{got:?}");
    assert_eq!(provider.calls_with(REVOKED), in_flight);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = client.call_with_fallback(KEY, |s| provider.call(s), refused_401).await;
    assert!(matches!(got, Ok("ok")), "{got:?}");
    assert_eq!(provider.calls_with(REVOKED), in_flight + 1);
    let r = settled_reports(&agent, 1, "burst-worker", 2).await;
    assert_eq!(held_count(&r[1]), in_flight as u64 - 1, "{}", r[1]["detail"]);

    // Both refused (the primary is cooling down: the fallback first, then
    // the primary): the last error is returned, and the fallback's first
    // refusal is reported.
    let refuse_all = |_: &Secret| async { Err::<(), _>(Refused(401)) };
    let got = client.call_with_fallback(KEY, refuse_all, refused_401).await;
    assert!(matches!(got, Err(CallError::Service(Refused(401)))), "{got:?}");
    let fallback = settled_reports(&agent, 2, "burst-worker", 1).await;
    let detail = fallback[0]["detail"].as_str().unwrap();
    assert!(detail.contains("for the fallback"), "{detail}");
}

/// Runs `futures` at once on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}
