//! Executable and unit grants cannot be borrowed.
//!
//! A grant `uids = [2001], executables = [".../billing-worker"]` lets uid
//! 2001 read the key only from that program. Uid 2001 also runs programs of
//! its own (the attacker), and tries to pass for billing-worker: from a
//! mount namespace where its own program sits at the granted path, with
//! LD_PRELOAD in the real program, under a tracer, with a copy it can
//! rewrite, by connecting and then executing the program while it keeps the
//! connection, and by handing its connection's pid to the program. A grant
//! `uids = [2002], units = ["billing-worker.service"]` is attacked from a
//! cgroup subtree delegated to uid 2002. Each attack is refused and the
//! refusal says why.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::system::*;
use crate::common::*;

/// The granted program's user, who also runs the attacker's programs.
const WORKER: Uid = Uid::member(2001);
/// The user a unit grant names.
const UNIT_USER: Uid = Uid::member(2002);
const SECRET: &str = "sk_live_identity_billing";
const KEY: &str = "prod/billing-api";

/// A system-mode agent whose only grant lets uid 2001 read prod/billing-api
/// from billing-worker (a copy of the keyward CLI, as a package would
/// install it).
struct Granted {
    agent: TestAgent,
    shared: SharedDir,
    worker: PathBuf,
}

impl Granted {
    fn start() -> Granted {
        let shared = SharedDir::new();
        let worker = shared.install(Path::new(KEYWARD), "billing-worker");
        Granted::with(shared, worker)
    }

    /// The grant names `worker`, in `shared`.
    fn with(shared: SharedDir, worker: PathBuf) -> Granted {
        let agent = TestAgent::start_system_shared(
            "",
            &format!(
                "[[grant]]\nuids = [{}]\nexecutables = [\"{}\"]\nkeys = [\"{KEY}\"]\n",
                WORKER.uid,
                worker.display()
            ),
        );
        agent.put(KEY, SECRET);
        Granted { agent, shared, worker }
    }

    /// `PROGRAM --socket keys.sock get --primary KEY` run by `cmd` (a
    /// command whose program takes these arguments next).
    fn get(&self, mut cmd: Command) -> Result<String, String> {
        cmd.arg("--socket")
            .arg(self.agent.keys_sock())
            .args(["get", "--primary", KEY]);
        got(&run_cli(&mut cmd, None))
    }

    /// The last denial of a fetch of KEY in the audit log.
    fn last_denial(&self) -> serde_json::Value {
        self.agent
            .audit_records("fetch", "denied")
            .pop()
            .unwrap_or_else(|| panic!("no denial audited: {}", self.agent.logs()))
    }
}

/// Asserts a refusal whose message (and audit record) names `why`.
fn assert_refused(g: &Granted, result: Result<String, String>, why: &str) {
    let msg = match result {
        Ok(_) => panic!("the key was served (secret #0, {})", fingerprint(SECRET.as_bytes())),
        Err(msg) => msg,
    };
    assert!(msg.contains("PermissionDenied") && msg.contains(why), "{msg}");
    assert_no_secret("the refusal", msg.as_bytes(), &[SECRET]);
    let denial = g.last_denial();
    assert!(denial["detail"].as_str().unwrap().contains(why), "{denial}");
    assert_eq!(denial["caller"]["uid"], WORKER.uid);
}

#[test]
fn the_granted_program_reads_and_other_programs_of_its_user_do_not() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let g = Granted::start();
    assert_eq!(g.get(WORKER.command(&g.worker)).as_deref(), Ok(SECRET));
    // Another program of the same user: a plain denial.
    let other = g.shared.install(Path::new(KEYWARD), "other-program");
    let msg = g.get(WORKER.command(&other)).unwrap_err();
    assert!(msg.contains("PermissionDenied") && msg.contains("uid 2001"), "{msg}");
    // The granted program run by another uid of the socket group.
    let msg = g.get(Uid::member(2009).command(&g.worker)).unwrap_err();
    assert!(msg.contains("PermissionDenied"), "{msg}");
}

