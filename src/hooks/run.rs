//! Running one hook: its own process group, a minimal environment, stdin fed, output collected, killed on timeout.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::error::{Hook, HookError, HOOK_PATH, STDERR_TAIL_BYTES};
use crate::config::hooks::HookCommand;

/// How long to wait for a killed hook to be reaped before leaving it to
/// tokio's background reaper.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// Read size for the hooks' pipes.
const CHUNK: usize = 4096;

/// What the runner does with the hook's stdout.
pub(super) enum StdoutMode {
    /// Keep it all; stop and fail past `limit` bytes (the generator).
    Secret { limit: usize },
    /// Keep the first `limit` bytes, drain the rest (the revoker's note).
    Keep { limit: usize },
    /// Drain it (the validator).
    Discard,
}

/// A hook that ran to completion (any exit status).
pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: Zeroizing<Vec<u8>>,
    /// More was printed than kept.
    pub(super) stdout_overflow: bool,
    /// The last bytes of stderr.
    pub(super) stderr: Zeroizing<Vec<u8>>,
    /// Earlier stderr was dropped.
    pub(super) stderr_truncated: bool,
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
pub(super) async fn run(
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
