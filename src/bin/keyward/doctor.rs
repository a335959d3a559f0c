//! `keyward doctor`: checks an install the way an operator would before
//! trusting the agent, and says for each problem what to run.
//!
//! It only reads: files are inspected with `lstat` (never followed, never
//! created or repaired), key files are decrypted in memory and the plaintext
//! dropped at once, and the agent is asked only for metadata. Nothing it
//! prints can hold a secret. It works without a running agent; the agent's
//! own checks are added when the admin socket answers.

use std::fs::{self, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use keyward::config::{Config, Paths, DEFAULT_CONFIG_PATH};
use keyward::keyset::from_timestamp;
use keyward::proto::{self, admin_client::AdminClient};
use keyward::secret::KeyRef;
use keyward::store::identity::{AgentIdentity, InstallKey};
use nix::unistd::{Gid, Group, Uid, User};

use crate::cli::Cli;
use crate::Outcome;

/// A clock before this (2026-01-01T00:00:00Z) is wrong: keyward did not
/// exist yet.
const EARLIEST_SANE_TIME: u64 = 1_767_225_600;
/// How far in the future the last audit record may be before the clock is
/// said to have gone backwards.
const CLOCK_SLACK: Duration = Duration::from_secs(5 * 60);
/// Keys whose primary expires within this are reported.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long to wait for the admin socket.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// How a check came out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
struct Finding {
    check: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check and prints the report; exit 1 if any check failed.
pub(crate) async fn doctor(cli: &Cli, config_file: Option<&Path>, json: bool) -> Outcome {
    let mut out = Vec::new();
    let config = load_config(cli, config_file, &mut out)?;
    let owner = if config.dev_mode {
        nix::unistd::getuid().as_raw()
    } else {
        0
    };
    check_grants(&config, &mut out);
    let identity = check_identity(&config.paths, owner, &mut out);
    check_store(&config, owner, identity.as_ref(), &mut out);
    let agent = connect(&config.paths.admin_socket).await;
    check_sockets(&config, agent.is_ok(), &mut out);
    let last_record = check_audit(&config.paths, owner, &mut out);
    check_clock(last_record, &mut out);
    match agent {
        Ok(admin) => check_agent(admin, &config, &mut out).await,
        Err(e) => out.push(Finding::warn(
            "agent",
            format!("not reachable at {}: {e}", config.paths.admin_socket.display()),
            "start keywardd to add the agent's checks (the checks above read files only)",
        )),
    }
    if json {
        println!("{}", to_json(&out));
    } else {
        print!("{}", to_text(&out));
    }
    Ok(if out.iter().any(|f| f.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn to_text(out: &[Finding]) -> String {
    let mut s = String::new();
    for f in out {
        let status = match f.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        s.push_str(&format!("{status:<4}  {}: {}\n", f.check, f.detail));
        if let (Some(fix), Status::Warn | Status::Fail) = (&f.fix, f.status) {
            s.push_str(&format!("      fix: {fix}\n"));
        }
    }
    s
}

fn to_json(out: &[Finding]) -> serde_json::Value {
    out.iter()
        .map(|f| {
            let status = match f.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "fail",
            };
            serde_json::json!({"check": f.check, "status": status, "detail": f.detail, "fix": f.fix})
        })
        .collect()
}

/// The config the agent would run with. If it does not load, the report
/// goes on with the default paths (or the dev dir) so the file checks
/// still run.
fn load_config(cli: &Cli, file: Option<&Path>, out: &mut Vec<Finding>) -> Result<Config, String> {
    let uid = nix::unistd::getuid().as_raw();
    let dev_dir = match &cli.dev {
        Some(d) => Some(std::path::absolute(d).map_err(|e| format!("--dev {}: {e}", d.display()))?),
        None => None,
    };
    let path = file.map(Path::to_path_buf);
    let loaded = match (&dev_dir, &path) {
        (Some(dir), Some(p)) => Config::load(p).map(|c| c.into_dev(dir, uid)),
        (Some(dir), None) => Ok(Config::dev(dir, uid)),
        (None, p) => Config::load(p.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG_PATH))),
    };
    let shown = match (&dev_dir, &path) {
        (_, Some(p)) => p.display().to_string(),
        (Some(dir), None) => format!("dev mode in {}, no config file", dir.display()),
        (None, None) => DEFAULT_CONFIG_PATH.to_owned(),
    };
    let config = match loaded {
        Ok(c) => {
            out.push(Finding::ok(
                "config",
                format!(
                    "{shown}: {} environments, {} grants",
                    c.environments.len(),
                    c.policy.grants.len()
                ),
            ));
            c
        }
        Err(e) => {
            out.push(Finding::fail(
                "config",
                e.to_string(),
                "correct the config file (`keywardd --check-config` checks it)",
            ));
            // The defaults, so the checks below look at the usual places.
            let mut c = Config::dev(dev_dir.as_deref().unwrap_or(Path::new("/")), uid);
            if dev_dir.is_none() {
                c.paths = Paths::default();
                c.dev_mode = false;
            }
            return Ok(c);
        }
    };
    for w in config.warnings() {
        out.push(Finding::warn("config", w, "edit the config file if this is not meant"));
    }
    Ok(config)
}

/// Grants naming users, groups or executables this machine does not have.
fn check_grants(config: &Config, out: &mut Vec<Finding>) {
    for g in &config.policy.grants {
        let mut missing = Vec::new();
        for uid in &g.uids {
            if matches!(User::from_uid(Uid::from_raw(*uid)), Ok(None)) {
                missing.push(format!("uid {uid}"));
            }
        }
        for gid in &g.gids {
            if matches!(Group::from_gid(Gid::from_raw(*gid)), Ok(None)) {
                missing.push(format!("gid {gid}"));
            }
        }
        for exe in &g.executables {
            if !exe.exists() {
                missing.push(format!("executable {}", exe.display()));
            }
        }
        if !missing.is_empty() {
            out.push(Finding::warn(
                "grants",
                format!(
                    "grant at {} names what this machine does not have: {}",
                    g.origin,
                    missing.join(", ")
                ),
                "create them, or remove them from the grant",
            ));
        }
    }
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// `lstat`, with a finding when it fails.
fn inspect(check: &'static str, path: &Path, missing_fix: &str, out: &mut Vec<Finding>) -> Option<Metadata> {
    match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(Finding::fail(
                check,
                format!("{} is missing", path.display()),
                missing_fix,
            ));
            None
        }
        Err(e) => {
            out.push(Finding::fail(
                check,
                format!("cannot inspect {}: {e}", path.display()),
                "run keyward doctor as the agent's user (root for a system install)",
            ));
            None
        }
    }
}

/// What is wrong with a file that must be a regular file owned by `owner`
/// with no group or other permission bits, and the commands that fix it.
fn private_file_problems(path: &Path, m: &Metadata, owner: u32) -> (Vec<String>, Vec<String>) {
    let (mut found, mut fix) = (Vec::new(), Vec::new());
    if !m.file_type().is_file() {
        found.push("is not a regular file".to_owned());
        fix.push(format!("replace {} with a regular file", path.display()));
        return (found, fix);
    }
    if m.uid() != owner {
        found.push(format!("is owned by {}, not {}", user_name(m.uid()), user_name(owner)));
        fix.push(format!("chown {} {}", user_name(owner), path.display()));
    }
    if m.mode() & 0o077 != 0 {
        found.push(format!("has mode {:04o}, not 0600", m.mode() & 0o7777));
        fix.push(format!("chmod 600 {}", path.display()));
    }
    (found, fix)
}

fn private_file(check: &'static str, path: &Path, owner: u32, missing_fix: &str, out: &mut Vec<Finding>) -> bool {
    let Some(m) = inspect(check, path, missing_fix, out) else {
        return false;
    };
    let (found, fix) = private_file_problems(path, &m, owner);
    if found.is_empty() {
        out.push(Finding::ok(
            check,
            format!("{}: 0600, owned by {}", path.display(), user_name(owner)),
        ));
        true
    } else {
        out.push(Finding::fail(
            check,
            format!("{} {}", path.display(), found.join(" and ")),
            fix.join(" && "),
        ));
        false
    }
}

/// The identity and install key files; the identity, if it loads.
fn check_identity(paths: &Paths, owner: u32, out: &mut Vec<Finding>) -> Option<AgentIdentity> {
    let create = "run `keyward init` (system install) or start `keywardd --dev DIR` once";
    let identity_ok = private_file("identity", &paths.identity_file, owner, create, out);
    let key_ok = private_file("install key", &paths.install_key_file, owner, create, out);
    if key_ok {
        if let Err(e) = InstallKey::load(&paths.install_key_file) {
            out.push(Finding::fail(
                "install key",
                e.to_string(),
                "restore the install key from a backup",
            ));
        }
    }
    if !identity_ok {
        return None;
    }
    match AgentIdentity::load(&paths.identity_file) {
        Ok(id) => Some(id),
        Err(e) => {
            out.push(Finding::fail(
                "identity",
                e.to_string(),
                "restore the identity from a backup",
            ));
            None
        }
    }
}

/// The store directory, each environment's directory and each key file.
fn check_store(config: &Config, owner: u32, identity: Option<&AgentIdentity>, out: &mut Vec<Finding>) {
    let store = &config.paths.store_dir;
    let mut dirs = vec![store.clone()];
    dirs.extend(config.environments.keys().map(|e| store.join(e)));
    let mut dir_problems = Vec::new();
    let mut missing = 0;
    for dir in &dirs {
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.file_type().is_dir() => dir_problems.push((
                format!("{} is not a directory", dir.display()),
                format!("move {} away; the agent creates it", dir.display()),
            )),
            Ok(m) if m.mode() & 0o077 != 0 => dir_problems.push((
                format!("{} has mode {:04o}, not 0700", dir.display(), m.mode() & 0o7777),
                format!("chmod 700 {}", dir.display()),
            )),
            Ok(m) if m.uid() != owner => dir_problems.push((
                format!(
                    "{} is owned by {}, not {}",
                    dir.display(),
                    user_name(m.uid()),
                    user_name(owner)
                ),
                format!("chown {} {}", user_name(owner), dir.display()),
            )),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing += 1;
                out.push(Finding::warn(
                    "store",
                    format!("{} does not exist yet", dir.display()),
                    "start the agent: it creates it (0700)",
                ));
                if dir == store {
                    break;
                }
            }
            Err(e) => dir_problems.push((
                format!("cannot inspect {}: {e}", dir.display()),
                "run keyward doctor as the agent's user (root for a system install)".to_owned(),
            )),
        }
    }
    if dir_problems.is_empty() && missing == 0 {
        out.push(Finding::ok(
            "store",
            format!(
                "{} and {} environment directories are 0700",
                store.display(),
                dirs.len() - 1
            ),
        ));
    }
    for (found, fix) in dir_problems {
        out.push(Finding::fail("store", found, fix));
    }
    check_key_files(&dirs[1..], owner, identity, out);
}