/// (a) In its own user and mount namespace, uid 2001 bind-mounts its own
/// program over the granted path and runs it: `/proc/PID/exe` reads as the
/// granted path, but the caller is in another namespace, and its image is
/// another file.
#[test]
fn a_program_bind_mounted_over_the_granted_path_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let g = Granted::start();
    let attacker = g.shared.owned_dir("attacker", WORKER);
    let own = attacker.join("client");
    std::fs::copy(KEYWARD, &own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(WORKER.uid)), None).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = run_cli(WORKER.command("unshare").args(["-Urm", "true"]), None);
    if !probe.status.success() {
        return skip(&format!(
            "unprivileged user namespaces are not available here ({})",
            text(&probe.stderr).trim()
        ));
    }
    let mut cmd = WORKER.command("unshare");
    // In its namespace root is unmapped: the agent's uid 0 reads as 65534,
    // which the attacker's own client trusts.
    cmd.env("KEYWARD_AGENT_UID", "65534");
    cmd.args([
        "-Urm",
        "sh",
        "-c",
        "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"",
        "sh",
    ])
    .arg(&own)
    .arg(&g.worker)
    .arg(&g.worker);
    assert_refused(&g, g.get(cmd), "namespace");
}

/// The first shared library this test process maps besides libc and the
/// loader: something harmless to preload.
fn a_shared_library() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libgcc_s") || p.contains("libm.so"))
        .map(PathBuf::from)
}

/// (b) uid 2001 runs the real program with a library of its own preloaded.
#[test]
fn the_granted_program_with_a_preloaded_library_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let Some(library) = a_shared_library() else {
        return skip("no shared library to preload was found in /proc/self/maps");
    };
    let g = Granted::start();
    let attacker = g.shared.owned_dir("attacker", WORKER);
    let own = attacker.join("inject.so");
    std::fs::copy(&library, &own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(WORKER.uid)), None).unwrap();
    let mut cmd = WORKER.command(&g.worker);
    cmd.env("LD_PRELOAD", &own);
    assert_refused(&g, g.get(cmd), "LD_PRELOAD");
}

/// uid 2001 runs the real program under its own tracer (which could rewrite
/// its memory).
#[test]
fn the_granted_program_under_a_tracer_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    if run_cli(Command::new("strace").arg("-V"), None).status.code() != Some(0) {
        return skip("strace is not installed (scripts/bootstrap installs it)");
    }
    let g = Granted::start();
    let mut cmd = WORKER.command("strace");
    cmd.args(["-f", "-o", "/dev/null"]).arg(&g.worker);
    assert_refused(&g, g.get(cmd), "is traced by pid");
}

/// A granted program that its user can rewrite is whatever that user wants
/// it to be: its code comes from a file a non-root user can change.
#[test]
fn a_granted_program_its_user_can_rewrite_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let shared = SharedDir::new();
    let worker = shared.install_owned(Path::new(KEYWARD), "billing-worker", WORKER);
    let g = Granted::with(shared, worker);
    assert_refused(&g, g.get(WORKER.command(&g.worker)), "which a non-root user can change");
}

