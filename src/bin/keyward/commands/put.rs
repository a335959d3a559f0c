//! `keyward put`: create a key, or replace one with `--overwrite`. The
//! secret comes from stdin or `--file`, never from the command line.

use std::process::ExitCode;

use keyward::proto;
use keyward::wire::timestamp;
use keyward::wire::ToWire;

use crate::cli::{Cli, PutArgs};
use crate::secret_input::read_secret;
use crate::sockets::admin;
use crate::text::{key_arg, refused};
use crate::Outcome;

pub(crate) async fn put(cli: &Cli, args: &PutArgs) -> Outcome {
    let key = key_arg(&args.key)?;
    let expires_at = match &args.expires {
        Some(t) => Some(timestamp(humantime::parse_rfc3339_weak(t).map_err(|e| {
            format!("--expires {t:?}: {e}; use RFC 3339, e.g. 2027-01-31T00:00:00Z")
        })?)),
        None => None,
    };
    let secret = read_secret(&args.key, args.file.as_deref(), args.raw)?;
    if secret.is_empty() {
        return Err(format!(
            "no secret given for {key}: pipe it on stdin (e.g. `printf %s \"$KEY\" | keyward put {key}`) or use --file"
        ));
    }
    let mut admin = admin(cli).await?;
    let request = proto::PutKeyRequest {
        key: Some(key.to_proto()),
        secret: bytes::Bytes::copy_from_slice(&secret),
        overwrite: args.overwrite,
        expires_at,
        expected_generation: args.expected_generation,
    };
    drop(secret);
    let info = admin
        .put_key(request)
        .await
        .map_err(refused)?
        .into_inner()
        .key
        .unwrap_or_default();
    let fp = info.primary.as_ref().map(|p| p.fingerprint.as_str()).unwrap_or("");
    let v = info.primary.as_ref().map_or(0, |p| p.version);
    println!(
        "stored {key}: version {v}, fingerprint {fp}, generation {}",
        info.generation
    );
    Ok(ExitCode::SUCCESS)
}
