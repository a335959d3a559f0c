//! `keyward run`: start a command with keys in its environment, and restart
//! or signal it when a key changes (see `held_keys.rs` for how the keys are
//! fetched and followed).
//!
//! With `--restart-on primary` (the default) it acts only when a key's
//! primary is no longer the one the command was given (or, with
//! `--on-rotate signal:…`, last signalled for): once per rotation, at the
//! promote. The command's `VAR_FALLBACK` is then left as it was through a
//! stage, an abort or a retire; a program needs its primary to work, and
//! restarting it three times per rotation for the fallback alone cost more
//! than a fallback that is one step behind. `--restart-on any` acts on
//! every change.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::time::Duration;

use keyward::secret::KeyRef;
use keyward_client::KeySet;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::cli::{Cli, OnRotate, RestartOn, RunArgs};
use crate::commands::held_keys::{describe, fetch_all, follow, harden, Change, PrimaryId};
use crate::sockets::service;
use crate::text::key_arg;
use crate::Outcome;

/// How `keyward run` names itself to the agent (keyward-client's
/// `x-keyward-client` header): a consumer that holds keys for a program
/// which cannot report which key it uses.
const CLIENT_NAME: &str = concat!("run/", env!("CARGO_PKG_VERSION"));

/// `KEY=VAR` of `--key`.
pub(crate) fn key_var(spec: &str) -> Result<(KeyRef, String), String> {
    let (key, var) = spec.split_once('=').ok_or_else(|| {
        format!("--key {spec:?}: write it as ENV/NAME=VARIABLE, e.g. prod/billing-api=BILLING_API_KEY")
    })?;
    let ok = var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "--key {spec:?}: {var:?} is not an environment variable name: use letters, digits and '_', not starting with a digit"
        ));
    }
    Ok((
        key_arg(key).map_err(|e| format!("--key {spec:?}: {e}"))?,
        var.to_owned(),
    ))
}

/// Environment variables and their (secret) values.
pub(crate) type ChildEnv = Vec<(String, Zeroizing<Vec<u8>>)>;

/// The variables a child gets: VAR (the primary), VAR_PRIMARY and
/// VAR_FALLBACK (the fallback, or the primary when the key has none).
fn child_env(specs: &[(KeyRef, String)], sets: &[KeySet]) -> Result<ChildEnv, String> {
    let mut env = Vec::new();
    for ((key, var), set) in specs.iter().zip(sets) {
        let primary = &set.primary;
        let fallback = set.fallback.as_ref().unwrap_or(primary);
        for (name, v) in [
            (var.clone(), primary),
            (format!("{var}_PRIMARY"), primary),
            (format!("{var}_FALLBACK"), fallback),
        ] {
            if v.secret.expose().contains(&0) {
                return Err(format!(
                    "{key} version {} holds a NUL byte, which no environment variable can carry: use keyward render to put it in a file",
                    v.version
                ));
            }
            env.push((name, Zeroizing::new(v.secret.expose().to_vec())));
        }
    }
    Ok(env)
}

/// A running child in its own process group.
pub(crate) struct Child {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: Pid,
}

impl Child {
    pub(crate) fn start(argv: &[String], env: &ChildEnv) -> Result<Child, String> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).process_group(0).kill_on_drop(true);
        for (name, value) in env {
            cmd.env(name, OsString::from_vec(value.to_vec()));
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        let pid = Pid::from_raw(child.id().map_or(0, |p| p as i32));
        Ok(Child { child, pid })
    }

    /// SIGTERM to its process group, SIGKILL after `timeout`.
    async fn stop(mut self, timeout: Duration) {
        let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGTERM);
        if tokio::time::timeout(timeout, self.child.wait()).await.is_err() {
            eprintln!(
                "keyward run: the command did not stop within {}; killing it",
                humantime::format_duration(timeout)
            );
            let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
    }
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// The primary of each key that the command was given (or, with
/// `--on-rotate signal:…`, last signalled for).
type Given = HashMap<String, PrimaryId>;

fn given(sets: &[KeySet]) -> Given {
    sets.iter().map(|s| (s.key.clone(), PrimaryId::of(s))).collect()
}

/// Whether `change` is one `--restart-on` acts on, against what the
/// command has.
fn acts_on(restart_on: RestartOn, given: &Given, change: &Change) -> bool {
    match restart_on {
        RestartOn::Any => true,
        RestartOn::Primary => given.get(&change.key) != Some(&change.primary),
    }
}

/// The signals `keyward run` passes on to its command, as they arrive.
pub(crate) fn forwarded_signals() -> Result<mpsc::Receiver<Signal>, String> {
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (sig_tx, sig_rx) = mpsc::channel::<Signal>(16);
    for kind in kinds {
        let mut stream = signal(kind).map_err(|e| format!("cannot handle signals: {e}"))?;
        let tx = sig_tx.clone();
        let sig = Signal::try_from(kind.as_raw_value()).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(sig_rx)
}

/// A random delay in `0..=splay`.
fn splay_delay(splay: Duration) -> Duration {
    if splay.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(0..=splay.as_millis() as u64))
}

