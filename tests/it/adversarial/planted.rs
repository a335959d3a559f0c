//! Files and links planted in the store and in the audit log's place.

use super::*;

pub(super) fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Content and modification time of a file.
type Stamp = (Vec<u8>, i64, i64);

/// Content and modification time of a file, to prove it was not written.
/// (Not the change time: a hard link planted to it changes that.)
fn fingerprint_of(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), meta.mtime(), meta.mtime_nsec())
}

/// The planted things, named `{prefix}-…` in `store/prod`: symlinks to a
/// system file, to a valid key file outside the store, to another key (by
/// relative and by `..` paths), a hard link to the agent's identity, a
/// FIFO, a directory, and files whose names are not keys. Returns the key
/// names that must never be served.
fn plant(agent: &TestAgent, outside: &Path, prefix: &str) -> Vec<String> {
    use std::os::unix::fs::symlink;
    let prod = agent.dir.join("store/prod");
    let name = |what: &str| format!("{prefix}-{what}");
    let file = |what: &str| prod.join(format!("{prefix}-{what}.age"));
    symlink("/etc/shadow", file("shadow")).unwrap();
    symlink(outside.join("victim.age"), file("outside")).unwrap();
    symlink("a.age", file("alias")).unwrap();
    symlink("../../../../../../../../etc/passwd", file("escape")).unwrap();
    symlink("../staging/b.age", file("cross")).unwrap();
    std::fs::hard_link(agent.dir.join("identity.txt"), file("ident")).unwrap();
    nix::unistd::mkfifo(&file("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::create_dir(file("dir")).unwrap();
    let valid = encrypt_to(&agent.recipient(), b"sk_adv_planted");
    write_private(&prod.join(format!("{prefix}-new\nline.age")), &valid);
    write_private(&prod.join(format!("{}-UPPER.age", prefix.to_uppercase())), &valid);
    write_private(&prod.join(format!(".{prefix}-hidden.age")), &valid);
    std::fs::create_dir_all(prod.join(format!("{prefix}-sub"))).unwrap();
    write_private(&prod.join(format!("{prefix}-sub/deep.age")), &valid);
    [
        "shadow", "outside", "alias", "escape", "cross", "ident", "pipe", "dir", "deep",
    ]
    .iter()
    .map(|w| if *w == "deep" { "deep".to_owned() } else { name(w) })
    .collect()
}

/// What must hold after planting: nothing planted is served, every planted
/// link or bad file is reported by path, no target was touched, nothing
/// planted leaked into the log or audit, the real keys still serve.
async fn check_plants(
    agent: &TestAgent,
    tally: &mut Tally,
    never: &[String],
    prefix: &str,
    untouched: &[(PathBuf, Stamp)],
) {
    for name in never {
        let r = agent.fetch("prod", name).await;
        tally.check(match r {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            other => Err(format!(
                "planted prod/{name}: {:?}",
                other.map(|s| (s.generation, fingerprint(&s.primary.unwrap().secret)))
            )),
        });
    }
    let logs = agent.logs();
    for what in ["shadow", "outside", "alias", "escape", "cross"] {
        let path = format!("{prefix}-{what}.age");
        tally.check(if logs.lines().any(|l| l.contains(&path) && l.contains("symlink")) {
            Ok(())
        } else {
            Err(format!("no log line says {path} is a symlink"))
        });
    }
    for what in ["ident", "pipe"] {
        let path = format!("{prefix}-{what}.age");
        tally.check(
            if logs
                .lines()
                .any(|l| l.contains(&path) && (l.contains("ERROR") || l.contains("WARN")))
            {
                Ok(())
            } else {
                Err(format!("no log line reports {path}"))
            },
        );
    }
    // A file name with a newline must not start a forged log line, and
    // is reported all the same, the newline escaped.
    tally.check(if let Some(l) = logs.lines().find(|l| l.starts_with("line.age")) {
        Err(format!("a file name with a newline split a log line: {l:?}"))
    } else {
        Ok(())
    });
    let escaped = format!("{prefix}-new\\nline.age");
    tally.check(if logs.contains(&escaped) {
        Ok(())
    } else {
        Err(format!(
            "{escaped} (a file name with a newline, escaped) was not reported"
        ))
    });
    tally.check(if logs.contains(&format!("{}-UPPER.age", prefix.to_uppercase())) {
        Ok(())
    } else {
        Err(format!(
            "{}-UPPER.age (not a key name) was not reported",
            prefix.to_uppercase()
        ))
    });
    for (path, before) in untouched {
        tally.check(if fingerprint_of(path) == *before {
            Ok(())
        } else {
            Err(format!("{} was touched", path.display()))
        });
    }
    let audit = std::fs::read_to_string(agent.audit_file()).unwrap_or_default();
    for secret in ["VICTIM_MARKER_31337", "AGE-SECRET-KEY", "sk_adv_planted"] {
        tally.check(if logs.contains(secret) || audit.contains(secret) {
            Err(format!("{secret} leaked into the log or audit"))
        } else {
            Ok(())
        });
    }
    for (env, name, want) in [("prod", "a", "sk_adv_store_a"), ("staging", "b", "sk_adv_store_b")] {
        let r = served(agent, env, name).await;
        tally.check(match r {
            Ok(got) if got.secret == want.as_bytes() => Ok(()),
            other => Err(format!(
                "{env}/{name} after the plants: {other:?}, not {}",
                fingerprint(want.as_bytes())
            )),
        });
    }
}

/// Symlinks (to a system file, outside the store, to other keys), a hard
/// link to the identity, a FIFO, a directory and files that are not keys,
/// planted in the store before a start and while running, plus a symlinked
/// environment directory: nothing is followed or served, every one is
/// reported, no target is touched, and the real keys keep serving.
/// (tests/hot_reload.rs covers one symlink to a valid file at runtime.)
#[tokio::test]
async fn links_pipes_and_odd_files_planted_in_the_store_are_never_followed() {
    let mut agent = TestAgent::start();
    agent.put("prod/a", "sk_adv_store_a");
    agent.put("staging/b", "sk_adv_store_b");
    let outside = agent.dir.parent().unwrap().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write_private(&outside.join("victim.txt"), b"VICTIM_MARKER_31337\n");
    write_private(
        &outside.join("victim.age"),
        &encrypt_to(&agent.recipient(), b"sk_adv_planted"),
    );
    let store = agent.dir.join("store");
    let untouched: Vec<(PathBuf, Stamp)> = [
        PathBuf::from("/etc/shadow"),
        PathBuf::from("/etc/passwd"),
        outside.join("victim.age"),
        outside.join("victim.txt"),
        store.join("prod/a.age"),
        store.join("staging/b.age"),
        agent.dir.join("identity.txt"),
    ]
    .into_iter()
    .map(|p| {
        let f = fingerprint_of(&p);
        (p, f)
    })
    .collect();
    let mut tally = Tally::new("store_plants");

    // An environment directory that is a symlink: the agent will not start.
    agent.stop();
    std::fs::rename(store.join("dev"), store.join("dev.real")).unwrap();
    std::os::unix::fs::symlink(&outside, store.join("dev")).unwrap();
    let err = agent.spawn().unwrap_err();
    tally.check(if err.contains("store/dev") && err.contains("symlink") {
        Ok(())
    } else {
        Err(format!("a symlinked environment directory: {err}"))
    });
    std::fs::remove_file(store.join("dev")).unwrap();
    std::fs::rename(store.join("dev.real"), store.join("dev")).unwrap();

    // Planted while stopped: found at start.
    let never = plant(&agent, &outside, "s");
    agent.spawn().unwrap();
    check_plants(&agent, &mut tally, &never, "s", &untouched).await;

    // Planted while running: found by hot reload.
    let never = plant(&agent, &outside, "r");
    // A good file written after them proves the reloader got past them all.
    write_private(
        &store.join("prod/r-fresh.age"),
        &encrypt_to(&agent.recipient(), b"sk_adv_store_fresh"),
    );
    let start = Instant::now();
    while served(&agent, "prod", "r-fresh").await.is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "prod/r-fresh never applied:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let needed = [
        "r-shadow",
        "r-outside",
        "r-alias",
        "r-escape",
        "r-cross",
        "r-ident",
        "r-pipe",
    ];
    while !needed.iter().all(|n| agent.logs().contains(&format!("{n}.age"))) {
        assert!(
            start.elapsed() < DEADLINE,
            "not every plant was reported:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_plants(&agent, &mut tally, &never, "r", &untouched).await;

    // An environment directory swapped for a symlink while running: a
    // write into it is refused, and nothing lands outside.
    std::fs::rename(store.join("staging"), store.join("staging.real")).unwrap();
    std::os::unix::fs::symlink(&outside, store.join("staging")).unwrap();
    let out = agent.cli(&["put", "staging/c"], Some(b"sk_adv_through_link"));
    tally.check(if !out.status.success() && text(&out.stderr).contains("symlink") {
        Ok(())
    } else {
        Err(format!(
            "put through a symlinked environment directory: {}",
            text(&out.stderr)
        ))
    });
    let mut listing: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    tally.check(if listing == ["victim.age", "victim.txt"] {
        Ok(())
    } else {
        Err(format!("a write went through the symlink: {listing:?}"))
    });
    std::fs::remove_file(store.join("staging")).unwrap();
    std::fs::rename(store.join("staging.real"), store.join("staging")).unwrap();
    assert_no_panic(&agent);
    tally.finish();
}

/// The audit log's place planted with links (to a victim file, dangling
/// to a new file outside), a symlinked head file, a FIFO, a directory, a
/// device: the agent refuses to start with an error naming the file, and
/// touches no target, creates nothing outside, leaves no socket behind.
/// The log swapped for a symlink while the agent runs: the agent keeps
/// appending to the file it opened; the victim is untouched.
/// (src/audit/writer tests cover a symlinked log at the writer level.)
#[tokio::test]
async fn links_and_pipes_in_the_audit_log_place_are_never_followed() {
    use std::os::unix::fs::symlink;
    let mut agent = TestAgent::start();
    agent.put("prod/audited", "sk_adv_audit");
    agent.stop();
    let audit = agent.audit_file();
    let head = agent.dir.join("audit.jsonl.head");
    let aside = agent.dir.join("audit.jsonl.aside");
    let outside = agent.dir.parent().unwrap().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim.log");
    write_private(&victim, b"VICTIM_LOG_MARKER\n");
    let victim_before = fingerprint_of(&victim);
    let mut tally = Tally::new("audit_plants");

    type Plant<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, &Path, Plant)> = vec![
        (
            "log -> victim",
            &audit,
            Box::new(|p: &Path| symlink(&victim, p).unwrap()),
        ),
        (
            "log -> missing file outside",
            &audit,
            Box::new(|p: &Path| symlink(outside.join("new.log"), p).unwrap()),
        ),
        (
            "log -> /dev/null",
            &audit,
            Box::new(|p: &Path| symlink("/dev/null", p).unwrap()),
        ),
        (
            "head -> victim",
            &head,
            Box::new(|p: &Path| symlink(&victim, p).unwrap()),
        ),
        (
            "log is a FIFO",
            &audit,
            Box::new(|p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()),
        ),
        (
            "log is a directory",
            &audit,
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
        ),
    ];
    for (what, path, plant) in &cases {
        std::fs::rename(path, &aside).unwrap();
        plant(path);
        let started = Instant::now();
        let result = agent.spawn();
        tally.check(match &result {
            Ok(()) => Err(format!("{what}: the agent started")),
            Err(e) if e.contains(&path.display().to_string()) => Ok(()),
            Err(e) => Err(format!("{what}: the error does not name {}: {e}", path.display())),
        });
        if result.is_ok() {
            agent.stop();
        }
        tally.check(if started.elapsed() < Duration::from_secs(10) {
            Ok(())
        } else {
            Err(format!("{what}: took {:?} to refuse", started.elapsed()))
        });
        tally.check(if agent.keys_sock().exists() || agent.admin_sock().exists() {
            Err(format!("{what}: a socket was left behind"))
        } else {
            Ok(())
        });
        tally.check(
            if fingerprint_of(&victim) == victim_before && !outside.join("new.log").exists() {
                Ok(())
            } else {
                Err(format!("{what}: something outside was written"))
            },
        );
        if std::fs::symlink_metadata(path).unwrap().is_dir() {
            std::fs::remove_dir(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
        std::fs::rename(&aside, path).unwrap();
    }

    // Swapped while running: the open file keeps the records.
    agent.spawn().unwrap();
    std::fs::rename(&audit, &aside).unwrap();
    symlink(&victim, &audit).unwrap();
    let records_before = std::fs::read_to_string(&aside).unwrap().lines().count();
    for _ in 0..5 {
        let r = served(&agent, "prod", "audited").await;
        tally.check(match r {
            Ok(got) if got == Served::new(b"sk_adv_audit", 1) => Ok(()),
            other => Err(format!("fetch with the log swapped for a symlink: {other:?}")),
        });
    }
    let start = Instant::now();
    let mut records_after = records_before;
    while records_after < records_before + 5 && start.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        records_after = std::fs::read_to_string(&aside).unwrap().lines().count();
    }
    tally.check(if records_after >= records_before + 5 {
        Ok(())
    } else {
        Err(format!(
            "the open log got {} of 5 fetch records",
            records_after - records_before
        ))
    });
    tally.check(if fingerprint_of(&victim) == victim_before {
        Ok(())
    } else {
        Err("the agent wrote through the symlink that replaced its log".into())
    });
    std::fs::remove_file(&audit).unwrap();
    std::fs::rename(&aside, &audit).unwrap();
    let out = agent.cli(&["audit", "verify"], None);
    tally.check(if out.status.success() {
        Ok(())
    } else {
        Err(format!("audit verify after the swap: {}", text(&out.stderr)))
    });
    assert_no_panic(&agent);
    tally.finish();
}
