//! `keyward rotation-status`: where a key's rotation stands, who has which
//! generation, and what the next step waits for.

use std::process::ExitCode;
use std::time::Duration;

use keyward::proto::{self, admin_client::AdminClient, RotationState};
use keyward::secret::KeyRef;
use keyward::wire::ToWire;
use tonic::transport::Channel;

use crate::cli::Cli;
use crate::commands::steps::describe;
use crate::sockets::admin;
use crate::text::{key_arg, refused};
use crate::Outcome;

pub(crate) async fn status(admin: &mut AdminClient<Channel>, key: &KeyRef) -> Result<proto::RotationStatus, String> {
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

pub(crate) fn subscriber_text(s: &proto::Subscriber) -> String {
    let kind = match s.kind.as_str() {
        "library" if s.reported_use => "client library, reported use of the primary",
        "library" => "client library, no use of the primary reported",
        "run" => "keyward run, cannot report",
        _ => "not a keyward client, cannot report",
    };
    format!(
        "{}: has generation {} [{kind}]",
        subscriber_who(s),
        s.delivered_generation
    )
}

/// "manual, by uid 0 pid 42, at evidence".
pub(crate) fn job_line(j: &proto::RotationJob) -> String {
    let since = j
        .started_at
        .as_ref()
        .and_then(keyward::wire::from_timestamp)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    format!("{}, {since}, step {}", j.trigger, j.step)
}

pub(crate) fn evicted_text(e: &proto::EvictedSubscriber) -> String {
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
        crate::text::duration_text(Duration::from_millis(e.waited_ms)),
        sub.delivered_generation
    )
}

pub(crate) async fn rotation_status(cli: &Cli, key: &str, follow: bool, poll: Duration) -> Outcome {
    let key = key_arg(key)?;
    let mut admin = admin(cli).await?;
    let s = status(&mut admin, &key).await?;
    if follow {
        if !s.job.as_ref().is_some_and(|j| j.active) {
            return Err(format!(
                "no rotation job runs for {key}{}: start one with `keyward rotate {key}`",
                s.job
                    .as_ref()
                    .map(|j| format!(" (the last one ended: {}: {})", j.result, j.message))
                    .unwrap_or_default()
            ));
        }
        return super::rotate::follow(&mut admin, &key, poll).await;
    }
    let info = s.key.clone().unwrap_or_default();
    println!("{key}: {}", describe(&info));
    match &s.job {
        Some(j) if j.active => {
            println!("  job: running ({})", job_line(j));
            if !j.next_gate.is_empty() {
                println!("    next gate: {}", j.next_gate);
            }
            if !j.waiting.is_empty() {
                println!("    waiting: {}", j.waiting);
            }
            println!("    follow: keyward rotation-status {key} --follow; stop: keyward rotate --cancel {key}");
        }
        Some(j) => println!("  last job: {} ({}): {}", j.result, job_line(j), j.message),
        None => println!("  job: none"),
    }
    if let Some(j) = &s.job {
        if j.failed_attempts > 0 {
            let retry = j
                .retry_at
                .as_ref()
                .and_then(keyward::wire::from_timestamp)
                .map(|t| format!(", next attempt after {}", humantime::format_rfc3339_seconds(t)))
                .unwrap_or_default();
            println!("  scheduled attempts failed in a row: {}{retry}", j.failed_attempts);
        }
    }
    match s.next_rotation.as_ref().and_then(keyward::wire::from_timestamp) {
        Some(t) => println!(
            "  schedule: {}; next rotation {}",
            s.schedule,
            humantime::format_rfc3339_seconds(t)
        ),
        None => println!("  schedule: none (rotated only by hand)"),
    }
    println!(
        "  evidence: use of the primary reported by {} of {} caller(s) needed{}{}",
        s.users.len(),
        s.evidence_quorum.max(1),
        if s.users.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.users.join(", "))
        },
        if s.validated_after_promotion {
            "; the validator accepted it after promotion"
        } else {
            ""
        }
    );
    if !s.unreported.is_empty() {
        println!("    served the primary, no use reported: {}", s.unreported.join("; "));
    }
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
pub(crate) fn reported_by(s: &proto::RotationStatus) -> String {
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
