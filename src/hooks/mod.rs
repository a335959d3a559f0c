//! Per-key hook commands: the generator, the validator and the revoker.
//!
//! A hook is an operator's program that talks to the provider: the
//! **generator** prints a new secret on stdout (the provider's "create key"
//! call), the **validator** reads a candidate secret on stdin and exits 0 if
//! the provider accepts it, the **revoker** reads a retired secret on stdin
//! and revokes it at the provider.
//!
//! Invariants:
//!
//! - A secret reaches a hook only through its stdin, and leaves the
//!   generator only through its stdout. Never through `argv` (readable by
//!   every local user in `/proc/PID/cmdline`) nor the environment.
//! - The child gets a minimal environment: `PATH=/usr/sbin:/usr/bin:/sbin:/bin`,
//!   `LANG=C`, `KEYWARD_HOOK` (generator, validator or revoker) and, when
//!   the command comes from [`crate::config::Config::rotation_for`],
//!   `KEYWARD_KEY`, `KEYWARD_ENV` and `KEYWARD_NAME` (so one hook can serve
//!   a glob of keys). Nothing of the agent's own environment is passed on.
//!   Its working directory is `/`.
//! - Every hook runs under a timeout, in its own process group: on expiry
//!   (or when the caller gives up and drops the future) the whole group is
//!   killed with SIGKILL and the hook is reaped. A hook that puts children in
//!   another group or session (`setsid`) escapes this; don't.
//! - Buffers that may hold a secret (the generator's stdout) are zeroizing
//!   and grow without leaving copies behind.
//! - Errors never contain the secret. They do contain the tail of the hook's
//!   stderr (the operator needs it to see why the provider said no), so
//!   **hooks must not print secrets on stderr**; as a second line of defence,
//!   any occurrence of the secret in stderr or in the revoker's note is
//!   replaced by `[redacted]`.

mod error;
mod run;

use std::ops::Range;
use std::time::Duration;

use zeroize::Zeroizing;

pub use crate::config::hooks::{HookCommand, InvalidHookCommand};
use crate::secret::Secret;
pub use error::{Hook, HookError, HOOK_PATH, STDERR_TAIL_BYTES};
use run::{run, StdoutMode};

/// Longest revoker note, in characters.
pub const NOTE_MAX_CHARS: usize = 200;
/// How much of the revoker's stdout is read before the rest is discarded.
const NOTE_READ_BYTES: usize = 4096;
/// What replaces the secret where a hook echoed it.
const REDACTED: &[u8] = b"[redacted]";

/// Runs the generator: no stdin, the new secret on stdout (one trailing
/// newline, `\n` or `\r\n`, is removed), exit status 0. More than
/// `max_bytes` bytes of secret, or none, is an error.
pub async fn generate(cmd: &HookCommand, timeout: Duration, max_bytes: usize) -> Result<Secret, HookError> {
    let hook = Hook::Generator;
    // Room for a secret of exactly max_bytes plus "\r\n".
    let read_limit = max_bytes.saturating_add(2);
    let out = run(
        hook,
        cmd,
        None,
        StdoutMode::Secret { limit: read_limit },
        read_limit,
        timeout,
    )
    .await?;
    let mut secret = out.stdout;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if !out.status.success() {
        return Err(HookError::Failed {
            hook,
            program: cmd.program().to_owned(),
            status: out.status,
            stderr: describe_stderr(&out.stderr, out.stderr_truncated, &secret),
        });
    }
    let problem = if out.stdout_overflow || secret.len() > max_bytes {
        Some(format!(
            "printed more than {max_bytes} bytes on stdout (limits.max_secret_bytes): make it print only the new key, or raise the limit"
        ))
    } else if secret.is_empty() {
        let stderr = describe_stderr(&out.stderr, out.stderr_truncated, &secret);
        Some(format!(
            "exited 0 but printed nothing on stdout; {stderr}: make it print the new key on stdout"
        ))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(HookError::Output {
            hook,
            program: cmd.program().to_owned(),
            reason,
        }),
        None => Ok(Secret::new(secret)),
    }
}

/// Runs the validator with `secret` on stdin: exit 0 means the provider
/// accepts it; any other exit code is [`HookError::Rejected`].
pub async fn validate(cmd: &HookCommand, secret: &Secret, timeout: Duration) -> Result<(), HookError> {
    let hook = Hook::Validator;
    let bytes = secret.expose_secret();
    let out = run(hook, cmd, Some(bytes), StdoutMode::Discard, bytes.len(), timeout).await?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = describe_stderr(&out.stderr, out.stderr_truncated, bytes);
    let program = cmd.program().to_owned();
    match out.status.code() {
        // An exit code is the validator's verdict; a signal is not.
        Some(_) => Err(HookError::Rejected {
            hook,
            program,
            status: out.status,
            stderr,
        }),
        None => Err(HookError::Failed {
            hook,
            program,
            status: out.status,
            stderr,
        }),
    }
}

