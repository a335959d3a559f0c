//! `call_with_fallback` against a real agent and a real HTTP server that
//! accepts only one of the key's two versions.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_client::{auth_rejection, CallError, Client};
use keyward_testkit::{eventually, TestAgent};

const WAIT: Duration = Duration::from_secs(5);

/// The `auth_failure` audit records of `key`'s `version`.
fn reports(agent: &TestAgent, key: &str, version: u64) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "auth_failure" && r["key"] == key && r["versions"][0]["version"] == version)
        .collect()
}

#[tokio::test]
async fn a_refused_primary_is_reported_and_the_fallback_is_used() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_old");
    agent.stage_raw("prod/billing-api", "sk_new");
    // The provider already switched to the staged key.
    let server = AuthServer::start("sk_new");
    let client = Client::connect_to(agent.keys_sock())
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
    let record = found.unwrap_or_else(|| panic!("no auth_failure record in {:#?}", agent.audit_lines()));
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
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/only", "sk_revoked");
    let server = AuthServer::start("something-else");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();

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
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/x", "a");
    agent.stage_raw("prod/x", "b");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
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
    assert!(agent.audit_lines().iter().all(|r| r["event"] != "auth_failure"));
}

/// An HTTP/1.1 server on 127.0.0.1 that answers 200 to
/// `Authorization: Bearer <accepted>` and 401 to anything else. Records the
/// tokens it was sent.
pub struct AuthServer {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl AuthServer {
    pub fn start(accepted: &str) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (accepted, log) = (accepted.to_string(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                answer(conn, &accepted, &log);
            }
        });
        AuthServer { addr, seen }
    }
}

fn answer(mut conn: TcpStream, accepted: &str, seen: &Mutex<Vec<String>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let token = request
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().trim_start_matches("Bearer ").to_string())
        })
        .unwrap_or_default();
    let ok = token == accepted;
    seen.lock().unwrap().push(token);
    let (status, body) = if ok {
        ("200 OK", "paid")
    } else {
        ("401 Unauthorized", "bad key")
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// An HTTP error with its status, as a service client would have.
#[derive(Debug)]
pub struct HttpError(pub u16);

impl keyward_client::HttpStatus for HttpError {
    fn http_status(&self) -> Option<u16> {
        Some(self.0)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.0)
    }
}

/// `GET /` with a bearer token; the body on 2xx.
pub async fn http_get(addr: std::net::SocketAddr, token: &str) -> Result<String, HttpError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|_| HttpError(0))?;
    let req = format!("GET / HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|_| HttpError(0))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.map_err(|_| HttpError(0))?;
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(HttpError(0))?;
    if !(200..300).contains(&status) {
        return Err(HttpError(status));
    }
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}
