//! The crash drill (issue 7): `kill -9` the agent at random moments during a
//! mixed load of puts, rotations and fetches, restart it on the same
//! directory, and check after every restart that nothing it acknowledged was
//! lost.
//!
//! Each round starts the agent (`[rotation] grace = "0s"`, so retire is
//! allowed at once) and runs, until the kill:
//!
//! - writers over the admin socket, each owning its own keys: create,
//!   `put --overwrite`, stage (and stage `--replace`), promote, abort,
//!   rollback and retire, always with the expected generation
//!   (compare-and-swap), picked at random from what the key's state allows;
//! - one writer doing the same through the `keyward` CLI (an acknowledged
//!   change is an exit status 0);
//! - fetchers calling `GetKey` on random keys: a fetch must never return a
//!   generation older than one already acknowledged to a writer.
//!
//! A writer keeps, per key, the last acknowledged state and the one change
//! it had in flight when the agent died. After the restart each key must be
//! in exactly one of those two states: the acknowledged one, or the in-flight
//! one (applied, but killed before it could answer). Anything else is an
//! acknowledged change lost. Also, after each restart:
//!
//! - every key file decrypts with the agent identity and decodes (checked
//!   offline, here, with the identity and install key), and what the agent
//!   serves is what is on disk; no key file was skipped at start;
//! - generations never went backwards;
//! - `keyward audit verify` passes, every acknowledged change has its audit
//!   record, and there are at least as many `fetch` records as answered
//!   fetches (a fetch is answered only after its record is written);
//! - a torn last line is handled as README.md ("Audit log") says: the agent
//!   keeps those bytes where they were, ends them with a newline, writes an
//!   `audit_recovered` record naming their offset and length, and `verify`
//!   reports them as a note, not a failure. A `write(2)` to a regular file
//!   is only cut short by a kill between pages, so real tears are rare; on
//!   some rounds the drill therefore also leaves a torn fragment itself
//!   after the kill (a prefix of a record, as a write cut short leaves it),
//!   counted apart as `torn_planted`;
//! - no temp file is left in the state directory (the store removes its
//!   `.NAME.age.tmp-*` files at start).
//!
//! Some kills land while the agent is starting (before it says "ready").
//!
//! Not asserted, but counted: an in-flight change that was applied has no
//! audit record when the kill fell between making it durable and auditing
//! it (`in_flight_applied=… (unaudited …)`): the store is written before the
//! audit record, and nothing reconciles the two after a crash.
//!
//! Figures, on one line: `crash drill: seed=… kills=… acked=… lost=0 …`.
//! The short version runs in the normal suite; the long one is
//! `scripts/drill-crash` (200 kills, release build). Parameters
//! (environment variables):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KEYWARD_DRILL_KILLS` | 20 | kills (those while the agent starts included) |
//! | `KEYWARD_DRILL_SEED` | random | seed of the kill times and the load (printed) |
//! | `KEYWARD_DRILL_WRITERS` | 3 | gRPC writers (plus one CLI writer) |
//! | `KEYWARD_DRILL_FETCHERS` | 2 | `GetKey` loops |
//! | `KEYWARD_DRILL_LOAD_MS` | 600 | longest load before a kill (at least 30) |

use crate::common;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient, RotationState};
use keyward::wire::ToWire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// Every key of the drill lives in this environment.
const ENV: &str = "prod";
/// Keys each writer starts with, and most it creates.
const KEYS_AT_START: usize = 3;
const KEYS_AT_MOST: usize = 8;
/// Longest wait for one RPC or CLI call; the agent answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The model: what each key must look like.

/// A key's state as a client sees it.
#[derive(Clone, PartialEq, Eq)]
struct Expected {
    generation: u64,
    state: RotationState,
    primary: String,
    fallback: Option<String>,
}

/// The generation, the state and the secrets' fingerprints: the drill
/// prints states when one is lost or served otherwise than its file says,
/// and secrets never reach output, not even test ones.
impl fmt::Debug for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expected")
            .field("generation", &self.generation)
            .field("state", &self.state)
            .field("primary", &fingerprint(self.primary.as_bytes()))
            .field("fallback", &self.fallback.as_deref().map(|s| fingerprint(s.as_bytes())))
            .finish()
    }
}

