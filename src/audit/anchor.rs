//! Anchors: the chain head (seq, hash, time, install id) as the agent
//! publishes it outside the host, and the check of a log against anchors
//! a receiver kept (`keyward audit verify --anchors FILE`).
//!
//! What an anchor proves: the install's log once held record `seq` with
//! that `hash`, and every record before it as chained to it. A log that
//! lacks the anchored record, or holds another hash at its seq, was
//! rewritten or cut, even if it verifies on its own (a local root with the
//! install key can recompute a whole chain and its head file, but not the
//! anchors already sent). What it does not prove: anything written after
//! the last anchor (up to one `anchor_interval` of records can still be
//! rewritten undetected), nor that the receiver kept every anchor.

use std::collections::BTreeMap;

use hmac::Mac;

use super::line::hmac;

/// One published head.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnchorHead {
    /// The seq of the last record written.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When it was published (RFC 3339).
    #[serde(default)]
    pub time: String,
    /// Which install (see [`install_id`]).
    #[serde(default)]
    pub install_id: String,
}

/// A public name of the install, derived from its audit key (so it is the
/// same for every agent start and says nothing about the key): 16 hex
/// digits of HMAC(key, "keyward install id").
pub fn install_id(key: &[u8; 32]) -> String {
    let mut mac = hmac(key);
    mac.update(b"keyward install id");
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// Reads anchors stored one JSON object per line (blank lines skipped).
/// The error names the line.
pub fn parse_anchors(text: &str) -> Result<Vec<AnchorHead>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                format!(
                    "line {} is not an anchor ({e}): each line must be a JSON object with at least \"seq\" and \"hash\"",
                    i + 1
                )
            })
        })
        .collect()
}

/// What an anchor check found wrong (or worth a note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnchorFinding {
    /// The log holds the anchored seq with another hash, or not at all
    /// although it holds records around it: the history was rewritten.
    Rewritten {
        /// The anchored seq.
        seq: u64,
        /// Its anchored hash.
        anchored: String,
        /// The log's hash at that seq, if it has a valid record there.
        found: Option<String>,
    },
    /// The anchor is past the log's last record: the tail was cut.
    BeyondEnd {
        /// The anchored seq.
        seq: u64,
        /// The log's last seq.
        last: u64,
    },
    /// The anchor is before the first retained record (deleted by
    /// retention): it cannot be checked.
    BeforeStart {
        /// The anchored seq.
        seq: u64,
    },
    /// The anchor is of another install.
    OtherInstall {
        /// The anchored seq.
        seq: u64,
        /// The install it names.
        install_id: String,
    },
}

/// Checks anchors against the records as the verifier reads them: give it
/// every record's seq and hash ([`AnchorCheck::observe`]), then the range
/// read ([`AnchorCheck::finish`]).
#[derive(Default)]
pub struct AnchorCheck {
    /// Anchored hashes by seq, with what the log had there once seen.
    wanted: BTreeMap<u64, (String, Option<String>)>,
    others: Vec<AnchorFinding>,
}

impl AnchorCheck {
    /// The anchors of install `install_id` (others are only noted).
    pub fn new(anchors: &[AnchorHead], install_id: &str) -> AnchorCheck {
        let mut check = AnchorCheck::default();
        for a in anchors {
            if !a.install_id.is_empty() && a.install_id != install_id {
                check.others.push(AnchorFinding::OtherInstall {
                    seq: a.seq,
                    install_id: a.install_id.clone(),
                });
                continue;
            }
            check.wanted.insert(a.seq, (a.hash.clone(), None));
        }
        check
    }

    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty() && self.others.is_empty()
    }

    /// A record of the log (only those whose MAC verified).
    pub fn observe(&mut self, seq: u64, hash: &str) {
        if let Some((_, found)) = self.wanted.get_mut(&seq) {
            if found.is_none() {
                *found = Some(hash.to_owned());
            }
        }
    }

    /// The findings, given the log's first and last seq (0, 0: empty).
    pub fn finish(self, first: u64, last: u64) -> Vec<AnchorFinding> {
        let mut out = self.others;
        for (seq, (anchored, found)) in self.wanted {
            match found {
                Some(h) if h == anchored => {}
                found if seq > last => {
                    debug_assert!(found.is_none());
                    out.push(AnchorFinding::BeyondEnd { seq, last });
                }
                None if seq < first => out.push(AnchorFinding::BeforeStart { seq }),
                found => out.push(AnchorFinding::Rewritten { seq, anchored, found }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64, hash: &str) -> AnchorHead {
        AnchorHead {
            seq,
            hash: hash.into(),
            time: String::new(),
            install_id: "me".into(),
        }
    }

    #[test]
    fn anchors_are_matched_by_seq_and_hash() {
        let anchors = [head(3, "aa"), head(5, "bb"), head(9, "cc"), head(1, "zz")];
        let mut check = AnchorCheck::new(&anchors, "me");
        for (seq, hash) in [(2, "x"), (3, "aa"), (4, "y"), (5, "OTHER"), (6, "z")] {
            check.observe(seq, hash);
        }
        let found = check.finish(2, 6);
        assert_eq!(
            found,
            [
                AnchorFinding::BeforeStart { seq: 1 },
                AnchorFinding::Rewritten {
                    seq: 5,
                    anchored: "bb".into(),
                    found: Some("OTHER".into())
                },
                AnchorFinding::BeyondEnd { seq: 9, last: 6 },
            ]
        );
    }

    #[test]
    fn an_anchored_seq_missing_inside_the_range_is_a_rewrite() {
        let mut check = AnchorCheck::new(&[head(4, "aa")], "me");
        check.observe(3, "x");
        check.observe(5, "y");
        assert_eq!(
            check.finish(1, 5),
            [AnchorFinding::Rewritten {
                seq: 4,
                anchored: "aa".into(),
                found: None
            }]
        );
    }

    #[test]
    fn anchors_of_another_install_are_set_aside() {
        let mut other = head(2, "aa");
        other.install_id = "them".into();
        let check = AnchorCheck::new(&[other], "me");
        assert_eq!(
            check.finish(1, 5),
            [AnchorFinding::OtherInstall {
                seq: 2,
                install_id: "them".into()
            }]
        );
    }

    #[test]
    fn anchors_parse_from_json_lines_and_errors_name_the_line() {
        let text = "{\"seq\":1,\"hash\":\"aa\",\"time\":\"t\",\"install_id\":\"i\",\"extra\":1}\n\n{\"seq\":2,\"hash\":\"bb\"}\n";
        let parsed = parse_anchors(text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed[1].seq, parsed[1].hash.as_str()), (2, "bb"));
        let err = parse_anchors("{\"seq\":1,\"hash\":\"aa\"}\nnope\n").unwrap_err();
        assert!(err.starts_with("line 2 "), "{err}");
    }

    #[test]
    fn the_install_id_is_stable_and_not_the_key() {
        let a = install_id(&[7; 32]);
        assert_eq!(a, install_id(&[7; 32]));
        assert_ne!(a, install_id(&[8; 32]));
        assert_eq!(a.len(), 16);
    }
}
