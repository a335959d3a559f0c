//! Hook tests: real `/bin/sh` scripts as hooks: their output, errors, redaction and timeouts.

use super::*;
use std::time::Instant;

const SH: &str = "/bin/sh";
const T: Duration = Duration::from_secs(10);

fn sh(script: &str) -> HookCommand {
    HookCommand::new(vec![SH.into(), "-c".into(), script.into()]).unwrap()
}

/// `generate`, expected to fail (a `Secret` has no `Debug` for
/// `unwrap_err`).
async fn gen_err(cmd: &HookCommand, timeout: Duration, max_bytes: usize) -> HookError {
    match generate(cmd, timeout, max_bytes).await {
        Ok(_) => panic!("the generator was accepted"),
        Err(e) => e,
    }
}

fn text(secret: &Secret) -> String {
    String::from_utf8(secret.expose_secret().to_vec()).unwrap()
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

#[test]
fn command_lines_are_checked() {
    assert_eq!(HookCommand::new(vec![]), Err(InvalidHookCommand::Empty));
    let e = HookCommand::new(vec!["new-key".into()]).unwrap_err();
    assert_has(&e.to_string(), &["\"new-key\"", "absolute", "PATH"]);
    let e = HookCommand::new(vec!["/bin/x".into(), "a\0b".into()]).unwrap_err();
    assert_eq!(e, InvalidHookCommand::Nul { index: 1 });
    let c = HookCommand::new(vec!["/bin/x".into(), "--env".into()]).unwrap();
    assert_eq!(c.program(), "/bin/x");
    let c = c.for_key(&"prod/billing-api".parse().unwrap());
    assert_eq!(
        c.env,
        [
            ("KEYWARD_KEY".to_owned(), "prod/billing-api".to_owned()),
            ("KEYWARD_ENV".to_owned(), "prod".to_owned()),
            ("KEYWARD_NAME".to_owned(), "billing-api".to_owned()),
        ]
    );
    assert_eq!(c.clone().for_key(&"dev/x".parse().unwrap()).env.len(), 3);
}

#[tokio::test]
async fn generator_prints_a_secret() {
    let s = generate(&sh("printf sk_live_123"), T, 64).await.unwrap();
    assert_eq!(text(&s), "sk_live_123");
}

#[tokio::test]
async fn generator_trailing_newline_is_stripped_once() {
    let s = generate(&sh("echo sk_live_123"), T, 64).await.unwrap();
    assert_eq!(text(&s), "sk_live_123");
    let s = generate(&sh("printf 'sk\\n\\n'"), T, 64).await.unwrap();
    assert_eq!(text(&s), "sk\n");
    let s = generate(&sh("printf 'sk\\r\\n'"), T, 64).await.unwrap();
    assert_eq!(text(&s), "sk");
    let s = generate(&sh("printf ' a b '"), T, 64).await.unwrap();
    assert_eq!(text(&s), " a b ", "only the newline is removed");
}

#[tokio::test]
async fn generator_empty_output_is_an_error() {
    for script in ["true", "echo", "echo 'provider down' >&2"] {
        let e = gen_err(&sh(script), T, 64).await;
        assert!(
            matches!(
                e,
                HookError::Output {
                    hook: Hook::Generator,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_has(&e.to_string(), &["generator hook /bin/sh", "printed nothing on stdout"]);
    }
    let e = gen_err(&sh("echo 'provider down' >&2"), T, 64).await;
    assert_has(&e.to_string(), &["provider down"]);
}

#[tokio::test]
async fn generator_non_zero_exit_fails_with_stderr_and_without_stdout() {
    let e = gen_err(&sh("printf sk_live_partial; echo 'quota exceeded' >&2; exit 3"), T, 64).await;
    let HookError::Failed {
        hook, status, stderr, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!((*hook, status.code()), (Hook::Generator, Some(3)));
    assert_eq!(stderr, "its stderr: quota exceeded");
    let msg = e.to_string();
    assert_has(
        &msg,
        &[
            "generator hook /bin/sh failed",
            "exit status: 3",
            "quota exceeded",
            "retry",
        ],
    );
    assert!(!msg.contains("sk_live_partial"), "{msg}");
}

#[tokio::test]
async fn generator_max_bytes_is_enforced() {
    let s = generate(&sh("printf 1234"), T, 4).await.unwrap();
    assert_eq!(text(&s), "1234");
    let s = generate(&sh("printf '1234\\r\\n'"), T, 4).await.unwrap();
    assert_eq!(text(&s), "1234");
    let e = gen_err(&sh("printf 12345"), T, 4).await;
    assert_has(&e.to_string(), &["more than 4 bytes", "max_secret_bytes"]);
    assert!(!e.to_string().contains("1234"), "{e}");
    // An endless generator is stopped at the limit, not at the timeout.
    let started = Instant::now();
    let e = gen_err(&sh("yes sk_live_endless"), T, 1000).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(matches!(e, HookError::Output { .. }), "{e:?}");
    assert_has(&e.to_string(), &["more than 1000 bytes", "killed"]);
    assert!(!e.to_string().contains("sk_live"), "{e}");
}

#[tokio::test]
async fn validator_accepts_and_rejects() {
    let cmd = sh("[ \"$(cat)\" = \"good\" ] || { echo 'provider says: 401' >&2; exit 1; }");
    validate(&cmd, &Secret::copy_from(b"good"), T).await.unwrap();
    let e = validate(&cmd, &Secret::copy_from(b"bad-candidate"), T)
        .await
        .unwrap_err();
    let HookError::Rejected { hook, stderr, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*hook, Hook::Validator);
    assert_eq!(stderr, "its stderr: provider says: 401");
    assert_has(
        &e.to_string(),
        &["validator hook /bin/sh rejected the new key", "provider says: 401"],
    );
}

#[tokio::test]
async fn validator_killed_by_a_signal_failed_rather_than_rejected() {
    let e = validate(&sh("cat >/dev/null; kill -9 $$"), &Secret::copy_from(b"x"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            HookError::Failed {
                hook: Hook::Validator,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn validator_that_ignores_a_large_stdin_is_judged_by_its_exit_status() {
    // Larger than a pipe buffer: the write meets a closed pipe.
    let big = Secret::copy_from(&vec![b'k'; 1 << 20]);
    validate(&sh("exit 0"), &big, T).await.unwrap();
    let e = validate(&sh("exit 2"), &big, T).await.unwrap_err();
    assert!(matches!(e, HookError::Rejected { .. }), "{e:?}");
}

#[tokio::test]
async fn revoker_receives_the_secret_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    let cmd = sh(&format!(
        "cat > '{}'; echo 'revoked key 42 at provider'; echo more",
        file.display()
    ));
    let note = revoke(&cmd, &Secret::copy_from(b"sk_old_secret"), T).await.unwrap();
    assert_eq!(note, "revoked key 42 at provider");
    assert_eq!(std::fs::read(&file).unwrap(), b"sk_old_secret");
    let note = revoke(&sh("cat >/dev/null"), &Secret::copy_from(b"x"), T)
        .await
        .unwrap();
    assert_eq!(note, "exited 0 with no output");
    let e = revoke(&sh("echo 'no such key' >&2; exit 4"), &Secret::copy_from(b"x"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            HookError::Failed {
                hook: Hook::Revoker,
                ..
            }
        ),
        "{e:?}"
    );
    assert_has(&e.to_string(), &["revoker hook /bin/sh failed", "no such key"]);
}

#[tokio::test]
async fn secrets_are_not_in_argv_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seen");
    let script = format!(
        "cat >/dev/null; {{ tr '\\0' ' ' < /proc/$$/cmdline; echo; env; }} > '{}'",
        file.display()
    );
    let cmd = sh(&script).for_key(&"prod/billing-api".parse().unwrap());
    validate(&cmd, &Secret::copy_from(b"sk_live_hidden"), T).await.unwrap();
    let seen = std::fs::read_to_string(&file).unwrap();
    assert!(!seen.contains("sk_live_hidden"), "{seen}");
    let mut env: Vec<&str> = seen.lines().skip(1).filter(|l| !l.starts_with("PWD=")).collect();
    env.sort_unstable();
    assert_eq!(
        env,
        [
            "KEYWARD_ENV=prod",
            "KEYWARD_HOOK=validator",
            "KEYWARD_KEY=prod/billing-api",
            "KEYWARD_NAME=billing-api",
            "LANG=C",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ]
    );
}

#[tokio::test]
async fn errors_never_contain_the_secret() {
    let secret = Secret::copy_from(b"sk_live_topsecret");
    // Hooks that (wrongly) echo the secret on stderr and stdout.
    let echo = "s=$(cat); echo \"got $s\"; echo \"bad key $s, really $s\" >&2; exit 1";
    let e = validate(&sh(echo), &secret, T).await.unwrap_err().to_string();
    assert!(!e.contains("sk_live_topsecret"), "{e}");
    assert_has(&e, &["bad key [redacted], really [redacted]"]);
    let e = revoke(&sh(echo), &secret, T).await.unwrap_err().to_string();
    assert!(!e.contains("sk_live_topsecret"), "{e}");
    let note = revoke(&sh("s=$(cat); echo \"revoked $s\""), &secret, T).await.unwrap();
    assert_eq!(note, "revoked [redacted]");
    let e = gen_err(&sh("echo sk_live_gen; echo 'made sk_live_gen' >&2; exit 1"), T, 64)
        .await
        .to_string();
    assert!(!e.contains("sk_live_gen"), "{e}");
    // A long stderr cut around a secret: no piece of it survives,
    // wherever the cut falls.
    let pieces: Vec<&[u8]> = secret.expose_secret().windows(4).collect();
    for after in (2030..2070).step_by(3) {
        let long = format!(
            "s=$(cat); head -c 5000 /dev/zero | tr '\\0' x >&2; printf '%s' \"$s\" >&2; head -c {after} /dev/zero | tr '\\0' y >&2; exit 1"
        );
        let e = validate(&sh(&long), &secret, T).await.unwrap_err().to_string();
        for piece in &pieces {
            assert!(!e.as_bytes().windows(4).any(|w| w == *piece), "{after}: {e}");
        }
        assert!(e.contains("(the end): …"), "{e}");
    }
    // A stderr flood is cut to its tail.
    let e = validate(
        &sh("cat >/dev/null; yes flood | head -n 100000 >&2; echo last >&2; exit 1"),
        &secret,
        T,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.len() < STDERR_TAIL_BYTES + 400, "{}", e.len());
    assert_has(&e, &["flood\nlast"]);
}

#[tokio::test]
async fn stderr_is_made_printable() {
    let e = validate(
        &sh("cat >/dev/null; printf 'a\\033[31mb\\n' >&2; exit 1"),
        &Secret::copy_from(b"x"),
        T,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(!e.contains('\u{1b}'), "{e:?}");
    assert_has(&e, &["a\u{fffd}[31mb"]);
}

#[tokio::test]
async fn spawn_failure_names_the_program() {
    let cmd = HookCommand::new(vec!["/nonexistent/keyward-hook".into()]).unwrap();
    let e = gen_err(&cmd, T, 64).await;
    assert!(matches!(e, HookError::Spawn { .. }), "{e:?}");
    assert_has(
        &e.to_string(),
        &["generator hook /nonexistent/keyward-hook", "executable"],
    );
}

/// True once `pid` is gone (or a zombie waiting for its reaper).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn timeout_kills_the_hook_and_its_children() {
    let started = Instant::now();
    let e = gen_err(&sh("sleep 30"), Duration::from_millis(500), 64).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            HookError::TimedOut {
                hook: Hook::Generator,
                ..
            }
        ),
        "{e:?}"
    );
    assert_has(
        &e.to_string(),
        &["did not finish within 500ms", "killed", "hook_timeout"],
    );

    // A grandchild that keeps the pipes open is killed with the group.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
    let started = Instant::now();
    let e = validate(&sh(&script), &Secret::copy_from(b"x"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            HookError::TimedOut {
                hook: Hook::Validator,
                ..
            }
        ),
        "{e:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_dead(pid) {
        assert!(Instant::now() < deadline, "sleep {pid} survived the timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dropped_hook_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
    let cmd = sh(&script);
    let run = generate(&cmd, T, 64);
    // The caller gives up (e.g. the admin client went away).
    assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err());
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_dead(pid) {
        assert!(Instant::now() < deadline, "sleep {pid} survived its dropped hook");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn redact_and_note() {
    assert_eq!(
        &redact(b"a SEC b SECSEC", b"SEC")[..],
        b"a [redacted] b [redacted][redacted]"
    );
    assert_eq!(&redact(b"abc", b"")[..], b"abc");
    assert_eq!(&redact(b"SESECRET", b"SECRET")[..], b"SE[redacted]");
    assert_eq!(note(b"ok\nsecond", false, b"k"), "o[redacted]");
    assert_eq!(note(b"done --SECR", true, b"SECRET"), "done -");
    assert_eq!(note(b"done SECR", true, b"SECRET"), "done");
    assert_eq!(note(b"done SECRET ab", true, b"SECRET"), "done [redacted]");
    assert_eq!(note(b"done SECRET ab", false, b"SECRET"), "done [redacted] ab");
    let long = "x".repeat(500);
    assert_eq!(note(long.as_bytes(), false, b"S").chars().count(), NOTE_MAX_CHARS + 1);
    assert_eq!(describe_stderr(b"", false, b"s"), "it printed nothing on stderr");
    // Earlier output was dropped: a cut secret's end goes, whole ones
    // are redacted, wherever they fall.
    for (tail, want) in [
        (&b"CRETxxxxxx"[..], "xxxxx"),
        (b"xxSECRETyy", "[redacted]yy"),
        (b"SECRETyy", "[redacted]yy"),
        (b"xxxxxxxSECRET", "xx[redacted]"),
        (b"ETSECRET", "[redacted]"),
    ] {
        assert_eq!(
            describe_stderr(tail, true, b"SECRET"),
            format!("its stderr (the end): …{want}")
        );
    }
    assert_eq!(describe_stderr(b"CRETxx", false, b"SECRET"), "its stderr: CRETxx");
}
