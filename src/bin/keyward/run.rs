//! `keyward run` and `keyward render`: keys for programs that know nothing
//! of keyward.
//!
//! `run` starts a command with keys in its environment and restarts or
//! signals it when a key changes; `render` writes keys into a file from a
//! template and re-renders it on every change. Both fetch every key before
//! anything starts (an unreachable agent or a missing key is an error, never
//! an empty variable or file), follow the keys with `WatchKeys`
//! (reconnecting with backoff when the agent restarts), and never print a
//! secret: messages name keys, versions and fingerprints.
//!
//! Both hold keys for as long as they run, so they harden themselves first
//! ([`keyward::hygiene::harden_client`]): no core dump (the hard limit 0 is
//! inherited by the command `run` starts, which holds the keys in its
//! environment), not dumpable, memory locked where allowed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use keyward::proto::{self, keys_client::KeysClient};
use keyward::secret::KeyRef;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::cli::{Cli, OnRotate, RenderArgs, RunArgs};
use crate::{key_arg, key_name, refused, service_socket, Outcome};
use keyward::wire::ToWire;

/// See the module docs; what fails is said, and the command goes on.
fn harden() {
    for warning in keyward::hygiene::harden_client() {
        eprintln!("keyward: {warning}");
    }
}

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fetches every key; the first failure is the error, naming the key.
async fn fetch_all(sock: &Path, keys: &[KeyRef]) -> Result<Vec<proto::KeySet>, String> {
    let channel = keyward::client::connect(sock).await.map_err(|e| e.to_string())?;
    let mut client = KeysClient::new(channel);
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let set = client
            .get_key(proto::GetKeyRequest {
                key: Some(key.to_proto()),
            })
            .await
            .map_err(|s| format!("cannot fetch {key}: {}", refused(s)))?
            .into_inner();
        out.push(set);
    }
    Ok(out)
}

