//! The rotation commands: single steps, `keyward rotate` (the whole safe
//! sequence with its gates), `keyward watch` and `keyward rotation-status`.
//!
//! `rotate` keeps no state of its own: every step is one durable command in
//! the agent, and each run starts from the key's current state. So Ctrl-C
//! or a crash at any point leaves a consistent key, and running `rotate`
//! again resumes from wherever it stands.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient, RotationState};
use keyward::wire::timestamp;
use tonic::transport::Channel;

use crate::cli::{Cli, RotateArgs, StageArgs, StepArgs, Until};
use crate::{admin, key_arg, key_name, read_secret, refused, service_socket, state_name, Outcome};
use keyward::wire::ToWire;

/// A single rotation step after stage.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Promote,
    Rollback,
    Abort,
    Retire { force: bool },
}

fn describe(info: &proto::KeyInfo) -> String {
    let v = |v: Option<&proto::VersionInfo>| {
        v.map(|v| format!("v{} ({})", v.version, v.fingerprint))
            .unwrap_or_else(|| "none".into())
    };
    format!(
        "generation {}, {}: primary {}, fallback {}",
        info.generation,
        state_name(info.state),
        v(info.primary.as_ref()),
        v(info.fallback.as_ref())
    )
}

fn print_response(what: &str, key: &str, r: &proto::RotationResponse) {
    let info = r.key.clone().unwrap_or_default();
    println!("{what} {key}: {}", describe(&info));
    for note in &r.notes {
        println!("  {note}");
    }
}

pub async fn stage(cli: &Cli, args: &StageArgs) -> Outcome {
    let key = key_arg(&args.step.key)?;
    let expires_at = match &args.expires {
        Some(t) => Some(timestamp(
            humantime::parse_rfc3339_weak(t).map_err(|e| format!("--expires {t:?}: {e}; use RFC 3339"))?,
        )),
        None => None,
    };
    let secret = if args.generate {
        None
    } else {
        let s = read_secret(&args.step.key, args.file.as_deref(), args.raw)?;
        if s.is_empty() {
            return Err(format!(
                "no new secret for {key}: pipe it on stdin, use --file, or --generate with a configured generator"
            ));
        }
        Some(s)
    };
    let mut admin = admin(cli).await?;
    let r = do_stage(
        &mut admin,
        &key,
        secret.as_deref().map(|s| &s[..]),
        args.replace,
        args.step.expected_generation,
        expires_at,
    )
    .await?;
    print_response("staged", &args.step.key, &r);
    println!("next: `keyward promote {key}` once every client has the new key (or `keyward abort {key}`)");
    Ok(ExitCode::SUCCESS)
}

async fn do_stage(
    admin: &mut AdminClient<Channel>,
    key: &keyward::secret::KeyRef,
    secret: Option<&[u8]>,
    replace: bool,
    expected_generation: Option<u64>,
    expires_at: Option<prost_types::Timestamp>,
) -> Result<proto::RotationResponse, String> {
    let request = proto::StageKeyRequest {
        key: Some(key.to_proto()),
        secret: secret.map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        generate: secret.is_none(),
        replace,
        expected_generation,
        expires_at,
    };
    Ok(admin.stage_key(request).await.map_err(refused)?.into_inner())
}

async fn apply(
    admin: &mut AdminClient<Channel>,
    key: &keyward::secret::KeyRef,
    step: Step,
    expected_generation: Option<u64>,
) -> Result<proto::RotationResponse, tonic::Status> {
    let request = proto::RotationRequest {
        key: Some(key.to_proto()),
        expected_generation,
    };
    let r = match step {
        Step::Promote => admin.promote_key(request).await,
        Step::Rollback => admin.rollback_key(request).await,
        Step::Abort => admin.abort_key(request).await,
        Step::Retire { force } => {
            admin
                .retire_key(proto::RetireKeyRequest {
                    key: request.key,
                    expected_generation,
                    force,
                })
                .await
        }
    };
    r.map(|r| r.into_inner())
}

pub async fn step(cli: &Cli, args: &StepArgs, step: Step) -> Outcome {
    let key = key_arg(&args.key)?;
    let mut admin = admin(cli).await?;
    let r = apply(&mut admin, &key, step, args.expected_generation)
        .await
        .map_err(refused)?;
    let done = match step {
        Step::Promote => "promoted",
        Step::Rollback => "rolled back",
        Step::Abort => "aborted the staged key of",
        Step::Retire { .. } => "retired the old key of",
    };
    print_response(done, &args.key, &r);
    Ok(ExitCode::SUCCESS)
}

async fn status(
    admin: &mut AdminClient<Channel>,
    key: &keyward::secret::KeyRef,
) -> Result<proto::RotationStatus, String> {
    Ok(admin
        .get_rotation_status(proto::RotationStatusRequest {
            key: Some(key.to_proto()),
        })
        .await
        .map_err(refused)?
        .into_inner())
}

