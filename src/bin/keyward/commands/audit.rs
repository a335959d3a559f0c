//! `keyward audit verify`: check the audit log's hash chain and MACs.
//!
//! Exits 3 when the log has a problem (see `main.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    pub(crate) allow_prefix: bool,
}

pub(crate) fn verify(cli: &Cli, args: VerifyArgs<'_>) -> Outcome {
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
    let anchors = match args.anchors {
        Some(path) => keyward::audit::read_anchors(path)?,
        None => Vec::new(),
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
        println!("checked against {} anchors from {}", opts.anchors.len(), path.display());
    }
    println!("{report}");
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
