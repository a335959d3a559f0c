//! `keyward get`: a key's primary and fallback, from the service socket as
//! the calling user.

use std::io::Write;
use std::process::ExitCode;

use keyward::proto::{self, keys_client::KeysClient};
use zeroize::Zeroizing;

use crate::cli::Cli;
use crate::sockets::{channel, service_socket};
use crate::text::{key_arg, refused, rfc3339, state_name};
use crate::Outcome;

pub(crate) async fn get(cli: &Cli, key: &str, primary_only: bool, json: bool) -> Outcome {
    let key = key_arg(key)?;
    let channel = channel(&service_socket(cli)).await?;
    let set = KeysClient::new(channel)
        .get_key(proto::GetKeyRequest {
            key: Some(key.to_proto()),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let primary = set
        .primary
        .as_ref()
        .ok_or("the agent sent no primary; this is a keyward bug")?;
    let written = if primary_only {
        out.write_all(&primary.secret).and_then(|()| out.write_all(b"\n"))
    } else if json {
        let version = |v: &proto::KeyVersion| {
            let mut doc = serde_json::json!({
                "version": v.version,
                "fingerprint": v.fingerprint,
                "created_at": rfc3339(v.created_at.as_ref()),
            });
            // A binary secret is never mangled into text: it goes out as hex.
            let (field, value) = match std::str::from_utf8(&v.secret) {
                Ok(text) => ("secret", text.to_owned()),
                Err(_) => ("secret_hex", hex::encode(&v.secret)),
            };
            doc[field] = serde_json::Value::String(value);
            doc
        };
        let doc = Zeroizing::new(
            serde_json::json!({
                "key": key.to_string(),
                "generation": set.generation,
                "state": state_name(set.state),
                "primary": version(primary),
                "fallback": set.fallback.as_ref().map(version),
            })
            .to_string(),
        );
        writeln!(out, "{}", doc.as_str())
    } else {
        let mut lines = vec![("primary", primary)];
        lines.extend(set.fallback.as_ref().map(|f| ("fallback", f)));
        let mut r = writeln!(out, "# {key} generation {} ({})", set.generation, state_name(set.state));
        for (role, v) in lines {
            r = r
                .and_then(|()| write!(out, "{role:<9}v{:<4} {}  ", v.version, v.fingerprint))
                .and_then(|()| out.write_all(&v.secret))
                .and_then(|()| out.write_all(b"\n"));
        }
        r
    };
    written.map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
