//! The programs the tests run besides keyward, and waiting for them: the
//! test venv's Python (OpenBao's `bao` sits beside it), and waiting for or
//! stopping a child process within a time limit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's root (this crate sits in its `testkit/`): where
/// `tests/requirements.txt`, `tests/support/` and `target/` are.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The Python that has the test requirements: `KEYWARD_TEST_PYTHON`, or the
/// venv `target/test-venv`, made (once per process, under a file lock across
/// processes) if it is missing or older than `tests/requirements.txt`.
pub fn test_python() -> PathBuf {
    if let Some(python) = std::env::var_os("KEYWARD_TEST_PYTHON") {
        let python = PathBuf::from(python);
        assert!(
            python.exists(),
            "KEYWARD_TEST_PYTHON={} does not exist: unset it to let the tests make target/test-venv, or run scripts/test",
            python.display()
        );
        return python;
    }
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

/// Makes (or reuses) `target/test-venv`, the way `scripts/test` does: the
/// venv is current when its `requirements.stamp` equals
/// `tests/requirements.txt`.
fn make_venv() -> PathBuf {
    let root = workspace_root();
    let venv = root.join("target/test-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.stamp");
    let requirements_path = root.join("tests/requirements.txt");
    let requirements = std::fs::read(&requirements_path).expect("tests/requirements.txt");
    std::fs::create_dir_all(root.join("target")).unwrap();
    let lock = File::create(root.join("target/test-venv.lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock target/test-venv.lock: {e}"));
    if python.exists() && std::fs::read(&stamp).ok().as_deref() == Some(requirements.as_slice()) {
        return python;
    }
    eprintln!("making the test venv target/test-venv (KEYWARD_TEST_PYTHON is not set) …");
    let _ = std::fs::remove_dir_all(&venv);
    let run = |what: &str, command: &mut Command| {
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}: install python3 (with venv and pip), or set KEYWARD_TEST_PYTHON to a Python that has the packages of tests/requirements.txt"));
        assert!(
            status.success(),
            "{what} failed ({status}): the tests need python3 with venv and pip, and PyPI for tests/requirements.txt (or KEYWARD_TEST_PYTHON set to a Python that has them)"
        );
    };
    run(
        "python3 -m venv",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    );
    run(
        "pip install -r tests/requirements.txt",
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements_path),
    );
    std::fs::write(&stamp, &requirements).unwrap();
    python
}

/// Waits for `child` to exit, `limit` at most; `None` if it is still
/// running then.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM to `child`, then its exit status (`limit` at most; `None` if it
/// is still running then: kill it or fail). A child that has already
/// exited gets no signal: once reaped, its pid may be another process's.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    if let Some(status) = child.try_wait().unwrap() {
        return Some(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // It may exit between the check and the signal: it is not reaped yet,
    // so the pid is still its own, and ESRCH cannot happen.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM to a child not yet reaped");
    wait_timeout(child, limit)
}
