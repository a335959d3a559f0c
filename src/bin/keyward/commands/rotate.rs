//! `keyward rotate`: starts (or resumes) the agent's rotation job for a key
//! and follows it. The agent runs the safe sequence itself (stage,
//! propagate, promote, grace, evidence, retire and revoke), so Ctrl-C or a
//! lost terminal stops only the following: the job goes on, and
//! `keyward rotation-status KEY --follow` picks it up again.
//!
//! `keyward rotate --cancel KEY` stops the job between two steps; the key
//! stays in the consistent state it reached.

use std::process::ExitCode;

use keyward::proto::{self, admin_client::AdminClient, RotationUntil};
use keyward::secret::KeyRef;
use keyward::wire::ToWire;
use tonic::transport::Channel;

use crate::cli::{Cli, RotateArgs, Until};
use crate::commands::rotation_status::{job_line, status};
use crate::commands::steps::describe;
use crate::secret_input::read_secret;
use crate::sockets::admin;
use crate::text::{key_arg, refused};
use crate::Outcome;

/// Exit status after Ctrl-C: the job goes on.
const INTERRUPTED: u8 = 130;

pub(crate) async fn rotate(cli: &Cli, args: &RotateArgs) -> Outcome {
    let key = key_arg(&args.key)?;
    let mut admin = admin(cli).await?;
    if args.cancel {
        return cancel(&mut admin, &key).await;
    }
    let s = status(&mut admin, &key).await?;
    let info = s.key.clone().unwrap_or_default();
    println!("rotate {key}: {}", describe(&info));
    warn_unreporting(&s);
    let running = s.job.as_ref().is_some_and(|j| j.active);
    let secret = if args.stdin || args.file.is_some() {
        if running {
            return Err(format!(
                "a rotation job already runs for {key}: it uses the key it staged; follow it with `keyward rotation-status {key} --follow`, or stop it with `keyward rotate --cancel {key}` first"
            ));
        }
        Some(read_secret(&args.key, args.file.as_deref(), args.raw)?)
    } else {
        None
    };
    let job = admin
        .start_rotation(proto::StartRotationRequest {
            key: Some(key.to_proto()),
            secret: secret
                .as_deref()
                .map(|s| bytes::Bytes::copy_from_slice(s))
                .unwrap_or_default(),
            until: match args.until {
                Until::Staged => RotationUntil::UntilStaged,
                Until::Promoted => RotationUntil::UntilPromoted,
                Until::Retired => RotationUntil::UntilRetired,
            } as i32,
            expected_generation: Some(info.generation),
            expires_at: None,
            fleet: args.fleet,
            // Whole seconds on the wire: rounded up, never below what was asked.
            fleet_timeout_seconds: args.fleet_timeout.as_secs() + u64::from(args.fleet_timeout.subsec_nanos() > 0),
        })
        .await
        .map_err(refused)?
        .into_inner();
    drop(secret);
    if running {
        println!(
            "a rotation job already runs for {key} (started {}); following it",
            job_line(&job)
        );
    }
    follow(&mut admin, &key, args.poll).await
}

/// Says which consumers cannot report use of a new key: without reports
/// (or a validator) the job waits at PROMOTED instead of retiring.
fn warn_unreporting(s: &proto::RotationStatus) {
    let silent: Vec<&proto::Subscriber> = s.subscribers.iter().filter(|x| x.kind != "library").collect();
    if silent.is_empty() {
        return;
    }
    let who: Vec<String> = silent
        .iter()
        .map(|x| {
            let kind = if x.kind == "run" {
                "keyward run"
            } else {
                "not a keyward client"
            };
            format!("uid {} pid {} ({kind})", x.uid, x.pid)
        })
        .collect();
    println!(
        "warning: {} subscriber(s) cannot report use of the new key: {}. Retire waits for use reported by {} caller(s){}",
        silent.len(),
        who.join(", "),
        s.evidence_quorum.max(1),
        if s.has_validator {
            ", or for the validator run after promotion"
        } else {
            "; with no validator configured, the rotation stays PROMOTED (both keys valid) and raises no_evidence if none reports"
        }
    );
}

async fn cancel(admin: &mut AdminClient<Channel>, key: &KeyRef) -> Outcome {
    let job = admin
        .cancel_rotation(proto::CancelRotationRequest {
            key: Some(key.to_proto()),
        })
        .await
        .map_err(refused)?
        .into_inner();
    println!("{key}: {}", job.message);
    Ok(ExitCode::SUCCESS)
}

/// Prints the job's steps as they happen until it ends (exit 0 when it
/// reached its goal, 1 otherwise) or Ctrl-C (the job goes on).
pub(crate) async fn follow(admin: &mut AdminClient<Channel>, key: &KeyRef, poll: std::time::Duration) -> Outcome {
    let mut printed = 0usize;
    let mut last_wait = String::new();
    let mut first_log: Option<String> = None;
    loop {
        let s = status(admin, key).await?;
        let Some(job) = s.job else {
            return Err(format!(
                "no rotation job for {key}: start one with `keyward rotate {key}`"
            ));
        };
        // The log is bounded: find where the new lines start.
        if first_log.as_deref() != job.log.first().map(String::as_str) {
            printed = printed.saturating_sub(1);
            first_log = job.log.first().cloned();
        }
        for line in job.log.iter().skip(printed) {
            println!("  {line}");
        }
        printed = job.log.len();
        if !job.active {
            let info = s.key.unwrap_or_default();
            let line = format!("{}: {} ({})", job.result, job.message, describe(&info));
            if job.result == "ok" {
                println!("{line}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("keyward rotate: {line}");
            return Ok(ExitCode::FAILURE);
        }
        if !job.waiting.is_empty() && job.waiting != last_wait && !same_kind(&job.waiting, &last_wait) {
            println!("  waiting ({}): {}", job.step, job.waiting);
        }
        last_wait = job.waiting;
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!(
                    "\nkeyward: stopped following; the rotation of {key} goes on in the agent. Follow it with `keyward rotation-status {key} --follow`, stop it with `keyward rotate --cancel {key}`"
                );
                return Ok(ExitCode::from(INTERRUPTED));
            }
        }
    }
}

/// Two wait messages that differ only in a countdown ("has 9s left" vs
/// "has 8s left") are not printed twice.
fn same_kind(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
    strip(a) == strip(b)
}
