//! `keyward report`: tell the agent that a provider refused a key, or
//! (`--used`) that calls with it succeeded, for scripts (the client
//! libraries report from their fallback helper).
//!
//! It calls the Keys stub itself, over keyward-client's checked channel:
//! `--status` takes any number the agent accepts (a u32 on the wire), which
//! keyward-client's `report_auth_failure` (an HTTP status, u16) would
//! narrow.

use std::process::ExitCode;

use keyward::proto::{self, keys_client::KeysClient};
use keyward::wire::ToWire;

use crate::cli::Cli;
use crate::sockets::{channel, service_socket};
use crate::text::{key_arg, refused};
use crate::Outcome;

pub(crate) async fn report(cli: &Cli, key: &str, version: u64, status: u32, service: &str, detail: &str) -> Outcome {
    let k = key_arg(key)?;
    let channel = channel(&service_socket(cli)).await?;
    KeysClient::new(channel)
        .report_auth_failure(proto::AuthFailureReport {
            key: Some(k.to_proto()),
            version,
            status_code: status,
            service: service.to_owned(),
            detail: detail.to_owned(),
            misdirected_to: String::new(),
        })
        .await
        .map_err(refused)?;
    println!("reported: {key} version {version} refused with HTTP {status}");
    Ok(ExitCode::SUCCESS)
}

/// `keyward report --used`.
pub(crate) async fn report_use(cli: &Cli, key: &str, version: u64, service: &str, successes: u64) -> Outcome {
    let k = key_arg(key)?;
    let channel = channel(&service_socket(cli)).await?;
    KeysClient::new(channel)
        .report_key_use(proto::KeyUseReport {
            key: Some(k.to_proto()),
            version,
            service: service.to_owned(),
            successes,
        })
        .await
        .map_err(refused)?;
    println!("reported: {key} version {version} used successfully ({successes} call(s))");
    Ok(ExitCode::SUCCESS)
}
