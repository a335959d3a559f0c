//! `keyward doctor`: checks an install the way an operator would before
//! trusting the agent, and says for each problem what to run.
//!
//! It only reads: files are inspected with `lstat` (never followed, never
//! created or repaired), key files are decrypted and decoded in memory and
//! the plaintext dropped at once, and the agent is asked only for metadata.
//! Nothing it prints can hold a secret. It works without a running agent;
//! the agent's own checks are added when the admin socket answers.
//!
//! Layout: this file runs the checks and prints the report, and holds the
//! checks of the config and the clock; `files` checks what is on disk
//! (identity, install key, store, key files, sockets, audit log); `agent`
//! asks the running agent.

mod agent;
mod audit;
mod files;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use keyward::config::{Config, Paths, DEFAULT_CONFIG_PATH};
use nix::unistd::{Gid, Group, Uid, User};

use crate::cli::Cli;
use crate::Outcome;

/// A clock before this (2026-01-01T00:00:00Z) is wrong: keyward did not
/// exist yet.
const EARLIEST_SANE_TIME: u64 = 1_767_225_600;
/// How far in the future the last audit record may be before the clock is
/// said to have gone backwards.
const CLOCK_SLACK: Duration = Duration::from_secs(5 * 60);

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
    let loaded = files::check_identity(&config.paths, owner, &mut out);
    if matches!(config.backend, keyward::config::backend::BackendConfig::OpenBao(_)) {
        files::check_signing_key(&config.paths, owner, &mut out);
    }
    files::check_store(&config, owner, &loaded, &mut out);
    // The admin socket every other command talks to when told
    // (`--admin-socket`, `KEYWARD_ADMIN_SOCKET`); otherwise the config's,
    // which is where that resolution lands unless the config moves it.
    let admin_socket = cli
        .admin_socket
        .clone()
        .unwrap_or_else(|| config.paths.admin_socket.clone());
    let agent = agent::connect(&admin_socket).await;
    files::check_sockets(&config, &admin_socket, agent.is_ok(), &mut out);
    let last_record = audit::check_audit(&config.paths.audit_file, owner, loaded.install_key.as_ref(), &mut out);
    check_clock(last_record, &mut out);
    match agent {
        Ok(admin) => agent::check_agent(admin, &config, &mut out).await,
        Err(e) => out.push(Finding::warn(
            "agent",
            format!("not reachable at {}: {e}", admin_socket.display()),
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

/// Grants naming users or groups this machine does not have (a grant's
/// executables are checked by the config's own warnings).
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
