//! The `keywardd` command line, defined apart from its behaviour so that
//! its man page can be generated from it (`packaging/assets.rs`).

use std::path::PathBuf;

use clap::Parser;

/// The keyward agent: serves age-encrypted API keys to local services.
#[derive(Parser)]
#[command(name = "keywardd", version)]
pub struct Args {
    /// Config file (system mode).
    #[arg(long, value_name = "FILE", default_value = "/etc/keyward/keyward.toml")]
    pub config: PathBuf,
    /// Dev mode: no root; identity, store, sockets and audit log all in DIR
    /// (created if needed). The current user may read every key. With an
    /// explicit --config, that file's settings apply too.
    #[arg(long, value_name = "DIR")]
    pub dev: Option<PathBuf>,
    /// Validate the config, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
}
