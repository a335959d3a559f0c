//! `keyward`: the command-line client of keywardd.
//!
//! Exit codes: 0 on success, 1 when the agent refused or failed the request
//! (the message says why), 2 for bad usage (clap), 3 when `audit verify`
//! finds a problem.

mod cli;
mod doctor;
mod fleet;
mod rotate;
mod run;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Parser;
use cli::{AuditCommand, Cli, Command, PutArgs};
use keyward::client::{self, DEFAULT_ADMIN_SOCKET, DEFAULT_SERVICE_SOCKET};
use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use keyward::secret::KeyRef;
use keyward::store::identity::{AgentIdentity, InstallKey};
use keyward::wire::ToWire;
use keyward::wire::{from_timestamp, timestamp};
use zeroize::Zeroizing;

const DEFAULT_STATE_DIR: &str = "/var/lib/keyward";
const DEFAULT_AUDIT_FILE: &str = "/var/log/keyward/audit.jsonl";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("keyward: {msg}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) type Outcome = Result<ExitCode, String>;

async fn run(cli: Cli) -> Outcome {
    match &cli.command {
        Command::Init { state_dir } => init(state_dir.as_deref().or(cli.dev.as_deref())),
        Command::Put(args) => put(&cli, args).await,
        Command::Get { key, primary, json } => get(&cli, key, *primary, *json).await,
        Command::List { env, json } => list(&cli, env.as_deref(), *json).await,
        Command::Delete {
            key,
            yes,
            expected_generation,
        } => delete(&cli, key, *yes, *expected_generation).await,
        Command::Status { json } => status(&cli, *json).await,
        Command::Fleet(command) => fleet::run(&cli, command).await,
        Command::Audit(AuditCommand::Verify { file, key }) => verify(&cli, file.as_deref(), key.as_deref()),
        Command::Stage(args) => rotate::stage(&cli, args).await,
        Command::Promote(step) => rotate::step(&cli, step, rotate::Step::Promote).await,
        Command::Rollback(step) => rotate::step(&cli, step, rotate::Step::Rollback).await,
        Command::Abort(step) => rotate::step(&cli, step, rotate::Step::Abort).await,
        Command::Retire { step, force } => rotate::step(&cli, step, rotate::Step::Retire { force: *force }).await,
        Command::Rotate(args) => rotate::rotate(&cli, args).await,
        Command::Watch { keys, json } => rotate::watch(&cli, keys, *json).await,
        Command::RotationStatus { key } => rotate::rotation_status(&cli, key).await,
        Command::Run(args) => run::run(&cli, args).await,
        Command::Render(args) => run::render(&cli, args).await,
        Command::Doctor { config, json } => doctor::doctor(&cli, config.as_deref(), *json).await,
        Command::Report {
            key,
            version,
            status,
            service,
            detail,
        } => report(&cli, key, *version, *status, service, detail).await,
    }
}

async fn report(cli: &Cli, key: &str, version: u64, status: u32, service: &str, detail: &str) -> Outcome {
    let k = key_arg(key)?;
    let channel = client::connect(&service_socket(cli)).await.map_err(|e| e.to_string())?;
    KeysClient::new(channel)
        .report_auth_failure(proto::AuthFailureReport {
            key: Some(k.to_proto()),
            version,
            status_code: status,
            service: service.to_owned(),
            detail: detail.to_owned(),
        })
        .await
        .map_err(refused)?;
    println!("reported: {key} version {version} refused with HTTP {status}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn service_socket(cli: &Cli) -> PathBuf {
    match (&cli.socket, &cli.dev) {
        (Some(s), _) => s.clone(),
        (None, Some(dir)) => dir.join("keys.sock"),
        (None, None) => DEFAULT_SERVICE_SOCKET.into(),
    }
}

/// The admin socket: `--admin-socket` (or `KEYWARD_ADMIN_SOCKET`), else the
/// dev dir's, else the system one.
fn admin_socket(cli: &Cli) -> PathBuf {
    match (&cli.admin_socket, &cli.dev) {
        (Some(s), _) => s.clone(),
        (None, Some(dir)) => dir.join("admin.sock"),
        (None, None) => DEFAULT_ADMIN_SOCKET.into(),
    }
}

pub(crate) async fn admin(cli: &Cli) -> Result<AdminClient<tonic::transport::Channel>, String> {
    let channel = client::connect(&admin_socket(cli)).await.map_err(|e| e.to_string())?;
    Ok(AdminClient::new(channel))
}

/// `ENV/NAME` of a key the agent named; empty if it named none.
pub(crate) fn key_name(key: Option<&proto::KeyRef>) -> String {
    key.map(|k| format!("{}/{}", k.environment, k.name)).unwrap_or_default()
}

pub(crate) fn key_arg(text: &str) -> Result<KeyRef, String> {
    text.parse().map_err(|e: keyward::secret::NameError| e.to_string())
}

/// The agent's message, without tonic's framing.
pub(crate) fn refused(status: tonic::Status) -> String {
    format!("{} ({:?})", status.message(), status.code())
}

fn init(dir: Option<&Path>) -> Outcome {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir.unwrap_or(Path::new(DEFAULT_STATE_DIR));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("store"))
        .map_err(|e| format!("cannot create {}: {e}", dir.join("store").display()))?;
    let identity = AgentIdentity::load_or_create(&dir.join("identity.txt")).map_err(|e| e.to_string())?;
    InstallKey::load_or_create(&dir.join("install.key")).map_err(|e| e.to_string())?;
    println!("keyward state ready in {}", dir.display());
    println!("agent recipient: {}", identity.recipient());
    Ok(ExitCode::SUCCESS)
}

/// Reads a secret from `file`, or stdin (a hidden prompt on a terminal).
/// One trailing newline is removed unless `raw`.
pub(crate) fn read_secret(key: &str, file: Option<&Path>, raw: bool) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        Some(path) => {
            let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            f.read_to_end(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        None if std::io::stdin().is_terminal() => {
            eprint!("secret for {key} (input hidden): ");
            let _ = std::io::stderr().flush();
            let line = read_hidden_line()?;
            buf.extend_from_slice(&line);
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
        }
    }
    if !raw {
        if buf.ends_with(b"\r\n") {
            let n = buf.len() - 2;
            buf.truncate(n);
        } else if buf.ends_with(b"\n") {
            let n = buf.len() - 1;
            buf.truncate(n);
        }
    }
    Ok(buf)
}

/// Reads one line from the terminal with echo off.
fn read_hidden_line() -> Result<Zeroizing<Vec<u8>>, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read terminal settings: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| format!("cannot turn off echo: {e}"))?;
    let mut line = Zeroizing::new(Vec::new());
    let mut byte = [0u8; 1];
    let result = loop {
        match stdin.lock().read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) => break Err(format!("cannot read the secret: {e}")),
        }
    };
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    result.map(|()| line)
}