fn check_key_files(env_dirs: &[PathBuf], owner: u32, identity: Option<&AgentIdentity>, out: &mut Vec<Finding>) {
    let mut good = 0;
    let mut bad = 0;
    for dir in env_dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "age"))
            .collect();
        files.sort();
        for path in files {
            let Some(m) = inspect("key files", &path, "", out) else {
                bad += 1;
                continue;
            };
            let (mut found, fix) = private_file_problems(&path, &m, owner);
            if found.is_empty() {
                if let Some(problem) = key_file_content(&path, identity) {
                    out.push(Finding::fail(
                        "key files",
                        format!("{} {problem}", path.display()),
                        "restore it from a backup, or delete it and put the key again",
                    ));
                    bad += 1;
                    continue;
                }
                good += 1;
            } else {
                bad += 1;
                found.dedup();
                out.push(Finding::fail(
                    "key files",
                    format!("{} {}", path.display(), found.join(" and ")),
                    fix.join(" && "),
                ));
            }
        }
    }
    let what = if identity.is_some() {
        "decryptable"
    } else {
        "age files (not decrypted: the identity did not load)"
    };
    if bad == 0 {
        out.push(Finding::ok(
            "key files",
            format!("{good} key files, all 0600 and {what}"),
        ));
    }
}

/// Why the key file cannot be read, if it cannot. The plaintext is dropped
/// (and wiped) at once.
fn key_file_content(path: &Path, identity: Option<&AgentIdentity>) -> Option<String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    if let Err(e) = age::Decryptor::new(&bytes[..]) {
        return Some(format!("is not an age file ({e})"));
    }
    match identity.map(|id| id.decrypt(&bytes)) {
        Some(Err(e)) => Some(format!("does not decrypt with the agent's identity ({e})")),
        _ => None,
    }
}

