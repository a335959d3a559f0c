//! The client checks who serves the socket before it sends anything: a
//! listener run by another uid at the socket's path (say, in a runtime
//! directory that uid can write) gets no request, on the first connection
//! and on a reconnection after the agent went away. Needs root, to run the
//! listener as another uid; skipped otherwise.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_client::{Client, Error};
use keyward_testkit::fake_listener::{FakeListener, PYTHON};
use keyward_testkit::TestAgent;

/// The uids of the fake listeners.
const ATTACKER: u32 = 2034;
const RECONNECT_ATTACKER: u32 = 2036;

/// The fake listener, run as `uid` at `socket`, in `socket`'s directory,
/// which `uid` owns.
fn fake_listener(uid: u32, socket: &Path) -> FakeListener {
    let mut python = Command::new(PYTHON);
    python.uid(uid).gid(uid);
    FakeListener::start(python, socket)
}

/// A directory owned by `uid` (0755) in a temp dir others may enter.
fn owned_dir(tmp: &Path, uid: u32) -> PathBuf {
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    dir
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn assert_untrusted(err: &Error, socket: &Path, uid: u32) {
    match err {
        Error::UntrustedSocket { socket: s, uid: u, .. } => {
            assert_eq!((s.as_path(), *u), (socket, uid), "{err}");
        }
        other => panic!("expected UntrustedSocket, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        format!("uid {uid}"),
        "nothing was sent".to_string(),
        format!("KEYWARD_AGENT_UID={uid}"),
    ] {
        assert!(msg.contains(&part), "{part:?} missing in: {msg}");
    }
}

#[tokio::test]
async fn a_socket_served_by_another_uid_gets_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run the fake listener as uid {ATTACKER}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let socket = owned_dir(tmp.path(), ATTACKER).join("keys.sock");

    let fake = fake_listener(ATTACKER, &socket);
    let result = Client::connect_to(&socket).await;
    assert_eq!(fake.received(), 0, "the fake listener received bytes");
    assert_untrusted(&result.unwrap_err(), &socket, ATTACKER);

    // Told that the agent runs as that uid, the client does talk to it:
    // the listener counts what it is sent.
    let fake = fake_listener(ATTACKER, &socket);
    let client = Client::connect_trusting(&socket, ATTACKER).await.unwrap();
    assert!(client.get("prod/x").await.is_err(), "the fake listener answers nothing");
    assert!(fake.received() > 0, "a trusted listener received nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_to_another_uid_sends_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run the fake listener as uid {RECONNECT_ATTACKER}");
        return;
    }
    // The client is given a path in a directory another uid owns; at
    // first it leads to the real agent.
    let mut agent = TestAgent::start_traversable(None);
    agent.put_raw("prod/billing-api", "sk_before_the_swap");
    let link = owned_dir(agent.tmp(), RECONNECT_ATTACKER).join("keys.sock");
    std::os::unix::fs::symlink(agent.keys_sock(), &link).unwrap();
    let client = Client::connect_to(&link).await.unwrap();
    let keys = client.get("prod/billing-api").await.unwrap();
    assert_eq!(keys.primary.secret.expose(), b"sk_before_the_swap");

    // The agent goes away and that uid puts its own listener there: the
    // channel's next connection is refused before the request is sent.
    agent.stop();
    let fake = fake_listener(RECONNECT_ATTACKER, &link);
    let result = client.get("prod/billing-api").await;
    assert_eq!(fake.received(), 0, "the fake listener received bytes");
    assert_untrusted(&result.unwrap_err(), &link, RECONNECT_ATTACKER);
}