/// "uid 1001 pid 42 /usr/bin/worker (billing.service)".
fn subscriber_who(s: &proto::Subscriber) -> String {
    let mut t = format!("uid {} pid {}", s.uid, s.pid);
    if !s.exe.is_empty() {
        t.push_str(&format!(" {}", s.exe));
    }
    if !s.unit.is_empty() {
        t.push_str(&format!(" ({})", s.unit));
    }
    t
}

fn subscriber_text(s: &proto::Subscriber) -> String {
    format!("{}: has generation {}", subscriber_who(s), s.delivered_generation)
}

fn evicted_text(e: &proto::EvictedSubscriber) -> String {
    let sub = e.subscriber.clone().unwrap_or_default();
    let waiting = match e.waiting_generation {
        0 => "the key's deletion".to_owned(),
        g => format!("generation {g}"),
    };
    let at = e
        .evicted_at
        .as_ref()
        .and_then(keyward::wire::from_timestamp)
        .map(|t| format!(" at {}", humantime::format_rfc3339_seconds(t)))
        .unwrap_or_default();
    format!(
        "{}: evicted{at}: took no event for {} while {waiting} waited (it has generation {})",
        subscriber_who(&sub),
        humantime::format_duration(Duration::from_millis(e.waited_ms)),
        sub.delivered_generation
    )
}

pub async fn rotation_status(cli: &Cli, key: &str) -> Outcome {
    let key = key_arg(key)?;
    let mut admin = admin(cli).await?;
    let s = status(&mut admin, &key).await?;
    let info = s.key.clone().unwrap_or_default();
    println!("{key}: {}", describe(&info));
    println!("  subscribers: {}", s.subscribers.len());
    for sub in &s.subscribers {
        println!("    {}", subscriber_text(sub));
    }
    if !s.evicted.is_empty() {
        println!(
            "  evicted recently (took nothing within the propagation timeout; rotations do not wait for them): {}",
            s.evicted.len()
        );
        for e in &s.evicted {
            println!("    {}", evicted_text(e));
        }
    }
    println!(
        "  auth failures since promotion: {} on the primary{}, {} on the fallback (rotate rolls back at {} from {} distinct reporter(s))",
        s.failures_since_promotion,
        reported_by(&s),
        s.fallback_failures_since_promotion,
        s.failure_threshold,
        s.report_quorum.max(1)
    );
    println!("  grace: {} s ({} s left)", s.grace_seconds, s.grace_left_seconds);
    if info.state == RotationState::Promoted as i32 {
        match s.retire_allowed {
            true => println!("  retire: allowed"),
            false => println!("  retire: refused: {}", s.retire_blocked_reason),
        }
    }
    println!(
        "  hooks: generator {}, validator {}, revoker {}",
        yes(s.has_generator),
        yes(s.has_validator),
        yes(s.has_revoker)
    );
    Ok(ExitCode::SUCCESS)
}

/// " from uid 1001 (billing.service), uid 1002", or nothing without reports.
fn reported_by(s: &proto::RotationStatus) -> String {
    if s.reporters.is_empty() {
        return String::new();
    }
    format!(
        " from {} ({} of the {} distinct reporter(s) that hold a rotation)",
        s.reporters.join(", "),
        s.failure_reporters,
        s.report_quorum.max(1)
    )
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

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
    key: &keyward::secret::KeyRef,
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
    match crate::fleet::wait_for_fleet(admin, &key.to_proto(), generation, args.fleet_timeout, args.poll).await {
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

pub async fn rotate(cli: &Cli, args: &RotateArgs) -> Outcome {
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

pub async fn watch(cli: &Cli, keys: &[String], json: bool) -> Outcome {
    let refs = keys.iter().map(|k| key_arg(k)).collect::<Result<Vec<_>, _>>()?;
    let channel = keyward::client::connect(&service_socket(cli))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = KeysClient::new(channel)
        .watch_keys(proto::WatchKeysRequest {
            keys: refs.iter().map(|k| k.to_proto()).collect(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    use std::io::Write;
    while let Some(event) = stream.message().await.map_err(refused)? {
        let set = event.key_set.unwrap_or_default();
        let name = key_name(set.key.as_ref());
        let version = |v: &proto::KeyVersion| serde_json::json!({"version": v.version, "fingerprint": v.fingerprint});
        let line = if json {
            serde_json::json!({
                "key": name, "reason": event.reason, "generation": set.generation, "state": state_name(set.state),
                "primary": set.primary.as_ref().map(version), "fallback": set.fallback.as_ref().map(version),
            })
            .to_string()
        } else {
            let v = |v: Option<&proto::KeyVersion>| {
                v.map(|v| format!("v{} ({})", v.version, v.fingerprint))
                    .unwrap_or_else(|| "none".into())
            };
            format!(
                "{name} {}: generation {}, {}: primary {}, fallback {}",
                event.reason,
                set.generation,
                state_name(set.state),
                v(set.primary.as_ref()),
                v(set.fallback.as_ref())
            )
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
