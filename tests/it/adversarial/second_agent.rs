//! A second process on the socket path.

use super::*;

/// A system-mode config whose sockets live in `runtime` and whose state and
/// audit log live in `state` (prepared with `keyward init`).
fn second_agent_config(dir: &Path, state: &Path, runtime: &Path) -> PathBuf {
    let out = run_cli(Command::new(KEYWARD).args(["init", "--state-dir"]).arg(state), None);
    assert!(out.status.success(), "keyward init: {}", text(&out.stderr));
    let config = dir.join(format!("{}.toml", state.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nruntime_dir = \"{}\"\naudit_file = \"{}/audit.jsonl\"\nlock_memory = false\n",
            state.display(),
            runtime.display(),
            state.display()
        ),
    )
    .unwrap();
    config
}

/// Starts `keywardd --config CONFIG`; the receiver gets "ready" or "exit"
/// and the child's output.
fn spawn_agent(config: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<(&'static str, String)>) {
    let mut child = Command::new(KEYWARDD)
        .arg("--config")
        .arg(config)
        .env("KEYWARD_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(("ready", line.clone()));
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(("stdout closed", all));
    });
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = tx2.send(("stderr", all));
    });
    (child, rx)
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// A second agent with its own state but the first one's socket paths; a
/// foreign listener, a regular file or a symlink already at the socket
/// path: each is refused with the path named, nothing there is removed or
/// replaced, and the first agent keeps serving. Two agents started at the
/// same moment on one socket path: never two serving. (tests/security.rs
/// covers a second agent on the same state directory: the lock.)
#[tokio::test]
async fn a_second_process_never_takes_over_the_socket_path() {
    let agent = TestAgent::start();
    agent.put("prod/owned", "sk_adv_owned");
    let tmp = agent.dir.parent().unwrap().to_path_buf();
    let mut tally = Tally::new("second_process_on_socket");
    let inodes = (inode(&agent.keys_sock()), inode(&agent.admin_sock()));

    // Same socket paths, another state directory (so no shared lock).
    let config = second_agent_config(&tmp, &tmp.join("second-state"), &agent.dir);
    let out = Command::new(KEYWARDD).arg("--config").arg(&config).output().unwrap();
    let msg = text(&out.stderr);
    tally.check(
        if !out.status.success() && msg.contains("already serving") && msg.contains("keys.sock") {
            Ok(())
        } else {
            Err(format!("a second agent on the same socket paths: {} {msg}", out.status))
        },
    );
    tally.check(if (inode(&agent.keys_sock()), inode(&agent.admin_sock())) == inodes {
        Ok(())
    } else {
        Err("the first agent's socket files were replaced".into())
    });
    let r = served(&agent, "prod", "owned").await;
    tally.check(match r {
        Ok(got) if got.secret == b"sk_adv_owned" => Ok(()),
        other => Err(format!("the first agent after the second one's attempt: {other:?}")),
    });

    // Something already at the path of a fresh agent.
    for (what, sock_name) in [
        ("a foreign listener", "keys.sock"),
        ("a foreign listener", "admin.sock"),
        ("a regular file", "keys.sock"),
        ("a symlink to a live socket", "keys.sock"),
        ("a dangling symlink", "admin.sock"),
    ] {
        let dir = tmp.join(format!("occupied-{}", tally.cases));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join(sock_name);
        let _listener = match what {
            "a foreign listener" => Some(std::os::unix::net::UnixListener::bind(&path).unwrap()),
            "a regular file" => {
                write_private(&path, b"not a socket");
                None
            }
            "a symlink to a live socket" => {
                std::os::unix::fs::symlink(agent.keys_sock(), &path).unwrap();
                None
            }
            _ => {
                std::os::unix::fs::symlink(tmp.join("nowhere.sock"), &path).unwrap();
                None
            }
        };
        let before = (inode(&path), std::fs::symlink_metadata(&path).unwrap().file_type());
        let out = Command::new(KEYWARDD).arg("--dev").arg(&dir).output().unwrap();
        let msg = text(&out.stderr);
        tally.check(if !out.status.success() && msg.contains(&path.display().to_string()) {
            Ok(())
        } else {
            Err(format!("{what} at {sock_name}: {} {msg}", out.status))
        });
        let after = (inode(&path), std::fs::symlink_metadata(&path).unwrap().file_type());
        tally.check(if before == after {
            Ok(())
        } else {
            Err(format!("{what} at {sock_name} was replaced"))
        });
        let other = if sock_name == "keys.sock" {
            "admin.sock"
        } else {
            "keys.sock"
        };
        tally.check(if dir.join(other).exists() {
            Err(format!("{what} at {sock_name}: {other} was left behind"))
        } else {
            Ok(())
        });
        if what == "a foreign listener" {
            let l = _listener.as_ref().unwrap();
            l.set_nonblocking(false).unwrap();
            let c = std::os::unix::net::UnixStream::connect(&path);
            tally.check(match (c, l.accept()) {
                (Ok(_), Ok(_)) => Ok(()),
                _ => Err(format!(
                    "the foreign listener at {sock_name} no longer gets connections"
                )),
            });
        }
        if what == "a regular file" {
            tally.check(if std::fs::read(&path).unwrap() == b"not a socket" {
                Ok(())
            } else {
                Err("the regular file at keys.sock was changed".into())
            });
        }
    }

    // Four agents started together on one runtime directory, each with its
    // own state (so no lock between them): exactly one ends up serving; the
    // others exit, saying that another agent serves the path.
    const RACERS: usize = 4;
    for trial in 0..4 {
        let runtime = tmp.join(format!("race-{trial}"));
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let configs: Vec<PathBuf> = (0..RACERS)
            .map(|i| second_agent_config(&tmp, &tmp.join(format!("race-{trial}-{i}")), &runtime))
            .collect();
        let mut children: Vec<_> = configs.iter().map(|c| spawn_agent(c)).collect();
        let deadline = Instant::now() + DEADLINE;
        let mut ready = [false; RACERS];
        // What each one said on stderr once it closed (it exited).
        let mut said: [Option<String>; RACERS] = Default::default();
        while Instant::now() < deadline && !(0..RACERS).all(|i| ready[i] || said[i].is_some()) {
            for i in 0..RACERS {
                if let Ok((what, text)) = children[i].1.recv_timeout(Duration::from_millis(5)) {
                    match what {
                        "ready" => ready[i] = true,
                        "stderr" => said[i] = Some(text),
                        _ => {}
                    }
                }
            }
        }
        let serving = ready.iter().filter(|r| **r).count();
        tally.check(if serving == 1 {
            Ok(())
        } else {
            Err(format!(
                "trial {trial}: {serving} agents report ready on {}, not one: {}",
                runtime.join("keys.sock").display(),
                if serving == 0 {
                    "each refused the path to the others"
                } else {
                    "the socket path was taken over"
                }
            ))
        });
        for i in (0..RACERS).filter(|i| !ready[*i]) {
            let status = wait_timeout(&mut children[i].0, Duration::from_secs(5));
            tally.check(match (status, &said[i]) {
                (Some(status), Some(reason))
                    if !status.success()
                        && reason.contains("already serving")
                        && reason.contains(&runtime.display().to_string()) =>
                {
                    Ok(())
                }
                (status, reason) => Err(format!(
                    "trial {trial}: racer {i} neither served nor exited saying another agent serves {}: exit {status:?}, stderr {reason:?}",
                    runtime.display()
                )),
            });
        }
        for (child, _) in &mut children {
            if terminate(child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    assert_no_panic(&agent);
    tally.finish();
}
