//! Audit anchors in the backend: in fleet mode each agent also publishes
//! its audit chain head ([`AnchorHead`]) to
//! `anchors/<agent_id>/<install_id>/<seq>`, signed as its other values, and
//! `keyward audit verify --fleet` reads them back ([`read_anchors`]) to
//! check a host's log against them.
//!
//! One path per anchor, created once (check-and-set 0) and never
//! rewritten: so the README's agent policy can give the agents' token only
//! `create`, `read` and `list` under `anchors/`, and a thief of that token
//! (a root on the host) cannot delete, overwrite or age out an anchor
//! already published. (One path whose versions are the anchors would need
//! `update`, and any writer could then push the real anchors out of the
//! path's `max_versions`.) The install id in the path keeps a reinstalled
//! host, whose new log starts again at seq 1, from colliding with the
//! anchors of its earlier install.
//!
//! Invariants:
//! - An anchor is trusted only if the member its path names signed it, for
//!   that path and KV version, and its signed head names the path's install
//!   id and seq. Anything else under the agent's folder is refused and
//!   reported by the verify, never checked against.
//! - Publishing is off the fetch path (the agent's anchor task); a failure
//!   only delays the anchor to the next interval.

use super::{sign, Fleet, FORMAT};
use crate::audit::anchor::AnchorHead;
use crate::config::backend::{Member, OpenBaoConfig};
use crate::openbao::KvError;

/// The anchor's path under the mount.
fn anchor_path(prefix: &str, agent_id: &str, install_id: &str, seq: u64) -> String {
    format!("{prefix}/anchors/{agent_id}/{install_id}/{seq:020}")
}

/// The head at `path` (`<mount>/…` in `full_path`), KV version `version`,
/// if member `agent_id` signed it there and it names the path's install id
/// and seq.
fn check_anchor(
    data: &serde_json::Value,
    full_path: &str,
    version: u64,
    members: &[Member],
    agent_id: &str,
    install_id: &str,
    seq: u64,
) -> Result<AnchorHead, String> {
    let text = match (
        data.get("format").and_then(|f| f.as_str()),
        data.get("anchor").and_then(|a| a.as_str()),
    ) {
        (Some(FORMAT), Some(text)) => text,
        _ => return Err("it is not a signed keyward anchor".to_owned()),
    };
    let message = sign::canonical(sign::Kind::Anchor, full_path, "", version, &[text.as_bytes()]);
    sign::verify(data, &message, members, Some(agent_id))?;
    let head: AnchorHead = serde_json::from_str(text).map_err(|e| format!("its signed head does not decode ({e})"))?;
    if head.seq != seq || head.install_id != install_id {
        return Err(format!(
            "its signed head names record {} of install {:?}, not its path's record {seq} of install {install_id:?}",
            head.seq, head.install_id
        ));
    }
    Ok(head)
}

impl Fleet {
    /// Publishes `head` at its own path, signed. `Ok` also when that path
    /// already holds this very head (signed by this agent: a publication
    /// whose answer was lost, or a restart); an error when it holds
    /// anything else (this host's log was rewritten since, or someone
    /// wrote there).
    pub async fn publish_anchor(&self, head: &AnchorHead) -> Result<(), String> {
        let path = anchor_path(&self.cfg.prefix, &self.cfg.agent_id, &head.install_id, head.seq);
        let full = self.full_path(&path);
        let me = [Member {
            name: self.cfg.agent_id.clone(),
            recipient: self.recipient.clone(),
            signing_key: self.signer.verifying_key(),
        }];
        let existing = |entry: crate::openbao::KvEntry| {
            match check_anchor(
                &entry.data,
                &full,
                entry.version,
                &me,
                &self.cfg.agent_id,
                &head.install_id,
                head.seq,
            ) {
                Ok(h) if h.hash == head.hash => Ok(()),
                Ok(h) => Err(format!(
                    "OpenBao already holds this agent's anchor of record {} at {full} with hash {}, and the log now has {}: this host's audit log was rewritten after that anchor was published; run `keyward audit verify --fleet`",
                    head.seq, h.hash, head.hash
                )),
                Err(why) => Err(format!(
                    "{full} already holds a value that is not this agent's anchor ({why}): someone else wrote there; the anchor of record {} cannot be published",
                    head.seq
                )),
            }
        };
        let kv_error = |e: KvError| format!("cannot publish the anchor to OpenBao: {e}");
        if let Some(entry) = self.kv.read(&path).await.map_err(kv_error)? {
            return existing(entry);
        }
        let text = serde_json::to_string(head).expect("a head serializes");
        let mut value = serde_json::json!({ "format": FORMAT, "anchor": text });
        // Created as the path's version 1, never updated.
        self.sign(&mut value, sign::Kind::Anchor, &path, "", 1, &[text.as_bytes()]);
        match self.kv.write(&path, &value, Some(0)).await {
            Ok(_) => Ok(()),
            Err(e @ (KvError::CasMismatch { .. } | KvError::Denied { .. })) => {
                // Written meanwhile (create-only: an existing path is
                // refused as an update), or soft-deleted.
                match self.kv.read(&path).await {
                    Ok(Some(entry)) => existing(entry),
                    _ => Err(kv_error(e)),
                }
            }
            Err(e) => Err(kv_error(e)),
        }
    }
}

/// What `keyward audit verify --fleet` read from the backend.
#[derive(Debug, Default)]
pub struct FleetAnchors {
    /// `<mount>/<prefix>/anchors/<agent_id>/<install_id>`: where they were read.
    pub location: String,
    /// The trusted anchors of the install, by seq.
    pub anchors: Vec<AnchorHead>,
    /// One line per value refused (path, version, why): not trusted.
    pub refused: Vec<String>,
    /// Other installs with anchors under the agent's folder, and how many
    /// each has (not read: another install's log is not this one).
    pub other_installs: Vec<(String, usize)>,
}

