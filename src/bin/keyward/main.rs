//! `keyward`: the command-line client of keywardd.
//!
//! Exit codes: 0 on success, 1 when the agent refused or failed the request
//! (the message says why), 2 for bad usage (clap), 3 when `audit verify`
//! finds a problem (1 when it cannot check: e.g. `--fleet` and the backend
//! cannot be read).
//!
//! # Layout
//!
//! - `main.rs`: the dispatch from a parsed command line to its command.
//! - `cli.rs`: the clap definitions (man pages and completions are
//!   generated from them: `packaging/assets.rs`).
//! - `commands/`: one file per command.
//! - `sockets.rs`: finding and opening the agent's sockets.
//! - `secret_input.rs`: reading a secret from stdin or a file.
//! - `text.rs`: how keys, states, times and refusals are shown.

mod cli;
mod commands;
mod proxy;
mod secret_input;
mod sockets;
mod text;

use std::process::ExitCode;

use clap::Parser;
use cli::{AuditCommand, Cli, Command};
use commands::steps::Step;
use commands::{
    audit, delete, doctor, fleet, get, init, list, proxied, put, render, report, rotate, rotation_status, run, status,
    steps, watch,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every command runs on one thread, the proxy too: it is a sidecar for
    // one program (or a few), and on one thread a proxied request costs it
    // a quarter less CPU than on a work-stealing pool (cargo bench --bench
    // proxy: 18.6 µs against 25.6 µs), which more than covers what one
    // program sends.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(dispatch(cli)),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("keyward: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// How a command ends: its exit code, or the message printed before exit 1.
pub(crate) type Outcome = Result<ExitCode, String>;

/// Runs the command `cli` names.
async fn dispatch(cli: Cli) -> Outcome {
    match &cli.command {
        Command::Init { state_dir } => init::init(state_dir.as_deref().or(cli.dev.as_deref())),
        Command::Put(args) => put::put(&cli, args).await,
        Command::Get { key, primary, json } => get::get(&cli, key, *primary, *json).await,
        Command::List { env, json } => list::list(&cli, env.as_deref(), *json).await,
        Command::Delete {
            key,
            yes,
            expected_generation,
        } => delete::delete(&cli, key, *yes, *expected_generation).await,
        Command::Status { json } => status::status(&cli, *json).await,
        Command::Fleet(command) => fleet::run(&cli, command).await,
        Command::Audit(AuditCommand::Verify {
            files,
            key,
            anchors,
            fleet,
            agent_id,
            config,
            allow_prefix,
        }) => {
            audit::verify(
                &cli,
                audit::VerifyArgs {
                    files,
                    key: key.as_deref(),
                    anchors: anchors.as_deref(),
                    fleet: fleet.then_some(audit::FleetArgs {
                        agent_id: agent_id.as_deref(),
                        config: config.as_deref(),
                    }),
                    allow_prefix: *allow_prefix,
                },
            )
            .await
        }
        Command::Stage(args) => steps::stage(&cli, args).await,
        Command::Promote(step) => steps::step(&cli, step, Step::Promote).await,
        Command::Rollback(step) => steps::step(&cli, step, Step::Rollback).await,
        Command::Abort(step) => steps::step(&cli, step, Step::Abort).await,
        Command::Retire { step, force } => steps::step(&cli, step, Step::Retire { force: *force }).await,
        Command::Rotate(args) => rotate::rotate(&cli, args).await,
        Command::Watch { keys, json } => watch::watch(&cli, keys, *json).await,
        Command::RotationStatus { key, follow, poll } => {
            rotation_status::rotation_status(&cli, key, *follow, *poll).await
        }
        Command::Run(args) if args.proxy => proxied::run_proxied(&cli, args).await,
        Command::Run(args) => run::run(&cli, args).await,
        Command::Proxy(args) => proxied::proxy(&cli, args).await,
        Command::Render(args) => render::render(&cli, args).await,
        Command::Doctor { config, json } => doctor::doctor(&cli, config.as_deref(), *json).await,
        Command::Report {
            key,
            version,
            service,
            used: true,
            successes,
            ..
        } => report::report_use(&cli, key, *version, service, *successes).await,
        Command::Report {
            key,
            version,
            status,
            service,
            detail,
            ..
        } => report::report(&cli, key, *version, *status, service, detail).await,
    }
}
