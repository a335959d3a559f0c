//! keyward's test kit: a real agent on temp sockets, and the servers
//! around it, for the agent's integration tests (`tests/it`), the Rust
//! client's tests (`clients/rust/tests`) and the benches (`benches/`).
//!
//! Each test starts the real `keywardd` binary in dev mode in a fresh temp
//! directory ([`TestAgent`]) and talks to it with the real `keyward` CLI or
//! a gRPC client. Everything the agent prints is captured, so tests can
//! check that no secret ever reaches its output. The binaries are built
//! before the tests run, never by them: [`bins`] says how they are found.
//!
//! Beside the agent: [`system`] (other uids, cgroups, helper processes, for
//! the trust tests), [`fake_listener`] (another uid at a socket's path), [`openbao`] (a real OpenBao server), [`smtp`],
//! [`receiver`] and [`provider`] (an SMTP server, an alert receiver and an
//! API provider on loopback), [`log`] (the in-process `tracing` log),
//! [`tools`] (the test venv's Python, waiting for children) and [`bench`]
//! (what the benches measure with).

#![forbid(unsafe_code)]

pub mod bench;
pub mod bins;
pub mod fake_listener;
pub mod log;
pub mod openbao;
pub mod provider;
pub mod receiver;
pub mod server_thread;
pub mod smtp;
pub mod system;
pub mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward::proto::{admin_client::AdminClient, keys_client::KeysClient};
use tonic::transport::Channel;
pub use tools::{terminate, wait_timeout};

/// How long a [`TestAgent`] that has exited waits for the threads reading
/// its output: they end as soon as its pipes close, unless a process it
/// started (a hook) still holds them.
const OUTPUT_LIMIT: Duration = Duration::from_secs(5);

/// A running agent and its temp directory.
pub struct TestAgent {
    pub dir: PathBuf,
    tmp: tempfile::TempDir,
    pub child: Option<Child>,
    output: Arc<Mutex<Vec<u8>>>,
    /// The threads reading the stdout and stderr of each agent started.
    readers: Vec<JoinHandle<()>>,
    config: Option<PathBuf>,
}

impl TestAgent {
    /// An agent, not started, with its state in `dir` inside `tmp` (removed
    /// with it) and its config file if any.
    fn new(tmp: tempfile::TempDir, dir: PathBuf, config: Option<PathBuf>) -> TestAgent {
        TestAgent {
            dir,
            tmp,
            child: None,
            output: Arc::default(),
            readers: Vec::new(),
            config,
        }
    }

    /// A dev-mode agent in a fresh temp dir.
    pub fn start() -> TestAgent {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let mut a = TestAgent::new(tmp, dir, None);
        a.spawn().expect("agent starts");
        a
    }

    /// A dev-mode agent with a config file (written into the temp dir), in
    /// a state dir that other uids may traverse.
    pub fn start_with_config(toml: &str) -> TestAgent {
        TestAgent::start_traversable(Some(toml))
    }

    /// A dev-mode agent, with `toml` as its config file if given, in a temp
    /// dir and state dir that other uids may traverse (mode 0755): for tests
    /// that run a client as another uid, or a copy of a program from
    /// [`TestAgent::tmp`].
    pub fn start_traversable(toml: Option<&str>) -> TestAgent {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = toml.map(|toml| {
            let config = tmp.path().join("keyward.toml");
            std::fs::write(&config, toml).unwrap();
            config
        });
        let mut a = TestAgent::new(tmp, dir, config);
        a.spawn().expect("agent starts");
        a
    }

    /// A dev-mode agent whose identity already exists (made by `keyward
    /// init`), not started: its recipient can go into the configs of a
    /// fleet before any agent starts. Start it with [`TestAgent::launch`].
    pub fn prepare() -> TestAgent {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        TestAgent::initialized(tmp)
    }

    /// An agent, not started, whose state dir `state/` in `tmp` is made by
    /// `keyward init`, with `keyward.toml` beside it as its config file.
    fn initialized(tmp: tempfile::TempDir) -> TestAgent {
        let dir = tmp.path().join("state");
        let out = run_cli(
            Command::new(bins::keyward()).args(["init", "--state-dir"]).arg(&dir),
            None,
        );
        assert!(out.status.success(), "keyward init: {}", text(&out.stderr));
        let config = tmp.path().join("keyward.toml");
        TestAgent::new(tmp, dir, Some(config))
    }