impl Expected {
    fn of(set: &proto::KeySet) -> Expected {
        Expected {
            generation: set.generation,
            state: RotationState::try_from(set.state).unwrap_or(RotationState::Unspecified),
            primary: text(&set.primary.as_ref().expect("a primary").secret),
            fallback: set.fallback.as_ref().map(|f| text(&f.secret)),
        }
    }
}

/// One change a writer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Put,
    Stage,
    StageReplace,
    Promote,
    Abort,
    Rollback,
    Retire,
}

impl Op {
    /// The audit event of the change.
    fn event(self) -> &'static str {
        match self {
            Op::Create | Op::Put => "put",
            Op::Stage | Op::StageReplace => "stage",
            Op::Promote => "promote",
            Op::Abort => "abort",
            Op::Rollback => "rollback",
            Op::Retire => "retire",
        }
    }

    /// A change the state `current` allows, at random.
    fn pick(current: &Expected, rng: &mut StdRng) -> Op {
        let roll = rng.gen_range(0..100);
        match current.state {
            RotationState::Staged if roll < 70 => Op::Promote,
            RotationState::Staged if roll < 85 => Op::Abort,
            RotationState::Staged => Op::StageReplace,
            RotationState::Promoted if roll < 75 => Op::Retire,
            RotationState::Promoted => Op::Rollback,
            _ if roll < 40 => Op::Put,
            _ => Op::Stage,
        }
    }

    /// The state after this change is applied to `current`, with `new` as
    /// the new secret where the change takes one.
    fn apply(self, current: Option<&Expected>, new: &str) -> Expected {
        let Some(c) = current else {
            assert_eq!(self, Op::Create, "only a create applies to a missing key");
            return Expected {
                generation: 1,
                state: RotationState::Steady,
                primary: new.to_owned(),
                fallback: None,
            };
        };
        let generation = c.generation + 1;
        let (state, primary, fallback) = match self {
            Op::Create | Op::Put => (RotationState::Steady, new.to_owned(), None),
            Op::Stage | Op::StageReplace => (RotationState::Staged, c.primary.clone(), Some(new.to_owned())),
            Op::Promote => (
                RotationState::Promoted,
                c.fallback.clone().unwrap(),
                Some(c.primary.clone()),
            ),
            Op::Abort | Op::Retire => (RotationState::Steady, c.primary.clone(), None),
            Op::Rollback => (
                RotationState::Staged,
                c.fallback.clone().unwrap(),
                Some(c.primary.clone()),
            ),
        };
        Expected {
            generation,
            state,
            primary,
            fallback,
        }
    }
}

/// One key, as its writer knows it.
#[derive(Clone, Debug)]
struct Tracked {
    name: String,
    /// Index into [`Shared::floors`].
    slot: usize,
    /// The last state acknowledged to the writer (none: not created yet).
    acked: Option<Expected>,
    /// The change that was sent but not answered when the agent died, and
    /// the state it leads to.
    in_flight: Option<(Op, Expected)>,
}

/// An acknowledged change, to find in the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AckedChange {
    key: String,
    event: &'static str,
    generation: u64,
}

/// What the tasks of a round share.
struct Shared {
    /// Per key slot: the highest acknowledged generation (0: none yet).
    floors: Vec<AtomicU64>,
    /// Key names by slot (fixed for the whole drill).
    names: Vec<String>,
    /// Set just before the kill: errors seen after it are expected.
    killed: AtomicBool,
    /// Fetches answered OK.
    fetched: AtomicU64,
}

/// What a writer hands back at the end of a round.
struct WriterResult {
    keys: Vec<Tracked>,
    acked: Vec<AckedChange>,
}

/// A secret no other change uses (so a stage is never refused as "the same
/// as the current primary").
fn new_secret(seed: u64, name: &str, counter: &mut u64) -> String {
    *counter += 1;
    format!("{}{name}_{counter}", secret_prefix(seed))
}

