//! `keyward init`: the agent's identity, install key, fleet signing key and
//! store.

use std::path::Path;
use std::process::ExitCode;

use keyward::store::identity::{AgentIdentity, InstallKey, SigningKey};

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
    // Fleet mode signs every record with it; created here with the
    // identity (an existing install gets one added, nothing else changes).
    let signing = SigningKey::load_or_create(&dir.join("signing.key")).map_err(|e| e.to_string())?;
    println!("keyward state ready in {}", dir.display());
    println!("agent recipient: {}", identity.recipient());
    println!("fleet signing key: {}", signing.public_key());
    Ok(ExitCode::SUCCESS)
}
