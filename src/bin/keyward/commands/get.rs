//! `keyward get`: a key's primary and fallback, from the service socket as
//! the calling user, through keyward-client.

use std::io::Write;
use std::process::ExitCode;

use keyward_client::KeyVersion;
use zeroize::Zeroizing;

use crate::cli::Cli;
use crate::sockets::service;
use crate::text::{client_error, key_arg, rotation_state, time_rfc3339};
use crate::Outcome;

pub(crate) async fn get(cli: &Cli, key: &str, primary_only: bool, json: bool) -> Outcome {
    let key = key_arg(key)?;
    let set = service(cli).await?.get(&key.to_string()).await.map_err(client_error)?;
    let mut out = std::io::stdout().lock();
    let primary = &set.primary;
    let written = if primary_only {
        out.write_all(primary.secret.expose())
            .and_then(|()| out.write_all(b"\n"))
    } else if json {
        let version = |v: &KeyVersion| {
            let mut doc = serde_json::json!({
                "version": v.version,
                "fingerprint": v.fingerprint,
                "created_at": time_rfc3339(v.created_at),
            });
            // A binary secret is never mangled into text: it goes out as hex.
            let (field, value) = match std::str::from_utf8(v.secret.expose()) {
                Ok(text) => ("secret", text.to_owned()),
                Err(_) => ("secret_hex", hex::encode(v.secret.expose())),
            };
            doc[field] = serde_json::Value::String(value);
            doc
        };
        let doc = Zeroizing::new(
            serde_json::json!({
                "key": key.to_string(),
                "generation": set.generation,
                "state": rotation_state(set.state),
                "primary": version(primary),
                "fallback": set.fallback.as_ref().map(version),
            })
            .to_string(),
        );
        writeln!(out, "{}", doc.as_str())
    } else {
        let mut lines = vec![("primary", primary)];
        lines.extend(set.fallback.as_ref().map(|f| ("fallback", f)));
        let mut r = writeln!(
            out,
            "# {key} generation {} ({})",
            set.generation,
            rotation_state(set.state)
        );
        for (role, v) in lines {
            r = r
                .and_then(|()| write!(out, "{role:<9}v{:<4} {}  ", v.version, v.fingerprint))
                .and_then(|()| out.write_all(v.secret.expose()))
                .and_then(|()| out.write_all(b"\n"));
        }
        r
    };
    written.map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
