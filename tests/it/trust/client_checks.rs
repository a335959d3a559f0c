//! The CLI checks who serves a socket before it sends anything: an attacker
//! who can write the runtime directory puts its own listener at
//! `admin.sock` or `keys.sock`, and an admin runs `keyward put` (a secret
//! on stdin) or `keyward get` against it. The CLI must refuse, name the uid
//! that serves the socket, and send not one byte; the listener counts what
//! it receives. With `KEYWARD_AGENT_UID` naming the listener's uid, the
//! same listener does receive the request: the count is real, and the
//! refusal is the uid check.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::fake_listener::{FakeListener, PYTHON};
use crate::common::system::{is_root, skip, SharedDir, Uid, SOCKET_GID};
use crate::common::{assert_no_secret, keep_for_leak_scan, run_cli, text, TestAgent};

/// The attacker: owns the runtime directory, runs the fake listener.
const ATTACKER: Uid = Uid {
    uid: 2031,
    gid: 2031,
    in_socket_group: false,
};
/// A caller outside the socket's group.
const OUTSIDER: Uid = Uid {
    uid: 2035,
    gid: 2035,
    in_socket_group: false,
};

/// The fake listener, run as [`ATTACKER`] at `dir/name`.
fn fake_listener(dir: &Path, name: &str) -> FakeListener {
    FakeListener::start(ATTACKER.command(PYTHON), &dir.join(name))
}

/// The attacker's runtime directory in `shared`, with the CLI copied
/// beside it.
fn attacker_dir(shared: &SharedDir) -> PathBuf {
    shared.owned_dir("run", ATTACKER)
}

fn assert_refused(out: &Output, socket: &Path) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the CLI talked to the fake agent: {stderr}");
    for part in [
        "uid 2031",
        "nothing was sent",
        "KEYWARD_AGENT_UID=2031",
        &socket.display().to_string(),
    ] {
        assert!(stderr.contains(part), "{part:?} missing in: {stderr}");
    }
}

#[test]
fn put_to_a_fake_admin_socket_sends_nothing() {
    if !is_root() {
        return skip("the attacker's listener runs as uid 2031: needs root");
    }
    let shared = SharedDir::new();
    let dir = attacker_dir(&shared);
    let fake = fake_listener(&dir, "admin.sock");
    let secret = "sk_live_typed_by_the_admin_7Qx2";
    keep_for_leak_scan("secrets", secret.as_bytes());

    let out = run_cli(
        std::process::Command::new(crate::common::KEYWARD)
            .arg("--admin-socket")
            .arg(&fake.socket)
            .args(["put", "prod/x"])
            .env_remove("KEYWARD_AGENT_UID"),
        Some(secret.as_bytes()),
    );
    let socket = fake.socket.clone();
    assert_eq!(fake.received(), 0, "the fake admin socket received bytes");
    assert_refused(&out, &socket);
    assert_no_secret("the CLI's stdout", &out.stdout, &[secret]);
    assert_no_secret("the CLI's stderr", &out.stderr, &[secret]);
}

#[test]
fn get_from_a_fake_service_socket_sends_nothing() {
    if !is_root() {
        return skip("the attacker's listener runs as uid 2031: needs root");
    }
    let shared = SharedDir::new();
    let dir = attacker_dir(&shared);
    let fake = fake_listener(&dir, "keys.sock");
    let out = run_cli(
        std::process::Command::new(crate::common::KEYWARD)
            .arg("--socket")
            .arg(&fake.socket)
            .args(["get", "prod/x"])
            .env_remove("KEYWARD_AGENT_UID"),
        None,
    );
    let socket = fake.socket.clone();
    assert_eq!(fake.received(), 0, "the fake service socket received bytes");
    assert_refused(&out, &socket);
}

#[test]
fn keyward_agent_uid_and_the_users_own_uid_are_trusted() {
    if !is_root() {
        return skip("the listener runs as uid 2031: needs root");
    }
    // The same listener, declared as the agent's uid: the CLI sends its
    // request (the listener then answers nothing, and the CLI fails).
    // (This also shows that the listener counts what it is sent.)
    let shared = SharedDir::new();
    let dir = attacker_dir(&shared);
    let fake = fake_listener(&dir, "keys.sock");
    let out = run_cli(
        std::process::Command::new(crate::common::KEYWARD)
            .arg("--socket")
            .arg(&fake.socket)
            .args(["get", "prod/x"])
            .env("KEYWARD_AGENT_UID", "2031"),
        None,
    );
    assert!(!text(&out.stderr).contains("nothing was sent"), "{}", text(&out.stderr));
    assert!(
        fake.received() > 0,
        "the listener received nothing from a client that trusts it"
    );

    // A listener of the CLI's own user (keywardd --dev run by that user) is
    // trusted too.
    let fake = fake_listener(&dir, "own.sock");
    let out = run_cli(
        ATTACKER
            .command(shared.cli())
            .arg("--socket")
            .arg(&fake.socket)
            .args(["get", "prod/x"])
            .env_remove("KEYWARD_AGENT_UID"),
        None,
    );
    assert!(!text(&out.stderr).contains("nothing was sent"), "{}", text(&out.stderr));
    assert!(
        fake.received() > 0,
        "the listener received nothing from its own user's CLI"
    );

    // A value that is not a uid is an error before any connection.
    let out = run_cli(
        std::process::Command::new(crate::common::KEYWARD)
            .arg("--socket")
            .arg(dir.join("none.sock"))
            .args(["get", "prod/x"])
            .env("KEYWARD_AGENT_UID", "keyward"),
        None,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("KEYWARD_AGENT_UID=\"keyward\" is not a uid"),
        "{stderr}"
    );
}

#[test]
fn permission_denied_names_the_sockets_group_or_its_owner() {
    if !is_root() {
        return skip("runs the CLI as uid 2035: needs root");
    }
    let shared = SharedDir::new();
    let cli = shared.cli();
    let agent = TestAgent::start_system_shared("", "");
    // keys.sock is 0660 root:2100 (a gid with no name here): uid 2035 is
    // not in it.
    let out = agent.cli_as(OUTSIDER, &cli, &["get", "prod/x"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("add this user to the socket's group (gid {SOCKET_GID})")),
        "{stderr}"
    );
    // admin.sock is 0600 root: no group to join.
    let admin = agent.admin_sock();
    let out = agent.cli_as(OUTSIDER, &cli, &["--admin-socket", admin.to_str().unwrap(), "status"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("its mode (0600) lets only its owner connect: run as root"),
        "{stderr}"
    );
}
