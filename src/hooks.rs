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

use std::fmt;
use std::io;
use std::ops::Range;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::secret::{KeyRef, Secret};

/// The whole `PATH` a hook gets: system directories only.
pub const HOOK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of the end of a hook's stderr goes into an error message.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// Longest revoker note, in characters.
pub const NOTE_MAX_CHARS: usize = 200;
/// How long to wait for a killed hook to be reaped before leaving it to
/// tokio's background reaper.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// Read size for the hooks' pipes.
const CHUNK: usize = 4096;
/// How much of the revoker's stdout is read before the rest is discarded.
const NOTE_READ_BYTES: usize = 4096;
/// What replaces the secret where a hook echoed it.
const REDACTED: &[u8] = b"[redacted]";

/// Which hook ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Prints a new secret on stdout.
    Generator,
    /// Gets a candidate on stdin; exit 0 = accepted.
    Validator,
    /// Gets the retired secret on stdin.
    Revoker,
}

impl Hook {
    /// The name, as the config file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Generator => "generator",
            Hook::Validator => "validator",
            Hook::Revoker => "revoker",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook command line from the config. `Debug` is safe: it holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookCommand {
    /// The program (an absolute path, run without `PATH` lookup) and its
    /// arguments. Never a secret.
    pub argv: Vec<String>,
    /// Extra environment variables (never secrets), e.g. `KEYWARD_KEY`.
    pub env: Vec<(String, String)>,
}

/// Why a hook command line was refused (the config loader adds where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHookCommand {
    /// `[]`.
    #[error("is empty: give the program and its arguments, e.g. [\"/usr/local/bin/new-key\", \"--env\", \"prod\"]")]
    Empty,
    /// The program is not an absolute path.
    #[error("runs {program:?}, which is not an absolute path: write the full path, starting with '/' (hooks run as the agent's user, usually root, so they are never looked up in PATH)")]
    NotAbsolute {
        /// The program as written.
        program: String,
    },
    /// An argument holds a NUL byte, which no command line can carry.
    #[error("has a NUL byte in argument {index}: remove it")]
    Nul {
        /// 0-based index in the list.
        index: usize,
    },
}

impl HookCommand {
    /// Checks `argv`: non-empty, the program an absolute path, no NUL bytes.
    pub fn new(argv: Vec<String>) -> Result<HookCommand, InvalidHookCommand> {
        let Some(program) = argv.first() else {
            return Err(InvalidHookCommand::Empty);
        };
        if !program.starts_with('/') {
            return Err(InvalidHookCommand::NotAbsolute {
                program: program.clone(),
            });
        }
        if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
            return Err(InvalidHookCommand::Nul { index });
        }
        Ok(HookCommand { argv, env: Vec::new() })
    }

    /// The same command, told which key it works on through `KEYWARD_KEY`,
    /// `KEYWARD_ENV` and `KEYWARD_NAME`.
    pub fn for_key(mut self, key: &KeyRef) -> HookCommand {
        self.env.retain(|(k, _)| !k.starts_with("KEYWARD_"));
        self.env.push(("KEYWARD_KEY".to_owned(), key.to_string()));
        self.env.push(("KEYWARD_ENV".to_owned(), key.env().to_owned()));
        self.env.push(("KEYWARD_NAME".to_owned(), key.name().to_owned()));
        self
    }

    /// The program's path, for messages.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
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

/// What the runner does with the hook's stdout.
enum StdoutMode {
    /// Keep it all; stop and fail past `limit` bytes (the generator).
    Secret { limit: usize },
    /// Keep the first `limit` bytes, drain the rest (the revoker's note).
    Keep { limit: usize },
    /// Drain it (the validator).
    Discard,
}

/// A hook that ran to completion (any exit status).
struct Finished {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    /// More was printed than kept.
    stdout_overflow: bool,
    /// The last bytes of stderr.
    stderr: Zeroizing<Vec<u8>>,
    /// Earlier stderr was dropped.
    stderr_truncated: bool,
}

