//! The check of the audit log: its owner and mode, and its hash chain,
//! verified with the install key as `keyward audit verify` would.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use keyward::store::identity::InstallKey;

use super::files::{inspect, user_name};
use super::Finding;

/// The audit file's permissions and hash chain (verified with
/// `install_key`, if it loaded); the time of its last record.
pub(super) fn check_audit(
    file: &Path,
    owner: u32,
    install_key: Option<&InstallKey>,
    out: &mut Vec<Finding>,
) -> Option<SystemTime> {
    let m = inspect("audit", file, "start the agent: it creates the log", out)?;
    let mode = m.mode() & 0o7777;
    if !m.file_type().is_file() {
        out.push(Finding::fail(
            "audit",
            format!("{} is not a regular file", file.display()),
            format!("move {} away and restart keywardd", file.display()),
        ));
        return None;
    }
    if m.uid() != owner || mode & 0o200 == 0 {
        out.push(Finding::fail(
            "audit",
            format!(
                "{} is not writable by {} (owner {}, mode {mode:04o})",
                file.display(),
                user_name(owner),
                user_name(m.uid())
            ),
            format!(
                "chown {} {} && chmod u+w {}",
                user_name(owner),
                file.display(),
                file.display()
            ),
        ));
    }
    // The agent's own rule (audit::writer): any group or other bit is
    // warned about, and the agent keeps running; so a warning here too.
    if mode & 0o077 != 0 {
        out.push(Finding::warn(
            "audit",
            format!(
                "{} is open to group or others (mode {mode:04o}, not 0600)",
                file.display()
            ),
            format!("chmod 600 {}", file.display()),
        ));
    }
    let Some(key) = install_key else {
        out.push(Finding::warn(
            "audit",
            "hash chain not verified: the install key did not load",
            "fix the install key (see above), then run keyward doctor again",
        ));
        return last_record_time(file);
    };
    match keyward::audit::verify(file, &key.audit_key()) {
        Err(e) => out.push(Finding::fail(
            "audit",
            e.to_string(),
            "run keyward doctor as the agent's user",
        )),
        Ok(report) => match report.problems.first() {
            Some(first) => out.push(Finding::fail(
                "audit",
                format!(
                    "hash chain broken: {} problem(s); first bad: {first}",
                    report.problems.len() as u64 + report.problems_omitted
                ),
                format!(
                    "the log was changed after it was written: keep a copy for investigation, compare with the shipped copy; `keyward audit verify --file {}` lists every problem",
                    file.display()
                ),
            )),
            None if !report.notes.is_empty() => out.push(Finding::warn(
                "audit",
                format!(
                    "hash chain verifies ({} records); {}",
                    report.records_checked,
                    report.notes.join("; ")
                ),
                "see the note; nothing was changed",
            )),
            None => out.push(Finding::ok(
                "audit",
                format!(
                    "{}: mode {mode:04o}, hash chain verifies ({} records, last seq {})",
                    file.display(),
                    report.records_checked,
                    report.last_seq
                ),
            )),
        },
    }
    last_record_time(file)
}

/// The `time` of the log's last record (from its last 64 KiB).
fn last_record_time(file: &Path) -> Option<SystemTime> {
    let mut f = fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let record: serde_json::Value = serde_json::from_str(line).ok()?;
    humantime::parse_rfc3339_weak(record.get("time")?.as_str()?).ok()
}