/// Follows `keys` with WatchKeys, reconnecting with backoff, and sends the
/// name of every key whose generation differs from the last one seen
/// (starting from `seen`).
fn spawn_watcher(sock: PathBuf, keys: Vec<KeyRef>, mut seen: HashMap<String, u64>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let stream = async {
                let channel = keyward::client::connect(&sock).await.map_err(|e| e.to_string())?;
                KeysClient::new(channel)
                    .watch_keys(proto::WatchKeysRequest {
                        keys: keys.iter().map(KeyRef::to_proto).collect(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(refused)
            }
            .await;
            let ended = match stream {
                Err(e) => e,
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            backoff = Duration::from_millis(100);
                            let Some(set) = event.key_set else { continue };
                            let name = key_name(set.key.as_ref());
                            if seen.insert(name.clone(), set.generation) != Some(set.generation)
                                && tx.send(name).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break "the agent ended the watch".to_owned(),
                        Err(s) => break refused(s),
                    }
                },
            };
            if tx.is_closed() {
                return;
            }
            eprintln!(
                "keyward: lost the watch on the keys ({ended}); retrying in {} ms",
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    rx
}

/// `KEY=VAR` of `--key`.
fn key_var(spec: &str) -> Result<(KeyRef, String), String> {
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
type ChildEnv = Vec<(String, Zeroizing<Vec<u8>>)>;

/// The variables a child gets: VAR (the primary), VAR_PRIMARY and
/// VAR_FALLBACK (the fallback, or the primary when the key has none).
fn child_env(specs: &[(KeyRef, String)], sets: &[proto::KeySet]) -> Result<ChildEnv, String> {
    let mut env = Vec::new();
    for ((key, var), set) in specs.iter().zip(sets) {
        let primary = set.primary.as_ref().ok_or_else(|| format!("{key} has no primary"))?;
        let fallback = set.fallback.as_ref().unwrap_or(primary);
        for (name, v) in [
            (var.clone(), primary),
            (format!("{var}_PRIMARY"), primary),
            (format!("{var}_FALLBACK"), fallback),
        ] {
            if v.secret.contains(&0) {
                return Err(format!(
                    "{key} version {} holds a NUL byte, which no environment variable can carry: use keyward render to put it in a file",
                    v.version
                ));
            }
            env.push((name, Zeroizing::new(v.secret.to_vec())));
        }
    }
    Ok(env)
}

fn describe(sets: &[proto::KeySet]) -> String {
    sets.iter()
        .map(|s| {
            let p = s.primary.as_ref();
            format!(
                "{} generation {} (primary v{} {})",
                key_name(s.key.as_ref()),
                s.generation,
                p.map_or(0, |p| p.version),
                p.map_or("", |p| p.fingerprint.as_str())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A running child in its own process group.
struct Child {
    child: tokio::process::Child,
    pid: Pid,
}

impl Child {
    fn start(argv: &[String], env: &ChildEnv) -> Result<Child, String> {
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

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// A random delay in `0..=splay`.
fn splay_delay(splay: Duration) -> Duration {
    if splay.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(0..=splay.as_millis() as u64))
}

/// `keyward run`.
pub async fn run(cli: &Cli, args: &RunArgs) -> Outcome {
    harden();
    let specs = args.keys.iter().map(|s| key_var(s)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<KeyRef> = specs.iter().map(|(k, _)| k.clone()).collect();
    let sock = service_socket(cli);
    let sets = fetch_all(&sock, &refs)
        .await
        .map_err(|e| format!("{e}; the command was not started"))?;
    let env = child_env(&specs, &sets)?;
    let seen = sets.iter().map(|s| (key_name(s.key.as_ref()), s.generation)).collect();
    let mut changes = spawn_watcher(sock.clone(), refs.clone(), seen);
    let mut child = Child::start(&args.command, &env)?;
    drop(env);

    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (sig_tx, mut sig_rx) = mpsc::channel::<Signal>(16);
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
                let mut changed = vec![first];
                if matches!(args.on_rotate, OnRotate::None) {
                    eprintln!("keyward run: {} changed; --on-rotate none: the command keeps its keys", changed.join(", "));
                    continue;
                }
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
                        Some(more) = changes.recv() => changed.push(more),
                    }
                }
                while let Ok(more) = changes.try_recv() {
                    changed.push(more);
                }
                changed.sort();
                changed.dedup();
                match &args.on_rotate {
                    OnRotate::Signal(sig) => {
                        eprintln!("keyward run: {} changed; sending {sig} to the command", changed.join(", "));
                        let _ = kill(child.pid, *sig);
                    }
                    OnRotate::Restart => {
                        let sets = match fetch_all(&sock, &refs).await {
                            Ok(s) => s,
                            Err(e) => {
                                eprintln!("keyward run: {} changed but {e}; the command keeps running with its keys", changed.join(", "));
                                continue;
                            }
                        };
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
                    }
                    OnRotate::None => {}
                }
            }
        }
    }
}

/// One `{{ … }}` of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Primary,
    Fallback,
    Version,
    Fingerprint,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Key(usize, Field),
}

/// Parses `text`: `{{ ENV/NAME }}` (the primary), or `{{ ENV/NAME.FIELD }}`
/// with FIELD one of primary, fallback (or the primary when there is none),
/// version, fingerprint. Returns the pieces and the keys in order of first
/// use.
fn parse_template(text: &str, origin: &str) -> Result<(Vec<Piece>, Vec<KeyRef>), String> {
    let mut pieces = Vec::new();
    let mut keys: Vec<KeyRef> = Vec::new();
    let mut rest = text;
    let line_of = |rest: &str| text[..text.len() - rest.len()].matches('\n').count() + 1;
    while let Some(start) = rest.find("{{") {
        pieces.push(Piece::Text(rest[..start].to_owned()));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "{origin}:{}: '{{{{' without a closing '}}}}'",
                line_of(&rest[start..])
            ));
        };
        let inner = after[..end].trim();
        let (key, field) = match inner.rsplit_once('.') {
            Some((k, f)) if matches!(f, "primary" | "fallback" | "version" | "fingerprint") => (k, f),
            _ => (inner, "primary"),
        };
        let key: KeyRef = key.parse().map_err(|e| {
            format!(
                "{origin}:{}: {{{{ {inner} }}}}: {e}; write {{{{ ENV/NAME }}}} or {{{{ ENV/NAME.primary|fallback|version|fingerprint }}}}",
                line_of(&rest[start..])
            )
        })?;
        let index = match keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        let field = match field {
            "fallback" => Field::Fallback,
            "version" => Field::Version,
            "fingerprint" => Field::Fingerprint,
            _ => Field::Primary,
        };
        pieces.push(Piece::Key(index, field));
        rest = &after[end + 2..];
    }
    pieces.push(Piece::Text(rest.to_owned()));
    Ok((pieces, keys))
}

