//! A stand-in for the agent at a socket's path, run by another uid: it
//! accepts connections, reads each until the client closes it (or 3 s of
//! silence) and counts the bytes. The agent's CLI and the Rust client must
//! check who serves a socket before they send anything; this is what they
//! are checked against (tests/it/trust/client_checks.rs,
//! clients/rust/tests/trust.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Debian's python3: other uids may run it (a python under /root may not
/// be).
pub const PYTHON: &str = "/usr/bin/python3";

/// Accepts connections at PATH (replacing what is there), reads each until
/// the client closes it or 3 s of silence, and once no new one came for 2 s
/// writes the number of bytes received in all to OUT (OUT.ready once it
/// listens). Shared with the Python client's tests.
const SCRIPT: &str = include_str!("../../tests/support/fake_listener.py");

/// The running listener; killed when dropped.
pub struct FakeListener {
    child: Child,
    /// The path it listens at.
    pub socket: PathBuf,
    out: PathBuf,
}

impl FakeListener {
    /// Runs the listener at `socket` with `python`: a command that runs
    /// [`PYTHON`] as the uid that is to serve the socket (which must be
    /// able to write in `socket`'s directory). Returns once it listens.
    pub fn start(mut python: Command, socket: &Path) -> FakeListener {
        let out = socket.with_extension("received");
        // Left by an earlier listener at the same path.
        let ready = out.with_extension("received.ready");
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&out);
        let mut child = python
            .arg("-c")
            .arg(SCRIPT)
            .arg(socket)
            .arg(&out)
            .spawn()
            .expect("run python3 as another uid");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the fake listener exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "the fake listener did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeListener {
            child,
            socket: socket.to_path_buf(),
            out,
        }
    }

    /// How many bytes the listener received on its one connection, once it
    /// is done with it.
    pub fn received(mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the fake listener did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = std::fs::read_to_string(&self.out).expect("the fake listener's count");
        got.trim().parse().unwrap()
    }
}

impl Drop for FakeListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
