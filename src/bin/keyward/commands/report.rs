//! `keyward report`: tell the agent that a provider refused a key, for
//! scripts (the client libraries report from their fallback helper).

use std::process::ExitCode;

use keyward::client;
use keyward::proto::{self, keys_client::KeysClient};

use crate::cli::Cli;
use crate::sockets::service_socket;
use crate::text::{key_arg, refused};
use crate::Outcome;

pub(crate) async fn report(cli: &Cli, key: &str, version: u64, status: u32, service: &str, detail: &str) -> Outcome {
    let k = key_arg(key)?;
    let channel = client::connect(&service_socket(cli)).await.map_err(|e| e.to_string())?;
    KeysClient::new(channel)
        .report_auth_failure(proto::AuthFailureReport {
            key: Some(k.to_proto()),
            version,
            status_code: status,
            service: service.to_owned(),
            detail: detail.to_owned(),
        })
        .await
        .map_err(refused)?;
    println!("reported: {key} version {version} refused with HTTP {status}");
    Ok(ExitCode::SUCCESS)
}
