//! `[audit] retain`: deleting the oldest sealed segments.
//!
//! Invariant: a segment is deleted only after the record of its deletion
//! (`audit_segment_deleted`, naming its seq range and last hash) is on
//! disk (synced, in either durability mode). A crash between the two leaves a record of a deletion that did
//! not happen (the segment is deleted again next time), never a missing
//! segment without its record; `keyward audit verify` accepts exactly the
//! prefix those records explain.

use std::fs::File;
use std::path::Path;
use std::time::SystemTime;

use super::kind::{Event, Outcome};
use super::line::{check_line, AuditEvent};
use super::segments::{deleted_detail, expired, last_line, list_segments, Deleted, Retain};
use super::{Audit, AuditError};

impl Audit {
    /// Deletes the sealed segments `retain` no longer keeps, oldest first,
    /// each after its `audit_segment_deleted` record is written. Stops at
    /// the first record that cannot be written (nothing is deleted without
    /// its record). Runs its file work on tokio's blocking pool.
    pub async fn enforce_retention(&self, retain: Retain) -> Result<Vec<Deleted>, AuditError> {
        let live = self.path.clone();
        let io_err = |e| AuditError::io(&live, e);
        let listed = {
            let live = live.clone();
            tokio::task::spawn_blocking(move || list_segments(&live))
                .await
                .map_err(|e| io_err(std::io::Error::other(e)))?
                .map_err(io_err)?
        };
        let mut deleted = Vec::new();
        for seg in &listed[..expired(&listed, retain, SystemTime::now())] {
            let path = seg.path.clone();
            let hash = match tokio::task::spawn_blocking(move || last_hash(&path)).await {
                Ok(Ok(hash)) => hash,
                Ok(Err(e)) => {
                    tracing::error!(segment = %seg.path.display(), error = %e,
                        "cannot read the last record of an expired audit segment; keeping it");
                    break;
                }
                Err(e) => return Err(io_err(std::io::Error::other(e))),
            };
            let detail = deleted_detail(seg.first, seg.last, &hash, &seg.path, retain);
            let seq = self
                .record(AuditEvent {
                    detail: Some(detail.clone()),
                    ..AuditEvent::new(Event::AuditSegmentDeleted, Outcome::Ok)
                })
                .await?;
            // On disk before the segment goes: a power loss must not keep
            // the deletion and lose its record.
            self.inner.wait_durable(seq).await?;
            let path = seg.path.clone();
            match tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await {
                Ok(Ok(())) => {
                    tracing::info!(segment = %seg.path.display(), first = seg.first, last = seg.last,
                        "audit segment deleted by [audit] retain");
                    deleted.push(Deleted {
                        path: seg.path.clone(),
                        first: seg.first,
                        last: seg.last,
                    });
                }
                Ok(Err(e)) => {
                    tracing::error!(segment = %seg.path.display(), error = %e, "could not delete an expired audit segment");
                    self.record(AuditEvent {
                        detail: Some(format!("{detail}: not deleted after all ({e})")),
                        ..AuditEvent::new(Event::AuditSegmentDeleted, Outcome::Failed)
                    })
                    .await?;
                    break;
                }
                Err(e) => return Err(io_err(std::io::Error::other(e))),
            }
        }
        Ok(deleted)
    }
}

/// The hash of the last record in the segment at `path` (not checked
/// against the key: the verifier checks it against the `prev` of the next
/// segment's first record).
fn last_hash(path: &Path) -> std::io::Result<String> {
    let file = File::open(path)?;
    let line = last_line(&file)?;
    match check_line(&[0; 32], &line) {
        Ok(rec) => Ok(rec.hash),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "its last line is not an audit record",
        )),
    }
}