fn render_bytes(pieces: &[Piece], sets: &[proto::KeySet]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut out = Zeroizing::new(Vec::new());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
            Piece::Key(i, field) => {
                let set = &sets[*i];
                let primary = set
                    .primary
                    .as_ref()
                    .ok_or_else(|| format!("{} has no primary", key_name(set.key.as_ref())))?;
                match field {
                    Field::Primary => out.extend_from_slice(&primary.secret),
                    Field::Fallback => out.extend_from_slice(&set.fallback.as_ref().unwrap_or(primary).secret),
                    Field::Version => out.extend_from_slice(primary.version.to_string().as_bytes()),
                    Field::Fingerprint => out.extend_from_slice(primary.fingerprint.as_bytes()),
                }
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically with `mode`: a temp file in the same
/// directory, synced, renamed over `path`, then the directory synced.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".keyward-render")
        .tempfile_in(dir)
        .map_err(|e| fail("create a temp file next to", e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("set the mode of", e))?;
    tmp.write_all(bytes).map_err(|e| fail("write", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("sync", e))?;
    tmp.persist(path).map_err(|e| fail("replace", e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `--on-change` through `/bin/sh -c`; its failure is reported, not
/// fatal.
async fn on_change(cmd: &str) {
    match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("keyward render: --on-change command failed ({s})"),
        Err(e) => eprintln!("keyward render: cannot run --on-change command: {e}"),
    }
}

/// `keyward render`.
pub async fn render(cli: &Cli, args: &RenderArgs) -> Outcome {
    harden();
    let text = std::fs::read_to_string(&args.template)
        .map_err(|e| format!("cannot read template {}: {e}", args.template.display()))?;
    let (pieces, keys) = parse_template(&text, &args.template.display().to_string())?;
    let mode = u32::from_str_radix(args.mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!(
                "--mode {:?} is not an octal file mode: write e.g. 0600 or 0640",
                args.mode
            )
        })?;
    let sock = service_socket(cli);
    let sets = fetch_all(&sock, &keys)
        .await
        .map_err(|e| format!("{e}; {} was not written", args.out.display()))?;
    write_atomically(&args.out, &render_bytes(&pieces, &sets)?, mode)?;
    eprintln!("keyward render: wrote {} ({})", args.out.display(), describe(&sets));
    if args.once {
        return Ok(ExitCode::SUCCESS);
    }
    let seen = sets.iter().map(|s| (key_name(s.key.as_ref()), s.generation)).collect();
    let mut changes = spawn_watcher(sock.clone(), keys.clone(), seen);
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle signals: {e}"))?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
            Some(changed) = changes.recv() => {
                let sets = match fetch_all(&sock, &keys).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("keyward render: {changed} changed but {e}; {} is left as it was", args.out.display());
                        continue;
                    }
                };
                let written = render_bytes(&pieces, &sets).and_then(|b| write_atomically(&args.out, &b, mode));
                match written {
                    Ok(()) => {
                        eprintln!("keyward render: {changed} changed; wrote {} ({})", args.out.display(), describe(&sets));
                        if let Some(cmd) = &args.on_change {
                            on_change(cmd).await;
                        }
                    }
                    Err(e) => eprintln!("keyward render: {e}; {} is left as it was", args.out.display()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_keys_and_fields() {
        let (pieces, keys) =
            parse_template("a={{ prod/a }}\nb={{prod/b.fallback}} v{{ prod/a.version }}\n", "t").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].to_string(), "prod/a");
        assert_eq!(
            pieces,
            [
                Piece::Text("a=".into()),
                Piece::Key(0, Field::Primary),
                Piece::Text("\nb=".into()),
                Piece::Key(1, Field::Fallback),
                Piece::Text(" v".into()),
                Piece::Key(0, Field::Version),
                Piece::Text("\n".into()),
            ]
        );
    }

    #[test]
    fn template_mistakes_name_the_line() {
        let e = parse_template("ok\nx={{ prod/a\n", "t.tmpl").unwrap_err();
        assert!(e.starts_with("t.tmpl:2:"), "{e}");
        let e = parse_template("\n\n{{ Prod/A }}", "t.tmpl").unwrap_err();
        assert!(e.starts_with("t.tmpl:3:") && e.contains("ENV/NAME"), "{e}");
    }

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
}
