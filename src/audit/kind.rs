//! What an audit record says happened (its `event`) and how it ended (its
//! `outcome`): each a closed set, written by one `as_str`. The names are
//! the audit record format; they never change.

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// A `GetKey` (or its refusal).
    Fetch,
    /// A `WatchKeys` event sent (or a watch refused, or evicted).
    Watch,
    /// A credential for systemd's `LoadCredential=` (or its refusal).
    Credential,
    /// A client reported an auth failure.
    AuthFailure,
    /// Reports over a uid's rate, counted but not processed.
    AuthFailureDropped,
    /// A client reported successful use of a version (first report of
    /// each reporter and version).
    KeyUse,
    /// A proxy refused a request that carried a key's placeholder to a
    /// host the key is not bound to (reported with `ReportAuthFailure`'s
    /// `misdirected_to`).
    KeyMisdirected,
    /// A rotation job started, finished, was cancelled or failed.
    RotationJob,
    /// The validator run on a promoted key by its rotation job.
    Validate,
    /// A caller refused at the admin socket.
    Admin,
    /// `PutKey`.
    Put,
    /// `DeleteKey`.
    Delete,
    /// `ResealFleet`, one key.
    Reseal,
    /// `StageKey`.
    Stage,
    /// `PromoteKey`.
    Promote,
    /// `RollbackKey`.
    Rollback,
    /// `AbortKey`.
    Abort,
    /// `RetireKey`.
    Retire,
    /// A key file rewritten by another tool (hot reload).
    Reload,
    /// A change applied from the fleet backend.
    FleetSync,
    /// The config file loaded again (SIGHUP).
    ConfigReload,
    /// The agent started serving.
    AgentStart,
    /// At start, before serving: the state of one key as the store holds
    /// it (whatever changed while the agent was down, or in a crash's
    /// window, is on record before it is served).
    KeyLoaded,
    /// The agent stopped.
    AgentStop,
    /// The writer found the log damaged at start and carried on.
    AuditRecovered,
    /// The last record of a segment: the live file is sealed (renamed).
    AuditSegmentSealed,
    /// The first record of a new live file: after a seal, a reopen on
    /// SIGHUP, or the file shrinking under the agent.
    AuditSegmentOpened,
    /// A sealed segment deleted by `[audit] retain`.
    AuditSegmentDeleted,
}

impl Event {
    /// The name in the record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Fetch => "fetch",
            Event::Watch => "watch",
            Event::Credential => "credential",
            Event::AuthFailure => "auth_failure",
            Event::AuthFailureDropped => "auth_failure_dropped",
            Event::KeyUse => "key_use",
            Event::KeyMisdirected => "key_misdirected",
            Event::RotationJob => "rotation_job",
            Event::Validate => "validate",
            Event::Admin => "admin",
            Event::Put => "put",
            Event::Delete => "delete",
            Event::Reseal => "reseal",
            Event::Stage => "stage",
            Event::Promote => "promote",
            Event::Rollback => "rollback",
            Event::Abort => "abort",
            Event::Retire => "retire",
            Event::Reload => "reload",
            Event::FleetSync => "fleet_sync",
            Event::ConfigReload => "config_reload",
            Event::AgentStart => "agent_start",
            Event::KeyLoaded => "key_loaded",
            Event::AgentStop => "agent_stop",
            Event::AuditRecovered => "audit_recovered",
            Event::AuditSegmentSealed => "audit_segment_sealed",
            Event::AuditSegmentOpened => "audit_segment_opened",
            Event::AuditSegmentDeleted => "audit_segment_deleted",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Done.
    Ok,
    /// The policy or the socket's rules refused the caller.
    Denied,
    /// The request was malformed or named an unknown environment.
    InvalidArgument,
    /// The key does not exist.
    NotFound,
    /// A report on a version the caller was never served.
    NotServed,
    /// An auth failure recorded.
    Reported,
    /// Reports dropped over the rate.
    Dropped,
    /// A rotation job began.
    Started,
    /// A rotation job ended by rolling back.
    RolledBack,
    /// A rotation job was cancelled.
    Cancelled,
    /// A rotation job (or its step) failed.
    Failed,
    /// A watch that took nothing, ended.
    Evicted,
    /// A file or config that was not applied.
    Rejected,
    /// A file that changed nothing a client sees.
    Unchanged,
    /// A change made outside keyward that is not followed.
    Ignored,
    /// A torn fragment found at the end of the log, kept as its own line.
    TornTail,
    /// The head file named records the log no longer has.
    MissingTail,
    /// The head file named the log's last seq with another hash.
    HeadMismatch,
    /// The head file was unreadable or its MAC was wrong.
    HeadInvalid,
    /// A change about to be written (its `ok` record follows once it is).
    Intent,
    /// A change whose intent was recorded but that was never written (the
    /// agent stopped first), recorded at the next start.
    NotApplied,
    /// The live file was moved away or removed (logrotate `create`), and
    /// a new one opened on SIGHUP.
    Reopened,
    /// The live file shrank under the agent (logrotate `copytruncate`,
    /// unsupported).
    Truncated,
}

impl Outcome {
    /// The name in the record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::InvalidArgument => "invalid_argument",
            Outcome::NotFound => "not_found",
            Outcome::NotServed => "not_served",
            Outcome::Reported => "reported",
            Outcome::Dropped => "dropped",
            Outcome::Started => "started",
            Outcome::RolledBack => "rolled_back",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Evicted => "evicted",
            Outcome::Rejected => "rejected",
            Outcome::Unchanged => "unchanged",
            Outcome::Ignored => "ignored",
            Outcome::TornTail => "torn_tail",
            Outcome::MissingTail => "missing_tail",
            Outcome::HeadMismatch => "head_mismatch",
            Outcome::HeadInvalid => "head_invalid",
            Outcome::Intent => "intent",
            Outcome::NotApplied => "not_applied",
            Outcome::Reopened => "reopened",
            Outcome::Truncated => "truncated",
        }
    }
}

impl From<crate::rotation::Command> for Event {
    /// The record of a rotation step.
    fn from(c: crate::rotation::Command) -> Event {
        use crate::rotation::Command;
        match c {
            Command::Stage => Event::Stage,
            Command::Promote => Event::Promote,
            Command::Rollback => Event::Rollback,
            Command::Abort => Event::Abort,
            Command::Retire => Event::Retire,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_steps_are_recorded_by_the_names_the_cli_uses() {
        for c in crate::rotation::Command::ALL {
            assert_eq!(Event::from(c).as_str(), c.as_str());
        }
    }
}
