//! Real agents for the client's integration tests.
//!
//! Each test starts the workspace's `keywardd --dev DIR` in a fresh temp
//! directory, sets keys up and rotates them with the real `keyward` CLI,
//! and talks to the agent with this crate. The binaries belong to another
//! package, so `CARGO_BIN_EXE_*` cannot name them: they are taken from
//! `$KEYWARD_BIN_DIR`, else built once per test process into the
//! workspace's target directory (cargo's own lock on that directory keeps
//! concurrent builds apart).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The directory holding `keywardd` and `keyward`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("KEYWARD_BIN_DIR") {
            return PathBuf::from(d);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        // A no-op when they are fresh; rebuilds them after agent changes.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "keyward", "--bin", "keywardd", "--bin", "keyward"])
            .status()
            .expect("run cargo build for keywardd");
        assert!(status.success(), "cargo build --bin keywardd --bin keyward failed");
        target.join("debug")
    })
}

pub fn keywardd() -> PathBuf {
    bin_dir().join("keywardd")
}

pub fn keyward() -> PathBuf {
    bin_dir().join("keyward")
}

/// A dev-mode agent in a temp dir that other users may traverse.
pub struct Agent {
    pub dir: PathBuf,
    tmp: tempfile::TempDir,
    child: Option<Child>,
    config: Option<PathBuf>,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(None)
    }

    /// An agent with `toml` as its config file (on top of dev mode).
    pub fn start_with_config(toml: &str) -> Agent {
        Agent::start_with(Some(toml))
    }

    fn start_with(toml: Option<&str>) -> Agent {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = toml.map(|t| {
            let p = tmp.path().join("keyward.toml");
            std::fs::write(&p, t).unwrap();
            p
        });
        let mut a = Agent {
            dir,
            tmp,
            child: None,
            config,
        };
        a.spawn();
        a
    }

    /// The temp dir around the state dir (mode 0755).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("keys.sock")
    }

    /// Starts the agent on this dir and waits until its socket accepts.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(keywardd());
        cmd.arg("--dev").arg(&self.dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let log = std::fs::File::create(self.tmp.path().join("keywardd.log")).unwrap();
        let mut child = cmd
            .env("KEYWARD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn keywardd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("keywardd exited with {status}: {}", self.logs());
            }
            assert!(Instant::now() < deadline, "keywardd not ready: {}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGTERM (a clean shutdown that ends watch streams), and wait.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM keywardd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "keywardd did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("keywardd.log")).unwrap_or_default()
    }

    /// `keyward --dev DIR ARGS…` with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(keyward())
            .arg("--dev")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyward");
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "keyward {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn put(&self, key: &str, secret: &str) {
        self.ok(&["put", "--raw", key], secret.as_bytes());
    }
    pub fn stage(&self, key: &str, secret: &str) {
        self.ok(&["stage", "--raw", key], secret.as_bytes());
    }
    pub fn promote(&self, key: &str) {
        self.ok(&["promote", key], b"");
    }
    pub fn retire(&self, key: &str) {
        self.ok(&["retire", "--force", key], b"");
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`.
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