async fn connect(path: &Path) -> Result<AdminClient<tonic::transport::Channel>, String> {
    match tokio::time::timeout(AGENT_TIMEOUT, keyward::client::connect(path)).await {
        Ok(Ok(channel)) => Ok(AdminClient::new(channel)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", AGENT_TIMEOUT.as_secs())),
    }
}

/// keys.sock and admin.sock: sockets with the configured mode and group.
fn check_sockets(config: &Config, agent_up: bool, out: &mut Vec<Finding>) {
    let admin_mode = if config.admin_group.is_some() { 0o660 } else { 0o600 };
    let sockets = [
        (
            &config.paths.service_socket,
            config.service_socket_mode,
            config.service_socket_group,
        ),
        (&config.paths.admin_socket, admin_mode, config.admin_group),
    ];
    for (path, want_mode, want_gid) in sockets {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !agent_up => {
                out.push(Finding::warn(
                    "sockets",
                    format!("{} does not exist (the agent is not running)", path.display()),
                    "start keywardd",
                ));
                continue;
            }
            Err(e) => {
                out.push(Finding::fail(
                    "sockets",
                    format!("cannot inspect {}: {e}", path.display()),
                    "restart keywardd",
                ));
                continue;
            }
        };
        let mode = m.mode() & 0o777;
        if !m.file_type().is_socket() {
            out.push(Finding::fail(
                "sockets",
                format!("{} is not a socket", path.display()),
                format!("move {} away and restart keywardd", path.display()),
            ));
        } else if mode & !want_mode != 0 {
            out.push(Finding::fail(
                "sockets",
                format!(
                    "{} has mode {mode:04o}, wider than the configured {want_mode:04o}",
                    path.display()
                ),
                format!(
                    "chmod {want_mode:o} {} (restarting keywardd also resets it)",
                    path.display()
                ),
            ));
        } else if want_gid.is_some_and(|g| g != m.gid()) {
            let want = want_gid.unwrap_or_default();
            let group = match Group::from_gid(Gid::from_raw(want)) {
                Ok(Some(g)) => g.name,
                _ => want.to_string(),
            };
            out.push(Finding::fail(
                "sockets",
                format!("{} has group {}, not the configured {group}", path.display(), m.gid()),
                format!("chgrp {group} {}", path.display()),
            ));
        } else if mode != want_mode {
            out.push(Finding::warn(
                "sockets",
                format!(
                    "{} has mode {mode:04o}, narrower than the configured {want_mode:04o}",
                    path.display()
                ),
                "restart keywardd to apply the configured mode",
            ));
        } else {
            out.push(Finding::ok(
                "sockets",
                format!("{}: socket, mode {mode:04o}", path.display()),
            ));
        }
    }
}

