//! The single rotation steps: `keyward stage`, `promote`, `rollback`,
//! `abort` and `retire`, each one durable command in the agent. `keyward
//! rotate` runs them in sequence.

use std::process::ExitCode;

use keyward::proto::{self, admin_client::AdminClient};
use keyward::secret::KeyRef;
use keyward::wire::timestamp;
use keyward::wire::ToWire;
use tonic::transport::Channel;

use crate::cli::{Cli, StageArgs, StepArgs};
use crate::secret_input::read_secret;
use crate::sockets::admin;
use crate::text::{key_arg, refused, state_name};
use crate::Outcome;

/// A single rotation step after stage.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    Promote,
    Rollback,
    Abort,
    Retire { force: bool },
}

/// "generation 4, staged: primary v3 (…), fallback v4 (…)".
pub(crate) fn describe(info: &proto::KeyInfo) -> String {
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

pub(crate) async fn stage(cli: &Cli, args: &StageArgs) -> Outcome {
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

pub(crate) async fn do_stage(
    admin: &mut AdminClient<Channel>,
    key: &KeyRef,
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

pub(crate) async fn apply(
    admin: &mut AdminClient<Channel>,
    key: &KeyRef,
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

pub(crate) async fn step(cli: &Cli, args: &StepArgs, step: Step) -> Outcome {
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