/// Logs in to the backend of `cfg` as the agent does and reads every
/// anchor agent `agent_id` published for install `install_id`, trusting
/// only those the member named `agent_id` signed. An error when the
/// backend cannot be read (nothing was checked then), or when `agent_id`
/// is no member of `cfg`.
pub async fn read_anchors(cfg: &OpenBaoConfig, agent_id: &str, install_id: &str) -> Result<FleetAnchors, String> {
    if !cfg.members.iter().any(|m| m.name == agent_id) {
        return Err(format!(
            "agent {agent_id:?} is not a [[backend.member]] of this config: its anchors' signatures cannot be checked; add its entry (`keyward fleet member` on that host) or pass the agent id the log is from (--agent-id)"
        ));
    }
    let kv = super::kv_client(cfg).map_err(|e| e.to_string())?;
    let unreachable = |e: KvError| {
        format!(
            "cannot read the anchors from OpenBao at {} ({e}): the log was NOT checked against the backend",
            cfg.address
        )
    };
    let folder = format!("{}/anchors/{agent_id}", cfg.prefix);
    let mut out = FleetAnchors {
        location: format!("{}/{folder}/{install_id}", cfg.mount),
        ..FleetAnchors::default()
    };
    let mut mine = false;
    for name in kv.list(&folder).await.map_err(unreachable)? {
        match name.strip_suffix('/') {
            Some(install) if install == install_id => mine = true,
            Some(install) => {
                let n = kv
                    .list(&format!("{folder}/{install}"))
                    .await
                    .map_err(unreachable)?
                    .len();
                out.other_installs.push((install.to_owned(), n));
            }
            None => out.refused.push(format!(
                "{}/{folder}/{name}: not an anchor's path (anchors are at …/anchors/AGENT/INSTALL/SEQ)",
                cfg.mount
            )),
        }
    }
    if !mine {
        return Ok(out);
    }
    let dir = format!("{folder}/{install_id}");
    for name in kv.list(&dir).await.map_err(unreachable)? {
        let path = format!("{dir}/{name}");
        let full = format!("{}/{path}", cfg.mount);
        let Some(seq) = name.parse::<u64>().ok().filter(|_| name.len() == 20) else {
            out.refused.push(format!(
                "{full}: not an anchor's path (the last part must be the record's seq in 20 digits)"
            ));
            continue;
        };
        let Some(entry) = kv.read(&path).await.map_err(unreachable)? else {
            out.refused.push(format!(
                "{full}: its current version was deleted or destroyed (not something the agents' policy allows)"
            ));
            continue;
        };
        match check_anchor(
            &entry.data,
            &full,
            entry.version,
            &cfg.members,
            agent_id,
            install_id,
            seq,
        ) {
            Ok(head) => out.anchors.push(head),
            Err(why) => out.refused.push(format!("{full} version {}: {why}", entry.version)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::sign::test_member as member;
    use super::*;
    use crate::store::identity::SigningKey;

    fn signed(key: &SigningKey, signer: &str, full: &str, version: u64, head: &AnchorHead) -> serde_json::Value {
        let text = serde_json::to_string(head).unwrap();
        let mut v = serde_json::json!({ "format": FORMAT, "anchor": text });
        let msg = sign::canonical(sign::Kind::Anchor, full, "", version, &[text.as_bytes()]);
        sign::attach(&mut v, signer, &key.sign(&msg));
        v
    }

    #[test]
    fn an_anchor_is_trusted_only_as_its_member_signed_it_for_its_path() {
        let a = SigningKey::generate();
        let b = SigningKey::generate();
        let members = [member("a", &a), member("b", &b)];
        let head = AnchorHead {
            seq: 7,
            hash: "h7".into(),
            time: "t".into(),
            install_id: "i1".into(),
        };
        let path = anchor_path("keyward", "a", "i1", 7);
        assert_eq!(path, "keyward/anchors/a/i1/00000000000000000007");
        let full = format!("secret/{path}");
        let good = signed(&a, "a", &full, 1, &head);
        assert_eq!(check_anchor(&good, &full, 1, &members, "a", "i1", 7).unwrap(), head);
        // Another version, another path, another seq or install in the path.
        assert!(check_anchor(&good, &full, 2, &members, "a", "i1", 7).is_err());
        let other = format!("secret/{}", anchor_path("keyward", "a", "i1", 8));
        assert!(check_anchor(&good, &other, 1, &members, "a", "i1", 7).is_err());
        let moved = signed(&a, "a", &other, 1, &head);
        let err = check_anchor(&moved, &other, 1, &members, "a", "i1", 8).unwrap_err();
        assert!(err.contains("not its path's record 8"), "{err}");
        // Signed by another member, or by no member.
        let by_b = signed(&b, "b", &full, 1, &head);
        let err = check_anchor(&by_b, &full, 1, &members, "a", "i1", 7).unwrap_err();
        assert!(err.contains("only member \"a\" writes here"), "{err}");
        let mut unsigned = good.clone();
        unsigned.as_object_mut().unwrap().remove("signer");
        assert!(check_anchor(&unsigned, &full, 1, &members, "a", "i1", 7)
            .unwrap_err()
            .contains("not signed"));
        // An edited head.
        let mut edited = good.clone();
        edited["anchor"] = edited["anchor"].as_str().unwrap().replace("h7", "h9").into();
        assert!(check_anchor(&edited, &full, 1, &members, "a", "i1", 7).is_err());
    }
}