/// Why the runner stopped the hook early.
enum Stop {
    /// The generator printed more than its limit.
    TooLarge(usize),
    /// A pipe failed.
    Io(&'static str, io::Error),
}

/// Spawns `cmd`, feeds `input` to its stdin, collects stdout and the tail of
/// stderr (keeping `secret_len` extra bytes so a secret cut at the start of
/// the tail can be dropped), and waits for it, all within `timeout`.
async fn run(
    hook: Hook,
    cmd: &HookCommand,
    input: Option<&[u8]>,
    stdout_mode: StdoutMode,
    secret_len: usize,
    timeout: Duration,
) -> Result<Finished, HookError> {
    let program = cmd.program().to_owned();
    let mut command = tokio::process::Command::new(cmd.program());
    command
        .args(cmd.argv.iter().skip(1))
        .env_clear()
        .env("PATH", HOOK_PATH)
        .env("LANG", "C")
        .env("KEYWARD_HOOK", hook.as_str())
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills its children too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| HookError::Spawn {
        hook,
        program: program.clone(),
        source,
    })?;
    // Declared after `child`, so dropped before it: the group is killed
    // before tokio reaps the leader, while its id cannot have been reused.
    let mut group = GroupKiller(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let work = async {
        let feed = async {
            if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
                match pipe.write_all(bytes).await {
                    // A hook may exit without reading all of its stdin; its
                    // exit status decides.
                    Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(Stop::Io("stdin", e)),
                    _ => {}
                }
                // Dropping the pipe closes it: the hook sees end of file.
            }
            Ok(())
        };
        let tail_keep = STDERR_TAIL_BYTES.saturating_add(secret_len);
        let (_, (stdout, stdout_overflow), (stderr, stderr_truncated)) =
            tokio::try_join!(feed, read_stdout(stdout, &stdout_mode), read_tail(stderr, tail_keep))?;
        // Only after both pipes are closed: a child the hook left behind
        // holding them is still in the group, to be killed on timeout.
        let status = child.wait().await.map_err(|e| Stop::Io("exit status", e))?;
        Ok::<_, Stop>(Finished {
            status,
            stdout,
            stdout_overflow,
            stderr,
            stderr_truncated,
        })
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    if let Ok(Ok(finished)) = outcome {
        // Reaped: the group id may be reused from now on, never kill it.
        group.0 = None;
        return Ok(finished);
    }
    group.kill();
    let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
    Err(match outcome {
        Err(_elapsed) => HookError::TimedOut {
            hook,
            program,
            after: timeout,
        },
        Ok(Err(Stop::TooLarge(limit))) => HookError::Output {
            hook,
            program,
            reason: format!(
                "printed more than {} bytes on stdout (limits.max_secret_bytes) and was killed: make it print only the new key, or raise the limit",
                limit.saturating_sub(2)
            ),
        },
        Ok(Err(Stop::Io(pipe, e))) => HookError::Output {
            hook,
            program,
            reason: format!("could not be run to the end ({pipe}: {e}) and was killed: check the hook, then retry"),
        },
        Ok(Ok(_)) => unreachable!("handled above"),
    })
}

/// Kills a hook's process group (SIGKILL) when told to or when dropped
/// armed (the caller gave up on the hook).
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take().and_then(|id| i32::try_from(id).ok()) {
            // ESRCH: everyone already gone.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads stdout per `mode`; returns what was kept and whether more came.
async fn read_stdout(mut pipe: impl AsyncRead + Unpin, mode: &StdoutMode) -> Result<(Zeroizing<Vec<u8>>, bool), Stop> {
    let keep = match *mode {
        StdoutMode::Secret { limit } | StdoutMode::Keep { limit } => limit,
        StdoutMode::Discard => 0,
    };
    let mut kept = Zeroizing::new(Vec::new());
    let mut overflow = false;
    let mut chunk = Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = pipe.read(&mut chunk).await.map_err(|e| Stop::Io("stdout", e))?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = keep - kept.len();
        if n > room {
            if let StdoutMode::Secret { limit } = *mode {
                return Err(Stop::TooLarge(limit));
            }
            overflow = true;
        }
        append_zeroizing(&mut kept, &chunk[..n.min(room)], keep);
    }
}

/// Reads a pipe to its end, keeping the last `keep` bytes; returns them and
/// whether earlier bytes were dropped.
async fn read_tail(mut pipe: impl AsyncRead + Unpin, keep: usize) -> Result<(Zeroizing<Vec<u8>>, bool), Stop> {
    // Trimmed only when twice too long, so each byte moves at most once.
    let mut buf = Zeroizing::new(Vec::with_capacity(2 * keep + CHUNK));
    let mut truncated = false;
    let mut chunk = Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = pipe.read(&mut chunk).await.map_err(|e| Stop::Io("stderr", e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 2 * keep {
            let cut = buf.len() - keep;
            buf.drain(..cut);
            truncated = true;
        }
    }
    if buf.len() > keep {
        let cut = buf.len() - keep;
        buf.drain(..cut);
        truncated = true;
    }
    Ok((buf, truncated))
}

/// Appends to a zeroizing buffer without leaving a copy of its old contents
/// in freed memory: growth goes through a new zeroizing buffer, and the old
/// one is wiped when dropped. Capacity never exceeds `max` unless needed.
fn append_zeroizing(buf: &mut Zeroizing<Vec<u8>>, data: &[u8], max: usize) {
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let capacity = (buf.capacity() * 2).max(CHUNK).min(max).max(needed);
        let mut bigger = Zeroizing::new(Vec::with_capacity(capacity));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(data);
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
mod tests {
    use super::*;
    use std::time::Instant;

    const SH: &str = "/bin/sh";
    const T: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> HookCommand {
        HookCommand::new(vec![SH.into(), "-c".into(), script.into()]).unwrap()
    }

    /// `generate`, expected to fail (a `Secret` has no `Debug` for
    /// `unwrap_err`).
    async fn gen_err(cmd: &HookCommand, timeout: Duration, max_bytes: usize) -> HookError {
        match generate(cmd, timeout, max_bytes).await {
            Ok(_) => panic!("the generator was accepted"),
            Err(e) => e,
        }
    }

    fn text(secret: &Secret) -> String {
        String::from_utf8(secret.expose_secret().to_vec()).unwrap()
    }

    fn assert_has(msg: &str, needles: &[&str]) {
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in: {msg}");
        }
    }

    #[test]
    fn command_lines_are_checked() {
        assert_eq!(HookCommand::new(vec![]), Err(InvalidHookCommand::Empty));
        let e = HookCommand::new(vec!["new-key".into()]).unwrap_err();
        assert_has(&e.to_string(), &["\"new-key\"", "absolute", "PATH"]);
        let e = HookCommand::new(vec!["/bin/x".into(), "a\0b".into()]).unwrap_err();
        assert_eq!(e, InvalidHookCommand::Nul { index: 1 });
        let c = HookCommand::new(vec!["/bin/x".into(), "--env".into()]).unwrap();
        assert_eq!(c.program(), "/bin/x");
        let c = c.for_key(&"prod/billing-api".parse().unwrap());
        assert_eq!(
            c.env,
            [
                ("KEYWARD_KEY".to_owned(), "prod/billing-api".to_owned()),
                ("KEYWARD_ENV".to_owned(), "prod".to_owned()),
                ("KEYWARD_NAME".to_owned(), "billing-api".to_owned()),
            ]
        );
        assert_eq!(c.clone().for_key(&"dev/x".parse().unwrap()).env.len(), 3);
    }

    #[tokio::test]
    async fn generator_prints_a_secret() {
        let s = generate(&sh("printf sk_live_123"), T, 64).await.unwrap();
        assert_eq!(text(&s), "sk_live_123");
    }

    #[tokio::test]
    async fn generator_trailing_newline_is_stripped_once() {
        let s = generate(&sh("echo sk_live_123"), T, 64).await.unwrap();
        assert_eq!(text(&s), "sk_live_123");
        let s = generate(&sh("printf 'sk\\n\\n'"), T, 64).await.unwrap();
        assert_eq!(text(&s), "sk\n");
        let s = generate(&sh("printf 'sk\\r\\n'"), T, 64).await.unwrap();
        assert_eq!(text(&s), "sk");
        let s = generate(&sh("printf ' a b '"), T, 64).await.unwrap();
        assert_eq!(text(&s), " a b ", "only the newline is removed");
    }

    #[tokio::test]
    async fn generator_empty_output_is_an_error() {
        for script in ["true", "echo", "echo 'provider down' >&2"] {
            let e = gen_err(&sh(script), T, 64).await;
            assert!(
                matches!(
                    e,
                    HookError::Output {
                        hook: Hook::Generator,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_has(&e.to_string(), &["generator hook /bin/sh", "printed nothing on stdout"]);
        }
        let e = gen_err(&sh("echo 'provider down' >&2"), T, 64).await;
        assert_has(&e.to_string(), &["provider down"]);
    }

    #[tokio::test]
    async fn generator_non_zero_exit_fails_with_stderr_and_without_stdout() {
        let e = gen_err(&sh("printf sk_live_partial; echo 'quota exceeded' >&2; exit 3"), T, 64).await;
        let HookError::Failed {
            hook, status, stderr, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!((*hook, status.code()), (Hook::Generator, Some(3)));
        assert_eq!(stderr, "its stderr: quota exceeded");
        let msg = e.to_string();
        assert_has(
            &msg,
            &[
                "generator hook /bin/sh failed",
                "exit status: 3",
                "quota exceeded",
                "retry",
            ],
        );
        assert!(!msg.contains("sk_live_partial"), "{msg}");
    }

    #[tokio::test]
    async fn generator_max_bytes_is_enforced() {
        let s = generate(&sh("printf 1234"), T, 4).await.unwrap();
        assert_eq!(text(&s), "1234");
        let s = generate(&sh("printf '1234\\r\\n'"), T, 4).await.unwrap();
        assert_eq!(text(&s), "1234");
        let e = gen_err(&sh("printf 12345"), T, 4).await;
        assert_has(&e.to_string(), &["more than 4 bytes", "max_secret_bytes"]);
        assert!(!e.to_string().contains("1234"), "{e}");
        // An endless generator is stopped at the limit, not at the timeout.
        let started = Instant::now();
        let e = gen_err(&sh("yes sk_live_endless"), T, 1000).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(matches!(e, HookError::Output { .. }), "{e:?}");
        assert_has(&e.to_string(), &["more than 1000 bytes", "killed"]);
        assert!(!e.to_string().contains("sk_live"), "{e}");
    }

    #[tokio::test]
    async fn validator_accepts_and_rejects() {
        let cmd = sh("[ \"$(cat)\" = \"good\" ] || { echo 'provider says: 401' >&2; exit 1; }");
        validate(&cmd, &Secret::copy_from(b"good"), T).await.unwrap();
        let e = validate(&cmd, &Secret::copy_from(b"bad-candidate"), T)
            .await
            .unwrap_err();
        let HookError::Rejected { hook, stderr, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*hook, Hook::Validator);
        assert_eq!(stderr, "its stderr: provider says: 401");
        assert_has(
            &e.to_string(),
            &["validator hook /bin/sh rejected the new key", "provider says: 401"],
        );
    }

    #[tokio::test]
    async fn validator_killed_by_a_signal_failed_rather_than_rejected() {
        let e = validate(&sh("cat >/dev/null; kill -9 $$"), &Secret::copy_from(b"x"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HookError::Failed {
                    hook: Hook::Validator,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn validator_that_ignores_a_large_stdin_is_judged_by_its_exit_status() {
        // Larger than a pipe buffer: the write meets a closed pipe.
        let big = Secret::copy_from(&vec![b'k'; 1 << 20]);
        validate(&sh("exit 0"), &big, T).await.unwrap();
        let e = validate(&sh("exit 2"), &big, T).await.unwrap_err();
        assert!(matches!(e, HookError::Rejected { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn revoker_receives_the_secret_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revoked");
        let cmd = sh(&format!(
            "cat > '{}'; echo 'revoked key 42 at provider'; echo more",
            file.display()
        ));
        let note = revoke(&cmd, &Secret::copy_from(b"sk_old_secret"), T).await.unwrap();
        assert_eq!(note, "revoked key 42 at provider");
        assert_eq!(std::fs::read(&file).unwrap(), b"sk_old_secret");
        let note = revoke(&sh("cat >/dev/null"), &Secret::copy_from(b"x"), T)
            .await
            .unwrap();
        assert_eq!(note, "exited 0 with no output");
        let e = revoke(&sh("echo 'no such key' >&2; exit 4"), &Secret::copy_from(b"x"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HookError::Failed {
                    hook: Hook::Revoker,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_has(&e.to_string(), &["revoker hook /bin/sh failed", "no such key"]);
    }

    #[tokio::test]
    async fn secrets_are_not_in_argv_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seen");
        let script = format!(
            "cat >/dev/null; {{ tr '\\0' ' ' < /proc/$$/cmdline; echo; env; }} > '{}'",
            file.display()
        );
        let cmd = sh(&script).for_key(&"prod/billing-api".parse().unwrap());
        validate(&cmd, &Secret::copy_from(b"sk_live_hidden"), T).await.unwrap();
        let seen = std::fs::read_to_string(&file).unwrap();
        assert!(!seen.contains("sk_live_hidden"), "{seen}");
        let mut env: Vec<&str> = seen.lines().skip(1).filter(|l| !l.starts_with("PWD=")).collect();
        env.sort_unstable();
        assert_eq!(
            env,
            [
                "KEYWARD_ENV=prod",
                "KEYWARD_HOOK=validator",
                "KEYWARD_KEY=prod/billing-api",
                "KEYWARD_NAME=billing-api",
                "LANG=C",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            ]
        );
    }

    #[tokio::test]
    async fn errors_never_contain_the_secret() {
        let secret = Secret::copy_from(b"sk_live_topsecret");
        // Hooks that (wrongly) echo the secret on stderr and stdout.
        let echo = "s=$(cat); echo \"got $s\"; echo \"bad key $s, really $s\" >&2; exit 1";
        let e = validate(&sh(echo), &secret, T).await.unwrap_err().to_string();
        assert!(!e.contains("sk_live_topsecret"), "{e}");
        assert_has(&e, &["bad key [redacted], really [redacted]"]);
        let e = revoke(&sh(echo), &secret, T).await.unwrap_err().to_string();
        assert!(!e.contains("sk_live_topsecret"), "{e}");
        let note = revoke(&sh("s=$(cat); echo \"revoked $s\""), &secret, T).await.unwrap();
        assert_eq!(note, "revoked [redacted]");
        let e = gen_err(&sh("echo sk_live_gen; echo 'made sk_live_gen' >&2; exit 1"), T, 64)
            .await
            .to_string();
        assert!(!e.contains("sk_live_gen"), "{e}");
        // A long stderr cut around a secret: no piece of it survives,
        // wherever the cut falls.
        let pieces: Vec<&[u8]> = secret.expose_secret().windows(4).collect();
        for after in (2030..2070).step_by(3) {
            let long = format!(
                "s=$(cat); head -c 5000 /dev/zero | tr '\\0' x >&2; printf '%s' \"$s\" >&2; head -c {after} /dev/zero | tr '\\0' y >&2; exit 1"
            );
            let e = validate(&sh(&long), &secret, T).await.unwrap_err().to_string();
            for piece in &pieces {
                assert!(!e.as_bytes().windows(4).any(|w| w == *piece), "{after}: {e}");
            }
            assert!(e.contains("(the end): …"), "{e}");
        }
        // A stderr flood is cut to its tail.
        let e = validate(
            &sh("cat >/dev/null; yes flood | head -n 100000 >&2; echo last >&2; exit 1"),
            &secret,
            T,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.len() < STDERR_TAIL_BYTES + 400, "{}", e.len());
        assert_has(&e, &["flood\nlast"]);
    }

    #[tokio::test]
    async fn stderr_is_made_printable() {
        let e = validate(
            &sh("cat >/dev/null; printf 'a\\033[31mb\\n' >&2; exit 1"),
            &Secret::copy_from(b"x"),
            T,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\u{1b}'), "{e:?}");
        assert_has(&e, &["a\u{fffd}[31mb"]);
    }

    #[tokio::test]
    async fn spawn_failure_names_the_program() {
        let cmd = HookCommand::new(vec!["/nonexistent/keyward-hook".into()]).unwrap();
        let e = gen_err(&cmd, T, 64).await;
        assert!(matches!(e, HookError::Spawn { .. }), "{e:?}");
        assert_has(
            &e.to_string(),
            &["generator hook /nonexistent/keyward-hook", "executable"],
        );
    }

    /// True once `pid` is gone (or a zombie waiting for its reaper).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_hook_and_its_children() {
        let started = Instant::now();
        let e = gen_err(&sh("sleep 30"), Duration::from_millis(500), 64).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                e,
                HookError::TimedOut {
                    hook: Hook::Generator,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_has(
            &e.to_string(),
            &["did not finish within 500ms", "killed", "hook_timeout"],
        );

        // A grandchild that keeps the pipes open is killed with the group.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let started = Instant::now();
        let e = validate(&sh(&script), &Secret::copy_from(b"x"), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                e,
                HookError::TimedOut {
                    hook: Hook::Validator,
                    ..
                }
            ),
            "{e:?}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !is_dead(pid) {
            assert!(Instant::now() < deadline, "sleep {pid} survived the timeout");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_hook_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let cmd = sh(&script);
        let run = generate(&cmd, T, 64);
        // The caller gives up (e.g. the admin client went away).
        assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err());
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !is_dead(pid) {
            assert!(Instant::now() < deadline, "sleep {pid} survived its dropped hook");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn redact_and_note() {
        assert_eq!(
            &redact(b"a SEC b SECSEC", b"SEC")[..],
            b"a [redacted] b [redacted][redacted]"
        );
        assert_eq!(&redact(b"abc", b"")[..], b"abc");
        assert_eq!(&redact(b"SESECRET", b"SECRET")[..], b"SE[redacted]");
        assert_eq!(note(b"ok\nsecond", false, b"k"), "o[redacted]");
        assert_eq!(note(b"done --SECR", true, b"SECRET"), "done -");
        assert_eq!(note(b"done SECR", true, b"SECRET"), "done");
        assert_eq!(note(b"done SECRET ab", true, b"SECRET"), "done [redacted]");
        assert_eq!(note(b"done SECRET ab", false, b"SECRET"), "done [redacted] ab");
        let long = "x".repeat(500);
        assert_eq!(note(long.as_bytes(), false, b"S").chars().count(), NOTE_MAX_CHARS + 1);
        assert_eq!(describe_stderr(b"", false, b"s"), "it printed nothing on stderr");
        // Earlier output was dropped: a cut secret's end goes, whole ones
        // are redacted, wherever they fall.
        for (tail, want) in [
            (&b"CRETxxxxxx"[..], "xxxxx"),
            (b"xxSECRETyy", "[redacted]yy"),
            (b"SECRETyy", "[redacted]yy"),
            (b"xxxxxxxSECRET", "xx[redacted]"),
            (b"ETSECRET", "[redacted]"),
        ] {
            assert_eq!(
                describe_stderr(tail, true, b"SECRET"),
                format!("its stderr (the end): …{want}")
            );
        }
        assert_eq!(describe_stderr(b"CRETxx", false, b"SECRET"), "its stderr: CRETxx");
    }
}
