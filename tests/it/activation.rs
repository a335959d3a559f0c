//! Running under systemd: socket activation (`LISTEN_FDS`), readiness
//! notification (`NOTIFY_SOCKET`), journal-friendly logs
//! (`JOURNAL_STREAM`) and `LoadCredential=` on `creds.sock`, each with the
//! real `keywardd`.
//!
//! No systemd is needed: the tests play its part. The passed socket reaches
//! fd 3 through a shell (`exec 3<&0`), so no `unsafe` `pre_exec` is needed.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A keywardd started by hand (its stdin may carry a socket), with its
/// stdout and stderr captured apart.
struct Agent {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The threads reading them.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn spawn(mut cmd: Command, stdin: Stdio) -> Agent {
        let mut child = cmd
            .env("KEYWARD_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keywardd");
        let (stdout, stderr) = (Arc::<Mutex<Vec<u8>>>::default(), Arc::<Mutex<Vec<u8>>>::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let out = stdout.clone();
        let pipe = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                if line.windows(5).any(|w| w == b"ready") {
                    let _ = ready_tx.send(());
                }
                let mut o = out.lock().unwrap();
                o.extend_from_slice(&line);
                o.push(b'\n');
            }
        });
        let err = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                err.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut agent = Agent {
            child: None,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ready_rx.recv_timeout(Duration::from_millis(20)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                join_within(&mut agent.readers, Duration::from_secs(5));
                panic!("keywardd exited with {status}: {}", agent.logs());
            }
            assert!(
                Instant::now() < deadline,
                "keywardd did not become ready: {}",
                agent.logs()
            );
        }
        agent.child = Some(child);
        agent
    }

    fn logs(&self) -> String {
        format!(
            "{}{}",
            text(&self.stdout.lock().unwrap()),
            text(&self.stderr.lock().unwrap())
        )
    }

    fn stderr(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    /// Waits (10 s at most) until the agent has logged `needle`: "ready"
    /// comes on stdout, the log on stderr, read by another thread.
    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the log: {}", self.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM; asserts it exits with success. Its output is all read by
    /// then.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child, Duration::from_secs(20));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        join_within(&mut self.readers, Duration::from_secs(5));
        let status = status.unwrap_or_else(|| panic!("the agent did not stop within 20 s of SIGTERM: {}", self.logs()));
        assert!(status.success(), "{status}: {}", self.logs());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        join_within(&mut self.readers, Duration::from_secs(5));
        // For the whole-suite leak scan, as TestAgent's output. (No panic
        // here: a poisoned buffer still holds what was read.)
        let mut output = self.stdout.lock().unwrap_or_else(|e| e.into_inner()).clone();
        output.extend_from_slice(&self.stderr.lock().unwrap_or_else(|e| e.into_inner()));
        keep_for_leak_scan("agent-output", &output);
    }
}

fn state_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("state");
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    dir
}

fn dev_command(dir: &Path) -> Command {
    let mut cmd = Command::new(KEYWARDD);
    cmd.arg("--dev").arg(dir);
    cmd
}

#[tokio::test]
async fn serves_the_socket_systemd_passed_and_leaves_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let keys_sock = dir.join("keys.sock");
    let listener = UnixListener::bind(&keys_sock).unwrap();
    let inode = std::fs::metadata(&keys_sock).unwrap().ino();

    // The socket arrives on stdin; the shell moves it to fd 3 and execs the
    // agent with LISTEN_PID set to its own pid (which the agent keeps).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=keys; exec \"$0\" --dev \"$1\"",
    ])
    .arg(KEYWARDD)
    .arg(&dir);
    let mut agent = Agent::spawn(cmd, Stdio::from(OwnedFd::from(listener)));
    agent.wait_for_log("passed by systemd");

    keep_for_leak_scan("secrets", b"sk_live_activated");
    let put = run_cli(
        Command::new(KEYWARD)
            .arg("--dev")
            .arg(&dir)
            .args(["put", "prod/billing-api"]),
        Some(b"sk_live_activated"),
    );
    assert!(put.status.success(), "{}", text(&put.stderr));
    let mut keys = keyward::proto::keys_client::KeysClient::new(keyward_client::channel(&keys_sock).await.unwrap());
    let set = keys
        .get_key(keyward::proto::GetKeyRequest {
            key: key("prod", "billing-api"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&set.primary.unwrap().secret[..], b"sk_live_activated");
    // The agent served the test's socket: it did not bind one of its own.
    assert_eq!(std::fs::metadata(&keys_sock).unwrap().ino(), inode);
    drop(keys);

    agent.stop();
    // systemd's socket stays; the admin socket the agent bound is removed.
    assert_eq!(std::fs::metadata(&keys_sock).unwrap().ino(), inode);
    assert!(!dir.join("admin.sock").exists());
}

#[test]
fn a_passed_fd_that_is_not_a_listening_socket_stops_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let file = std::fs::File::create(tmp.path().join("not-a-socket")).unwrap();
    let out = Command::new("sh")
        .args([
            "-c",
            "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" --dev \"$1\"",
        ])
        .arg(KEYWARDD)
        .arg(&dir)
        .stdin(Stdio::from(file))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("fd 3 (keys) is not a socket"), "{err}");
}