/// The helper of the two tests below: as uid 2001 it makes a socket, forks a
/// child that connects it (so the child's pid is the connection's peer pid)
/// and then either executes the granted program (`exec`, keeping the socket
/// across the exec if KEYWARD_HELPER_KEEP=1) or exits (`exit`); the helper
/// itself keeps the connected socket. It prints `READY <child pid>`, waits
/// for a line on stdin, sends GetKey on the connection and prints `GOT
/// <version>` or `DENIED <message>`.
#[test]
#[ignore = "a helper process of the tests below"]
fn helper_connect_in_a_child() {
    if !is_helper() {
        return;
    }
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (path, program, mode) = (
        var("KEYWARD_HELPER_SOCKET"),
        var("KEYWARD_HELPER_EXEC"),
        var("KEYWARD_HELPER_MODE"),
    );
    let keep = std::env::var("KEYWARD_HELPER_KEEP").is_ok_and(|v| v == "1");
    let flags = if keep {
        SockFlag::empty()
    } else {
        SockFlag::SOCK_CLOEXEC
    };
    let sock = socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap();
    let addr = UnixAddr::new(path.as_str()).unwrap();
    // SAFETY: the child only connects, then executes or exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            if connect(sock.as_raw_fd(), &addr).is_err() {
                unsafe { libc::_exit(3) };
            }
            if mode == "exec" {
                let argv = [program.as_str(), "--socket", path.as_str(), "watch", KEY]
                    .map(|a| std::ffi::CString::new(a).unwrap());
                let _ = nix::unistd::execv(&argv[0], &argv);
            }
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            if mode == "exec" {
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::fs::read_link(format!("/proc/{child}/exe")).ok() != Some(PathBuf::from(&program)) {
                    assert!(Instant::now() < deadline, "the child never executed {program}");
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
            println!("READY {child}");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let stream = std::os::unix::net::UnixStream::from(sock);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let answer = runtime.block_on(async move {
                stream.set_nonblocking(true).unwrap();
                let mut first = Some(tokio::net::UnixStream::from_std(stream).unwrap());
                let channel = tonic::transport::Endpoint::from_static("http://keyward.local")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let s = first.take();
                        async move {
                            s.map(hyper_util::rt::TokioIo::new)
                                .ok_or_else(|| std::io::Error::other("one connection only"))
                        }
                    }))
                    .await
                    .unwrap();
                keyward::proto::keys_client::KeysClient::new(channel)
                    .get_key(keyward::proto::GetKeyRequest {
                        key: key("prod", "billing-api"),
                    })
                    .await
            });
            match answer {
                Ok(set) => println!("GOT {}", set.into_inner().primary.map_or(0, |p| p.version)),
                Err(status) => println!("DENIED {:?} {}", status.code(), status.message()),
            }
            if mode == "exec" {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGTERM);
                let _ = nix::sys::wait::waitpid(child, None);
            }
        }
    }
}

/// The helper, started as uid 2001 while the agent is stopped (SIGSTOP), so
/// that the agent first looks at the connection after the child executed
/// the program (or exited).
struct ConnectInChild {
    helper: Child,
    out: BufReader<std::process::ChildStdout>,
    child: i32,
}

impl ConnectInChild {
    fn start(g: &Granted, mode: &str, keep: bool) -> ConnectInChild {
        let mut helper = helper(Some(WORKER), "trust::identity::helper_connect_in_a_child", &g.shared)
            .env("KEYWARD_HELPER_SOCKET", g.agent.keys_sock())
            .env("KEYWARD_HELPER_EXEC", &g.worker)
            .env("KEYWARD_HELPER_MODE", mode)
            .env("KEYWARD_HELPER_KEEP", if keep { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(helper.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("READY ") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the helper ended before it was ready"
            );
        }
        let child = line.trim()["READY ".len()..].parse().unwrap();
        ConnectInChild { helper, out, child }
    }

    /// Lets the helper send its GetKey; its answer line.
    fn answer(mut self) -> String {
        writeln!(self.helper.stdin.take().unwrap(), "go").unwrap();
        let mut line = String::new();
        while !(line.starts_with("GOT") || line.starts_with("DENIED")) {
            line.clear();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "the helper ended without an answer"
            );
        }
        let _ = wait_timeout(&mut self.helper, Duration::from_secs(20));
        line.trim().to_owned()
    }
}

fn signal(agent: &TestAgent, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), signal).unwrap();
}