/// How every secret of a drill with `seed` begins. The whole-suite leak
/// scan gets this prefix, once, instead of thousands of secrets: any of
/// them in an output contains it.
fn secret_prefix(seed: u64) -> String {
    format!("sk_crash_{seed:x}_")
}

// ---------------------------------------------------------------------------
// The load.

/// Runs changes on `keys` through the admin socket until the agent dies.
async fn grpc_writer(
    socket: PathBuf,
    mut keys: Vec<Tracked>,
    shared: Arc<Shared>,
    mut rng: StdRng,
    seed: u64,
    mut counter: u64,
) -> (WriterResult, u64) {
    let mut acked = Vec::new();
    let Ok(channel) = keyward_client::channel(&socket).await else {
        assert!(shared.killed.load(Ordering::SeqCst), "cannot connect to a live agent");
        return (WriterResult { keys, acked }, counter);
    };
    let mut admin = AdminClient::new(channel);
    loop {
        let i = rng.gen_range(0..keys.len());
        let k = &mut keys[i];
        let op = match &k.acked {
            None => Op::Create,
            Some(c) => Op::pick(c, &mut rng),
        };
        let secret = new_secret(seed, &k.name, &mut counter);
        let next = op.apply(k.acked.as_ref(), &secret);
        let expected_generation = Some(k.acked.as_ref().map_or(0, |c| c.generation));
        k.in_flight = Some((op, next.clone()));
        let result = tokio::time::timeout(CALL_TIMEOUT, call(&mut admin, op, &k.name, secret, expected_generation))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within the drill's timeout")));
        match result {
            Ok((generation, state)) => {
                assert_eq!(
                    (generation, state),
                    (next.generation, next.state),
                    "{op:?} of {ENV}/{} answered another state than the model's",
                    k.name
                );
                shared.floors[k.slot].fetch_max(generation, Ordering::SeqCst);
                acked.push(AckedChange {
                    key: format!("{ENV}/{}", k.name),
                    event: op.event(),
                    generation,
                });
                k.acked = Some(next);
                k.in_flight = None;
            }
            Err(status) => {
                assert!(
                    shared.killed.load(Ordering::SeqCst),
                    "{op:?} of {ENV}/{} failed while the agent was alive: {:?} {}",
                    k.name,
                    status.code(),
                    status.message()
                );
                break;
            }
        }
    }
    (WriterResult { keys, acked }, counter)
}

