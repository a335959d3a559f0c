//! Figures.

use super::*;

/// The cases of one class and the ones that went wrong.
pub(super) struct Tally {
    class: &'static str,
    pub(super) cases: usize,
    failures: Vec<String>,
}

impl Tally {
    pub(super) fn new(class: &'static str) -> Tally {
        Tally {
            class,
            cases: 0,
            failures: Vec::new(),
        }
    }

    /// Counts one case; `Err` is a failure, described.
    pub(super) fn check(&mut self, outcome: Result<(), String>) {
        self.cases += 1;
        if let Err(why) = outcome {
            self.failures.push(why);
        }
    }

    /// Prints the figure and fails the test if any case failed.
    pub(super) fn finish(self) {
        eprintln!(
            "adversarial: class={} cases={} failures={}",
            self.class,
            self.cases,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} {} cases failed; the first ones:\n{}",
            self.failures.len(),
            self.cases,
            self.class,
            self.failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Fails with the agent's log if it panicked anywhere.
pub(super) fn assert_no_panic(agent: &TestAgent) {
    let logs = agent.logs();
    assert!(!logs.contains("panicked"), "the agent panicked:\n{logs}");
}

/// True when `s` would stay on one log line and cannot reorder text.
pub(super) fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| matches!(c, '\0' | '\n' | '\r' | '\u{1b}' | '\u{202e}'))
}

/// Waits until the agent counts at most `n` open connections (besides the
/// one asking).
pub(super) async fn wait_connections_at_most(agent: &TestAgent, n: u64) -> u64 {
    let start = Instant::now();
    loop {
        let open = agent.status().await.connections.saturating_sub(1);
        if open <= n || start.elapsed() > DEADLINE {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What GetKey serves of a key: its primary secret and its generation.
/// Its `Debug` (in failure messages) shows the secret's [`fingerprint`],
/// never the secret.
#[derive(PartialEq, Eq)]
pub(super) struct Served {
    pub(super) secret: Vec<u8>,
    generation: u64,
}

impl Served {
    pub(super) fn new(secret: &[u8], generation: u64) -> Served {
        Served {
            secret: secret.to_vec(),
            generation,
        }
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {}, secret {}",
            self.generation,
            fingerprint(&self.secret)
        )
    }
}

/// The primary secret and generation of `env/name`.
pub(super) async fn served(agent: &TestAgent, env: &str, name: &str) -> Result<Served, tonic::Status> {
    let set = agent.fetch(env, name).await?;
    Ok(Served {
        secret: set.primary.unwrap().secret.to_vec(),
        generation: set.generation,
    })
}

/// Every path under `dir`, relative, sorted.
pub(super) fn tree(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = paths_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

/// CPU time (user + system) the process has used.
pub(super) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_millis(ticks * 1000 / hz)
}
