//! Each agent's published status: which generation of each key it serves,
//! under `agents/<agent_id>`, expired by KV v2's `delete_version_after`
//! (the TTL) and by its own `updated_at` + `ttl_seconds`.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{sign, unix_ms, Fleet, FORMAT};
use crate::agent::error::ApiError;
use crate::agent::Agent;
use crate::keyset::{KeySetState, RotationState};
use crate::openbao::KvError;
use crate::proto;
use crate::secret::KeyRef;
use crate::wire::ToWire;

/// One key as an agent serves it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct ServedKey {
    /// keyward's generation.
    pub generation: u64,
    /// The backend record's KV version.
    pub backend_version: u64,
    /// steady, staged or promoted.
    pub state: String,
    /// While promoted: what was reported to this agent about the primary,
    /// for the retire gate of the member rotating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<KeyEvidence>,
}

/// What callers reported to one agent about a promoted primary since its
/// promotion (counts only: no caller is named outside its host).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct KeyEvidence {
    /// The primary's version number.
    pub version: u64,
    /// Auth failures reported against it.
    pub failures: u64,
    /// Distinct reporters of those.
    pub reporters: u64,
    /// Auth failures reported against the fallback.
    pub fallback_failures: u64,
    /// Distinct callers that reported using it successfully.
    pub users: u64,
    /// Uids that may report and were served it.
    pub served_reporters: u64,
    /// How long this agent had counted those reports when it published
    /// (ms): since it saw the promotion, or since it started when that was
    /// later (what was reported to an earlier process is gone). Absent in
    /// statuses of agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_ms: Option<u64>,
}

/// The evidence the fleet's other live members published for one promoted
/// primary, summed.
#[derive(Clone, Debug, Default)]
pub struct PeerEvidence {
    /// Auth failures against the primary.
    pub failures: u64,
    /// Their distinct reporters (distinct per agent).
    pub reporters: u64,
    /// Auth failures against the fallback.
    pub fallback_failures: u64,
    /// Callers that reported using the primary.
    pub users: u64,
    /// Uids that may report and were served it.
    pub served_reporters: u64,
    /// The members counted, and how many failure reporters each had.
    pub from: Vec<(String, u64)>,
    /// The members counted that say how long they have counted, and how
    /// long that is as of now.
    pub counted: Vec<(String, Duration)>,
    /// Members seen publishing evidence for this primary whose status is
    /// now missing or expired: what their callers reported is not known.
    pub missing: Vec<String>,
}

impl PeerEvidence {
    /// The members whose callers' reports cannot all be counted yet, one
    /// text each: those that have counted for less than `grace` (each
    /// counts from when it applied the promotion, a little after the
    /// promoting member, or from its start when that was later: what was
    /// reported to it before is gone), and those whose status went missing
    /// after they published evidence.
    pub fn incomplete(&self, grace: Duration) -> Vec<String> {
        let short = self.counted.iter().filter(|(_, c)| *c < grace).map(|(id, counted)| {
            format!(
                "agent {id} has counted them for {} of the {} grace (since it applied the promotion, or since it started if that was later: what was reported to it before is gone)",
                humantime::format_duration(Duration::from_secs(counted.as_secs())),
                humantime::format_duration(grace)
            )
        });
        let missing = self.missing.iter().map(|id| {
            format!(
                "agent {id} published reports about it and its status is now missing (stopped, restarting, or unable to reach OpenBao)"
            )
        });
        short.chain(missing).collect()
    }

    /// The members with failure reporters.
    pub fn reporting_agents(&self) -> Vec<String> {
        self.from
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, n)| format!("{id}: {n}"))
            .collect()
    }
}

/// What an agent publishes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AgentReport {
    /// Always [`FORMAT`].
    pub format: String,
    /// Its id.
    pub agent_id: String,
    /// Its host name.
    pub hostname: String,
    /// Its age recipient.
    pub recipient: String,
    /// Its pid.
    pub pid: u32,
    /// When it published this (unix ms).
    pub updated_at_ms: u64,
    /// How long this counts as live.
    pub ttl_seconds: u64,
    /// It has not synced within its stale_after.
    pub stale: bool,
    /// Records it could not apply.
    pub problems: Vec<String>,
    /// `ENV/NAME` → what it serves.
    pub keys: BTreeMap<String, ServedKey>,
}

impl AgentReport {
    /// Published within its TTL (as of `now`). A status dated ahead of
    /// `now` (its member's clock is ahead) is live only while it is ahead
    /// by less than its TTL, not for as long as it is ahead.
    pub fn live(&self, now: SystemTime) -> bool {
        let updated = UNIX_EPOCH + Duration::from_millis(self.updated_at_ms);
        let ttl = Duration::from_secs(self.ttl_seconds);
        match now.duration_since(updated) {
            Ok(age) => age <= ttl,
            Err(ahead) => ahead.duration() <= ttl,
        }
    }
}