/// One change over gRPC; the generation and state it answered with.
async fn call(
    admin: &mut AdminClient<Channel>,
    op: Op,
    name: &str,
    secret: String,
    expected_generation: Option<u64>,
) -> Result<(u64, RotationState), tonic::Status> {
    let key = key(ENV, name);
    let secret = bytes::Bytes::from(secret.into_bytes());
    let info = match op {
        Op::Create | Op::Put => {
            admin
                .put_key(proto::PutKeyRequest {
                    key,
                    secret,
                    overwrite: op == Op::Put,
                    expected_generation,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .key
        }
        Op::Stage | Op::StageReplace => {
            admin
                .stage_key(proto::StageKeyRequest {
                    key,
                    secret,
                    replace: op == Op::StageReplace,
                    expected_generation,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .key
        }
        Op::Retire => {
            admin
                .retire_key(proto::RetireKeyRequest {
                    key,
                    expected_generation,
                    // What is drilled is durability, not the evidence
                    // gate (rotation_jobs tests that): nobody reports use.
                    force: true,
                })
                .await?
                .into_inner()
                .key
        }
        Op::Promote | Op::Abort | Op::Rollback => {
            let req = proto::RotationRequest {
                key,
                expected_generation,
            };
            let reply = match op {
                Op::Promote => admin.promote_key(req).await?,
                Op::Abort => admin.abort_key(req).await?,
                _ => admin.rollback_key(req).await?,
            };
            reply.into_inner().key
        }
    };
    let info = info.expect("a key in the answer");
    let state = RotationState::try_from(info.state).unwrap_or(RotationState::Unspecified);
    Ok((info.generation, state))
}

/// Runs changes on `keys` through the `keyward` CLI until the agent dies.
async fn cli_writer(
    dir: PathBuf,
    mut keys: Vec<Tracked>,
    shared: Arc<Shared>,
    mut rng: StdRng,
    seed: u64,
    mut counter: u64,
) -> (WriterResult, u64) {
    let mut acked = Vec::new();
    loop {
        let i = rng.gen_range(0..keys.len());
        let k = &mut keys[i];
        let op = match &k.acked {
            None => Op::Create,
            Some(c) => Op::pick(c, &mut rng),
        };
        let secret = new_secret(seed, &k.name, &mut counter);
        let next = op.apply(k.acked.as_ref(), &secret);
        let generation = k.acked.as_ref().map_or(0, |c| c.generation).to_string();
        let key = format!("{ENV}/{}", k.name);
        let mut args = match op {
            Op::Create => vec!["put", &key],
            Op::Put => vec!["put", &key, "--overwrite"],
            Op::Stage => vec!["stage", &key],
            Op::StageReplace => vec!["stage", &key, "--replace"],
            Op::Promote => vec!["promote", &key],
            Op::Abort => vec!["abort", &key],
            Op::Rollback => vec!["rollback", &key],
            Op::Retire => vec!["retire", "--force", &key],
        };
        args.extend(["--expected-generation", &generation]);
        let takes_secret = matches!(op, Op::Create | Op::Put | Op::Stage | Op::StageReplace);
        k.in_flight = Some((op, next.clone()));
        let mut child = tokio::process::Command::new(KEYWARD)
            .arg("--dev")
            .arg(&dir)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn keyward");
        let mut stdin = child.stdin.take().unwrap();
        if takes_secret {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, secret.as_bytes()).await;
        }
        drop(stdin);
        let out = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("keyward {args:?} did not finish within {CALL_TIMEOUT:?}"))
            .unwrap();
        if out.status.success() {
            shared.floors[k.slot].fetch_max(next.generation, Ordering::SeqCst);
            acked.push(AckedChange {
                key: key.clone(),
                event: op.event(),
                generation: next.generation,
            });
            k.acked = Some(next);
            k.in_flight = None;
        } else {
            assert!(
                shared.killed.load(Ordering::SeqCst),
                "keyward {args:?} failed while the agent was alive: {}",
                text(&out.stderr)
            );
            break;
        }
    }
    (WriterResult { keys, acked }, counter)
}

/// Fetches random keys until the agent dies; a fetch must never be older
/// than what was acknowledged before it was sent.
async fn fetcher(socket: PathBuf, shared: Arc<Shared>, mut rng: StdRng) {
    let Ok(channel) = keyward_client::channel(&socket).await else {
        assert!(shared.killed.load(Ordering::SeqCst), "cannot connect to a live agent");
        return;
    };
    let mut keys = KeysClient::new(channel);
    loop {
        let slot = rng.gen_range(0..shared.names.len());
        let floor = shared.floors[slot].load(Ordering::SeqCst);
        let request = proto::GetKeyRequest {
            key: key(ENV, &shared.names[slot]),
        };
        let result = tokio::time::timeout(CALL_TIMEOUT, keys.get_key(request)).await;
        match result {
            Ok(Ok(reply)) => {
                let set = reply.into_inner();
                assert!(
                    set.generation >= floor,
                    "GetKey of {ENV}/{} served generation {} after generation {floor} was acknowledged",
                    shared.names[slot],
                    set.generation
                );
                shared.fetched.fetch_add(1, Ordering::Relaxed);
            }
            // Not created yet (or its create is in flight).
            Ok(Err(s)) if s.code() == tonic::Code::NotFound && floor == 0 => {}
            Ok(Err(s)) => {
                assert!(
                    shared.killed.load(Ordering::SeqCst),
                    "GetKey of {ENV}/{} failed while the agent was alive: {:?} {}",
                    shared.names[slot],
                    s.code(),
                    s.message()
                );
                return;
            }
            Err(_) => panic!("GetKey got no answer within {CALL_TIMEOUT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The checks after a restart.

/// Figures over the whole drill.
#[derive(Default, Debug)]
struct Figures {
    kills: usize,
    startup_kills: usize,
    acked: usize,
    lost: usize,
    in_flight_applied: usize,
    in_flight_not_applied: usize,
    /// Applied in-flight changes that have no audit record (the agent died
    /// between making the change durable and auditing it).
    in_flight_unaudited: usize,
    fetched: u64,
    fetch_records: u64,
    torn_natural: usize,
    torn_planted: usize,
    tmp_after_kill: usize,
    tmp_left: usize,
    generation_backwards: usize,
    keys: usize,
    records: u64,
}

/// The audit log read so far, record by record.
#[derive(Default)]
struct AuditReader {
    offset: u64,
    /// (key, event, generation_after) of every `ok` change record.
    changes: HashSet<(String, String, u64)>,
    fetch_ok: u64,
    last_seq: u64,
    /// `detail` of every `audit_recovered`/`torn_tail` record.
    torn_notes: Vec<String>,
    records: u64,
}

impl AuditReader {
    /// Reads the complete lines added since the last call.
    fn catch_up(&mut self, path: &Path) {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(path).unwrap();
        file.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        let new = &bytes[..];
        let Some(end) = new.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        for line in new[..end].split(|&b| b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue; // a torn fragment: verify and the torn checks judge it
            };
            self.records += 1;
            let seq = v["seq"].as_u64().expect("a seq");
            assert_eq!(seq, self.last_seq + 1, "audit seq goes from {} to {seq}", self.last_seq);
            self.last_seq = seq;
            let event = v["event"].as_str().unwrap_or_default();
            let outcome = v["outcome"].as_str().unwrap_or_default();
            match (event, outcome) {
                ("fetch", "ok") => self.fetch_ok += 1,
                ("audit_recovered", "torn_tail") => self.torn_notes.push(v["detail"].as_str().unwrap().to_owned()),
                ("audit_recovered", other) => panic!("the agent found its audit log damaged ({other}): {v}"),
                (_, "ok") => {
                    if let (Some(key), Some(generation)) = (v["key"].as_str(), v["generation_after"].as_u64()) {
                        self.changes.insert((key.to_owned(), event.to_owned(), generation));
                    }
                }
                _ => {}
            }
        }
        self.offset += end as u64 + 1;
    }
}

/// Files under `dir` whose name marks them as temp files.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp")))
        .collect()
}

/// Decrypts and decodes every key file with the identity and install key
/// in `dir`, as the agent would; returns each key's state.
fn decode_store_offline(dir: &Path) -> HashMap<String, Expected> {
    use keyward::secret::KeyRef;
    use keyward::store::identity::{AgentIdentity, InstallKey};
    let identity = AgentIdentity::load(&dir.join("identity.txt")).expect("the identity loads");
    let fingerprinter = InstallKey::load(&dir.join("install.key"))
        .expect("the install key loads")
        .fingerprinter();
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir.join("store").join(ENV)).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".age") else {
            continue;
        };
        let ciphertext = std::fs::read(entry.path()).unwrap();
        let plaintext = identity
            .decrypt(&ciphertext)
            .unwrap_or_else(|e| panic!("{file} does not decrypt with the agent identity: {e}"));
        let state = keyward::store::record::decode(KeyRef::new(ENV, name).unwrap(), &plaintext, &fingerprinter)
            .unwrap_or_else(|e| panic!("{file} does not decode: {e}"));
        out.insert(
            name.to_owned(),
            Expected {
                generation: state.generation,
                state: state.state.to_proto(),
                primary: text(state.primary.secret.expose_secret()),
                fallback: state.fallback.as_ref().map(|f| text(f.secret.expose_secret())),
            },
        );
    }
    out
}

/// Runs `keyward audit verify` on the agent's log: (passed, output).
fn verify(agent: &TestAgent) -> (bool, String) {
    let out = agent.cli(&["audit", "verify"], None);
    (out.status.success(), text(&[out.stdout, out.stderr].concat()))
}

/// A torn fragment at the end of the log, before the restart that must
/// mark it.
struct Torn {
    offset: u64,
    bytes: Vec<u8>,
    planted: bool,
}

/// After a kill: the torn fragment the log ends with, if any; on a planted
/// round, first leaves one (a prefix of the last record, as a write cut
/// short leaves it).
fn torn_tail(path: &Path, plant: bool, rng: &mut StdRng) -> Option<Torn> {
    let mut bytes = std::fs::read(path).unwrap();
    let natural = bytes.last().is_some_and(|&b| b != b'\n');
    let planted = plant && !natural && bytes.len() > 1;
    if planted {
        let body = &bytes[..bytes.len() - 1];
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let last = body[start..].to_vec();
        let cut = rng.gen_range(1..last.len());
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut f, &last[..cut]).unwrap();
        bytes.extend_from_slice(&last[..cut]);
    }
    if !natural && !planted {
        return None;
    }
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Some(Torn {
        offset: start as u64,
        bytes: bytes[start..].to_vec(),
        planted,
    })
}