    /// Writes `toml` as the config of a [`TestAgent::prepare`]d agent and
    /// starts it in dev mode.
    pub fn launch(&mut self, toml: &str) {
        std::fs::write(self.config.as_ref().expect("a config file"), toml).unwrap();
        self.spawn().expect("agent starts");
    }

    /// The command that starts this agent (also used to start a second one).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bins::keywardd());
        cmd.arg("--dev").arg(&self.dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("KEYWARD_LOG", "debug");
        cmd
    }

    /// Starts (or restarts) the agent and waits until it says it is ready.
    pub fn spawn(&mut self) -> Result<(), String> {
        self.spawn_with(self.command())
    }

    /// Starts `cmd` as this agent and waits until it is ready.
    pub fn spawn_with(&mut self, mut cmd: Command) -> Result<(), String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keywardd");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let out = self.output.clone();
        let stdout = child.stdout.take().unwrap();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if line.windows(5).any(|w| w == b"ready") {
                    let _ = ready_tx.send(());
                }
                let mut o = out.lock().unwrap();
                o.extend_from_slice(&line);
                o.push(b'\n');
            }
        }));
        let out = self.output.clone();
        let mut stderr = child.stderr.take().unwrap();
        self.readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                self.join_output();
                return Err(format!("keywardd exited with {status}: {}", self.logs()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.join_output();
                panic!("keywardd did not become ready: {}", self.logs());
            }
        }
    }

    /// The temp dir around the state dir [`TestAgent::dir`], removed when
    /// the agent is dropped.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn keys_sock(&self) -> PathBuf {
        self.dir.join("keys.sock")
    }
    pub fn admin_sock(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    pub fn audit_file(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the agent printed (stdout and stderr) so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits ([`OUTPUT_LIMIT`] at most) until the threads reading the
    /// agent's output have read all of it: call it once the agent has
    /// exited, before looking at [`TestAgent::logs`] (`stop` and `kill9`
    /// do). Readers still held up then (a hook of the agent's still holds
    /// its pipes) are left running.
    pub fn join_output(&mut self) {
        join_within(&mut self.readers, OUTPUT_LIMIT);
    }

    /// Runs `keyward --dev DIR ARGS…`, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        if let (Some(&"put" | &"stage"), Some(secret)) = (args.first(), stdin) {
            keep_for_leak_scan("secrets", secret);
        }
        run_cli(
            Command::new(bins::keyward()).arg("--dev").arg(&self.dir).args(args),
            stdin,
        )
    }

    /// Stores a key through the CLI and asserts it worked.
    pub fn put(&self, key: &str, secret: &str) {
        let out = self.cli(&["put", key], Some(secret.as_bytes()));
        assert!(
            out.status.success(),
            "put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.cli(args, stdin);
        assert!(out.status.success(), "keyward {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Stores `secret` as `key`, byte for byte (`put --raw`: no trailing
    /// newline is taken off).
    pub fn put_raw(&self, key: &str, secret: &str) {
        self.ok(&["put", "--raw", key], Some(secret.as_bytes()));
    }

    /// Stages `secret` for `key`, byte for byte (`stage --raw`).
    pub fn stage_raw(&self, key: &str, secret: &str) {
        self.ok(&["stage", "--raw", key], Some(secret.as_bytes()));
    }

    /// Promotes the staged key of `key`.
    pub fn promote(&self, key: &str) {
        self.ok(&["promote", key], None);
    }

    /// Retires the fallback of `key` at once (`retire --force`).
    pub fn retire(&self, key: &str) {
        self.ok(&["retire", "--force", key], None);
    }

    /// SIGTERM and wait; returns the exit status. Everything the agent
    /// printed is in [`TestAgent::logs`] by then.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child, Duration::from_secs(20));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_output();
        status.unwrap_or_else(|| panic!("the agent did not stop within 20 s of SIGTERM: {}", self.logs()))
    }

    /// SIGKILL and wait (and for its output, as [`TestAgent::stop`]).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.join_output();
    }

    pub async fn keys(&self) -> KeysClient<Channel> {
        KeysClient::new(
            keyward_client::channel(&self.keys_sock())
                .await
                .expect("connect keys.sock"),
        )
    }

    /// One GetKey on a fresh connection.
    pub async fn fetch(&self, env: &str, name: &str) -> Result<keyward::proto::KeySet, tonic::Status> {
        let request = keyward::proto::GetKeyRequest { key: key(env, name) };
        self.keys().await.get_key(request).await.map(|r| r.into_inner())
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(
            keyward_client::channel(&self.admin_sock())
                .await
                .expect("connect admin.sock"),
        )
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_output();
        keep_for_leak_scan("agent-output", &self.output.lock().unwrap_or_else(|e| e.into_inner()));
        if let Ok(audit) = std::fs::read(self.audit_file()) {
            keep_for_leak_scan("audit", &audit);
        }
    }
}

