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
        /// Print JSON: each secret as `secret` (UTF-8 text) or, if it is not
        /// UTF-8, as `secret_hex`.
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
    /// Rotation step 1–3: add a new key as the fallback (from stdin, --file,
    /// or the configured generator with --generate).
    Stage(StageArgs),
    /// Rotation step 4: make the staged key the primary (the old one stays as
    /// fallback).
    Promote(StepArgs),
    /// Go back after promote: the old key is primary again, the new one
    /// stays staged.
    Rollback(StepArgs),
    /// Drop a staged key that was not promoted.
    Abort(StepArgs),
    /// Rotation step 5: drop the old key (and run the revoker hook). Refused
    /// during the grace period or while failures are reported against the
    /// new primary, unless --force.
    Retire {
        #[command(flatten)]
        step: StepArgs,
        /// Retire although the gate is closed (audited as forced).
        #[arg(long)]
        force: bool,
    },
    /// Start (or resume) the agent's rotation job for a key and follow it:
    /// the agent runs the safe sequence itself (stage → wait for
    /// subscribers → promote → grace period, rolling back on failures →
    /// evidence that the new key works → retire and revoke), and resumes it
    /// after a restart. Ctrl-C stops following, not the job; `--cancel`
    /// stops the job.
    Rotate(RotateArgs),
    /// Print each key's state as it changes (Ctrl-C to stop).
    Watch {
        /// ENV/NAME …
        #[arg(required = true)]
        keys: Vec<String>,
        /// One JSON object per event (secrets shown as fingerprints only).
        #[arg(long)]
        json: bool,
    },
    /// Fleet mode (backend openbao): the agents of the fleet, and
    /// re-encrypting the records for a new one.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Show where a key's rotation stands: its job's step and what it
    /// waits for, subscribers (and which can report use), failures, the
    /// gate, the next scheduled rotation.
    RotationStatus {
        /// ENV/NAME.
        key: String,
        /// Follow the running job until it ends (Ctrl-C stops following).
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look.
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
        poll: std::time::Duration,
    },
    /// Start a command with keys in its environment; restart or signal it
    /// when a key's primary changes. For each --key ENV/NAME=VAR the
    /// command gets VAR (the primary), VAR_PRIMARY and VAR_FALLBACK (the
    /// fallback, or the primary when the key has none).
    ///
    /// By default (--restart-on primary) only a change of a primary
    /// restarts it: a promote, a rollback, or a put --overwrite, i.e. once
    /// per full rotation. A stage, an abort and a retire change only the
    /// fallback and leave it running, so its VAR_FALLBACK can be out of
    /// date: a newly staged key reaches it only with the restart at
    /// promote, and after a retire VAR_FALLBACK still holds the retired
    /// key. --restart-on any restarts it on every change (a full rotation
    /// restarts it three times: stage, promote, retire). A deleted key
    /// leaves it running with the keys it has.
    Run(RunArgs),
    /// Write keys into a file from a template, and again on every change.
    /// The template names keys as {{ ENV/NAME }} (the primary) or
    /// {{ ENV/NAME.primary|fallback|version|fingerprint }}.
    Render(RenderArgs),
    /// Serve keys to programs that take a proxy setting or a base URL but
    /// are not started by keyward (n8n's HTTP Request node, a systemd
    /// service): the key-injecting proxy of `keyward run --proxy` as a
    /// long-running service. Programs send the placeholders it prints; it
    /// puts the key in for the bound host only.
    Proxy(ProxyArgs),
    /// Check the install as an operator would before trusting the agent:
    /// config, file permissions, sockets, the audit chain, the clock and
    /// (when the agent answers) its status and keys. Exit 1 if any check
    /// fails.
    Doctor {
        /// The config file (default /etc/keyward/keyward.toml; with --dev,
        /// applied on top of dev mode).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON: [{"check", "status", "detail", "fix"}].
        #[arg(long)]
        json: bool,
    },
    /// Tell the agent that the provider refused a key (HTTP 401/403): feeds
    /// its alerts. The client libraries do this from their fallback helper;
    /// this is for scripts. Never pass the secret.
    Report {
        /// ENV/NAME, e.g. prod/billing-api.
        key: String,
        /// The version that was refused (`keyward get --json` shows it).
        #[arg(long, value_name = "N")]
        version: u64,
        /// The HTTP status the provider answered.
        #[arg(long, value_name = "CODE", default_value_t = 401)]
        status: u32,
        /// The name of the service that was refused, as alerts should show it.
        #[arg(long, value_name = "NAME")]
        service: String,
        /// A short note (the endpoint, the provider's error code…).
        #[arg(long, value_name = "TEXT", default_value = "")]
        detail: String,
        /// Report successful use instead of a refusal: calls with this
        /// version worked (ReportKeyUse), the evidence a rotation needs to
        /// retire the old key. --status and --detail do not apply.
        #[arg(long, conflicts_with_all = ["status", "detail"])]
        used: bool,
        /// With --used: how many calls succeeded.
        #[arg(long, value_name = "N", default_value_t = 1, requires = "used")]
        successes: u64,
    },
}

