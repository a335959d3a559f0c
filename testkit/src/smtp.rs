//! A real SMTP server on loopback, for the alert-sink tests.
//!
//! [`SmtpServer::start`] runs `tests/support/smtp_server.py` (aiosmtpd) with
//! the test venv's Python: on 127.0.0.1, on a port the kernel picks, with
//! STARTTLS or implicit TLS under a throwaway CA (its certificate is written
//! for the test to trust), and AUTH with [`USER`] / [`PASSWORD`] when asked.
//! Every message it accepts is written as a JSON file, which
//! [`SmtpServer::wait_for`] reads back as [`Mail`].
//!
//! The Python comes from `KEYWARD_TEST_PYTHON` (set by `scripts/test`); when
//! that is unset, the venv is made in `target/test-venv`, exactly as
//! `scripts/test` makes it ([`super::tools::test_python`]). A test never
//! skips for want of Python: it fails and says what to install.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The login the server accepts.
pub const USER: &str = "keyward-alerts";
/// Its password (given to the server through its environment).
pub const PASSWORD: &str = "smtp-Pa55-for-tests";

/// How long the server may take to start (a cold Python import of
/// cryptography is the slow part).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server offers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmtpOptions {
    /// Offer STARTTLS, and require it before MAIL and AUTH.
    pub starttls: bool,
    /// TLS from the first byte (SMTPS).
    pub implicit_tls: bool,
    /// Require AUTH with [`USER`] and [`PASSWORD`].
    pub auth: bool,
}

/// One message the server accepted.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`).
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`).
    pub rcpt_tos: Vec<String>,
    /// The decoded `Subject:` header.
    pub subject: String,
    /// The `From:` header.
    pub from: String,
    /// The `To:` header.
    pub to: String,
    /// `text/plain`, …
    pub content_type: String,
    /// The decoded plain-text body.
    pub body: String,
    /// Whether the connection was encrypted when the message came.
    pub tls: bool,
    /// The login used, if any.
    pub auth_user: Option<String>,
}

/// A running server; killed when dropped.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The PEM certificate of the CA that signed its certificate (present
    /// when it speaks TLS).
    pub ca_file: PathBuf,
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: ChildStdin,
    spool: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts a server with `options` and waits until it accepts
    /// connections.
    pub fn start(options: SmtpOptions) -> SmtpServer {
        let dir = tempfile::tempdir().expect("temp dir for the SMTP server");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let ca_file = dir.path().join("ca.pem");
        let script = super::tools::workspace_root().join("tests/support/smtp_server.py");
        let mut command = Command::new(super::tools::test_python());
        command
            .arg(&script)
            .arg("--spool")
            .arg(&spool)
            .arg("--ca-out")
            .arg(&ca_file)
            .arg("--user")
            .arg(USER)
            .env("SMTP_TEST_PASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if options.starttls {
            command.arg("--starttls");
        }
        if options.implicit_tls {
            command.arg("--implicit-tls");
        }
        if options.auth {
            command.arg("--auth");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read the READY line on a thread, so that a server that never
        // prints it fails the test after START_TIMEOUT instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("the SMTP test server did not start (got {other:?}, exit {status:?}); its stderr is above");
            }
        };
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the SMTP test server printed {line:?} instead of READY <port>"));
        SmtpServer {
            port,
            ca_file,
            child,
            _stdin: stdin,
            spool,
            _dir: dir,
        }
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// [`SmtpServer::wait_for`] for async tests: waits without blocking
    /// the caller's runtime (whose tasks may be the ones sending).
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP server got {} message(s) within {timeout:?}, expected {n}: {messages:#?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Blocks until `n` messages have come (or fails the test after
    /// `timeout`), and returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP server got {} message(s) within {timeout:?}, expected {n}: {messages:#?}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
