//! `watch` and `KeyHandle`, against a real agent that rotates and restarts.

use std::sync::Arc;
use std::time::Duration;

use keyward_client::{Client, Error, KeyHandle, KeySet, RotationState};
use keyward_testkit::{eventually, TestAgent};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(15);

/// Waits until the handle's state satisfies `ok`.
async fn until(h: &mut KeyHandle, ok: impl Fn(&KeySet) -> bool) -> Arc<KeySet> {
    let found = tokio::time::timeout(WAIT, async {
        let mut state = h.current();
        while !ok(&state) {
            state = h.changed().await.unwrap();
        }
        state
    })
    .await;
    found.unwrap_or_else(|_| panic!("handle still at {:?}", h.current()))
}

#[tokio::test]
async fn watch_sees_a_rotation() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_v1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let mut changes = client.watch(&["prod/billing-api"]).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(WAIT, changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };

    let first = next().await;
    assert_eq!((first.state, first.primary.version), (RotationState::Steady, 1));
    assert_eq!(first.primary.secret.expose(), b"sk_v1");

    agent.stage_raw("prod/billing-api", "sk_v2");
    let staged = next().await;
    assert_eq!(staged.state, RotationState::Staged);
    assert_eq!(staged.primary.secret.expose(), b"sk_v1");
    assert_eq!(staged.fallback.as_ref().unwrap().secret.expose(), b"sk_v2");
    assert!(staged.generation > first.generation);

    agent.promote("prod/billing-api");
    let promoted = next().await;
    assert_eq!(promoted.state, RotationState::Promoted);
    assert_eq!(
        (promoted.primary.version, promoted.primary.secret.expose()),
        (2, &b"sk_v2"[..])
    );
    assert_eq!(promoted.fallback.as_ref().unwrap().version, 1);
}

#[tokio::test]
async fn watch_of_a_missing_key_is_not_found() {
    let agent = TestAgent::start_traversable(None);
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    match client.watch(&["prod/none"]).await {
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(mut s) => assert!(matches!(s.next().await, Some(Err(Error::NotFound(_))))),
    }
    // A handle fails at once instead of waiting out its timeout.
    let started = std::time::Instant::now();
    assert!(matches!(client.handle("prod/none").await, Err(Error::NotFound(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}

// Multi-threaded: `TestAgent::stop` blocks its thread, and the client must
// keep answering the agent's GOAWAY meanwhile, or the agent waits out its
// shutdown grace for this connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_follows_a_rotation_and_survives_an_agent_restart() {
    let mut agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_v1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let mut h = client.handle("prod/billing-api").await.unwrap();
    assert_eq!(h.key(), "prod/billing-api");
    assert_eq!(h.current().primary.secret.expose(), b"sk_v1");

    agent.stage_raw("prod/billing-api", "sk_v2");
    agent.promote("prod/billing-api");
    let promoted = until(&mut h, |k| k.primary.version == 2).await;
    assert_eq!(promoted.primary.secret.expose(), b"sk_v2");
    assert_eq!(promoted.state, RotationState::Promoted);

    // The agent goes away: the handle keeps its last state meanwhile.
    agent.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.current().primary.version, 2);
    assert!(client.get("prod/billing-api").await.is_err());

    // Back on the same dir; the rotation goes on and the handle follows it.
    agent.spawn().expect("agent restarts");
    agent.retire("prod/billing-api");
    let retired = until(&mut h, |k| k.state == RotationState::Steady).await;
    assert_eq!(retired.primary.version, 2);
    assert!(retired.fallback.is_none());
    agent.stage_raw("prod/billing-api", "sk_v3");
    agent.promote("prod/billing-api");
    let third = until(&mut h, |k| k.primary.version == 3).await;
    assert_eq!(third.primary.secret.expose(), b"sk_v3");
    // The plain client reconnected too.
    assert_eq!(client.get("prod/billing-api").await.unwrap().primary.version, 3);
}

/// The number of live watch subscribers of `key`, from `keyward rotation-status`.
fn subscribers(agent: &TestAgent, key: &str) -> usize {
    let out = agent.ok(&["rotation-status", key], None);
    out.lines()
        .find_map(|l| l.trim().strip_prefix("subscribers: "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no subscriber count in {out}"))
}

#[tokio::test]
async fn dropping_every_handle_ends_its_watch() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("dev/x", "v1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let h = client.handle("dev/x").await.unwrap();
    let copy = h.clone();
    assert_eq!(subscribers(&agent, "dev/x"), 1);
    drop(h);
    // A clone keeps it alive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(subscribers(&agent, "dev/x"), 1);
    assert_eq!(copy.current().primary.secret.expose(), b"v1");
    drop(copy);
    let gone = eventually(WAIT, || (subscribers(&agent, "dev/x") == 0).then_some(())).await;
    assert!(gone.is_some(), "the watch is still subscribed");
}

// Multi-threaded: `TestAgent::stop` blocks its thread, and the client must
// keep answering the agent's GOAWAY meanwhile, or the agent waits out its
// shutdown grace for this connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_waits_for_an_agent_that_is_starting() {
    let mut agent = TestAgent::start_traversable(None);
    agent.put_raw("dev/late", "v1");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    agent.stop();
    // No agent and a short wait: the error says the agent is not there.
    let err = client
        .handle_with_timeout("dev/late", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AgentUnavailable { .. }), "{err:?}");
    // The agent comes up while the handle waits.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.handle("dev/late").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.spawn().expect("agent restarts");
    let h = waiting.await.unwrap().unwrap();
    assert_eq!(h.current().primary.secret.expose(), b"v1");
}
