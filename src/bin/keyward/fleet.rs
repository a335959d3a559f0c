//! `keyward fleet status|reseal` and the fleet wait of `keyward rotate
//! --fleet`.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use keyward::keyset::from_timestamp;
use keyward::proto::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::cli::{Cli, FleetCommand};
use crate::{admin, key_arg, refused, state_name, Outcome};

pub async fn run(cli: &Cli, command: &FleetCommand) -> Outcome {
    match command {
        FleetCommand::Status { key, json } => status(cli, key.as_deref(), *json).await,
        FleetCommand::Reseal { env } => reseal(cli, env.as_deref()).await,
    }
}

async fn fetch(admin: &mut AdminClient<Channel>, key: Option<&proto::KeyRef>) -> Result<proto::FleetStatus, String> {
    admin
        .get_fleet_status(proto::FleetStatusRequest { key: key.cloned() })
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

fn updated(a: &proto::FleetAgent) -> String {
    a.updated_at
        .as_ref()
        .and_then(from_timestamp)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or("?".to_owned(), |d| format!("{}s ago", d.as_secs()))
}

fn key_name(k: &proto::FleetKey) -> String {
    k.key
        .as_ref()
        .map_or(String::new(), |k| format!("{}/{}", k.environment, k.name))
}

async fn status(cli: &Cli, key: Option<&str>, json: bool) -> Outcome {
    let key = key.map(key_arg).transpose()?;
    let mut admin = admin(cli).await?;
    let s = fetch(&mut admin, key.as_ref().map(|k| k.to_proto()).as_ref()).await?;
    if json {
        let agents: Vec<serde_json::Value> = s
            .agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "agent_id": a.agent_id, "hostname": a.hostname, "recipient": a.recipient,
                    "live": a.live, "stale": a.stale, "updated": updated(a), "ttl_seconds": a.ttl_seconds,
                    "problems": a.problems,
                    "keys": a.keys.iter().map(|k| serde_json::json!({
                        "key": key_name(k), "generation": k.generation,
                        "backend_version": k.backend_version, "state": state_name(k.state),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "agents": agents }));
        return Ok(ExitCode::SUCCESS);
    }
    if s.agents.is_empty() {
        println!("no agent has published its status (each does within a few seconds of starting)");
    }
    for a in &s.agents {
        println!(
            "{} ({}) {}{}, updated {}, recipient {}",
            a.agent_id,
            a.hostname,
            if a.live { "live" } else { "GONE (past its TTL)" },
            if a.stale {
                ", STALE (not in sync with OpenBao)"
            } else {
                ""
            },
            updated(a),
            a.recipient
        );
        for k in &a.keys {
            println!(
                "  {} generation {} ({}, record version {})",
                key_name(k),
                k.generation,
                state_name(k.state),
                k.backend_version
            );
        }
        for p in &a.problems {
            println!("  PROBLEM {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn reseal(cli: &Cli, env: Option<&str>) -> Outcome {
    let mut admin = admin(cli).await?;
    let r = admin
        .reseal_fleet(proto::ResealFleetRequest {
            environment: env.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    for k in &r.resealed {
        let name = k
            .key
            .as_ref()
            .map_or(String::new(), |k| format!("{}/{}", k.environment, k.name));
        println!("resealed {name} (generation {})", k.generation);
    }
    println!("{} key(s) re-encrypted to the current recipients", r.resealed.len());
    Ok(ExitCode::SUCCESS)
}

/// Waits until every live agent serves `key` at `generation` or later.
/// `Err` with the laggards when `limit` passes first.
pub async fn wait_for_fleet(
    admin: &mut AdminClient<Channel>,
    key: &proto::KeyRef,
    generation: u64,
    limit: Duration,
    poll: Duration,
) -> Result<usize, String> {
    let deadline = Instant::now() + limit;
    let mut shown = String::new();
    loop {
        let s = fetch(admin, Some(key)).await?;
        let live: Vec<&proto::FleetAgent> = s.agents.iter().filter(|a| a.live).collect();
        let laggards: Vec<String> = live
            .iter()
            .filter_map(|a| {
                let served = a.keys.first().map(|k| k.generation);
                match served {
                    Some(g) if g >= generation => None,
                    Some(g) => Some(format!("{} (serves generation {g})", a.agent_id)),
                    None => Some(format!("{} (does not serve the key)", a.agent_id)),
                }
            })
            .collect();
        if !live.is_empty() && laggards.is_empty() {
            return Ok(live.len());
        }
        let text = if live.is_empty() {
            "no live agent has published its status".to_owned()
        } else {
            laggards.join(", ")
        };
        if Instant::now() >= deadline {
            return Err(text);
        }
        if text != shown {
            println!("      waiting for: {text}");
            shown = text;
        }
        tokio::time::sleep(poll).await;
    }
}