/// The audit file's permissions and hash chain; the time of its last
/// record.
fn check_audit(paths: &Paths, owner: u32, out: &mut Vec<Finding>) -> Option<SystemTime> {
    let file = &paths.audit_file;
    let m = inspect("audit", file, "start the agent: it creates the log", out)?;
    let mode = m.mode() & 0o7777;
    if !m.file_type().is_file() {
        out.push(Finding::fail(
            "audit",
            format!("{} is not a regular file", file.display()),
            format!("move {} away and restart keywardd", file.display()),
        ));
        return None;
    }
    if m.uid() != owner || mode & 0o200 == 0 {
        out.push(Finding::fail(
            "audit",
            format!(
                "{} is not writable by {} (owner {}, mode {mode:04o})",
                file.display(),
                user_name(owner),
                user_name(m.uid())
            ),
            format!(
                "chown {} {} && chmod u+w {}",
                user_name(owner),
                file.display(),
                file.display()
            ),
        ));
    }
    if mode & 0o004 != 0 {
        out.push(Finding::fail(
            "audit",
            format!("{} is world-readable (mode {mode:04o})", file.display()),
            format!("chmod o-rwx {}", file.display()),
        ));
    }
    match InstallKey::load(&paths.install_key_file) {
        Err(e) => out.push(Finding::fail(
            "audit",
            format!("hash chain not verified: {e}"),
            "fix the install key (see above), then run keyward doctor again",
        )),
        Ok(key) => match keyward::audit::verify(file, &key.audit_key()) {
            Err(e) => out.push(Finding::fail(
                "audit",
                e.to_string(),
                "run keyward doctor as the agent's user",
            )),
            Ok(report) => match report.problems.first() {
                Some(first) => out.push(Finding::fail(
                    "audit",
                    format!(
                        "hash chain broken: {} problem(s); first bad: {first}",
                        report.problems.len() as u64 + report.problems_omitted
                    ),
                    format!(
                        "the log was changed after it was written: keep a copy for investigation, compare with the shipped copy; `keyward audit verify --file {}` lists every problem",
                        file.display()
                    ),
                )),
                None if !report.notes.is_empty() => out.push(Finding::warn(
                    "audit",
                    format!(
                        "hash chain verifies ({} records); {}",
                        report.records_checked,
                        report.notes.join("; ")
                    ),
                    "see the note; nothing was changed",
                )),
                None => out.push(Finding::ok(
                    "audit",
                    format!(
                        "{}: mode {mode:04o}, hash chain verifies ({} records, last seq {})",
                        file.display(),
                        report.records_checked,
                        report.last_seq
                    ),
                )),
            },
        },
    }
    last_record_time(file)
}