/// With `KEYWARD_LEAK_DIR` set (scripts/test sets it), every secret a test
/// puts or stages, and every agent's output and audit log, are kept there:
/// after the whole suite, tests/support/leak_scan.py looks for each secret
/// in every output and log. [`TestAgent::cli`] keeps what `put` and `stage`
/// read; a test that sends a secret another way (gRPC, its own `keyward`
/// command) calls this with kind `"secrets"`.
pub fn keep_for_leak_scan(kind: &str, bytes: &[u8]) {
    static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(dir) = std::env::var_os("KEYWARD_LEAK_DIR").map(PathBuf::from) else {
        return;
    };
    let dir = dir.join(kind);
    let n = KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{}-{n}", std::process::id())), bytes);
    }
}

pub fn run_cli(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward");
    if let Some(data) = stdin {
        // The command may exit before reading (a usage error): EPIPE is fine.
        let _ = child.stdin.take().unwrap().write_all(data);
    }
    child.wait_with_output().unwrap()
}

/// Joins the threads of `threads` that end within `limit` (all together);
/// those still running then are left to run, detached. True when all ended.
pub fn join_within(threads: &mut Vec<JoinHandle<()>>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let all = threads.iter().all(|t| t.is_finished());
    for thread in threads.drain(..) {
        if thread.is_finished() {
            // A reader that panicked lost output; the test will say what
            // it misses.
            let _ = thread.join();
        }
    }
    all
}

/// Polls `f` until it returns `Some`, every 50 ms for at most `limit`;
/// `None` when it never did.
pub async fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts that none of `secrets` occurs in `haystack` (named `what`). The
/// failure names the secret by its place in `secrets` and its
/// [`fingerprint`], never by its value: panic messages are output too.
pub fn assert_no_secret(what: &str, haystack: &[u8], secrets: &[&str]) {
    for (i, s) in secrets.iter().enumerate() {
        assert!(
            !haystack.windows(s.len()).any(|w| w == s.as_bytes()),
            "secret #{i} ({}) leaked into {what}",
            fingerprint(s.as_bytes())
        );
    }
}

/// What a test prints instead of a secret: the first 8 hex digits of its
/// SHA-256, enough to tell two test secrets apart.
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", &hex::encode(sha2::Sha256::digest(secret))[..8])
}

/// Every path under `dir` (not `dir` itself), directories included, at any
/// depth, in no order. Symlinks are listed, never followed. A missing or
/// unreadable directory has none.
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir).into_iter().map(|(path, _)| path).collect()
}

/// The paths under `dir` that are not directories (files, symlinks,
/// sockets, FIFOs), at any depth, as [`paths_under`].
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir)
        .into_iter()
        .filter(|(_, is_dir)| !is_dir)
        .map(|(path, _)| path)
        .collect()
}

/// Every path under `dir` and whether it is a directory.
fn entries_under(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            // The entry's own type: a symlink to a directory is not one.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                todo.push(path.clone());
            }
            found.push((path, is_dir));
        }
    }
    found
}

pub fn key(env: &str, name: &str) -> Option<keyward::proto::KeyRef> {
    Some(keyward::proto::KeyRef {
        environment: env.into(),
        name: name.into(),
    })
}

