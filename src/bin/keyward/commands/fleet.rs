//! `keyward fleet status|reseal` and the fleet wait of `keyward rotate
//! --fleet`.

use std::process::ExitCode;
use std::time::SystemTime;

use keyward::proto::{self, admin_client::AdminClient};
use keyward::wire::from_timestamp;
use tonic::transport::Channel;

use crate::cli::{Cli, FleetCommand};
use crate::sockets::admin;
use crate::text::{key_arg, key_name, refused, rfc3339, state_name, time_text};
use crate::Outcome;
use keyward::wire::ToWire;

pub(crate) async fn run(cli: &Cli, command: &FleetCommand) -> Outcome {
    match command {
        FleetCommand::Status { key, json } => status(cli, key.as_deref(), *json).await,
        FleetCommand::Reseal { env } => reseal(cli, env.as_deref()).await,
        FleetCommand::Member => member(cli).await,
        FleetCommand::Join => {
            print!("{JOIN}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `keyward fleet join`: the steps.
const JOIN: &str = "\
Adding an agent to the fleet:
  1. On the new host: `keyward init` (creates its identity and its signing key),
     then configure [backend] kind = \"openbao\" with its agent_id and start keywardd.
  2. On the new host: `keyward fleet member` prints its [[backend.member]] entry.
  3. Paste that entry into the config of every agent of the fleet (the new one too).
  4. Reload every agent (`systemctl reload keywardd`, or SIGHUP): the member list
     is live; from then on they apply what the new agent signs.
  5. On any agent: `keyward fleet reseal` re-encrypts every record to the members,
     so the new agent can read them; `keyward fleet status` shows it live, and its
     problems cleared.
Removing an agent: delete its entry from every config and reload. What it signs
from then on is refused; records it signed before stay served where they were
applied until replaced: run `keyward fleet reseal` on a remaining member (it
re-signs every record and stops encrypting to the removed one), then rotate the
keys it could read.
";

async fn member(cli: &Cli) -> Outcome {
    let mut admin = admin(cli).await?;
    let status = admin
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let Some(b) = status.backend.filter(|b| b.kind == "openbao") else {
        return Err(
            "this agent is not in fleet mode ([backend] kind = \"openbao\"): it has no member entry".to_owned(),
        );
    };
    println!("[[backend.member]]");
    println!("name = {:?}", b.agent_id);
    println!("recipient = {:?}", b.recipient);
    println!("signing_key = {:?}", b.signing_key);
    if !b.listed {
        eprintln!("(this agent is not yet in its own [[backend.member]] list: paste the entry above into every agent's config, this one's too, and reload them)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(admin: &mut AdminClient<Channel>, key: Option<&proto::KeyRef>) -> Result<proto::FleetStatus, String> {
    admin
        .get_fleet_status(proto::FleetStatusRequest { key: key.cloned() })
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

/// Whole seconds since the agent last published its status, as of `now`;
/// `None` without a time (or with one after `now`).
fn updated_seconds_ago(a: &proto::FleetAgent, now: SystemTime) -> Option<u64> {
    a.updated_at
        .as_ref()
        .and_then(from_timestamp)
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs())
}

fn updated(a: &proto::FleetAgent) -> String {
    updated_seconds_ago(a, SystemTime::now()).map_or("?".to_owned(), |s| format!("{s}s ago"))
}

/// One agent of `keyward fleet status --json`. Times are data, not text:
/// `updated_at` is RFC 3339 (as in `keyward status --json`) and
/// `updated_seconds_ago` a number (null when unknown).
fn agent_json(a: &proto::FleetAgent, now: SystemTime) -> serde_json::Value {
    serde_json::json!({
        "agent_id": a.agent_id, "hostname": a.hostname, "recipient": a.recipient,
        "live": a.live, "stale": a.stale,
        "updated_at": rfc3339(a.updated_at.as_ref()),
        "updated_seconds_ago": updated_seconds_ago(a, now),
        "ttl_seconds": a.ttl_seconds,
        "problems": a.problems,
        "keys": a.keys.iter().map(|k| serde_json::json!({
            "key": key_name(k.key.as_ref()), "generation": k.generation,
            "backend_version": k.backend_version, "state": state_name(k.state),
        })).collect::<Vec<_>>(),
    })
}

async fn status(cli: &Cli, key: Option<&str>, json: bool) -> Outcome {
    let key = key.map(key_arg).transpose()?;
    let mut admin = admin(cli).await?;
    let s = fetch(&mut admin, key.as_ref().map(|k| k.to_proto()).as_ref()).await?;
    if json {
        let now = SystemTime::now();
        let agents: Vec<serde_json::Value> = s.agents.iter().map(|a| agent_json(a, now)).collect();
        let lease = s.lease.as_ref().map(|l| {
            serde_json::json!({
                "holder": l.holder, "live": l.live, "released": l.released,
                "expires_at": rfc3339(l.expires_at.as_ref()), "trigger": l.trigger,
            })
        });
        println!(
            "{}",
            serde_json::json!({ "agents": agents, "refused": s.refused, "lease": lease })
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(l) = &s.lease {
        let state = if l.live {
            format!(
                "held by {} until {} ({} rotation under way)",
                l.holder,
                time_text(l.expires_at.as_ref()),
                l.trigger
            )
        } else if l.released {
            format!("free (last held by {}, released)", l.holder)
        } else {
            format!(
                "free (held by {} until {}, not released: a member takes an unfinished rotation over)",
                l.holder,
                time_text(l.expires_at.as_ref())
            )
        };
        println!("rotation lease: {state}");
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
                key_name(k.key.as_ref()),
                k.generation,
                state_name(k.state),
                k.backend_version
            );
        }
        for p in &a.problems {
            println!("  PROBLEM {p}");
        }
    }
    for r in &s.refused {
        println!("REFUSED {r}");
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
        println!("resealed {} (generation {})", key_name(k.key.as_ref()), k.generation);
    }
    println!("{} key(s) re-encrypted to the current recipients", r.resealed.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn agent_json_gives_times_as_data() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let agent = proto::FleetAgent {
            agent_id: "a1".into(),
            updated_at: Some(keyward::wire::timestamp(now - Duration::from_secs(5))),
            keys: vec![proto::FleetKey {
                key: Some(proto::KeyRef {
                    environment: "prod".into(),
                    name: "billing".into(),
                }),
                generation: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let doc = agent_json(&agent, now);
        assert_eq!(doc["updated_seconds_ago"], 5, "{doc}");
        assert_eq!(doc["updated_at"], "2027-01-15T07:59:55Z", "{doc}");
        assert!(doc.get("updated").is_none(), "no \"5s ago\" text: {doc}");
        assert_eq!(doc["keys"][0]["key"], "prod/billing", "{doc}");

        let unknown = agent_json(&proto::FleetAgent::default(), now);
        assert!(
            unknown["updated_at"].is_null() && unknown["updated_seconds_ago"].is_null(),
            "{unknown}"
        );
    }
}