impl Fleet {
    /// Publishes what this agent serves now.
    pub(super) async fn publish(&self, agent: &Agent) -> Result<(), KvError> {
        let now = SystemTime::now();
        let keys = agent
            .store
            .list(None)
            .iter()
            .filter_map(|s| {
                Some((
                    s.key.to_string(),
                    ServedKey {
                        generation: s.generation,
                        backend_version: s.backend_version?,
                        state: s.state.as_str().to_owned(),
                        evidence: (s.state == RotationState::Promoted).then(|| local_evidence(agent, s)),
                    },
                ))
            })
            .collect();
        let (stale, problems) = {
            let h = self.health();
            (self.over_stale_after(h.stale_for(now)), h.problem_lines())
        };
        let report = AgentReport {
            format: FORMAT.to_owned(),
            agent_id: self.cfg.agent_id.clone(),
            hostname: self.hostname.clone(),
            recipient: self.recipient.clone(),
            pid: std::process::id(),
            updated_at_ms: unix_ms(now),
            ttl_seconds: self.cfg.status_ttl.as_secs().max(1),
            stale,
            problems,
            keys,
        };
        let path = self.status_path();
        // Stored as its JSON text, so what was signed is exactly what is
        // read back (no canonical JSON needed).
        let text = serde_json::to_string(&report).map_err(|e| KvError::BadResponse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let make = |version: u64| {
            let mut value = serde_json::json!({ "format": FORMAT, "report": text });
            self.sign(&mut value, sign::Kind::Status, &path, "", version, &[text.as_bytes()]);
            value
        };
        if !self.health().status_metadata_set {
            self.kv
                .write_metadata(&path, Some(self.cfg.status_ttl), Some(4))
                .await?;
            self.health().status_metadata_set = true;
        }
        self.write_latest(&path, make).await?;
        Ok(())
    }

    /// A caller reported a failure or a use of `state`'s key: while it is
    /// promoted, this agent's status (which carries the evidence) is
    /// republished at the next poll.
    pub fn evidence_changed(&self, state: &KeySetState) {
        if state.state == RotationState::Promoted {
            self.health().publish_due = true;
        }
    }

    /// The evidence the other live members published for the promoted
    /// primary of `state`, read now (for the retire's check under the
    /// change lock: the statuses a job's plan read may be a poll old, and
    /// a failure published since would be missed); `Err` says why it
    /// cannot be read.
    pub async fn peer_evidence(&self, agent: &Agent, state: &KeySetState) -> Result<PeerEvidence, String> {
        let reports = self
            .recent_reports(agent, true)
            .await
            .map_err(|e| format!("cannot read the fleet's status from OpenBao: {e}"))?;
        Ok(self.sum_evidence(&reports, state))
    }

    fn sum_evidence(&self, reports: &[AgentReport], state: &KeySetState) -> PeerEvidence {
        let now = SystemTime::now();
        let key = state.key.to_string();
        let mut out = PeerEvidence::default();
        let live: Vec<&AgentReport> = reports
            .iter()
            .filter(|r| r.live(now) && r.agent_id != self.cfg.agent_id)
            .collect();
        for r in &live {
            let Some(e) = r
                .keys
                .get(&key)
                .and_then(|k| k.evidence.as_ref())
                .filter(|e| e.version == state.primary.number)
            else {
                continue;
            };
            out.failures += e.failures;
            out.reporters += e.reporters;
            out.fallback_failures += e.fallback_failures;
            out.users += e.users;
            out.served_reporters += e.served_reporters;
            out.from.push((r.agent_id.clone(), e.reporters));
            if let Some(counted) = e.counted_ms {
                let published = UNIX_EPOCH + Duration::from_millis(r.updated_at_ms);
                let since = now.duration_since(published).unwrap_or_default();
                out.counted
                    .push((r.agent_id.clone(), Duration::from_millis(counted) + since));
            }
        }
        let mut seen = self.evidence_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (version, members) = seen.entry(key).or_default();
        if *version != state.primary.number {
            *version = state.primary.number;
            members.clear();
        }
        members.extend(out.from.iter().map(|(id, _)| id.clone()));
        out.missing = members
            .iter()
            .filter(|id| !live.iter().any(|r| r.agent_id == **id))
            .cloned()
            .collect();
        out
    }

    /// For a rotation job of `state`: the live members that do not serve
    /// its generation yet (named, with what they serve), and the evidence
    /// the others published (when promoted).
    pub async fn key_view(&self, agent: &Agent, state: &KeySetState) -> Result<(Vec<String>, PeerEvidence), String> {
        let reports = self
            .recent_reports(agent, false)
            .await
            .map_err(|e| format!("the fleet status cannot be read: {e}"))?;
        let now = SystemTime::now();
        let key = state.key.to_string();
        let live: Vec<&AgentReport> = reports.iter().filter(|r| r.live(now)).collect();
        let mut lagging = Vec::new();
        if live.is_empty() {
            lagging.push("no live agent has published its status".to_owned());
        }
        for r in live {
            match r.keys.get(&key).map(|k| k.generation) {
                Some(g) if g >= state.generation => {}
                Some(g) => lagging.push(format!("{} (serves generation {g})", r.agent_id)),
                None => lagging.push(format!("{} (does not serve the key)", r.agent_id)),
            }
        }
        let evidence = if state.state == RotationState::Promoted {
            self.sum_evidence(&reports, state)
        } else {
            PeerEvidence::default()
        };
        Ok((lagging, evidence))
    }

    /// The members' statuses, read at most once per poll interval (and at
    /// most once a second) however many jobs look: a job waiting at a gate
    /// looks four times a second, and each read is one request per member.
    /// `now`: read them now whatever the cache holds (a retire's check).
    async fn recent_reports(&self, agent: &Agent, now: bool) -> Result<Arc<Vec<AgentReport>>, KvError> {
        let fresh_for = self.cfg.poll_interval.max(Duration::from_secs(1));
        let mut cache = self.reports_cache.lock().await;
        if let Some((at, reports)) = cache.as_ref().filter(|_| !now) {
            if at.elapsed() < fresh_for {
                return Ok(reports.clone());
            }
        }
        let (reports, _) = self.reports(agent).await?;
        let reports = Arc::new(reports);
        *cache = Some((Instant::now(), reports.clone()));
        Ok(reports)
    }

    /// On shutdown: removes this agent's status, so a fleet rotation stops
    /// waiting for it at once.
    pub(super) async fn withdraw(&self) {
        match self.kv.delete_metadata(&self.status_path()).await {
            Ok(()) => tracing::info!(agent_id = %self.cfg.agent_id, "withdrew this agent's fleet status"),
            Err(e) => tracing::warn!(error = %e, "cannot withdraw this agent's fleet status; it expires after its TTL"),
        }
    }

    /// Every agent's published status signed by the member its path names
    /// (expired ones included, marked not live), sorted by id; and one line
    /// per status refused (unsigned, not by that member, copied from
    /// another path or version), each also audited and alerted once.
    async fn reports(&self, agent: &Agent) -> Result<(Vec<AgentReport>, Vec<String>), KvError> {
        let members = Fleet::members(agent);
        let mut out = Vec::new();
        let mut refused = Vec::new();
        for name in self.kv.list(&self.agents_path()).await? {
            if name.ends_with('/') {
                continue;
            }
            let path = format!("{}/{name}", self.agents_path());
            let Some(entry) = self.kv.read(&path).await? else {
                continue; // expired: KV deleted its only live version
            };
            match self.check_report(&entry.data, &path, &name, entry.version, &members) {
                Ok(r) => out.push(r),
                Err(why) => {
                    self.report_refused(agent, &path, None, entry.version, &why).await;
                    refused.push(format!("{}/{path} version {}: {why}", self.cfg.mount, entry.version));
                }
            }
        }
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok((out, refused))
    }

    /// The report at `agents/<name>` (KV version `version`), if member
    /// `name` signed it for that path and version.
    fn check_report(
        &self,
        data: &serde_json::Value,
        path: &str,
        name: &str,
        version: u64,
        members: &[crate::config::backend::Member],
    ) -> Result<AgentReport, String> {
        let text = match (
            data.get("format").and_then(|f| f.as_str()),
            data.get("report").and_then(|r| r.as_str()),
        ) {
            (Some(FORMAT), Some(text)) => text,
            _ => return Err("it is not a signed keyward status".to_owned()),
        };
        let message = sign::canonical(
            sign::Kind::Status,
            &self.full_path(path),
            "",
            version,
            &[text.as_bytes()],
        );
        sign::verify(data, &message, members, Some(name))?;
        let report: AgentReport =
            serde_json::from_str(text).map_err(|e| format!("its signed report does not decode ({e})"))?;
        if report.agent_id != name || report.format != FORMAT {
            return Err(format!(
                "its signed report names agent {:?}, not {name:?}",
                report.agent_id
            ));
        }
        Ok(report)
    }

    /// `GetFleetStatus`.
    pub async fn fleet_status(&self, agent: &Agent, key: Option<&KeyRef>) -> Result<proto::FleetStatus, ApiError> {
        let (reports, refused) = self
            .reports(agent)
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot read the fleet's status from OpenBao: {e}")))?;
        let now = SystemTime::now();
        let agents = reports
            .into_iter()
            .map(|r| proto::FleetAgent {
                live: r.live(now),
                agent_id: r.agent_id,
                hostname: r.hostname,
                recipient: r.recipient,
                updated_at: Some(crate::wire::timestamp(
                    UNIX_EPOCH + Duration::from_millis(r.updated_at_ms),
                )),
                ttl_seconds: r.ttl_seconds,
                keys: r
                    .keys
                    .into_iter()
                    .filter(|(k, _)| key.is_none_or(|want| *k == want.to_string()))
                    .filter_map(|(k, served)| {
                        let parsed: KeyRef = k.parse().ok()?;
                        Some(proto::FleetKey {
                            key: Some(parsed.to_proto()),
                            generation: served.generation,
                            backend_version: served.backend_version,
                            state: state_proto(&served.state) as i32,
                        })
                    })
                    .collect(),
                stale: r.stale,
                problems: r.problems,
            })
            .collect();
        let (backend_version, generation) = match key.and_then(|k| agent.store.get(k)) {
            Some(s) => (s.backend_version.unwrap_or(0), s.generation),
            None => (0, 0),
        };
        let lease = match key {
            None => None,
            Some(k) => self
                .lease_of(agent, k)
                .await
                .map_err(|e| ApiError::Unavailable(format!("cannot read the rotation lease of {k} from OpenBao: {e}")))?
                .map(|l| proto::RotationLease {
                    live: l.live(now),
                    holder: l.holder.clone(),
                    expires_at: Some(crate::wire::timestamp(l.expires())),
                    released: l.released,
                    trigger: l.trigger.as_str().to_owned(),
                }),
        };
        Ok(proto::FleetStatus {
            agents,
            backend_version,
            generation,
            refused,
            lease,
        })
    }
}

fn state_proto(s: &str) -> proto::RotationState {
    match s {
        "staged" => proto::RotationState::Staged,
        "promoted" => proto::RotationState::Promoted,
        _ => proto::RotationState::Steady,
    }
}

/// What was reported to this agent about the promoted primary of `state`.
fn local_evidence(agent: &Agent, state: &KeySetState) -> KeyEvidence {
    let (evidence, fallback_failures) = agent.failures.since_promotion(state);
    KeyEvidence {
        version: state.primary.number,
        failures: evidence.failures,
        reporters: evidence.reporters.len() as u64,
        fallback_failures,
        users: agent.uses.users(&state.key, state.primary.number).len() as u64,
        served_reporters: agent.served.served_reporters(state),
        counted_ms: Some(u64::try_from(agent.failures.counting_for(state).as_millis()).unwrap_or(u64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member counting for less than the grace, and one whose status went
    /// missing, are named; one that counted the whole grace is not.
    #[test]
    fn members_short_of_the_grace_or_missing_are_incomplete() {
        let peers = PeerEvidence {
            counted: vec![
                ("host-b".into(), Duration::from_millis(3400)),
                ("host-c".into(), Duration::from_secs(30)),
            ],
            missing: vec!["host-d".into()],
            ..PeerEvidence::default()
        };
        let texts = peers.incomplete(Duration::from_secs(30));
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].starts_with("agent host-b has counted them for 3s of the 30s grace"),
            "{texts:?}"
        );
        assert!(
            texts[1].starts_with("agent host-d published reports") && texts[1].contains("missing"),
            "{texts:?}"
        );
        assert!(peers
            .incomplete(Duration::from_secs(3))
            .iter()
            .all(|t| !t.contains("host-b")));
    }

    /// A status is live within its TTL of now, on either side: one dated
    /// an hour ahead (its member's clock, or its signer) is not.
    #[test]
    fn a_status_dated_ahead_is_live_only_within_its_ttl() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |t: SystemTime| AgentReport {
            format: FORMAT.to_owned(),
            agent_id: "b".into(),
            hostname: "host-b".into(),
            recipient: String::new(),
            pid: 1,
            updated_at_ms: unix_ms(t),
            ttl_seconds: 30,
            stale: false,
            problems: Vec::new(),
            keys: BTreeMap::new(),
        };
        assert!(at(now - Duration::from_secs(29)).live(now));
        assert!(!at(now - Duration::from_secs(31)).live(now));
        assert!(at(now + Duration::from_secs(29)).live(now));
        assert!(!at(now + Duration::from_secs(3600)).live(now));
    }

    /// An agent's status says how long it has counted, and one from an
    /// agent that predates the field still decodes (counted as the whole
    /// time).
    #[test]
    fn evidence_says_how_long_it_was_counted() {
        let e = KeyEvidence {
            version: 2,
            counted_ms: Some(1500),
            ..KeyEvidence::default()
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"counted_ms\":1500"), "{text}");
        let old: KeyEvidence = serde_json::from_str(
            r#"{"version":2,"failures":0,"reporters":0,"fallback_failures":0,"users":1,"served_reporters":1}"#,
        )
        .unwrap();
        assert_eq!(old.counted_ms, None);
    }
}
