//! `keyward rotate`: the whole safe sequence (stage, wait for every
//! subscriber, promote, watch for refusals through the grace period,
//! retire), with its gates.
//!
//! `rotate` keeps no state of its own: every step is one durable command in
//! the agent, and each run starts from the key's current state. So Ctrl-C
//! or a crash at any point leaves a consistent key, and running `rotate`
//! again resumes from wherever it stands.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use keyward::proto::{self, admin_client::AdminClient, RotationState};
use keyward::secret::KeyRef;
use keyward::wire::ToWire;
use tonic::transport::Channel;

use crate::cli::{Cli, RotateArgs, Until};
use crate::commands::fleet::wait_for_fleet;
use crate::commands::rotation_status::{evicted_text, reported_by, status, subscriber_text};
use crate::commands::steps::{apply, describe, do_stage, Step};
use crate::secret_input::read_secret;
use crate::sockets::admin;
use crate::text::{key_arg, refused};
use crate::Outcome;

/// How much longer than the propagation timeout `rotate` waits: the agent
/// checks subscribers twice a second.
const EVICTION_MARGIN: Duration = Duration::from_secs(2);

/// Stops `rotate` with the key left consistent, saying how to continue.
fn halt(msg: String) -> Outcome {
    eprintln!("keyward rotate: {msg}");
    Ok(ExitCode::FAILURE)
}

/// With `--fleet`: waits for every live agent to serve `generation`, or
/// says which did not (`what` names where the key is left).
async fn fleet_gate(
    admin: &mut AdminClient<Channel>,
    args: &RotateArgs,
    key: &KeyRef,
    generation: u64,
    what: &str,
) -> Result<(), String> {
    if !args.fleet {
        return Ok(());
    }
    println!(
        "      fleet: waiting up to {:?} for every live agent to serve generation {generation}",
        args.fleet_timeout
    );
    match wait_for_fleet(admin, &key.to_proto(), generation, args.fleet_timeout, args.poll).await {
        Ok(n) => {
            println!("      fleet: all {n} live agent(s) serve generation {generation}");
            Ok(())
        }
        Err(laggards) => Err(format!(
            "not every live agent serves generation {generation} of {key} after {:?}: {laggards}; {what}. Check those agents (`keyward fleet status {key}`), then run `keyward rotate --fleet {key}` again to resume",
            args.fleet_timeout
        )),
    }
}

