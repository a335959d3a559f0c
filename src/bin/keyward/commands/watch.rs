//! `keyward watch`: print every change of the keys as the agent sends it,
//! with its reason, until the agent ends the stream.
//!
//! It reads the WatchKeys stream itself, over keyward-client's checked
//! channel: each event's reason, which it prints, is not part of
//! keyward-client's key states.

use std::io::Write;
use std::process::ExitCode;

use keyward::proto::{self, keys_client::KeysClient};
use keyward::wire::ToWire;

use crate::cli::Cli;
use crate::sockets::{channel, service_socket};
use crate::text::{key_arg, key_name, refused, state_name};
use crate::Outcome;

pub(crate) async fn watch(cli: &Cli, keys: &[String], json: bool) -> Outcome {
    let refs = keys.iter().map(|k| key_arg(k)).collect::<Result<Vec<_>, _>>()?;
    let channel = channel(&service_socket(cli)).await?;
    let mut stream = KeysClient::new(channel)
        .watch_keys(proto::WatchKeysRequest {
            keys: refs.iter().map(|k| k.to_proto()).collect(),
        })
        .await
        .map_err(refused)?
        .into_inner();
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