/// `keyward run`.
pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> Outcome {
    harden();
    let specs = args.keys.iter().map(|s| key_var(s)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<KeyRef> = specs.iter().map(|(k, _)| k.clone()).collect();
    let not_started = |e: String| format!("{e}; the command was not started");
    let client = service(cli).await.map_err(not_started)?.with_client_name(CLIENT_NAME);
    let sets = fetch_all(&client, &refs).await.map_err(not_started)?;
    let env = child_env(&specs, &sets)?;
    let seen = sets.iter().map(|s| (s.key.clone(), s.generation)).collect();
    let mut has = given(&sets);
    let mut changes = follow(&client, &refs, &seen);
    let mut child = Child::start(&args.command, &env)?;
    drop(env);

    let mut sig_rx = forwarded_signals()?;

    loop {
        tokio::select! {
            status = child.child.wait() => {
                let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
                return Ok(exit_code(status));
            }
            Some(sig) = sig_rx.recv() => {
                let _ = kill(child.pid, sig);
            }
            Some(first) = changes.recv() => {
                if matches!(args.on_rotate, OnRotate::None) {
                    eprintln!("keyward run: {} changed; --on-rotate none: the command keeps its keys", first.key);
                    continue;
                }
                if !acts_on(args.restart_on, &has, &first) {
                    eprintln!(
                        "keyward run: {} changed but not its primary (v{}); --restart-on primary: the command keeps running",
                        first.key, first.primary.version
                    );
                    continue;
                }
                // The latest primary of each key that changed, for a
                // signal (a restart fetches the keys again).
                let mut latest: Given = HashMap::new();
                let mut changed = vec![first.key.clone()];
                latest.insert(first.key, first.primary);
                let mut note = |change: Change, changed: &mut Vec<String>| {
                    if acts_on(args.restart_on, &has, &change) {
                        changed.push(change.key.clone());
                    }
                    latest.insert(change.key, change.primary);
                };
                let delay = splay_delay(args.splay);
                // Still forward signals and notice the child exiting while
                // waiting out the splay.
                let deadline = tokio::time::sleep(delay);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        status = child.child.wait() => {
                            let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
                            return Ok(exit_code(status));
                        }
                        Some(sig) = sig_rx.recv() => { let _ = kill(child.pid, sig); }
                        Some(more) = changes.recv() => note(more, &mut changed),
                    }
                }
                while let Ok(more) = changes.try_recv() {
                    note(more, &mut changed);
                }
                changed.sort();
                changed.dedup();
                match &args.on_rotate {
                    OnRotate::Signal(sig) => {
                        eprintln!("keyward run: {} changed; sending {sig} to the command", changed.join(", "));
                        let _ = kill(child.pid, *sig);
                        has.extend(latest);
                    }
                    OnRotate::Restart => {
                        let sets = match fetch_all(&client, &refs).await {
                            Ok(s) => s,
                            Err(e) => {
                                eprintln!("keyward run: {} changed but {e}; the command keeps running with its keys", changed.join(", "));
                                continue;
                            }
                        };
                        if args.restart_on == RestartOn::Primary && given(&sets) == has {
                            eprintln!(
                                "keyward run: {} changed, but its primary is back to the one the command has; the command keeps running",
                                changed.join(", ")
                            );
                            continue;
                        }
                        let env = match child_env(&specs, &sets) {
                            Ok(env) => env,
                            Err(e) => {
                                eprintln!("keyward run: {e}; the command keeps running with its keys");
                                continue;
                            }
                        };
                        eprintln!("keyward run: {} changed; restarting the command with {}", changed.join(", "), describe(&sets));
                        child.stop(args.stop_timeout).await;
                        child = Child::start(&args.command, &env)?;
                        has = given(&sets);
                    }
                    OnRotate::None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_specs() {
        let (k, v) = key_var("prod/billing-api=BILLING_API_KEY").unwrap();
        assert_eq!(
            (k.to_string().as_str(), v.as_str()),
            ("prod/billing-api", "BILLING_API_KEY")
        );
        assert!(key_var("prod/a").unwrap_err().contains("ENV/NAME=VARIABLE"));
        assert!(key_var("prod/a=1X")
            .unwrap_err()
            .contains("not an environment variable name"));
        assert!(key_var("prod/a=A-B").is_err());
        assert!(key_var("../x=A").is_err());
    }

    #[test]
    fn restart_on_primary_acts_only_on_another_primary() {
        let id = |version: u64, fingerprint: &str| PrimaryId {
            version,
            fingerprint: fingerprint.to_owned(),
        };
        let has: Given = [("prod/a".to_owned(), id(1, "f1"))].into();
        let change = |key: &str, primary| Change {
            key: key.to_owned(),
            primary,
        };
        // (change, acted on with primary, with any)
        let table = [
            // stage, abort, retire: the primary stays.
            (change("prod/a", id(1, "f1")), false, true),
            // promote, or a put --overwrite.
            (change("prod/a", id(2, "f2")), true, true),
            // The same version number with another secret.
            (change("prod/a", id(1, "f9")), true, true),
            // A key the command was not given (cannot happen; acted on).
            (change("prod/b", id(1, "f1")), true, true),
        ];
        for (c, primary, any) in table {
            let what = format!("{} v{} {}", c.key, c.primary.version, c.primary.fingerprint);
            assert_eq!(acts_on(RestartOn::Primary, &has, &c), primary, "{what}");
            assert_eq!(acts_on(RestartOn::Any, &has, &c), any, "{what}");
        }
    }
}
