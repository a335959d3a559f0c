//! System-mode agents that other uids can reach, and clients run as those
//! uids: the attackers and the legitimate callers of tests/it/trust.
//!
//! The other uids are plain numbers (no passwd or group entry): `setpriv`
//! switches to any uid, gid and group list, and the agent's policy names
//! them by number. So a test creates no user and leaves none behind, even
//! when it fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{bins, run_cli, text, TestAgent};

/// The group that owns keys.sock in [`TestAgent::start_system_shared`]
/// agents: callers get it as a supplementary group to connect at all.
pub const SOCKET_GID: u32 = 2100;

/// A uid of the tests, with the socket group (or not).
#[derive(Clone, Copy, Debug)]
pub struct Uid {
    pub uid: u32,
    pub gid: u32,
    /// Whether it is in [`SOCKET_GID`].
    pub in_socket_group: bool,
}

impl Uid {
    /// `uid` with gid = uid, in the socket group.
    pub const fn member(uid: u32) -> Uid {
        Uid {
            uid,
            gid: uid,
            in_socket_group: true,
        }
    }

    /// `setpriv … -- program` as this uid: real and effective ids, its
    /// groups only, no capabilities.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid));
        if self.in_socket_group {
            cmd.arg(format!("--groups={SOCKET_GID}"));
        } else {
            cmd.arg("--clear-groups");
        }
        cmd.arg("--inh-caps=-all").arg("--").arg(program);
        // cargo sets LD_LIBRARY_PATH for tests; a caller started with a
        // loader override never counts as a granted program.
        for var in ["KEYWARD_SOCKET", "LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT"] {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// A directory every uid may enter and read (0755), removed on drop, for
/// the programs and files other uids use.
pub struct SharedDir {
    tmp: tempfile::TempDir,
}

impl SharedDir {
    pub fn new() -> SharedDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        SharedDir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Copies `from` to `name` in this directory, root-owned 0755 (a program
    /// as a package installs it).
    pub fn install(&self, from: &Path, name: &str) -> PathBuf {
        let dest = self.tmp.path().join(name);
        std::fs::copy(from, &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        dest
    }

    /// A directory `name` owned by `owner`, 0755: the attacker's own.
    pub fn owned_dir(&self, name: &str, owner: Uid) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(owner.uid)),
            Some(nix::unistd::Gid::from_raw(owner.gid)),
        )
        .unwrap();
        dir
    }

    /// A copy of `from` owned by `owner` (0755): a program the attacker can
    /// rewrite.
    pub fn install_owned(&self, from: &Path, name: &str, owner: Uid) -> PathBuf {
        let dest = self.install(from, name);
        nix::unistd::chown(
            &dest,
            Some(nix::unistd::Uid::from_raw(owner.uid)),
            Some(nix::unistd::Gid::from_raw(owner.gid)),
        )
        .unwrap();
        dest
    }

    /// The keyward CLI, copied here (the build tree may be closed to other
    /// uids).
    pub fn cli(&self) -> PathBuf {
        let dest = self.tmp.path().join("keyward");
        if !dest.exists() {
            self.install(bins::keyward(), "keyward");
        }
        dest
    }
}

impl Default for SharedDir {
    fn default() -> SharedDir {
        SharedDir::new()
    }
}

impl TestAgent {
    /// A system-mode agent (no `--dev`: only the config's grants apply)
    /// whose state, sockets and audit log are in a temp dir that other uids
    /// can enter, with keys.sock 0660 owned by group [`SOCKET_GID`]. `toml`
    /// follows those settings (and may add to `[sockets]` only through
    /// `sockets`, e.g. `"credentials = true"`).
    pub fn start_system_shared(sockets: &str, toml: &str) -> TestAgent {
        let mut agent = TestAgent::prepare_system_shared(sockets, toml);
        let cmd = agent.system_command();
        agent.spawn_with(cmd).expect("agent starts");
        agent
    }

    /// [`TestAgent::start_system_shared`] without starting it.
    pub fn prepare_system_shared(sockets: &str, toml: &str) -> TestAgent {
        let agent = TestAgent::prepare();
        let tmp = agent.dir.parent().unwrap();
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        agent.rewrite_config(&format!(
            "[sockets]\nservice_group = {SOCKET_GID}\nservice_mode = \"0660\"\n{sockets}\n{toml}"
        ));
        agent
    }

