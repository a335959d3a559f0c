//! Which hook ran, and why it did not do its job; the environment every
//! hook gets.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// The whole `PATH` a hook gets: system directories only.
pub const HOOK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of the end of a hook's stderr goes into an error message.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// Which hook ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Prints a new secret on stdout.
    Generator,
    /// Gets a candidate on stdin; exit 0 = accepted.
    Validator,
    /// Gets the retired secret on stdin.
    Revoker,
    /// An `exec` alert sink: gets an alert's JSON payload (no secret) on
    /// stdin; exit 0 = delivered.
    Alert,
}

impl Hook {
    /// The name, as the config file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Generator => "generator",
            Hook::Validator => "validator",
            Hook::Revoker => "revoker",
            Hook::Alert => "alert",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hook did not do its job. Messages name the hook and its program,
/// include the tail of its stderr where useful, never the secret, and say
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The program could not be started.
    #[error("cannot start the {hook} hook {program}: {source}: check that the file exists and is executable by the agent's user (hooks run by absolute path, without PATH)")]
    Spawn {
        /// Which hook.
        hook: Hook,
        /// Its program.
        program: String,
        /// What exec said.
        source: io::Error,
    },
    /// It exited unsuccessfully (or was killed by a signal).
    #[error("the {hook} hook {program} failed ({status}); {stderr}: fix the hook or what it calls, then retry")]
    Failed {
        /// Which hook.
        hook: Hook,
        /// Its program.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr, described.
        stderr: String,
    },
    /// The validator refused the candidate (exited non-zero).
    #[error("the {hook} hook {program} rejected the new key ({status}); {stderr}: check the key at the provider, or give another one")]
    Rejected {
        /// Which hook (the validator).
        hook: Hook,
        /// Its program.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr, described.
        stderr: String,
    },
    /// It did not finish in time; it was killed with its process group.
    #[error("the {hook} hook {program} did not finish within {} and was killed with its process group: make it faster, or raise hook_timeout in the config", humantime::format_duration(*after))]
    TimedOut {
        /// Which hook.
        hook: Hook,
        /// Its program.
        program: String,
        /// The timeout.
        after: Duration,
    },
    /// Its output or pipes were unusable (empty, too large, I/O error).
    #[error("the {hook} hook {program} {reason}")]
    Output {
        /// Which hook.
        hook: Hook,
        /// Its program.
        program: String,
        /// What was wrong and what to do.
        reason: String,
    },
}