#[test]
fn ready_and_stopping_are_sent_to_notify_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    check_notifications(notify, dir, notify_path.into_os_string());
}

#[test]
fn notify_socket_may_be_abstract() {
    use std::os::linux::net::SocketAddrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let name = format!("keyward-test-notify-{}-{}", std::process::id(), rand::random::<u64>());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = UnixDatagram::bind_addr(&addr).unwrap();
    check_notifications(notify, dir, format!("@{name}").into());
}

fn check_notifications(notify: UnixDatagram, dir: PathBuf, address: std::ffi::OsString) {
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = dev_command(&dir);
    cmd.env("NOTIFY_SOCKET", address);
    let mut agent = Agent::spawn(cmd, Stdio::null());
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 received");
    let ready = text(&buf[..n]);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.lines().any(|l| l == "STATUS=serving 0 keys"), "{ready}");
    // Ready means served: keys.sock accepts at once.
    std::os::unix::net::UnixStream::connect(dir.join("keys.sock")).expect("keys.sock accepts after READY=1");

    agent.stop();
    let n = notify.recv(&mut buf).expect("STOPPING=1 received");
    assert_eq!(text(&buf[..n]), "STOPPING=1");
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let mut cmd = dev_command(&dir);
    cmd.env("JOURNAL_STREAM", "1:1");
    let mut agent = Agent::spawn(cmd, Stdio::null());
    agent.stop();
    let stderr = agent.stderr();
    assert!(
        stderr.lines().any(|l| l.starts_with("<6>") && l.contains("ready")),
        "{stderr}"
    );
    for line in stderr.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)),
            "no priority prefix: {line:?}"
        );
        // No timestamp (the journal adds its own): the log target follows
        // the prefix. And no colours.
        assert!(line[3..].starts_with("keyward"), "timestamp in {line:?}");
        assert!(!line.contains('\x1b'), "ANSI escape in {line:?}");
    }
}

#[test]
fn load_credential_serves_allowed_units_only_and_audits_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(tmp.path());
    let config = tmp.path().join("keyward.toml");
    std::fs::write(
        &config,
        "[sockets]\ncredentials = true\n\n[[grant]]\nunits = [\"billing.service\"]\nkeys = [\"prod/billing-api\"]\n",
    )
    .unwrap();
    let mut cmd = dev_command(&dir);
    cmd.arg("--config").arg(&config);
    let mut agent = Agent::spawn(cmd, Stdio::null());
    let creds_sock = dir.join("creds.sock");
    assert_eq!(
        std::fs::metadata(&creds_sock).unwrap().mode() & 0o777,
        0o600,
        "{}",
        agent.logs()
    );
    keep_for_leak_scan("secrets", b"sk_live_credential");
    let put = run_cli(
        Command::new(KEYWARD)
            .arg("--dev")
            .arg(&dir)
            .args(["put", "prod/billing-api"]),
        Some(b"sk_live_credential"),
    );
    assert!(put.status.success(), "{}", text(&put.stderr));

    assert_eq!(
        load_credential(&creds_sock, "billing.service", "prod.billing-api"),
        b"sk_live_credential"
    );
    // Another unit, an ungranted key, a malformed id: nothing written.
    assert_eq!(load_credential(&creds_sock, "web.service", "prod.billing-api"), b"");
    assert_eq!(load_credential(&creds_sock, "billing.service", "dev.billing-api"), b"");
    assert_eq!(load_credential(&creds_sock, "billing.service", "billing-api"), b"");

    agent.stop();
    assert!(!creds_sock.exists(), "the agent removes the creds.sock it bound");
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["event"] == "credential")
        .collect();
    let outcomes: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|r| {
            (
                r["caller"]["unit"].as_str().unwrap(),
                r["key"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("billing.service", "prod/billing-api", "ok"),
            ("web.service", "prod/billing-api", "denied"),
            ("billing.service", "dev/billing-api", "denied"),
            ("billing.service", "\"billing-api\"", "invalid_argument"),
        ],
        "{audit:?}"
    );
    assert!(audit[0]["versions"][0]["fingerprint"].is_string());
    assert_no_secret(
        "the audit log",
        &std::fs::read(dir.join("audit.jsonl")).unwrap(),
        &["sk_live_credential"],
    );
    assert_no_secret("the agent's output", agent.logs().as_bytes(), &["sk_live_credential"]);
}
