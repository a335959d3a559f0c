//! `get` and its errors, against a real agent.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use keyward_client::{Client, Error, RotationState};
use keyward_testkit::TestAgent;

#[tokio::test]
async fn get_returns_the_exact_bytes_and_debug_hides_them() {
    let agent = TestAgent::start_traversable(None);
    // Leading/trailing spaces and a non-ASCII byte: nothing may be trimmed.
    let secret = " sk_live_ünïcode_42 ";
    agent.put_raw("prod/billing-api", secret);

    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let keys = client.get("prod/billing-api").await.unwrap();
    assert_eq!(keys.key, "prod/billing-api");
    assert_eq!(keys.state, RotationState::Steady);
    assert_eq!(keys.primary.version, 1);
    assert_eq!(keys.primary.secret.expose(), secret.as_bytes());
    assert_eq!(keys.primary.secret.expose_str().unwrap(), secret);
    assert!(!keys.primary.fingerprint.is_empty());
    assert!(keys.primary.created_at > std::time::UNIX_EPOCH);
    assert!(keys.fallback.is_none());

    let shown = format!("{keys:?} {keys:#?}");
    assert!(!shown.contains("sk_live"), "{shown}");
    assert!(shown.contains("Secret([redacted])"), "{shown}");
}

#[tokio::test]
async fn get_during_a_rotation_has_primary_and_fallback() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("dev/x", "old");
    agent.stage_raw("dev/x", "new");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let keys = client.get("dev/x").await.unwrap();
    assert_eq!(keys.state, RotationState::Staged);
    assert_eq!(keys.primary.secret.expose(), b"old");
    let fallback = keys.fallback.expect("staged key is the fallback");
    assert_eq!((fallback.version, fallback.secret.expose()), (2, &b"new"[..]));
}

#[tokio::test]
async fn unknown_and_malformed_keys() {
    let agent = TestAgent::start_traversable(None);
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    match client.get("prod/nope").await {
        Err(Error::NotFound(m)) => assert!(m.contains("prod/nope"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Caught by the client: not ENV/NAME at all.
    assert!(matches!(client.get("nope").await, Err(Error::InvalidKey(_))));
    // Caught by the agent: upper case is not allowed in names.
    match client.get("prod/Nope").await {
        Err(Error::InvalidKey(m)) => assert!(!m.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_agent_is_agent_unavailable_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keys.sock");
    let err = Client::connect_to(&socket).await.unwrap_err();
    assert!(
        matches!(&err, Error::AgentUnavailable { socket: s } if *s == socket),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("is keywardd running?"), "{msg}");
    assert!(
        msg.contains("KEYWARD_SOCKET") && msg.contains(&socket.display().to_string()),
        "{msg}"
    );

    // A stale socket file (the agent died) says the same.
    let agent_gone = {
        let mut a = TestAgent::start_traversable(None);
        let s = a.keys_sock();
        a.stop();
        std::os::unix::net::UnixListener::bind(&s).unwrap();
        s
    };
    let err = Client::connect_to(&agent_gone).await.unwrap_err();
    assert!(matches!(err, Error::AgentUnavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn the_socket_comes_from_keyward_socket_when_not_given() {
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("dev/env-var", "v");
    // The only test in this binary that sets it.
    std::env::set_var("KEYWARD_SOCKET", agent.keys_sock());
    let client = Client::connect().await.unwrap();
    assert_eq!(client.socket(), agent.keys_sock());
    assert_eq!(client.get("dev/env-var").await.unwrap().primary.secret.expose(), b"v");
}

const NOBODY: u32 = 65534;

/// Run by `another_uid_is_permission_denied` as uid 65534 (a copy of this
/// test binary): prints what `get` gave. Does nothing on its own.
#[tokio::test]
#[ignore = "helper: run as another uid by another_uid_is_permission_denied"]
async fn helper_get_as_other_uid() {
    let Ok(key) = std::env::var("KEYWARD_TEST_KEY") else {
        return;
    };
    let result = match Client::connect().await {
        Ok(c) => c.get(&key).await.map(|k| k.primary.version),
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => println!("RESULT ok v{v}"),
        Err(e @ Error::PermissionDenied(_)) => println!("RESULT PermissionDenied {e}"),
        Err(e) => println!("RESULT other {e:?}"),
    }
}

fn get_as_nobody(agent: &TestAgent, key: &str) -> String {
    let exe = agent.tmp().join("client-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&exe)
        .args(["--exact", "helper_get_as_other_uid", "--include-ignored", "--nocapture"])
        .env("KEYWARD_SOCKET", agent.keys_sock())
        .env("KEYWARD_TEST_KEY", key)
        .current_dir(agent.tmp())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"))
        .to_string()
}

#[tokio::test]
async fn another_uid_is_permission_denied() {
    // Only root can run a process as another uid.
    if !is_root() {
        eprintln!("skipped: needs root to run the client as uid {NOBODY}");
        return;
    }
    // The socket is 0660 root:root: uid 65534 cannot connect.
    let agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_live_nobody");
    let line = get_as_nobody(&agent, "prod/billing-api");
    assert!(line.starts_with("RESULT PermissionDenied"), "{line}");
    assert!(line.contains(&agent.keys_sock().display().to_string()), "{line}");

    // Its group may connect, but the policy grants it nothing: the agent's
    // message is kept.
    let agent = TestAgent::start_with_config("[sockets]\nservice_group = \"65534\"\nservice_mode = \"0660\"\n");
    agent.put_raw("prod/billing-api", "sk_live_nobody");
    let line = get_as_nobody(&agent, "prod/billing-api");
    assert!(line.starts_with("RESULT PermissionDenied"), "{line}");
    assert!(
        line.contains("uid 65534") && line.contains("prod/billing-api"),
        "{line}"
    );
    assert!(!line.contains("sk_live"), "{line}");
}

fn is_root() -> bool {
    // Without a libc dependency: the uid of this process, from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
