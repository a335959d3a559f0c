//! What both benchmarks need: a child process stopped on drop, and waiting
//! for a socket to come up.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A process that gets SIGTERM and is reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Blocks until something accepts connections on `path` (30 s at most).
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never came up", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