/// Runs the revoker with the retired `secret` on stdin. On exit 0, returns
/// a short note: the first line of its stdout (at most
/// [`NOTE_MAX_CHARS`] characters, the secret redacted).
pub async fn revoke(cmd: &HookCommand, secret: &Secret, timeout: Duration) -> Result<String, HookError> {
    let hook = Hook::Revoker;
    let bytes = secret.expose_secret();
    let keep = NOTE_READ_BYTES.saturating_add(bytes.len());
    let out = run(
        hook,
        cmd,
        Some(bytes),
        StdoutMode::Keep { limit: keep },
        bytes.len(),
        timeout,
    )
    .await?;
    if !out.status.success() {
        return Err(HookError::Failed {
            hook,
            program: cmd.program().to_owned(),
            status: out.status,
            stderr: describe_stderr(&out.stderr, out.stderr_truncated, bytes),
        });
    }
    Ok(note(&out.stdout, out.stdout_overflow, bytes))
}

/// Runs an alert hook (an `exec` alert sink) with `payload`, which is not a
/// secret, on stdin; its stdout is discarded. Exit 0 means delivered, any
/// other end is [`HookError::Failed`] with the tail of its stderr.
pub(crate) async fn notify(cmd: &HookCommand, payload: &[u8], timeout: Duration) -> Result<(), HookError> {
    let hook = Hook::Alert;
    let out = run(hook, cmd, Some(payload), StdoutMode::Discard, 0, timeout).await?;
    if out.status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        hook,
        program: cmd.program().to_owned(),
        status: out.status,
        stderr: describe_stderr(&out.stderr, out.stderr_truncated, &[]),
    })
}

/// Where `secret` occurs in `data`: non-overlapping, left to right (the
/// occurrences [`redact`] replaces).
fn occurrences(data: &[u8], secret: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    if secret.is_empty() {
        return found;
    }
    let mut i = 0;
    while i + secret.len() <= data.len() {
        if data[i..].starts_with(secret) {
            found.push(i..i + secret.len());
            i += secret.len();
        } else {
            i += 1;
        }
    }
    found
}

/// Every occurrence of `secret` in `data` replaced by `[redacted]`.
fn redact(data: &[u8], secret: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
    let mut from = 0;
    for found in occurrences(data, secret) {
        out.extend_from_slice(&data[from..found.start]);
        out.extend_from_slice(REDACTED);
        from = found.end;
    }
    out.extend_from_slice(&data[from..]);
    out
}

/// `data` without a piece of `secret` cut at its start (`cut_start`: data
/// before it was dropped) or its end (`cut_end`: data after it was not
/// read). Such a piece is shorter than the secret, so it lies within the
/// first (last) `secret.len() - 1` bytes; those bytes go, except where a
/// whole occurrence begins (ends), which [`redact`] replaces later.
fn without_cut_secret<'a>(data: &'a [u8], secret: &[u8], cut_start: bool, cut_end: bool) -> &'a [u8] {
    let Some(edge) = secret.len().checked_sub(1) else {
        return data;
    };
    let found = occurrences(data, secret);
    let start = if cut_start {
        edge.min(found.first().map_or(data.len(), |r| r.start))
    } else {
        0
    };
    let end = if cut_end {
        data.len().saturating_sub(edge).max(found.last().map_or(0, |r| r.end))
    } else {
        data.len()
    };
    data.get(start..end).unwrap_or_default()
}

/// Hook output as printable text: lossy UTF-8, control characters other
/// than newline and tab replaced (no terminal escapes from a hook), trimmed.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// "its stderr: ..." for an error message: at most the last
/// [`STDERR_TAIL_BYTES`], with `secret` redacted, and without the end of a
/// secret whose beginning was dropped with earlier output.
fn describe_stderr(tail: &[u8], truncated: bool, secret: &[u8]) -> String {
    let redacted = redact(without_cut_secret(tail, secret, truncated, false), secret);
    let start = redacted.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = printable(&redacted[start..]);
    match (text.is_empty(), truncated || start > 0) {
        (true, _) => "it printed nothing on stderr".to_owned(),
        (false, false) => format!("its stderr: {text}"),
        (false, true) => format!("its stderr (the end): …{text}"),
    }
}

/// The revoker's note: the first line of its stdout, the secret redacted.
/// `overflow`: stdout went on past what was read.
fn note(stdout: &[u8], overflow: bool, secret: &[u8]) -> String {
    let line = match stdout.iter().position(|&b| b == b'\n') {
        Some(end) => &stdout[..end],
        None => without_cut_secret(stdout, secret, false, overflow),
    };
    let text = printable(&redact(line, secret));
    if text.is_empty() {
        return "exited 0 with no output".to_owned();
    }
    let mut shown: String = text.chars().take(NOTE_MAX_CHARS).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests;
