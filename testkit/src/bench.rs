//! What the benchmarks share: a child process stopped on drop, waiting for
//! a socket to come up, GetKey throughput over several connections, a
//! fleet member's identity, percentiles, a process's CPU time, the OpenBao
//! version, and a timed rotation seen through watch streams.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use rand::Rng;
use tonic::transport::Channel;

/// A process that gets SIGTERM and is reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Blocks until something accepts connections on `path` (30 s at most).
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never came up", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the release `keywardd` in dev mode in `dir` with the config file
/// `config` (logging warnings only) and waits for its admin socket.
pub fn start_agent(dir: &Path, config: &Path) -> Proc {
    let agent = Proc(
        std::process::Command::new(crate::bins::keywardd())
            .arg("--dev")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env("KEYWARD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start keywardd"),
    );
    wait_for_socket(&dir.join("admin.sock"));
    agent
}

/// A Keys client on `sock`.
pub async fn client(sock: &Path) -> KeysClient<Channel> {
    KeysClient::new(keyward_client::channel(sock).await.unwrap())
}

/// GetKey calls of `key` per second, `conns` connections each calling in a
/// loop, counted over `dur` after a 300 ms warm-up.
pub async fn throughput(sock: &Path, key: proto::KeyRef, conns: usize, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut c = client(sock).await;
        let (done, stop, key) = (done.clone(), stop.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.get_key(proto::GetKeyRequest { key: Some(key.clone()) })
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = done.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(dur).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / elapsed
}

/// `keyward init` in `dir`, for an agent named `name`: its
/// `[[backend.member]]` entry, as `keyward fleet member` prints it.
pub fn init_member(dir: &Path, name: &str) -> String {
    let out = std::process::Command::new(crate::bins::keyward())
        .args(["init", "--state-dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run keyward init");
    assert!(
        out.status.success(),
        "keyward init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("the file names its public key")
            .trim()
            .to_owned()
    };
    format!(
        "[[backend.member]]\nname = {name:?}\nrecipient = {:?}\nsigning_key = {:?}\n",
        public("identity.txt"),
        public("signing.key")
    )
}

/// Nearest-rank percentile of sorted `xs`.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// CPU time used so far by `pid` (user and system, all its threads), in
/// seconds; 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, and it may hold
    // spaces): state is the 3rd field, utime the 14th, stime the 15th.
    let rest: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    };
    (field(14) + field(15)) as f64 / ticks
}

/// `bao version`'s line, for a benchmark's header.
pub fn bao_version() -> String {
    let out = std::process::Command::new(crate::openbao::bao_binary())
        .arg("version")
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bao version unknown".to_owned())
}

/// A key's watch events as they arrive: when, its generation, its primary.
pub type Events = tokio::sync::mpsc::UnboundedReceiver<(Instant, u64, Vec<u8>)>;

/// Watches `key` on the agent at `sock`: its events, and the task reading
/// the stream (abort it to close the stream).
pub async fn watch_events(sock: &Path, key: proto::KeyRef) -> (Events, tokio::task::JoinHandle<()>) {
    let mut stream = client(sock)
        .await
        .watch_keys(proto::WatchKeysRequest { keys: vec![key] })
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let at = Instant::now();
            let set = event.key_set.unwrap_or_default();
            let primary = set.primary.map(|p| p.secret.to_vec()).unwrap_or_default();
            if tx.send((at, set.generation, primary)).is_err() {
                break;
            }
        }
    });
    (rx, task)
}

/// Drains `rx` (of `who`) until an event of at least `generation`, within
/// `limit` of each other; when it arrived and its primary.
pub async fn until_generation(rx: &mut Events, who: &str, generation: u64, limit: Duration) -> (Instant, Vec<u8>) {
    loop {
        let (at, g, primary) = tokio::time::timeout(limit, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{who}: no event of generation {generation} within {limit:?}"))
            .expect("the watch stream is open");
        if g >= generation {
            return (at, primary);
        }
    }
}

/// One rotation as the fleet benchmarks time it.
pub struct TimedPromote {
    /// The PromoteKey call, ms.
    pub call: f64,
    /// Promote → each watcher's event of the promoted key, ms.
    pub seen: Vec<f64>,
}

/// Rotates `key` through `admin` and times it: stages `secret`, waits until
/// every watcher saw it, waits a random point of a `poll` cycle (so the
/// promote lands anywhere in the followers' polls), promotes, and waits
/// until every watcher saw the promoted key, checked to be `secret`; then
/// retires the old key by force and waits until every watcher saw that, so
/// the next rotation starts from steady.
pub async fn timed_promote(
    admin: &mut AdminClient<Channel>,
    key: proto::KeyRef,
    secret: &str,
    watchers: &mut [Events],
    poll: Duration,
    limit: Duration,
) -> TimedPromote {
    let staged = admin
        .stage_key(proto::StageKeyRequest {
            key: Some(key.clone()),
            secret: bytes::Bytes::from(secret.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let staged_gen = staged.key.unwrap().generation;
    until_everywhere(watchers, staged_gen, limit).await;
    let phase = rand::thread_rng().gen_range(0..poll.as_micros().max(1) as u64);
    tokio::time::sleep(Duration::from_micros(phase)).await;

    let t0 = Instant::now();
    let promoted = admin
        .promote_key(proto::RotationRequest {
            key: Some(key.clone()),
            expected_generation: Some(staged_gen),
        })
        .await
        .unwrap()
        .into_inner();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let call = ms(t0.elapsed());
    let promoted_gen = promoted.key.unwrap().generation;
    let mut seen = Vec::with_capacity(watchers.len());
    for (i, (at, primary)) in until_everywhere(watchers, promoted_gen, limit)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(primary, secret.as_bytes(), "agent {i} got the promoted key");
        seen.push(ms(at - t0));
    }

    let retired = admin
        .retire_key(proto::RetireKeyRequest {
            key: Some(key),
            expected_generation: Some(promoted_gen),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    let retired_gen = retired.key.unwrap().generation;
    until_everywhere(watchers, retired_gen, limit).await;
    TimedPromote { call, seen }
}

/// Waits until every watcher (agent `i` for the `i`-th) saw `generation`;
/// when each did, and the primary it was sent.
async fn until_everywhere(watchers: &mut [Events], generation: u64, limit: Duration) -> Vec<(Instant, Vec<u8>)> {
    let mut seen = Vec::with_capacity(watchers.len());
    for (i, rx) in watchers.iter_mut().enumerate() {
        seen.push(until_generation(rx, &format!("agent {i}"), generation, limit).await);
    }
    seen
}

/// Polls the agent at `sock` until it serves `secret` as `key`'s primary
/// (within `limit`; else panics with `log()`, its log).
pub async fn until_served(sock: &Path, key: proto::KeyRef, secret: &[u8], limit: Duration, log: impl Fn() -> String) {
    let start = Instant::now();
    let mut c = client(sock).await;
    loop {
        let request = proto::GetKeyRequest { key: Some(key.clone()) };
        if let Ok(r) = c.get_key(request).await {
            if r.into_inner().primary.is_some_and(|p| p.secret == secret) {
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "{} does not serve the key; its log:\n{}",
            sock.display(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