pub(crate) async fn rotate(cli: &Cli, args: &RotateArgs) -> Outcome {
    let key = key_arg(&args.key)?;
    let mut admin = admin(cli).await?;
    let mut s = status(&mut admin, &key).await?;
    let mut info = s.key.clone().unwrap_or_default();
    println!("rotate {key}: {}", describe(&info));

    if info.state == RotationState::Steady as i32 {
        let secret = if args.stdin || args.file.is_some() {
            Some(read_secret(&args.key, args.file.as_deref(), args.raw)?)
        } else if s.has_generator {
            None
        } else {
            return Err(format!(
                "{key} has no generator hook configured: pass the new key with --stdin or --file, or configure a generator"
            ));
        };
        let source = if secret.is_some() {
            "from input"
        } else {
            "from the generator"
        };
        println!(
            "[1/5] stage: new key {source}{}",
            if s.has_validator {
                ", checked by the validator"
            } else {
                ""
            }
        );
        let r = do_stage(
            &mut admin,
            &key,
            secret.as_deref().map(|s| &s[..]),
            false,
            Some(info.generation),
            None,
        )
        .await?;
        info = r.key.unwrap_or_default();
        println!("      staged: {}", describe(&info));
    }

    if info.state == RotationState::Staged as i32 {
        let generation = info.generation;
        if let Err(e) = fleet_gate(
            &mut admin,
            args,
            &key,
            generation,
            "it stays STAGED (safe: the old key is still primary everywhere)",
        )
        .await
        {
            return halt(e);
        }
        let limit = Duration::from_secs(s.propagation_timeout_seconds);
        println!("[2/5] propagate: waiting up to {limit:?} for every subscriber to receive generation {generation}");
        // The agent evicts a subscriber that took nothing for the timeout
        // (within half a second of it): wait a little longer, so that the
        // eviction lands and propagation goes on with the others.
        let deadline = Instant::now() + limit + EVICTION_MARGIN;
        loop {
            s = status(&mut admin, &key).await?;
            let lagging: Vec<&proto::Subscriber> = s
                .subscribers
                .iter()
                .filter(|x| x.delivered_generation < generation)
                .collect();
            if lagging.is_empty() {
                println!("      {} subscriber(s) have the staged key", s.subscribers.len());
                let evicted: Vec<&proto::EvictedSubscriber> = s
                    .evicted
                    .iter()
                    .filter(|e| e.waiting_generation >= generation)
                    .collect();
                if !evicted.is_empty() {
                    println!(
                        "      {} subscriber(s) evicted: they took nothing within {limit:?}, and their watch was ended",
                        evicted.len()
                    );
                    for e in evicted {
                        println!("        {}", evicted_text(e));
                    }
                }
                break;
            }
            if Instant::now() >= deadline {
                let who: Vec<String> = lagging.iter().map(|x| subscriber_text(x)).collect();
                return halt(format!(
                    "{} subscriber(s) did not receive generation {generation} within {limit:?}: {}; {key} stays STAGED (safe: the old key is still primary). Run `keyward rotate {key}` again to resume, or `keyward abort {key}`",
                    lagging.len(),
                    who.join("; ")
                ));
            }
            tokio::time::sleep(args.poll).await;
        }
        if args.until == Until::Staged {
            println!("stopped after staging (--until staged); resume with `keyward rotate {key}`");
            return Ok(ExitCode::SUCCESS);
        }
        println!("[3/5] promote");
        let r = apply(&mut admin, &key, Step::Promote, Some(generation))
            .await
            .map_err(refused)?;
        info = r.key.unwrap_or_default();
        println!("      promoted: {}", describe(&info));
    }

    if info.state == RotationState::Promoted as i32 {
        if let Err(e) = fleet_gate(
            &mut admin,
            args,
            &key,
            info.generation,
            "it stays PROMOTED (both keys valid: an agent that lags serves the new key as fallback)",
        )
        .await
        {
            return halt(e);
        }
        if args.until == Until::Promoted || args.until == Until::Staged {
            println!("stopped after promotion (--until); resume with `keyward rotate {key}`");
            return Ok(ExitCode::SUCCESS);
        }
        s = status(&mut admin, &key).await?;
        println!(
            "[4/5] grace: {} s left; rolling back if {} or more auth failures are reported against the new primary",
            s.grace_left_seconds, s.failure_threshold
        );
        loop {
            s = status(&mut admin, &key).await?;
            let current = s.key.clone().unwrap_or_default();
            if current.state != RotationState::Promoted as i32 {
                return halt(format!(
                    "{key} changed under rotate (now {}); run `keyward rotate {key}` again",
                    describe(&current)
                ));
            }
            if s.failure_threshold > 0
                && s.failures_since_promotion >= s.failure_threshold
                && s.failure_reporters >= s.report_quorum.max(1)
            {
                let r = apply(&mut admin, &key, Step::Rollback, Some(current.generation))
                    .await
                    .map_err(refused)?;
                return halt(format!(
                    "{} auth failures against the new primary during the grace period{}: ROLLED BACK automatically ({}). The new key is staged as fallback; investigate, then `keyward abort {key}` or `keyward rotate {key}` to promote again",
                    s.failures_since_promotion,
                    reported_by(&s),
                    describe(&r.key.unwrap_or_default())
                ));
            }
            if s.grace_left_seconds == 0 {
                if !s.retire_allowed {
                    return halt(format!(
                        "retire refused: {}. {key} stays PROMOTED (both keys valid)",
                        s.retire_blocked_reason
                    ));
                }
                break;
            }
            tokio::time::sleep(args.poll).await;
        }
        println!(
            "[5/5] retire{}",
            if s.has_revoker { " and revoke the old key" } else { "" }
        );
        let generation = s.key.as_ref().map_or(0, |k| k.generation);
        let r = apply(&mut admin, &key, Step::Retire { force: false }, Some(generation))
            .await
            .map_err(refused)?;
        for note in &r.notes {
            println!("      {note}");
        }
        info = r.key.unwrap_or_default();
        println!("      done: {}", describe(&info));
        if let Err(e) = fleet_gate(
            &mut admin,
            args,
            &key,
            info.generation,
            "the old key is retired here and in OpenBao; the lagging agents still serve it as fallback until they sync",
        )
        .await
        {
            return halt(e);
        }
    }
    Ok(ExitCode::SUCCESS)
}