/// Copies the CLI where uid 65534 can run it (the build tree may not be
/// reachable by other users).
pub fn cli_for_other_users(dir: &Path) -> PathBuf {
    let dest = dir.join("keyward-cli");
    std::fs::copy(bins::keyward(), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

// Helpers for system-mode agents and config reloads (tests/it/watch.rs).

impl TestAgent {
    /// A system-mode agent (no `--dev`: the config's policy alone decides who
    /// reads what), its state, sockets and audit log in the temp dir's
    /// `state/` prepared by `keyward init`. `toml` follows the path settings
    /// in its config file; write it again with [`TestAgent::rewrite_config`].
    pub fn start_system(toml: &str) -> TestAgent {
        let mut a = TestAgent::initialized(tempfile::tempdir().expect("tempdir"));
        a.rewrite_config(toml);
        let cmd = a.system_command();
        a.spawn_with(cmd).expect("agent starts");
        a
    }

    /// `keywardd --config FILE` (system mode) for this agent's config file.
    pub fn system_command(&self) -> Command {
        let mut cmd = Command::new(bins::keywardd());
        cmd.arg("--config").arg(self.config.as_ref().expect("a config file"));
        cmd.env("KEYWARD_LOG", "debug");
        cmd
    }

    /// Replaces the config file of a [`TestAgent::start_system`] agent with
    /// its path settings followed by `toml`.
    pub fn rewrite_config(&self, toml: &str) {
        let dir = self.dir.display();
        let text = format!(
            "state_dir = \"{dir}\"\nruntime_dir = \"{dir}\"\naudit_file = \"{dir}/audit.jsonl\"\nlock_memory = false\n{toml}"
        );
        std::fs::write(self.config.as_ref().expect("a config file"), text).unwrap();
    }

    /// Replaces the config file of an agent started with one in dev mode
    /// ([`TestAgent::start_with_config`]) with `toml`, as it is;
    /// [`TestAgent::sighup`] makes the agent load it.
    pub fn replace_config(&self, toml: &str) {
        std::fs::write(self.config.as_ref().expect("a config file"), toml).unwrap();
    }

    /// Sends SIGHUP: the agent reloads its config.
    pub fn sighup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }
}

// Helpers shared by the reliability tests (RELIABILITY.md).

impl TestAgent {
    /// The agent's status over the admin socket.
    pub async fn status(&self) -> keyward::proto::AgentStatus {
        self.admin()
            .await
            .get_status(keyward::proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// The agent's age recipient, from the public key line of its identity.
    pub fn recipient(&self) -> age::x25519::Recipient {
        use std::str::FromStr;
        let text = std::fs::read_to_string(self.dir.join("identity.txt")).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("identity has a public key line");
        age::x25519::Recipient::from_str(line.trim()).unwrap()
    }
}

impl TestAgent {
    /// The agent's public fleet signing key (`ed25519:…`), from the public
    /// key line of its `signing.key` (made by `keyward init`).
    pub fn signing_key(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("signing.key")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("signing key has a public key line")
            .trim()
            .to_owned()
    }

    /// This agent's `[[backend.member]]` entry, named `name`.
    pub fn member_entry(&self, name: &str) -> String {
        format!(
            "[[backend.member]]\nname = {name:?}\nrecipient = \"{}\"\nsigning_key = {:?}\n",
            self.recipient(),
            self.signing_key()
        )
    }
}

/// `plaintext` encrypted to `recipient`, as `age -r` writes it.
pub fn encrypt_to(recipient: &age::x25519::Recipient, plaintext: &[u8]) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
    let mut out = vec![];
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(plaintext).unwrap();
    w.finish().unwrap();
    out
}

/// `name` from the environment (a long run's setting), or `default`.
pub fn param<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// A process's resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How many file descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Connects to `creds.sock` the way systemd does for `LoadCredential=`:
/// from the abstract address `@<random>/unit/<unit>/<id>`; reads to EOF.
pub fn load_credential(creds_sock: &Path, unit: &str, id: &str) -> Vec<u8> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let random = format!("{:016x}", rand::random::<u64>());
    let name = format!("{random}/unit/{unit}/{id}");
    bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes()).unwrap()).unwrap();
    connect(fd.as_raw_fd(), &UnixAddr::new(creds_sock).unwrap()).unwrap();
    let mut stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    got
}

/// GET /metrics from an agent's metrics listener on the Unix socket
/// `sock`: the body (the status must be 200).
pub fn scrape(sock: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}