    /// The keyward CLI run as `who` against this agent's keys.sock.
    pub fn cli_as(&self, who: Uid, cli: &Path, args: &[&str]) -> std::process::Output {
        run_cli(who.command(cli).arg("--socket").arg(self.keys_sock()).args(args), None)
    }

    /// The audit records with `event` and `outcome`.
    pub fn audit_records(&self, event: &str, outcome: &str) -> Vec<serde_json::Value> {
        self.audit_lines()
            .into_iter()
            .filter(|r| r["event"] == event && r["outcome"] == outcome)
            .collect()
    }
}

/// What `keyward get --primary` printed as `who`, or its error.
pub fn got(out: &std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(text(&out.stdout).trim_end().to_owned())
    } else {
        Err(text(&out.stderr))
    }
}

/// Runs `cleanup` when dropped, also when the test panics: for what a test
/// sets up outside its temp dirs (cgroups, mounts, processes).
pub struct Cleanup(Option<Box<dyn FnOnce() + Send>>);

impl Cleanup {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Cleanup {
        Cleanup(Some(Box::new(f)))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A file made immutable (`chattr +i`) for as long as this lives: every
/// write(2) and ftruncate(2) on it fails with EPERM, also through a
/// descriptor opened before, as on a file system that went read-only
/// under the program writing it. The flag is cleared again on drop,
/// whatever happens to the test.
pub struct Immutable(PathBuf);

impl Immutable {
    /// `chattr +i path`; fails the test, saying why, where the file system
    /// has no immutable flag.
    pub fn set(path: &Path) -> Immutable {
        let out = chattr("+i", path);
        assert!(
            out.status.success(),
            "chattr +i {} failed ({}): this test needs root and a file system with the immutable flag (ext4, xfs, btrfs, tmpfs from Linux 6.0) under TMPDIR",
            path.display(),
            text(&out.stderr).trim()
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, path: &Path) -> std::process::Output {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run chattr (e2fsprogs): {e}"))
}

/// Says why a test that needs root or a kernel feature did not run (the
/// test then returns): a skip is printed with its reason, never a silent
/// pass. scripts/test and CI run as root on a kernel that has them all.
pub fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

/// Whether the process runs as root (the trust tests switch uids).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A test of this binary run as another process (often as another uid),
/// for attacks that need code of their own: `name` is an `#[ignore]`d test
/// whose body reads its parameters from `KEYWARD_HELPER_*` variables (set
/// them on the returned command). It is run with `--ignored --exact`, from
/// a copy of this test binary in `shared` (the build tree may be closed to
/// other uids). Ignored, such helpers never count as tests of their own.
pub fn helper(who: Option<Uid>, name: &str, shared: &SharedDir) -> Command {
    let copy = shared.path().join("test-helper");
    if !copy.exists() {
        shared.install(&std::env::current_exe().expect("the test binary"), "test-helper");
    }
    let mut cmd = match who {
        Some(who) => who.command(&copy),
        None => Command::new(&copy),
    };
    cmd.args(["--ignored", "--exact", name, "--nocapture", "--test-threads=1", "-q"]);
    cmd.env("KEYWARD_HELPER", name);
    cmd
}

/// A helper's parameter `name` (a `KEYWARD_HELPER_*` variable its test set).
pub fn helper_param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the test"))
}

/// The JSON a helper printed on its `RESULT {…}` line (how helpers report
/// what they saw); fails naming `what` when there is none.
pub fn helper_result(out: std::process::Output, what: &str) -> serde_json::Value {
    let stdout = super::text(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "));
    let Some(line) = line else {
        panic!(
            "{what} printed no result ({}): {stdout}{}",
            out.status,
            super::text(&out.stderr)
        );
    };
    serde_json::from_str(line).unwrap()
}

/// Whether this process is a [`helper`] (tests that are helpers return at
/// once when it is not).
pub fn is_helper() -> bool {
    std::env::var_os("KEYWARD_HELPER").is_some()
}