/// The `time` of the log's last record (from its last 64 KiB).
fn last_record_time(file: &Path) -> Option<SystemTime> {
    let mut f = fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let record: serde_json::Value = serde_json::from_str(line).ok()?;
    humantime::parse_rfc3339_weak(record.get("time")?.as_str()?).ok()
}

fn check_clock(last_record: Option<SystemTime>, out: &mut Vec<Finding>) {
    let now = SystemTime::now();
    let earliest = SystemTime::UNIX_EPOCH + Duration::from_secs(EARLIEST_SANE_TIME);
    if now < earliest {
        out.push(Finding::fail(
            "clock",
            format!(
                "the system time {} is before 2026-01-01",
                humantime::format_rfc3339_seconds(now)
            ),
            "set the clock (enable NTP: timedatectl set-ntp true)",
        ));
        return;
    }
    match last_record {
        Some(t) if t > now + CLOCK_SLACK => out.push(Finding::fail(
            "clock",
            format!(
                "clock went backwards: the last audit record is from {}, the system time is {}",
                humantime::format_rfc3339_seconds(t),
                humantime::format_rfc3339_seconds(now)
            ),
            "set the clock (enable NTP: timedatectl set-ntp true); expiry and grace periods depend on it",
        )),
        _ => out.push(Finding::ok(
            "clock",
            format!("{} (UTC)", humantime::format_rfc3339_seconds(now)),
        )),
    }
}