/// The key and compare-and-swap shared by the rotation steps.
#[derive(Args, Debug)]
pub struct StepArgs {
    /// ENV/NAME, e.g. prod/billing-api.
    pub key: String,
    /// Only act if the key is at this generation.
    #[arg(long, value_name = "N")]
    pub expected_generation: Option<u64>,
}

/// `keyward stage`.
#[derive(Args, Debug)]
pub struct StageArgs {
    #[command(flatten)]
    pub step: StepArgs,
    /// Run the key's configured generator hook in the agent instead of
    /// reading a secret.
    #[arg(long, conflicts_with = "file")]
    pub generate: bool,
    /// Replace a key that is already staged.
    #[arg(long)]
    pub replace: bool,
    /// Read the new secret from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Keep the input byte for byte (do not strip one trailing newline).
    #[arg(long)]
    pub raw: bool,
    /// When the new version expires (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub expires: Option<String>,
}

/// Where `keyward rotate` stops.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// After staging (and propagation).
    Staged,
    /// After promotion.
    Promoted,
    /// The whole sequence, through retire.
    Retired,
}

/// `keyward rotate`.
#[derive(Args, Debug)]
pub struct RotateArgs {
    /// ENV/NAME, e.g. prod/billing-api.
    pub key: String,
    /// Stop the key's running job between two steps (the key stays in the
    /// consistent state it reached).
    #[arg(long, conflicts_with_all = ["stdin", "file", "until", "fleet"])]
    pub cancel: bool,
    /// Read the new secret from stdin (otherwise the configured generator
    /// makes it).
    #[arg(long, conflicts_with = "file")]
    pub stdin: bool,
    /// Read the new secret from this file.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Keep the input byte for byte.
    #[arg(long)]
    pub raw: bool,
    /// Stop after this step.
    #[arg(long, value_enum, default_value = "retired")]
    pub until: Until,
    /// How often to look at the job while following it.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll: std::time::Duration,
    /// Fleet mode: after staging and after promoting, the job waits until
    /// every live agent of the fleet serves the key's new generation
    /// (listing the laggards); it promotes and retires only once they all
    /// do.
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: how long to wait for the laggards at each step.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, requires = "fleet")]
    pub fleet_timeout: std::time::Duration,
}

