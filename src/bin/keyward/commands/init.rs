//! `keyward init`: the agent's identity, install key and store.

use std::path::Path;
use std::process::ExitCode;

use keyward::store::identity::{AgentIdentity, InstallKey};

use crate::Outcome;

/// The state directory of a system install.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/keyward";

pub(crate) fn init(dir: Option<&Path>) -> Outcome {
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
