//! `keyward list`: the keys and their metadata, never their secrets.

use std::process::ExitCode;

use keyward::proto;

use crate::cli::Cli;
use crate::sockets::admin;
use crate::text::{key_name, refused, state_name, time_text};
use crate::Outcome;

fn version_json(v: &proto::VersionInfo) -> serde_json::Value {
    serde_json::json!({
        "version": v.version,
        "fingerprint": v.fingerprint,
        "created_at": time_text(v.created_at.as_ref()),
        "expires_at": time_text(v.expires_at.as_ref()),
    })
}

pub(crate) async fn list(cli: &Cli, env: Option<&str>, json: bool) -> Outcome {
    let mut admin = admin(cli).await?;
    let keys = admin
        .list_keys(proto::ListKeysRequest {
            environment: env.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .keys;
    let name = |k: &proto::KeyInfo| key_name(k.key.as_ref());
    if json {
        let doc: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key": name(k),
                    "generation": k.generation,
                    "state": state_name(k.state),
                    "primary": k.primary.as_ref().map(version_json),
                    "fallback": k.fallback.as_ref().map(version_json),
                    "retired_versions": k.history.len(),
                    "next_rotation": time_text(k.next_rotation.as_ref()),
                    "schedule": k.schedule,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(doc));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>4} {:<9} {:<24} {:<24} {:<20} NEXT ROTATION",
        "KEY", "GEN", "STATE", "PRIMARY", "FALLBACK", "CREATED"
    );
    for k in &keys {
        let v = |v: Option<&proto::VersionInfo>| {
            v.map(|v| format!("v{} {}", v.version, v.fingerprint))
                .unwrap_or_else(|| "-".into())
        };
        let next = time_text(k.next_rotation.as_ref());
        println!(
            "{:<40} {:>4} {:<9} {:<24} {:<24} {:<20} {next}",
            name(k),
            k.generation,
            state_name(k.state),
            v(k.primary.as_ref()),
            v(k.fallback.as_ref()),
            time_text(k.primary.as_ref().and_then(|p| p.created_at.as_ref()))
        );
    }
    Ok(ExitCode::SUCCESS)
}
