//! The agent's sockets and the processes that hold keys: the runtime
//! directory must be the agent's, a socket path is only removed while it is
//! the agent's, creds.sock answers the service manager alone, and
//! `keyward run` can be neither core-dumped nor read by its user's other
//! processes.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::system::*;
use crate::common::*;

const ATTACKER: Uid = Uid::member(2061);
const RUNNER: Uid = Uid::member(2062);

/// A system-mode agent prepared with `runtime_dir` in place of its state
/// dir; started, or why not.
fn start_with_runtime_dir(runtime_dir: &Path) -> (TestAgent, Result<(), String>) {
    let mut agent = TestAgent::prepare();
    let dir = agent.dir.display().to_string();
    std::fs::write(
        agent.dir.parent().unwrap().join("keyward.toml"),
        format!(
            "state_dir = \"{dir}\"\nruntime_dir = \"{}\"\naudit_file = \"{dir}/audit.jsonl\"\nlock_memory = false\n",
            runtime_dir.display()
        ),
    )
    .unwrap();
    let cmd = agent.system_command();
    let started = agent.spawn_with(cmd);
    (agent, started)
}

/// In a runtime directory another user owns (or may write), that user could
/// put its own listener at admin.sock and read the secrets an admin sends:
/// the agent does not start there, and says what to change.
#[test]
fn the_agent_refuses_a_runtime_directory_another_user_can_change() {
    if !is_root() {
        return skip("makes directories owned by another uid");
    }
    let shared = SharedDir::new();
    let theirs = shared.owned_dir("theirs", ATTACKER);
    let (_agent, started) = start_with_runtime_dir(&theirs);
    let msg = started.unwrap_err();
    assert!(
        msg.contains(&format!("{} belongs to uid 2061", theirs.display())) && msg.contains("chown root:"),
        "{msg}"
    );
    assert!(!theirs.join("admin.sock").exists() && !theirs.join("keys.sock").exists());

    let open = shared.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_agent, started) = start_with_runtime_dir(&open);
    let msg = started.unwrap_err();
    assert!(
        msg.contains("writable by its group or others (mode 777)") && msg.contains("chmod go-w"),
        "{msg}"
    );

    // A directory of root's (0755) is fine.
    let ours = shared.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut agent, started) = start_with_runtime_dir(&ours);
    started.unwrap();
    assert!(ours.join("keys.sock").exists());
    agent.stop();
}

/// A socket path that no longer holds the agent's own socket (replaced by
/// another program's) is left alone at shutdown.
#[test]
fn shutdown_removes_a_socket_path_only_while_it_is_the_agents() {
    if !is_root() {
        return skip("gives keys.sock a group");
    }
    let mut agent = TestAgent::start_system_shared("", "");
    let keys = agent.keys_sock();
    std::fs::remove_file(&keys).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&keys).unwrap();
    assert!(agent.stop().success());
    assert!(keys.exists(), "another program's socket was removed");
    assert!(
        !agent.admin_sock().exists(),
        "the agent's own socket stays removed as before"
    );
}

/// In system mode only the service manager (PID 1, root) asks creds.sock
/// for a credential: another root process naming any unit gets nothing.
#[test]
fn creds_sock_answers_the_service_manager_alone() {
    if !is_root() {
        return skip("connects to a root-only socket");
    }
    let agent = TestAgent::start_system_shared(
        "credentials = true",
        "[[grant]]\nunits = [\"billing.service\"]\nkeys = [\"prod/billing-api\"]\n",
    );
    agent.put("prod/billing-api", "sk_live_creds_system");
    let creds = agent.dir.join("creds.sock");
    assert_eq!(load_credential(&creds, "billing.service", "prod.billing-api"), b"");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.logs().contains("not from the service manager") {
        assert!(Instant::now() < deadline, "{}", agent.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_no_secret("the agent's output", agent.logs().as_bytes(), &["sk_live_creds_system"]);
}

/// `keyward run` holds keys while its command runs: neither it nor the
/// command may dump core (hard limit 0), and `keyward run` is not dumpable,
/// so its user's other processes cannot read its memory through /proc (its
/// /proc files belong to root).
#[test]
fn keyward_run_cannot_be_dumped_or_read_by_its_users_other_processes() {
    if !is_root() {
        return skip("runs keyward run as another uid");
    }
    let shared = SharedDir::new();
    let agent = TestAgent::start_system_shared(
        "",
        &format!("[[grant]]\nuids = [{}]\nkeys = [\"prod/run-key\"]\n", RUNNER.uid),
    );
    agent.put("prod/run-key", "sk_live_run_hygiene");
    let mut run = RUNNER
        .command(shared.cli())
        .arg("--socket")
        .arg(agent.keys_sock())
        .args(["run", "--key", "prod/run-key=RUN_KEY", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    let _guard = Cleanup::new(move || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    });
    // Wait until it has started its command (the keys are fetched).
    let deadline = Instant::now() + Duration::from_secs(20);
    let child = loop {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            break c.to_owned();
        }
        assert!(Instant::now() < deadline, "keyward run did not start its command");
        std::thread::sleep(Duration::from_millis(20));
    };
    let core_limit = |pid: &str| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap()
            .to_owned();
        line.split_whitespace().skip(4).take(2).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(core_limit(&pid.to_string()), "0 0", "keyward run");
    assert_eq!(core_limit(&child), "0 0", "its command inherits the hard limit");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    assert_eq!(
        owner, 0,
        "a dumpable process's /proc files belong to its user ({})",
        RUNNER.uid
    );
    // Its user cannot read its environment or memory.
    let out = run_cli(RUNNER.command("cat").arg(format!("/proc/{pid}/environ")), None);
    assert!(!out.status.success(), "uid {} read /proc/{pid}/environ", RUNNER.uid);
    let _ = run.kill();
    let _ = run.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut err = String::new();
    for line in std::io::BufReader::new(run.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        err.push_str(&line);
    }
    assert_no_secret("keyward run's output", err.as_bytes(), &["sk_live_run_hygiene"]);
}
