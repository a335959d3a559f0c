//! `keywardd`: the keyward agent.
//!
//! System mode reads `/etc/keyward/keyward.toml` (or `--config`); dev mode
//! (`--dev DIR`) needs no root and no config file and keeps everything in
//! DIR. Exit codes: 0 after a clean shutdown, 64 (EX_USAGE) for a bad
//! config, 1 when the agent cannot start.

mod cli;
mod log;
mod memory;
mod summary;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cli::Args;
use keyward::agent::config_reload::ConfigSource;
use keyward::agent::Agent;
use keyward::config::Config;
use keyward::server;
use keyward::server::activation::{self, Inherited, Notifier};
use tokio::signal::unix::{signal, Signal, SignalKind};

const EX_USAGE: u8 = 64;

/// One glibc malloc arena for the whole agent, unless `MALLOC_ARENA_MAX` is
/// set. glibc gives threads that allocate concurrently arenas of their own
/// and seldom returns their free memory: after a rotation is pushed to
/// 10,000 watch streams the agent's RSS depended on how the bursts fell on
/// the worker threads (103–115 MiB in `cargo bench --bench fanout`; 88–96
/// MiB with one arena, and GetKey throughput unchanged within noise, see
/// BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes an allocator setting, and this runs
        // first in main, before any other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    log::init();

    let (config, source) = match load_config(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("keywardd: {msg}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        println!(
            "config ok: {} environments, {} grants, service socket {}",
            config.environments.len(),
            config.policy.grants.len(),
            config.paths.service_socket.display()
        );
        for line in summary::lines(&config, &source) {
            println!("  {line}");
        }
        return ExitCode::SUCCESS;
    }
    let (config_file, metrics_listen) = (summary::config_file(&source), summary::metrics(&config));

    // systemd's variables are read and removed while the process still has
    // one thread: changing the environment later would race the runtime.
    let inherited = match take_inherited_sockets() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("keywardd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = Notifier::take_from_env();

    let hygiene = keyward::hygiene::harden(config.lock_memory);
    for w in &hygiene.warnings {
        tracing::warn!("{w}");
    }
    if let Some(w) = keyward::hygiene::executable_grants_warning(&config.policy) {
        tracing::warn!("{w}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keywardd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let dev = config.dev_mode;
        // Handlers go in before anything is announced, so that a SIGTERM
        // right after "ready" still shuts down cleanly.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keywardd: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let agent = match Agent::open(config, &hygiene) {
            Ok(a) => Arc::new(a.with_config_source(source)),
            Err(e) => {
                eprintln!("keywardd: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let from_systemd = inherited.roles();
        if !from_systemd.is_empty() {
            tracing::info!(sockets = ?from_systemd, "using the sockets passed by systemd (socket activation); binding only the others");
        }
        let listeners = match server::bind_listeners_with(&agent.config(), inherited) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("keywardd: cannot start: {e}");
                agent.audit().close().await;
                return ExitCode::FAILURE;
            }
        };
        let config = agent.config();
        let p = &config.paths;
        println!(
            "keywardd {} ready{}",
            env!("CARGO_PKG_VERSION"),
            if dev { " (dev mode)" } else { "" }
        );
        println!("  service socket: {}", p.service_socket.display());
        println!("  admin socket:   {}", p.admin_socket.display());
        if config.credentials_socket {
            println!("  creds socket:   {}", p.credentials_socket.display());
        }
        println!("  audit log:      {}", p.audit_file.display());
        println!("  config file:    {config_file}");
        println!("  metrics:        {metrics_listen}");
        println!(
            "  store:          {} ({} keys)",
            p.store_dir.display(),
            agent.key_count()
        );
        tracing::info!(
            service_socket = %p.service_socket.display(),
            admin_socket = %p.admin_socket.display(),
            keys = agent.key_count(),
            "ready"
        );
        if let Some(n) = &notifier {
            n.send(&format!("READY=1\nSTATUS=serving {} keys", agent.key_count()));
        }
        tokio::spawn(memory::give_back_after_load_falls(agent.clone()));
        let until = signals.until_shutdown(agent.clone());
        let shutdown = async move {
            until.await;
            if let Some(n) = &notifier {
                n.send("STOPPING=1");
            }
        };
        match server::run(listeners, agent, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keywardd: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The listening sockets systemd passed (`LISTEN_FDS`), if it passed any
/// to this process. Removes the `LISTEN_*` variables either way.
fn take_inherited_sockets() -> Result<Inherited, activation::ActivationError> {
    let Some(env) = activation::take_listen_env(std::process::id())? else {
        return Ok(Inherited::default());
    };
    let fds = own_listen_fds(env.count)?;
    activation::sort(fds, &env.names)
}

/// Takes ownership of fds 3..3+count, which systemd passed to this process
/// (`LISTEN_PID` named it). The only `unsafe` this needs lives here, in the
/// binary, so that the library can keep `forbid(unsafe_code)`.
#[allow(unsafe_code)]
fn own_listen_fds(count: usize) -> Result<Vec<OwnedFd>, activation::ActivationError> {
    let mut fds = Vec::with_capacity(count);
    for i in 0..count {
        let fd = i32::try_from(i)
            .ok()
            .and_then(|i| activation::LISTEN_FDS_START.checked_add(i))
            .ok_or_else(|| activation::ActivationError::Environment(format!("LISTEN_FDS={count} is too large")))?;
        // An fd that is not open must not become an OwnedFd.
        if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) {
            return Err(activation::ActivationError::Environment(format!(
                "LISTEN_FDS={count} but fd {fd} is not open ({e})"
            )));
        }
        // SAFETY: fd is open (checked just above), systemd passed it to this
        // process for it to own, and it is taken exactly once, here; nothing
        // else in the process refers to it.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}

/// The config, and where it came from (SIGHUP loads it again from there).
fn load_config(args: &Args) -> Result<(Config, ConfigSource), String> {
    let uid = nix::unistd::geteuid().as_raw();
    let explicit_config = std::env::args_os().any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let source = match &args.dev {
        Some(dir) => ConfigSource::Dev {
            dir: std::path::absolute(dir).map_err(|e| format!("--dev {}: {e}", dir.display()))?,
            uid,
            file: explicit_config.then(|| args.config.clone()),
        },
        // keywardd never changes its working directory, so a relative path
        // names the same file at every reload.
        None => ConfigSource::File(args.config.clone()),
    };
    let config = source.load().map_err(|e| e.to_string())?;
    Ok((config, source))
}

/// The signals the agent handles. Installed before anything is announced,
/// so that a SIGTERM right after "ready" still shuts down cleanly.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    xfsz: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            xfsz: signal(SignalKind::from_raw(libc::SIGXFSZ))?,
        })
    }

    /// Resolves on SIGTERM or SIGINT. SIGHUP reloads the config and policy;
    /// SIGXFSZ is only logged (a full audit file must give an error, not
    /// kill the agent).
    async fn until_shutdown(mut self, agent: Arc<Agent>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = self.int.recv() => { tracing::info!("SIGINT received"); break }
                _ = self.hup.recv() => reload(&agent).await,
                _ = self.xfsz.recv() => tracing::warn!("SIGXFSZ received: a file hit its size limit (see the audit error)"),
            }
        }
    }
}

/// SIGHUP: reopens the audit log if it was moved away (logrotate `create`;
/// the config reload's own record is the first in the new file), reloads
/// the config and logs what changed and what needs a restart. An invalid
/// config changes nothing.
async fn reload(agent: &Agent) {
    tracing::info!("SIGHUP received: reopening the audit log if it was moved, reloading the config");
    agent.audit().request_reopen();
    match agent.reload_config().await {
        Ok(report) => {
            tracing::info!(applied = ?report.applied, "config reloaded: {}", report.summary());
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    settings = ?report.needs_restart,
                    "these settings changed in the config but only apply at start; the running values are kept until keywardd is restarted: {}",
                    report.needs_restart.join(", ")
                );
            }
        }
        Err(e) => tracing::error!("config reload rejected, keeping the running config: {e}"),
    }
}
