//! `keyward delete`: remove a key for good, once confirmed with `--yes`.

use std::process::ExitCode;

use keyward::proto;
use keyward::wire::ToWire;

use crate::cli::Cli;
use crate::sockets::admin;
use crate::text::{key_arg, refused};
use crate::Outcome;

pub(crate) async fn delete(cli: &Cli, key: &str, yes: bool, expected_generation: Option<u64>) -> Outcome {
    let key = key_arg(key)?;
    if !yes {
        return Err(format!(
            "deleting {key} removes its key file for good; add --yes to confirm (nothing was changed)"
        ));
    }
    let mut admin = admin(cli).await?;
    let deleted = admin
        .delete_key(proto::DeleteKeyRequest {
            key: Some(key.to_proto()),
            expected_generation,
        })
        .await
        .map_err(refused)?
        .into_inner()
        .deleted
        .unwrap_or_default();
    println!("deleted {key} (was generation {})", deleted.generation);
    Ok(ExitCode::SUCCESS)
}
