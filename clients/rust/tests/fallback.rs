//! `call_with_fallback` against a real agent and a real HTTP server that
//! accepts only one of the key's two versions.

mod common;

use std::time::Duration;

use common::*;
use keyward_client::{auth_rejection, CallError, Client};

const WAIT: Duration = Duration::from_secs(5);

/// The `auth_failure` audit records of `key`'s `version`.
fn reports(agent: &Agent, key: &str, version: u64) -> Vec<serde_json::Value> {
    agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "auth_failure" && r["key"] == key && r["versions"][0]["version"] == version)
        .collect()
}

#[tokio::test]
async fn a_refused_primary_is_reported_and_the_fallback_is_used() {
    let agent = Agent::start();
    agent.put("prod/billing-api", "sk_old");
    agent.stage("prod/billing-api", "sk_new");
    // The provider already switched to the staged key.
    let server = AuthServer::start("sk_new");
    let client = Client::connect_to(agent.socket())
        .await
        .unwrap()
        .with_service("billing-worker");
    let handle = client.handle("prod/billing-api").await.unwrap();

    let body = client
        .call_with_fallback(
            &handle,
            |secret| {
                let token = secret.expose_str().unwrap().to_string();
                async move { http_get(server.addr, &token).await }
            },
            auth_rejection,
        )
        .await
        .unwrap();
    assert_eq!(body, "paid");
    assert_eq!(*server.seen.lock().unwrap(), ["sk_old", "sk_new"]);

    // The report is sent in the background: poll the audit log.
    let found = eventually(WAIT, || reports(&agent, "prod/billing-api", 1).into_iter().next()).await;
    let record = found.unwrap_or_else(|| panic!("no auth_failure record in {:#?}", agent.audit()));
    assert_eq!(record["versions"][0]["role"], "primary");
    let detail = record["detail"].as_str().unwrap();
    assert!(detail.contains("401") && detail.contains("billing-worker"), "{detail}");
    // Nothing was reported against the fallback, and no secret was logged.
    assert!(reports(&agent, "prod/billing-api", 2).is_empty());
    let log = std::fs::read_to_string(agent.dir.join("audit.jsonl")).unwrap();
    assert!(!log.contains("sk_old") && !log.contains("sk_new"));
}

#[tokio::test]
async fn by_key_name_and_without_fallback_the_refusal_is_returned() {
    let agent = Agent::start();
    agent.put("prod/only", "sk_revoked");
    let server = AuthServer::start("something-else");
    let client = Client::connect_to(agent.socket()).await.unwrap();

    let result = client
        .call_with_fallback(
            "prod/only",
            |secret| {
                let secret = secret.clone();
                async move { http_get(server.addr, secret.expose_str().unwrap()).await }
            },
            auth_rejection,
        )
        .await;
    match result {
        Err(CallError::Service(HttpError(401))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.seen.lock().unwrap().len(), 1);
    let found = eventually(WAIT, || reports(&agent, "prod/only", 1).into_iter().next()).await;
    assert!(found.is_some(), "refusal not reported");
}

#[tokio::test]
async fn other_errors_are_not_retried_or_reported() {
    let agent = Agent::start();
    agent.put("prod/x", "a");
    agent.stage("prod/x", "b");
    let client = Client::connect_to(agent.socket()).await.unwrap();
    let mut calls = 0;
    let result: Result<(), _> = client
        .call_with_fallback(
            "prod/x",
            |_| {
                calls += 1;
                async { Err(HttpError(503)) }
            },
            auth_rejection,
        )
        .await;
    assert!(matches!(result, Err(CallError::Service(HttpError(503)))));
    assert_eq!(calls, 1);

    // A key the agent does not have is the agent's error, not the service's.
    let missing: Result<(), CallError<HttpError>> = client
        .call_with_fallback("prod/none", |_| async { Ok(()) }, auth_rejection)
        .await;
    assert!(matches!(
        missing,
        Err(CallError::Keyward(keyward_client::Error::NotFound(_)))
    ));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.audit().iter().all(|r| r["event"] != "auth_failure"));
}