/// `keyward fleet …`.
#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Every agent of the fleet: live or not, in sync or stale, and which
    /// generation of each key (or of ENV/NAME) it serves.
    Status {
        /// Only this key, ENV/NAME.
        key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this agent's [[backend.member]] entry (its agent_id, age
    /// recipient and public signing key), to paste into every agent's
    /// config.
    Member,
    /// How to add an agent to the fleet (or remove one), step by step.
    Join,
    /// Write every key's record again, encrypted to the current members
    /// and signed by this agent: run it after adding or removing a member.
    Reseal {
        /// Only this environment.
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
    },
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
    /// was edited, removed, reordered, a missing segment, or a cut-off
    /// tail. Every sealed segment beside a path (PATH.<first>-<last>) is
    /// checked with it; several paths (a file logrotate moved away, and the
    /// live one) are checked as one chain, in chain order (by the seq each
    /// file starts at).
    Verify {
        /// The audit log's live file, and files moved away before it, oldest
        /// first (default: DIR/audit.jsonl with --dev, else
        /// /var/log/keyward/audit.jsonl).
        files: Vec<PathBuf>,
        /// Anchors as a receiver kept them (JSON lines with seq and hash):
        /// the log must hold each anchored record with that hash.
        #[arg(long, value_name = "FILE")]
        anchors: Option<PathBuf>,
        /// Also check the log against the anchors its agent published to the
        /// fleet backend (OpenBao), logging in as the agent does (the
        /// config's [backend]): only anchors signed by that agent's member
        /// key are trusted; anything else there is reported. Exit 1 if the
        /// backend cannot be read.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: the agent whose anchors to read (default: the
        /// config's agent_id), to check a log copied from another host.
        #[arg(long, value_name = "ID", requires = "fleet")]
        agent_id: Option<String>,
        /// With --fleet: the config file (default /etc/keyward/keyward.toml;
        /// with --dev, applied on top of dev mode).
        #[arg(long, value_name = "FILE", requires = "fleet")]
        config: Option<PathBuf>,
        /// Records missing before the first file (removed by hand, e.g. by
        /// logrotate's rotate count) are a note instead of a failure.
        #[arg(long)]
        allow_prefix: bool,
        /// The install key that keys the chain (default: install.key beside
        /// the log, else /var/lib/keyward/install.key).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

/// What `keyward run` does when a key changes.
#[derive(Clone, Debug)]
pub enum OnRotate {
    /// Stop the command (SIGTERM, then SIGKILL after --stop-timeout) and
    /// start it again with the new keys.
    Restart,
    /// Send it this signal (it keeps its environment: for programs that
    /// re-read a file written by `keyward render`).
    Signal(nix::sys::signal::Signal),
    /// Leave it alone.
    None,
}

/// Which changes of a key `keyward run` acts on (`--restart-on`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartOn {
    /// A primary other than the one the command was given (or last
    /// signalled for): promote, rollback, put --overwrite. Once per
    /// rotation.
    Primary,
    /// Every change: stage, abort and retire too (three times per
    /// rotation).
    Any,
}

fn on_rotate(s: &str) -> Result<OnRotate, String> {
    match s {
        "restart" => Ok(OnRotate::Restart),
        "none" => Ok(OnRotate::None),
        _ => {
            let name = s
                .strip_prefix("signal:")
                .ok_or_else(|| format!("{s:?}: use restart, none, or signal:NAME (e.g. signal:HUP)"))?;
            let full = if name.starts_with("SIG") {
                name.to_owned()
            } else {
                format!("SIG{name}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .map(OnRotate::Signal)
                .map_err(|_| format!("{name:?} is not a signal name: use e.g. signal:HUP or signal:USR1"))
        }
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e}): write e.g. 10s or 500ms"))
}

/// `keyward run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// ENV/NAME=VARIABLE, e.g. prod/billing-api=BILLING_API_KEY (repeat for
    /// more keys).
    #[arg(long = "key", value_name = "ENV/NAME=VAR", required = true)]
    pub keys: Vec<String>,
    /// What to do on a change that --restart-on selects: restart,
    /// signal:NAME (e.g. signal:HUP) or none. With the default
    /// (--restart-on primary) a promote, a rollback or a put --overwrite
    /// is acted on; a stage, an abort or a retire is not.
    #[arg(long, value_name = "ACTION", default_value = "restart", value_parser = on_rotate)]
    pub on_rotate: OnRotate,
    /// Which changes restart (or signal) the command. primary: a new
    /// primary only (promote, rollback, put --overwrite), once per
    /// rotation; after a stage, an abort or a retire the command keeps
    /// running and its VAR_FALLBACK may be out of date (a staged key
    /// reaches it only at the promote restart; after a retire it still
    /// holds the retired key). any: every change of a key.
    #[arg(long, value_name = "WHICH", value_enum, default_value_t = RestartOn::Primary)]
    pub restart_on: RestartOn,
    /// Wait a random time up to this long before acting on a change, so
    /// that many hosts do not restart at once. Keep it, plus the command's
    /// restart time, well below the key's rotation grace period: the old key
    /// is revoked at retire, whether or not the command has restarted.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
    pub splay: std::time::Duration,
    /// How long the command gets to exit after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub stop_timeout: std::time::Duration,
    /// Give the command placeholders instead of keys, and run a local
    /// proxy (HTTPS_PROXY) that puts the current key into its HTTPS
    /// requests to the host each key is bound to: --key
    /// ENV/NAME=VAR@HOST[:PORT]. Rotation then never restarts the command;
    /// a refused primary is retried with the fallback, and failures and
    /// use are reported to the agent. The command never holds a key.
    #[arg(long, conflicts_with_all = ["on_rotate", "restart_on", "splay"])]
    pub proxy: bool,
    #[command(flatten)]
    pub proxying: ProxyingArgs,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `keyward run --proxy` and `keyward proxy` share.
#[derive(Args, Debug)]
pub struct ProxyingArgs {
    /// Trust this CA (PEM) too for the upstream connections, besides the
    /// system roots (a provider with a private CA).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Largest request body kept to replay a request with the fallback
    /// when the provider refuses the primary (401/403); a larger or
    /// streamed body is passed through once, refusal and all.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = size)]
    pub replay_limit: u64,
    /// How long a version the provider refused is skipped (the fallback
    /// is sent straight away) unless the key changes first.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub fallback_cooldown: std::time::Duration,
    /// The service name the agent's alerts and audit show for the
    /// requests (default: the command's name; `keyward proxy` for the
    /// service).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

/// `keyward proxy`.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Where to listen, on loopback: 127.0.0.1:PORT (or [::1]:PORT).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// ENV/NAME@HOST[:PORT]: a key and the host it may be sent to (repeat
    /// for more keys).
    #[arg(long = "key", value_name = "ENV/NAME@HOST[:PORT]", required = true)]
    pub keys: Vec<String>,
    /// PREFIX=https://HOST[:PORT]: requests for http://LISTEN/PREFIX/… go
    /// to https://HOST/… (base-URL mode, for programs without a proxy
    /// setting). HOST must be bound by a --key.
    #[arg(long = "route", value_name = "PREFIX=https://HOST")]
    pub routes: Vec<String>,
    /// A uid whose processes may use the proxy (repeat; default: the
    /// proxy's own uid). Connections from any other uid get 407.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
    /// Write the proxy's CA certificate (PEM) here at each start. Programs
    /// that use it as an HTTPS proxy must trust it; it is made anew at each
    /// start. --route needs no CA (the local leg is plain HTTP on
    /// loopback).
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub proxying: ProxyingArgs,
}

fn size(s: &str) -> Result<u64, String> {
    keyward::config::size::parse_size(s).map_err(|e| format!("{s:?} is not a size ({e}): write e.g. 1MiB or 65536"))
}

/// `keyward render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The template file.
    #[arg(long, value_name = "FILE")]
    pub template: PathBuf,
    /// The file to write (atomically: a temp file renamed over it).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The written file's mode, in octal.
    #[arg(long, value_name = "MODE", default_value = "0600")]
    pub mode: String,
    /// Run this through /bin/sh -c after each re-render (e.g. a reload).
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
    /// Render once and exit instead of following the keys.
    #[arg(long)]
    pub once: bool,
}
