//! The `keyward` command line, defined apart from its behaviour so that man
//! pages and shell completions can be generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keyward: manage and read the API keys served by keywardd.
#[derive(Parser, Debug)]
#[command(name = "keyward", version)]
pub struct Cli {
    /// Talk to a dev-mode agent whose state is in DIR (sockets DIR/keys.sock
    /// and DIR/admin.sock).
    #[arg(long, value_name = "DIR", global = true)]
    pub dev: Option<PathBuf>,
    /// The service socket.
    #[arg(long, value_name = "PATH", env = "KEYWARD_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// The admin socket.
    #[arg(long, value_name = "PATH", env = "KEYWARD_ADMIN_SOCKET", global = true)]
    pub admin_socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the agent's identity, install key and store (system install:
    /// /var/lib/keyward; with --dev DIR: DIR).
    Init {
        /// Where to create them.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Create a key (or replace one with --overwrite). The secret is read
    /// from stdin (one trailing newline is removed unless --raw) or --file;
    /// never from the command line.
    Put(PutArgs),
    /// Print a key's primary and fallback (from the service socket, as the
    /// calling user).
    Get {
        /// ENV/NAME, e.g. prod/billing-api.
        key: String,
        /// Print only the primary secret, for scripts.
        #[arg(long, conflicts_with = "json")]
        primary: bool,
        /// Print JSON (secrets as UTF-8 text, or base64 if not UTF-8).
        #[arg(long)]
        json: bool,
    },
    /// List keys with their metadata (never secrets).
    List {
        /// Only this environment.
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key and its file.
    Delete {
        /// ENV/NAME.
        key: String,
        /// Confirm the deletion (required).
        #[arg(long)]
        yes: bool,
        /// Only delete if the key is at this generation.
        #[arg(long, value_name = "N")]
        expected_generation: Option<u64>,
    },
    /// Show the agent's status.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `keyward put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// ENV/NAME, e.g. prod/billing-api.
    pub key: String,
    /// Replace an existing key (its versions move to history).
    #[arg(long)]
    pub overwrite: bool,
    /// Read the secret from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Keep the input byte for byte (do not strip one trailing newline).
    #[arg(long)]
    pub raw: bool,
    /// When this version expires (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub expires: Option<String>,
    /// Only write if the key is at this generation (0: must not exist).
    #[arg(long, value_name = "N")]
    pub expected_generation: Option<u64>,
}

/// `keyward audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log: reports the first record that
    /// was edited, removed, reordered, or a cut-off tail.
    Verify {
        /// The audit log (default: DIR/audit.jsonl with --dev, else
        /// /var/log/keyward/audit.jsonl).
        file: Option<PathBuf>,
        /// The install key that keys the chain (default: install.key beside
        /// the log, else /var/lib/keyward/install.key).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}
