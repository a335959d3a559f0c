//! `keyward status`: the agent's own state, over the admin socket.

use std::process::ExitCode;
use std::time::SystemTime;

use keyward::proto;
use keyward::wire::from_timestamp;

use crate::cli::Cli;
use crate::sockets::admin;
use crate::text::{refused, rfc3339};
use crate::Outcome;

pub(crate) async fn status(cli: &Cli, json: bool) -> Outcome {
    let mut admin = admin(cli).await?;
    let s = admin
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let uptime = s
        .started_at
        .as_ref()
        .and_then(from_timestamp)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(crate::text::duration_text)
        .unwrap_or_default();
    let opened = |a: &proto::OpenAlert| rfc3339(a.opened_at.as_ref()).unwrap_or_default();
    // Each scheduled key's next rotation.
    let scheduled: Vec<(String, String, String)> = admin
        .list_keys(proto::ListKeysRequest::default())
        .await
        .map_err(refused)?
        .into_inner()
        .keys
        .iter()
        .filter(|k| !k.schedule.is_empty())
        .map(|k| {
            (
                crate::text::key_name(k.key.as_ref()),
                rfc3339(k.next_rotation.as_ref()).unwrap_or_default(),
                k.schedule.clone(),
            )
        })
        .collect();
    if json {
        let alerts: Vec<serde_json::Value> = s
            .open_alerts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "dedup_key": a.dedup_key, "signal": a.signal, "severity": a.severity,
                    "key": a.key, "summary": a.summary, "opened_at": opened(a), "repeats": a.repeats,
                })
            })
            .collect();
        let sinks: Vec<serde_json::Value> = s
            .sinks
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name, "kind": k.kind, "delivered": k.delivered, "failed": k.failed,
                    "dropped": k.dropped, "retries": k.retries, "queued": k.queued,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "version": s.version, "pid": s.pid, "uptime": uptime,
                "service_socket": s.service_socket, "admin_socket": s.admin_socket,
                "store_dir": s.store_dir, "audit_file": s.audit_file,
                "environments": s.environments, "keys": s.keys, "connections": s.connections,
                "audit_sequence": s.audit_sequence, "audit_head": s.audit_head, "audit_error": s.audit_error,
                "memory_locked": s.memory_locked, "agent_recipient": s.agent_recipient,
                "open_alerts": alerts, "sinks": sinks,
                "scheduled_rotations": scheduled.iter().map(|(key, next, schedule)| serde_json::json!({
                    "key": key, "next_rotation": next, "schedule": schedule,
                })).collect::<Vec<_>>(),
                "backend": s.backend.as_ref().map(|b| serde_json::json!({
                    "kind": b.kind, "address": b.address, "mount": b.mount, "prefix": b.prefix,
                    "agent_id": b.agent_id,
                    "last_sync_at": b.last_sync_at.as_ref().and_then(from_timestamp)
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "stale_seconds": b.stale_seconds, "stale": b.stale, "last_error": b.last_error,
                    "problems": b.problems,
                })),
            })
        );
    } else {
        println!("keywardd {} (pid {}), up {uptime}", s.version, s.pid);
        println!("  service socket  {}", s.service_socket);
        println!("  admin socket    {}", s.admin_socket);
        println!(
            "  store           {} ({} keys; environments {})",
            s.store_dir,
            s.keys,
            s.environments.join(", ")
        );
        println!("  audit           {} (seq {})", s.audit_file, s.audit_sequence);
        if !s.audit_error.is_empty() {
            println!("  AUDIT ERROR     {}", s.audit_error);
        }
        println!("  connections     {}", s.connections);
        println!("  memory locked   {}", if s.memory_locked { "yes" } else { "no" });
        println!("  recipient       {}", s.agent_recipient);
        if let Some(b) = s.backend.as_ref().filter(|b| b.kind != "local") {
            println!(
                "  backend         {} {} (mount {}, prefix {}), agent id {}",
                b.kind, b.address, b.mount, b.prefix, b.agent_id
            );
            let synced = rfc3339(b.last_sync_at.as_ref()).unwrap_or_else(|| "never".into());
            println!(
                "  last sync       {synced} ({} ago){}",
                crate::text::duration_text(std::time::Duration::from_secs(b.stale_seconds)),
                if b.stale { ": STALE, serving the local copy" } else { "" }
            );
            if !b.last_error.is_empty() {
                println!("  backend error   {}", b.last_error);
            }
            for p in &b.problems {
                println!("  backend problem {p}");
            }
        }
        for k in &s.sinks {
            println!(
                "  sink            {} ({}): {} delivered, {} failed, {} dropped, {} queued",
                k.name, k.kind, k.delivered, k.failed, k.dropped, k.queued
            );
        }
        for (key, next, schedule) in &scheduled {
            println!("  next rotation   {key} at {next} ({schedule})");
        }
        println!("  open alerts     {}", s.open_alerts.len());
        for a in &s.open_alerts {
            println!(
                "    {} {} since {}: {}",
                a.severity.to_uppercase(),
                a.signal,
                opened(a),
                a.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
