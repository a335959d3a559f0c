//! `keyward audit verify`: check the audit log's hash chain and MACs, and
//! against anchors (a file, and with `--fleet` the backend's).
//!
//! Exits 3 when the log has a problem (see `main.rs`), 1 when it could not
//! be checked as asked (e.g. the backend cannot be read).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward::agent::fleet::anchors::FleetAnchors;
use keyward::config::backend::{BackendConfig, OpenBaoConfig};
use keyward::config::{Config, DEFAULT_CONFIG_PATH};
use keyward::store::identity::InstallKey;

use crate::cli::Cli;
use crate::commands::init::DEFAULT_STATE_DIR;
use crate::Outcome;

/// The audit log of a system install.
const DEFAULT_AUDIT_FILE: &str = "/var/log/keyward/audit.jsonl";

/// What `keyward audit verify` was given.
pub(crate) struct VerifyArgs<'a> {
    pub(crate) files: &'a [PathBuf],
    pub(crate) key: Option<&'a Path>,
    pub(crate) anchors: Option<&'a Path>,
    /// `--fleet`.
    pub(crate) fleet: Option<FleetArgs<'a>>,
    pub(crate) allow_prefix: bool,
}

/// What `--fleet` was given.
pub(crate) struct FleetArgs<'a> {
    pub(crate) agent_id: Option<&'a str>,
    pub(crate) config: Option<&'a Path>,
}

pub(crate) async fn verify(cli: &Cli, args: VerifyArgs<'_>) -> Outcome {
    let key = args.key;
    let file = match (args.files.last(), &cli.dev) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(dir)) => dir.join("audit.jsonl"),
        (None, None) => {
            if !Path::new(DEFAULT_AUDIT_FILE).exists() {
                return Err(format!(
                    "there is no audit log at {DEFAULT_AUDIT_FILE} (no system install here): pass the log's path (`keyward audit verify PATH`), or the dev directory of a dev-mode agent (`keyward --dev DIR audit verify`)"
                ));
            }
            DEFAULT_AUDIT_FILE.into()
        }
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
    let mut anchors = match args.anchors {
        Some(path) => keyward::audit::read_anchors(path)?,
        None => Vec::new(),
    };
    let from_file = anchors.len();
    let fleet = match &args.fleet {
        Some(f) => {
            let (cfg, agent_id) = fleet_config(cli, f)?;
            let install_id = keyward::audit::anchor::install_id(&install_key.audit_key());
            let read = keyward::agent::fleet::anchors::read_anchors(&cfg, &agent_id, &install_id).await?;
            anchors.extend(read.anchors.iter().cloned());
            Some((cfg, agent_id, install_id, read))
        }
        None => None,
    };
    let mut paths = args.files.to_vec();
    if paths.is_empty() {
        paths.push(file);
    }
    let opts = keyward::audit::VerifyOptions {
        paths,
        anchors,
        allow_prefix: args.allow_prefix,
    };
    let report = keyward::audit::verify_set(&opts, &install_key.audit_key()).map_err(|e| e.to_string())?;
    if let Some(path) = args.anchors {
        println!("checked against {from_file} anchors from {}", path.display());
    }
    let fleet_ok = match &fleet {
        Some((cfg, agent_id, install_id, read)) => print_fleet(cfg, agent_id, install_id, read),
        None => true,
    };
    println!("{report}");
    Ok(if report.is_ok() && fleet_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The fleet config `--fleet` logs in with, and the agent whose anchors
/// to read.
fn fleet_config(cli: &Cli, args: &FleetArgs<'_>) -> Result<(OpenBaoConfig, String), String> {
    let uid = nix::unistd::getuid().as_raw();
    let config = match (&cli.dev, args.config) {
        (Some(dir), Some(p)) => Config::load(p).map(|c| c.into_dev(dir, uid)),
        (Some(dir), None) => Ok(Config::dev(dir, uid)),
        (None, p) => Config::load(p.unwrap_or(Path::new(DEFAULT_CONFIG_PATH))),
    }
    .map_err(|e| format!("--fleet needs the agent's config to reach the backend: {e}"))?;
    let BackendConfig::OpenBao(cfg) = config.backend else {
        return Err(
            "--fleet needs a fleet-mode config ([backend] kind = \"openbao\"): pass the agent's config with --config FILE"
                .to_owned(),
        );
    };
    let agent_id = args.agent_id.map_or_else(|| cfg.agent_id.clone(), str::to_owned);
    if !keyward::config::backend::valid_agent_id(&agent_id) {
        return Err(format!(
            "--agent-id {agent_id:?} is not an agent id (1 to 128 letters, digits, '.', '_' or '-')"
        ));
    }
    Ok((*cfg, agent_id))
}

/// Prints what `--fleet` read; whether it leaves the log verified (some
/// anchors were trusted, none refused).
fn print_fleet(cfg: &OpenBaoConfig, agent_id: &str, install_id: &str, read: &FleetAnchors) -> bool {
    println!(
        "checked against {} anchors agent {agent_id} published to OpenBao at {}: {}",
        read.anchors.len(),
        cfg.address,
        read.location
    );
    for line in &read.refused {
        println!("REFUSED anchor, not trusted: {line}");
    }
    for (other, n) in &read.other_installs {
        println!(
            "NOTE: the backend also holds {n} anchors of another install ({other}) of agent {agent_id}; this log is of install {install_id}. If that host was not reinstalled, its install key and log were replaced: check that install's log."
        );
    }
    if read.anchors.is_empty() {
        println!(
            "FAILED: agent {agent_id} published no anchor of install {install_id} to the backend: the log cannot be checked against it (is this the agent's log, and --agent-id right? has it run an anchor_interval in fleet mode?)"
        );
    }
    if !read.refused.is_empty() {
        println!(
            "FAILED: {} values under agent {agent_id}'s anchors are not its signed anchors (written by someone holding a backend token, not its signing key)",
            read.refused.len()
        );
    }
    !read.anchors.is_empty() && read.refused.is_empty()
}