/// (c) uid 2001 connects in a child, which then executes the granted
/// program while the helper (another program) keeps the connection and
/// sends the request: the connection's pid runs billing-worker, but a holder
/// of the connection does not (or the process that connected no longer
/// holds it).
#[test]
fn connecting_then_executing_the_granted_program_does_not_lend_its_identity() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let g = Granted::start();
    for (round, (keep, why)) in [
        (true, "also holds the connection and is not the same program"),
        (false, "no longer holds the connection"),
    ]
    .into_iter()
    .enumerate()
    {
        signal(&g.agent, nix::sys::signal::Signal::SIGSTOP);
        let attack = ConnectInChild::start(&g, "exec", keep);
        signal(&g.agent, nix::sys::signal::Signal::SIGCONT);
        let answer = attack.answer();
        assert!(
            answer.starts_with("DENIED PermissionDenied") && answer.contains(why),
            "keep {keep}: {answer}"
        );
        // The audit writes the first refusal of a kind at once, and counts
        // the next ones for the end of its window.
        if round == 0 {
            let denial = g.last_denial();
            assert!(denial["detail"].as_str().unwrap().contains(why), "{denial}");
        }
    }
}

/// The pid of the process that connected is given to the granted program:
/// the attacker's child connects and exits, and the next process made is
/// billing-worker (with that pid, set through ns_last_pid). The agent reads
/// /proc of a pid that no longer names the process that connected.
#[test]
fn a_pid_reused_by_the_granted_program_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let ns_last_pid = Path::new("/proc/sys/kernel/ns_last_pid");
    if std::fs::OpenOptions::new().write(true).open(ns_last_pid).is_err() {
        return skip("/proc/sys/kernel/ns_last_pid cannot be written here, so a pid cannot be reused on purpose");
    }
    let g = Granted::start();
    signal(&g.agent, nix::sys::signal::Signal::SIGSTOP);
    let attack = ConnectInChild::start(&g, "exit", false);
    // Other tests fork too: try until the new program gets the pid.
    let mut reused = None;
    for _ in 0..200 {
        std::fs::write(ns_last_pid, format!("{}", attack.child - 1)).unwrap();
        let mut cmd = WORKER.command(&g.worker);
        let mut program = cmd
            .arg("--socket")
            .arg(g.agent.keys_sock())
            .args(["watch", KEY])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if program.id() as i32 == attack.child {
            reused = Some(program);
            break;
        }
        let _ = program.kill();
        let _ = program.wait();
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(mut program) = reused else {
        signal(&g.agent, nix::sys::signal::Signal::SIGCONT);
        return skip("the pid could not be reused for the program in 200 tries (a busy machine)");
    };
    // setpriv executes billing-worker in that process.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{}/exe", attack.child))
        .ok()
        .as_deref()
        != Some(g.worker.as_path())
    {
        assert!(
            Instant::now() < deadline,
            "billing-worker never ran as pid {}",
            attack.child
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&g.agent, nix::sys::signal::Signal::SIGCONT);
    let answer = attack.answer();
    let _ = program.kill();
    let _ = program.wait();
    assert!(
        answer.starts_with("DENIED PermissionDenied") && answer.contains("could not be pinned"),
        "{answer}"
    );
}

/// A grant that lists executables but no user, uid or group is refused at
/// load (exit 64), saying why.
#[test]
fn an_executable_alone_is_not_a_principal() {
    let shared = SharedDir::new();
    let config = shared.path().join("keyward.toml");
    std::fs::write(
        &config,
        "[[grant]]\nexecutables = [\"/usr/bin/true\"]\nkeys = [\"prod/*\"]\n",
    )
    .unwrap();
    let out = run_cli(
        Command::new(KEYWARDD)
            .arg("--check-config")
            .arg("--config")
            .arg(&config),
        None,
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let msg = text(&out.stderr);
    assert!(
        msg.contains("lists executables but no users, uids, groups or gids") && msg.contains("cannot stand alone"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------
// Units.

/// Cgroups made for one test under the unified hierarchy, removed (with
/// whatever runs in them killed) on drop, also when the test fails.
struct TestCgroups {
    root: PathBuf,
}

impl TestCgroups {
    /// `None` (and a skip) when there is no writable cgroup2 hierarchy.
    fn new(name: &str) -> Option<TestCgroups> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
        });
        let Some(mount) = mount else {
            skip("no cgroup2 hierarchy is mounted");
            return None;
        };
        let root = mount.join(format!("kwtest-{}-{name}.slice", std::process::id()));
        if let Err(e) = std::fs::create_dir(&root) {
            skip(&format!("cannot make a cgroup in {} ({e})", mount.display()));
            return None;
        }
        Some(TestCgroups { root })
    }

    /// Creates `rel` (root's), with its parents.
    fn make(&self, rel: &str) -> PathBuf {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Delegates `rel` to `who` the way systemd does: the directory and its
    /// cgroup.procs, cgroup.threads and cgroup.subtree_control are theirs.
    fn delegate(&self, rel: &str, who: Uid) -> PathBuf {
        let dir = self.make(rel);
        for p in [
            dir.clone(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.threads"),
            dir.join("cgroup.subtree_control"),
        ] {
            nix::unistd::chown(
                &p,
                Some(nix::unistd::Uid::from_raw(who.uid)),
                Some(nix::unistd::Gid::from_raw(who.gid)),
            )
            .unwrap();
        }
        dir
    }

    /// The cgroup path of `rel` as /proc/PID/cgroup shows it.
    fn path_of(&self, rel: &str) -> String {
        format!("/{}/{rel}", self.root.file_name().unwrap().to_str().unwrap())
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = paths_under(&self.root).into_iter().filter(|p| p.is_dir()).collect();
        dirs.push(self.root.clone());
        for dir in &dirs {
            for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        // Deepest first; the kernel removes a cgroup only once it is empty.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `place.sh CGROUP CMD…`: moves itself into CGROUP (made if missing), then
/// executes CMD.
fn place_script(shared: &SharedDir) -> PathBuf {
    let script = shared.path().join("place.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nmkdir -p \"$1\" && echo $$ > \"$1/cgroup.procs\" || exit 97\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// `keyward get --primary KEY` by `who`, in cgroup `cgroup` (moved there by
/// root), then as `who` moved again into `inner` (a cgroup `who` may make)
/// if given.
fn get_in_cgroup(
    agent: &TestAgent,
    shared: &SharedDir,
    who: Uid,
    cgroup: &Path,
    inner: Option<&Path>,
    key: &str,
) -> Result<String, String> {
    let place = place_script(shared);
    let mut cmd = Command::new(&place);
    cmd.arg(cgroup);
    let mut as_who = match inner {
        Some(inner) => {
            let mut c = who.command("/bin/sh");
            c.arg(&place).arg(inner).arg(shared.cli());
            c
        }
        None => who.command(shared.cli()),
    };
    as_who
        .arg("--socket")
        .arg(agent.keys_sock())
        .args(["get", "--primary", key]);
    cmd.arg(as_who.get_program()).args(as_who.get_args());
    for var in ["LD_LIBRARY_PATH", "LD_PRELOAD", "KEYWARD_SOCKET"] {
        cmd.env_remove(var);
    }
    got(&run_cli(&mut cmd, None))
}

/// A units grant for uid 2002: `extra` adds grants.
fn unit_agent(extra: &str) -> TestAgent {
    let agent = TestAgent::start_system_shared(
        "",
        &format!(
            "[[grant]]\nuids = [{}]\nunits = [\"billing-worker.service\"]\nkeys = [\"{KEY}\"]\n{extra}",
            UNIT_USER.uid
        ),
    );
    agent.put(KEY, SECRET);
    agent
}

/// The unit comes from the cgroup by systemd's rules: a process of uid 2002
/// in billing-worker.service (made by root) reads; uid 2002 in cgroups
/// named billing-worker.service inside a subtree delegated to it (under its
/// user manager, or under a Delegate= service) does not.
#[test]
fn a_unit_named_inside_a_delegated_subtree_is_refused() {
    if !is_root() {
        return skip("runs clients as other uids and makes cgroups");
    }
    let Some(cgroups) = TestCgroups::new("delegated") else {
        return;
    };
    let service = cgroups.make("billing-worker.service");
    let manager = cgroups.delegate("user@2002.service", UNIT_USER);
    let delegated = cgroups.delegate("delegated.service", UNIT_USER);
    let shared = SharedDir::new();
    let agent = unit_agent("");
    let get = |cgroup: &Path, inner: Option<&Path>| get_in_cgroup(&agent, &shared, UNIT_USER, cgroup, inner, KEY);

    assert_eq!(get(&service, None).as_deref(), Ok(SECRET));
    let spoofed = manager.join("app.slice/billing-worker.service");
    let msg = get(&manager, Some(&spoofed)).unwrap_err();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("user manager user@2002.service"),
        "{msg}"
    );
    let spoofed = delegated.join("billing-worker.service");
    let msg = get(&delegated, Some(&spoofed)).unwrap_err();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("delegated to uid 2002"),
        "{msg}"
    );

    // Written at once: the first refusal (the second is counted for the end
    // of the audit's window).
    let denials = agent.audit_records("fetch", "denied");
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(
        denials[0]["detail"].as_str().unwrap().contains("user manager"),
        "{denials:?}"
    );
    assert_no_secret("the audit log", &std::fs::read(agent.audit_file()).unwrap(), &[SECRET]);
}

/// A grant that names units and no principal is for LoadCredential= on
/// creds.sock: on keys.sock it applies to nobody, even to a process in that
/// very unit.
#[test]
fn a_unit_without_a_principal_applies_to_nobody_on_keys_sock() {
    if !is_root() {
        return skip("runs clients as other uids and makes cgroups");
    }
    let Some(cgroups) = TestCgroups::new("alone") else {
        return;
    };
    let service = cgroups.make("billing-worker.service");
    let shared = SharedDir::new();
    let agent = unit_agent("[[grant]]\nunits = [\"billing-worker.service\"]\nkeys = [\"prod/unit-alone\"]\n");
    agent.put("prod/unit-alone", "sk_unit_alone");
    let msg = get_in_cgroup(&agent, &shared, UNIT_USER, &service, None, "prod/unit-alone").unwrap_err();
    assert!(msg.contains("PermissionDenied"), "{msg}");
    assert!(
        agent.logs().contains("only to LoadCredential="),
        "said at load: {}",
        agent.logs()
    );
}

/// A grant may name the unit by its cgroup.
#[test]
fn a_unit_may_be_named_by_its_cgroup() {
    if !is_root() {
        return skip("runs clients as other uids and makes cgroups");
    }
    let Some(cgroups) = TestCgroups::new("path") else {
        return;
    };
    let service = cgroups.make("billing-worker.service");
    let other = cgroups.make("other.slice/billing-worker.service");
    let shared = SharedDir::new();
    let agent = unit_agent(&format!(
        "[[grant]]\nuids = [{}]\nunits = [\"{}\"]\nkeys = [\"prod/by-path\"]\n",
        UNIT_USER.uid,
        cgroups.path_of("billing-worker.service")
    ));
    agent.put("prod/by-path", "sk_by_path");
    let get = |cgroup: &Path| get_in_cgroup(&agent, &shared, UNIT_USER, cgroup, None, "prod/by-path");
    assert_eq!(get(&service).as_deref(), Ok("sk_by_path"));
    // The same unit name in another slice is another cgroup.
    assert!(get(&other).unwrap_err().contains("PermissionDenied"));
}