/// Starts the agent as the drill runs it (info logs: debug logs of every
/// fetch would slow it down); `Err` if it exits instead.
fn start(agent: &mut TestAgent) -> Result<(), String> {
    let mut cmd = agent.command();
    cmd.env("KEYWARD_LOG", "info");
    agent.spawn_with(cmd)
}

/// Starts the agent and kills it `after` later, while it starts.
fn kill_while_starting(agent: &TestAgent, after: Duration) {
    let mut cmd = agent.command();
    cmd.env("KEYWARD_LOG", "info");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keywardd");
    std::thread::sleep(after);
    let _ = child.kill();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acknowledged_change() {
    let kills: usize = param("KEYWARD_DRILL_KILLS", 20);
    let seed: u64 = param("KEYWARD_DRILL_SEED", rand::random::<u64>() >> 12);
    let writers: usize = param("KEYWARD_DRILL_WRITERS", 3);
    let fetchers: usize = param("KEYWARD_DRILL_FETCHERS", 2);
    let load_ms: u64 = param::<u64>("KEYWARD_DRILL_LOAD_MS", 600).max(30);
    println!("crash drill: seed={seed} (KEYWARD_DRILL_SEED={seed} repeats the kill times and the load)");
    keep_for_leak_scan("secrets", secret_prefix(seed).as_bytes());
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    let dir = agent.dir.clone();
    // Every writer (the last one is the CLI writer) owns its own keys.
    let mut pools: Vec<Vec<Tracked>> = Vec::new();
    let mut names = Vec::new();
    for w in 0..=writers {
        let mut pool = Vec::new();
        for k in 0..KEYS_AT_MOST {
            let tracked = Tracked {
                name: format!("w{w}-k{k}"),
                slot: names.len(),
                acked: None,
                in_flight: None,
            };
            names.push(tracked.name.clone());
            pool.push(tracked);
        }
        pools.push(pool);
    }
    let mut counters = vec![0u64; writers + 1];
    let mut figures = Figures::default();
    let mut audit = AuditReader::default();
    let mut acked_changes: Vec<AckedChange> = Vec::new();
    let mut last_seen: HashMap<String, u64> = HashMap::new();

    let mut round = 0;
    while figures.kills < kills {
        round += 1;
        // Each round, writers may create one more of their keys.
        let active = (KEYS_AT_START + round / 2).min(KEYS_AT_MOST);
        let shared = Arc::new(Shared {
            floors: names
                .iter()
                .map(|n| AtomicU64::new(last_seen.get(n).copied().unwrap_or(0)))
                .collect(),
            names: names.clone(),
            killed: AtomicBool::new(false),
            fetched: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for (w, pool) in pools.iter_mut().enumerate() {
            let keys: Vec<Tracked> = pool.drain(..active.min(pool.len())).collect();
            let task_rng = StdRng::seed_from_u64(rng.gen());
            let shared = shared.clone();
            let counter = counters[w];
            tasks.push(if w < writers {
                tokio::spawn(grpc_writer(agent.admin_sock(), keys, shared, task_rng, seed, counter))
            } else {
                tokio::spawn(cli_writer(dir.clone(), keys, shared, task_rng, seed, counter))
            });
        }
        let mut fetch_tasks = Vec::new();
        for _ in 0..fetchers {
            fetch_tasks.push(tokio::spawn(fetcher(
                agent.keys_sock(),
                shared.clone(),
                StdRng::seed_from_u64(rng.gen()),
            )));
        }

        // The kill, at a random moment of the load.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=load_ms))).await;
        shared.killed.store(true, Ordering::SeqCst);
        agent.kill9();
        figures.kills += 1;
        for (w, task) in tasks.into_iter().enumerate() {
            let (result, counter) = task.await.expect("writer task");
            counters[w] = counter;
            let mut keys = result.keys;
            keys.append(&mut pools[w]);
            pools[w] = keys;
            figures.acked += result.acked.len();
            acked_changes.extend(result.acked);
        }
        for task in fetch_tasks {
            task.await.expect("fetch task");
        }
        figures.fetched += shared.fetched.load(Ordering::Relaxed);

        // What the kill left behind.
        figures.tmp_after_kill += temp_files(&dir).len();
        let torn = torn_tail(&agent.audit_file(), rng.gen_ratio(1, 5), &mut rng);
        if let Some(t) = &torn {
            if t.planted {
                figures.torn_planted += 1;
            } else {
                figures.torn_natural += 1;
            }
            // Before the restart, verify already tells a torn tail from
            // damage: a note that the agent will mark it, not a failure.
            let (ok, report) = verify(&agent);
            assert!(
                ok,
                "round {round}: a torn last line fails verify before the restart:\n{report}"
            );
            assert!(
                report.contains("torn fragment"),
                "round {round}: no note of the torn line:\n{report}"
            );
        }
        // Sometimes the next start is killed too, while it starts.
        if figures.kills < kills && rng.gen_ratio(1, 10) {
            kill_while_starting(&agent, Duration::from_millis(rng.gen_range(0..150)));
            figures.kills += 1;
            figures.startup_kills += 1;
        }

        let logs_before = agent.logs().len();
        start(&mut agent).unwrap_or_else(|e| panic!("round {round}: the agent does not restart after kill -9: {e}"));
        let since_start = agent.logs()[logs_before..].to_owned();
        assert!(
            !since_start.contains("key file not loaded") && !since_start.contains("skipped a key file"),
            "round {round}: a key file was skipped at start:\n{since_start}"
        );

        // Every key is in its acknowledged state, or in the state of the
        // change that was in flight.
        let mut keys = agent.keys().await;
        let on_disk = decode_store_offline(&dir);
        let mut served = 0;
        for pool in &mut pools {
            for k in pool.iter_mut() {
                let key_name = format!("{ENV}/{}", k.name);
                let now = match keys.get_key(proto::GetKeyRequest { key: key(ENV, &k.name) }).await {
                    Ok(r) => Some(Expected::of(&r.into_inner())),
                    Err(s) if s.code() == tonic::Code::NotFound => None,
                    Err(s) => panic!("round {round}: GetKey {key_name} after the restart: {s:?}"),
                };
                assert_eq!(
                    on_disk.get(&k.name),
                    now.as_ref(),
                    "round {round}: {key_name} is served otherwise than its file says"
                );
                let in_flight = k.in_flight.take();
                let applied = in_flight
                    .as_ref()
                    .filter(|(_, next)| now.as_ref() == Some(next))
                    .cloned();
                if now == k.acked {
                    if in_flight.is_some() {
                        figures.in_flight_not_applied += 1;
                    }
                } else if let Some((op, next)) = applied {
                    figures.in_flight_applied += 1;
                    audit.catch_up(&agent.audit_file());
                    if !audit
                        .changes
                        .contains(&(key_name.clone(), op.event().to_owned(), next.generation))
                    {
                        figures.in_flight_unaudited += 1;
                    }
                    k.acked = Some(next);
                } else {
                    figures.lost += 1;
                    eprintln!(
                        "round {round}: LOST: {key_name} is {now:?}; acknowledged {:?}, in flight {in_flight:?}",
                        k.acked
                    );
                }
                if let Some(now) = &now {
                    served += 1;
                    let before = last_seen.insert(k.name.clone(), now.generation).unwrap_or(0);
                    if now.generation < before {
                        figures.generation_backwards += 1;
                        eprintln!(
                            "round {round}: {key_name} went back from generation {before} to {}",
                            now.generation
                        );
                    }
                }
            }
        }
        assert_eq!(on_disk.len(), served, "round {round}: key files that no writer made");
        figures.keys = served;
        assert_eq!(
            figures.lost, 0,
            "round {round}: acknowledged changes lost (seed {seed})"
        );
        assert_eq!(
            figures.generation_backwards, 0,
            "round {round}: generations went backwards"
        );

        // No temp file survives the restart.
        let left = temp_files(&dir);
        figures.tmp_left += left.len();
        assert!(
            left.is_empty(),
            "round {round}: temp files left after the restart: {left:?}"
        );

        // The audit chain verifies; a torn tail is kept, ended and marked.
        let (ok, report) = verify(&agent);
        assert!(ok, "round {round}: keyward audit verify after the restart:\n{report}");
        if let Some(t) = torn {
            let log = std::fs::read(agent.audit_file()).unwrap();
            let at = t.offset as usize;
            assert_eq!(
                log.get(at..at + t.bytes.len()),
                Some(&t.bytes[..]),
                "round {round}: the torn fragment at byte {at} was not kept as it was"
            );
            assert_eq!(
                log.get(at + t.bytes.len()),
                Some(&b'\n'),
                "round {round}: the torn fragment was not ended with a newline"
            );
            audit.catch_up(&agent.audit_file());
            // A kill while the agent was starting may have torn its notice
            // too: then one notice names the whole run from this offset.
            let named = format!(" bytes at byte offset {at} ");
            assert!(
                audit
                    .torn_notes
                    .iter()
                    .any(|d| d.starts_with("torn fragment of ") && d.contains(&named)),
                "round {round}: no audit_recovered record names the torn fragment ({named}): {:?}",
                audit.torn_notes
            );
            assert!(
                report.contains(&format!("at byte offset {at}")) && report.contains("nothing is missing"),
                "round {round}: verify does not note the marked fragment:\n{report}"
            );
        }
        audit.catch_up(&agent.audit_file());
        if kills > 20 && round % 25 == 0 {
            println!(
                "crash drill: {} kills, {} acknowledged changes, lost {}, {:.0} s",
                figures.kills,
                figures.acked,
                figures.lost,
                started.elapsed().as_secs_f64()
            );
        }
    }
    agent.stop();

    // Every acknowledged change is in the audit log, and every answered
    // fetch has its record.
    audit.catch_up(&agent.audit_file());
    let (ok, report) = verify(&agent);
    assert!(ok, "keyward audit verify at the end:\n{report}");
    let missing: Vec<&AckedChange> = acked_changes
        .iter()
        .filter(|c| {
            !audit
                .changes
                .contains(&(c.key.clone(), c.event.to_owned(), c.generation))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged changes without an audit record: {missing:?}"
    );
    figures.fetch_records = audit.fetch_ok;
    figures.records = audit.records;
    assert!(
        audit.fetch_ok >= figures.fetched,
        "{} fetches were answered but only {} fetch records were written",
        figures.fetched,
        audit.fetch_ok
    );
    assert!(figures.acked > kills, "the load made progress: {figures:?}");
    let f = &figures;
    println!(
        "crash drill: seed={seed} kills={} (while starting {}) acked={} lost={} in_flight_applied={} (unaudited {}) \
         in_flight_not_applied={} fetched={} fetch_records={} torn_tails={} (natural {}, planted {}) \
         tmp_after_kill={} tmp_left={} generation_backwards={} keys={} audit_records={} elapsed_s={:.1}",
        f.kills,
        f.startup_kills,
        f.acked,
        f.lost,
        f.in_flight_applied,
        f.in_flight_unaudited,
        f.in_flight_not_applied,
        f.fetched,
        f.fetch_records,
        f.torn_natural + f.torn_planted,
        f.torn_natural,
        f.torn_planted,
        f.tmp_after_kill,
        f.tmp_left,
        f.generation_backwards,
        f.keys,
        f.records,
        started.elapsed().as_secs_f64()
    );
}