/// The agent's status and its keys' ages, over the admin socket.
async fn check_agent(mut admin: AdminClient<tonic::transport::Channel>, config: &Config, out: &mut Vec<Finding>) {
    let status = match admin.get_status(proto::GetStatusRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            out.push(Finding::fail(
                "agent",
                format!("GetStatus refused: {}", e.message()),
                "run keyward doctor as root or a member of the admin group",
            ));
            return;
        }
    };
    out.push(Finding::ok(
        "agent",
        format!("keywardd {} (pid {}), {} keys", status.version, status.pid, status.keys),
    ));
    if !status.audit_error.is_empty() {
        out.push(Finding::fail(
            "agent",
            format!("the agent cannot write its audit log: {}", status.audit_error),
            format!("free space or fix permissions of {}", status.audit_file),
        ));
    }
    if let Some(b) = status.backend.as_ref().filter(|b| b.kind == "openbao") {
        if b.stale {
            out.push(Finding::fail(
                "backend",
                format!(
                    "not in sync with OpenBao at {} for {} s ({}): the agent serves its local copy",
                    b.address,
                    b.stale_seconds,
                    if b.last_error.is_empty() { "no error recorded" } else { &b.last_error }
                ),
                "bring OpenBao back or fix the agent's token and [backend] settings; `keyward status` shows the details",
            ));
        } else {
            out.push(Finding::ok(
                "backend",
                format!(
                    "in sync with OpenBao at {} ({} s ago), agent id {}",
                    b.address, b.stale_seconds, b.agent_id
                ),
            ));
        }
        for p in &b.problems {
            out.push(Finding::warn(
                "backend",
                format!("a record is not applied: {p}"),
                "see the problem's own advice; `keyward fleet status` shows every agent",
            ));
        }
    }
    if !status.open_alerts.is_empty() {
        out.push(Finding::warn(
            "alerts",
            format!("{} open alert(s)", status.open_alerts.len()),
            "see `keyward status`",
        ));
    }
    let keys = match admin.list_keys(proto::ListKeysRequest::default()).await {
        Ok(k) => k.into_inner().keys,
        Err(e) => {
            out.push(Finding::fail(
                "keys",
                format!("ListKeys refused: {}", e.message()),
                "run keyward doctor as root or a member of the admin group",
            ));
            return;
        }
    };
    let before = out.len();
    let now = SystemTime::now();
    for k in &keys {
        let (Ok(key), Some(primary)) = (KeyRef::from_proto(k.key.as_ref()), k.primary.as_ref()) else {
            continue;
        };
        let rotate = format!("rotate it: keyward rotate {key}");
        if let Some(expires) = primary.expires_at.as_ref().and_then(from_timestamp) {
            let when = humantime::format_rfc3339_seconds(expires);
            match expires.duration_since(now) {
                Err(_) => out.push(Finding::warn(
                    "keys",
                    format!("{key}: primary expired at {when}"),
                    &rotate,
                )),
                Ok(left) if left < EXPIRY_WARNING => out.push(Finding::warn(
                    "keys",
                    format!("{key}: primary expires at {when} (in {})", whole_minutes(left)),
                    &rotate,
                )),
                Ok(_) => {}
            }
        }
        if let Some(max_age) = config.detect_for(&key).max_age {
            let since = primary
                .promoted_at
                .as_ref()
                .or(primary.created_at.as_ref())
                .and_then(from_timestamp);
            if let Some(age) = since.and_then(|s| now.duration_since(s).ok()) {
                if age > max_age {
                    out.push(Finding::warn(
                        "keys",
                        format!(
                            "{key}: primary is {} old, older than max_age {}",
                            whole_minutes(age),
                            humantime::format_duration(max_age)
                        ),
                        &rotate,
                    ));
                }
            }
        }
    }
    if out.len() == before {
        out.push(Finding::ok(
            "keys",
            format!("{} keys, none expiring within 7 days or past max_age", keys.len()),
        ));
    }
}

fn whole_minutes(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs() / 60 * 60))
}