async fn put(cli: &Cli, args: &PutArgs) -> Outcome {
    let key = key_arg(&args.key)?;
    let expires_at = match &args.expires {
        Some(t) => Some(timestamp(humantime::parse_rfc3339_weak(t).map_err(|e| {
            format!("--expires {t:?}: {e}; use RFC 3339, e.g. 2027-01-31T00:00:00Z")
        })?)),
        None => None,
    };
    let secret = read_secret(&args.key, args.file.as_deref(), args.raw)?;
    if secret.is_empty() {
        return Err(format!(
            "no secret given for {key}: pipe it on stdin (e.g. `printf %s \"$KEY\" | keyward put {key}`) or use --file"
        ));
    }
    let mut admin = admin(cli).await?;
    let request = proto::PutKeyRequest {
        key: Some(key.to_proto()),
        secret: bytes::Bytes::copy_from_slice(&secret),
        overwrite: args.overwrite,
        expires_at,
        expected_generation: args.expected_generation,
    };
    drop(secret);
    let info = admin
        .put_key(request)
        .await
        .map_err(refused)?
        .into_inner()
        .key
        .unwrap_or_default();
    let fp = info.primary.as_ref().map(|p| p.fingerprint.as_str()).unwrap_or("");
    let v = info.primary.as_ref().map_or(0, |p| p.version);
    println!(
        "stored {key}: version {v}, fingerprint {fp}, generation {}",
        info.generation
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn state_name(state: i32) -> &'static str {
    match proto::RotationState::try_from(state) {
        Ok(proto::RotationState::Steady) => "steady",
        Ok(proto::RotationState::Staged) => "staged",
        Ok(proto::RotationState::Promoted) => "promoted",
        _ => "unknown",
    }
}

async fn get(cli: &Cli, key: &str, primary_only: bool, json: bool) -> Outcome {
    let key = key_arg(key)?;
    let channel = client::connect(&service_socket(cli)).await.map_err(|e| e.to_string())?;
    let set = KeysClient::new(channel)
        .get_key(proto::GetKeyRequest {
            key: Some(key.to_proto()),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let primary = set
        .primary
        .as_ref()
        .ok_or("the agent sent no primary; this is a keyward bug")?;
    let written = if primary_only {
        out.write_all(&primary.secret).and_then(|()| out.write_all(b"\n"))
    } else if json {
        let version = |v: &proto::KeyVersion| {
            let mut doc = serde_json::json!({
                "version": v.version,
                "fingerprint": v.fingerprint,
                "created_at": rfc3339(v.created_at.as_ref()),
            });
            // A binary secret is never mangled into text: it goes out as hex.
            let (field, value) = match std::str::from_utf8(&v.secret) {
                Ok(text) => ("secret", text.to_owned()),
                Err(_) => ("secret_hex", hex::encode(&v.secret)),
            };
            doc[field] = serde_json::Value::String(value);
            doc
        };
        let doc = Zeroizing::new(
            serde_json::json!({
                "key": key.to_string(),
                "generation": set.generation,
                "state": state_name(set.state),
                "primary": version(primary),
                "fallback": set.fallback.as_ref().map(version),
            })
            .to_string(),
        );
        writeln!(out, "{}", doc.as_str())
    } else {
        let mut lines = vec![("primary", primary)];
        lines.extend(set.fallback.as_ref().map(|f| ("fallback", f)));
        let mut r = writeln!(out, "# {key} generation {} ({})", set.generation, state_name(set.state));
        for (role, v) in lines {
            r = r
                .and_then(|()| write!(out, "{role:<9}v{:<4} {}  ", v.version, v.fingerprint))
                .and_then(|()| out.write_all(&v.secret))
                .and_then(|()| out.write_all(b"\n"));
        }
        r
    };
    written.map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `t` as RFC 3339 in whole seconds; `None` if there is no (valid) time.
pub(crate) fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(from_timestamp)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// [`rfc3339`], or `-` for no time.
pub(crate) fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    rfc3339(t).unwrap_or_else(|| "-".into())
}

fn version_json(v: &proto::VersionInfo) -> serde_json::Value {
    serde_json::json!({
        "version": v.version,
        "fingerprint": v.fingerprint,
        "created_at": time_text(v.created_at.as_ref()),
        "expires_at": time_text(v.expires_at.as_ref()),
    })
}

async fn list(cli: &Cli, env: Option<&str>, json: bool) -> Outcome {
    let mut admin = admin(cli).await?;
    let keys = admin
        .list_keys(proto::ListKeysRequest {
            environment: env.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .keys;
    let name = |k: &proto::KeyInfo| key_name(k.key.as_ref());
    if json {
        let doc: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key": name(k),
                    "generation": k.generation,
                    "state": state_name(k.state),
                    "primary": k.primary.as_ref().map(version_json),
                    "fallback": k.fallback.as_ref().map(version_json),
                    "retired_versions": k.history.len(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(doc));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>4} {:<9} {:<24} {:<24} CREATED",
        "KEY", "GEN", "STATE", "PRIMARY", "FALLBACK"
    );
    for k in &keys {
        let v = |v: Option<&proto::VersionInfo>| {
            v.map(|v| format!("v{} {}", v.version, v.fingerprint))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<40} {:>4} {:<9} {:<24} {:<24} {}",
            name(k),
            k.generation,
            state_name(k.state),
            v(k.primary.as_ref()),
            v(k.fallback.as_ref()),
            time_text(k.primary.as_ref().and_then(|p| p.created_at.as_ref()))
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(cli: &Cli, key: &str, yes: bool, expected_generation: Option<u64>) -> Outcome {
    let key = key_arg(key)?;
    if !yes {
        return Err(format!(
            "deleting {key} removes its key file for good; add --yes to confirm (nothing was changed)"
        ));
    }
    let mut admin = admin(cli).await?;
    let deleted = admin
        .delete_key(proto::DeleteKeyRequest {
            key: Some(key.to_proto()),
            expected_generation,
        })
        .await
        .map_err(refused)?
        .into_inner()
        .deleted
        .unwrap_or_default();
    println!("deleted {key} (was generation {})", deleted.generation);
    Ok(ExitCode::SUCCESS)
}

async fn status(cli: &Cli, json: bool) -> Outcome {
    let mut admin = admin(cli).await?;
    let s = admin
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let uptime = s
        .started_at
        .as_ref()
        .and_then(from_timestamp)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_default();
    let opened = |a: &proto::OpenAlert| rfc3339(a.opened_at.as_ref()).unwrap_or_default();
    if json {
        let alerts: Vec<serde_json::Value> = s
            .open_alerts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "dedup_key": a.dedup_key, "signal": a.signal, "severity": a.severity,
                    "key": a.key, "summary": a.summary, "opened_at": opened(a), "repeats": a.repeats,
                })
            })
            .collect();
        let sinks: Vec<serde_json::Value> = s
            .sinks
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name, "kind": k.kind, "delivered": k.delivered, "failed": k.failed,
                    "dropped": k.dropped, "retries": k.retries, "queued": k.queued,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "version": s.version, "pid": s.pid, "uptime": uptime,
                "service_socket": s.service_socket, "admin_socket": s.admin_socket,
                "store_dir": s.store_dir, "audit_file": s.audit_file,
                "environments": s.environments, "keys": s.keys, "connections": s.connections,
                "audit_sequence": s.audit_sequence, "audit_head": s.audit_head, "audit_error": s.audit_error,
                "memory_locked": s.memory_locked, "agent_recipient": s.agent_recipient,
                "open_alerts": alerts, "sinks": sinks,
                "backend": s.backend.as_ref().map(|b| serde_json::json!({
                    "kind": b.kind, "address": b.address, "mount": b.mount, "prefix": b.prefix,
                    "agent_id": b.agent_id,
                    "last_sync_at": b.last_sync_at.as_ref().and_then(from_timestamp)
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "stale_seconds": b.stale_seconds, "stale": b.stale, "last_error": b.last_error,
                    "problems": b.problems,
                })),
            })
        );
    } else {
        println!("keywardd {} (pid {}), up {uptime}", s.version, s.pid);
        println!("  service socket  {}", s.service_socket);
        println!("  admin socket    {}", s.admin_socket);
        println!(
            "  store           {} ({} keys; environments {})",
            s.store_dir,
            s.keys,
            s.environments.join(", ")
        );
        println!("  audit           {} (seq {})", s.audit_file, s.audit_sequence);
        if !s.audit_error.is_empty() {
            println!("  AUDIT ERROR     {}", s.audit_error);
        }
        println!("  connections     {}", s.connections);
        println!("  memory locked   {}", if s.memory_locked { "yes" } else { "no" });
        println!("  recipient       {}", s.agent_recipient);
        if let Some(b) = s.backend.as_ref().filter(|b| b.kind != "local") {
            println!(
                "  backend         {} {} (mount {}, prefix {}), agent id {}",
                b.kind, b.address, b.mount, b.prefix, b.agent_id
            );
            let synced = rfc3339(b.last_sync_at.as_ref()).unwrap_or_else(|| "never".into());
            println!(
                "  last sync       {synced} ({} s ago){}",
                b.stale_seconds,
                if b.stale { ": STALE, serving the local copy" } else { "" }
            );
            if !b.last_error.is_empty() {
                println!("  backend error   {}", b.last_error);
            }
            for p in &b.problems {
                println!("  backend problem {p}");
            }
        }
        for k in &s.sinks {
            println!(
                "  sink            {} ({}): {} delivered, {} failed, {} dropped, {} queued",
                k.name, k.kind, k.delivered, k.failed, k.dropped, k.queued
            );
        }
        println!("  open alerts     {}", s.open_alerts.len());
        for a in &s.open_alerts {
            println!(
                "    {} {} since {}: {}",
                a.severity.to_uppercase(),
                a.signal,
                opened(a),
                a.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(cli: &Cli, file: Option<&Path>, key: Option<&Path>) -> Outcome {
    let file = match (file, &cli.dev) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(dir)) => dir.join("audit.jsonl"),
        (None, None) => DEFAULT_AUDIT_FILE.into(),
    };
    let key_file = match key {
        Some(k) => k.to_path_buf(),
        None => {
            let beside = file.parent().unwrap_or(Path::new(".")).join("install.key");
            if beside.exists() {
                beside
            } else {
                Path::new(DEFAULT_STATE_DIR).join("install.key")
            }
        }
    };
    let install_key = InstallKey::load(&key_file).map_err(|e| format!("{e} (pass the install key with --key FILE)"))?;
    let report = keyward::audit::verify(&file, &install_key.audit_key()).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
