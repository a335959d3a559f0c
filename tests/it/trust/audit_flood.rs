//! A caller with no grant tries to fill the audit disk with refusals, and
//! so to have every fail-closed fetch refused: its refusals are coalesced
//! (the first of a kind at once, one counting record per window), what it
//! varies (keys, invalid names, pids, invalid UTF-8) stays bounded, and a
//! granted caller keeps being served. The audit disk's free space is
//! watched: below `[audit] min_free` an `agent_health` alert fires, and
//! resolves once there is room again.
//!
//! The audit log lives on a small tmpfs the test mounts, so that an
//! unbounded log fills it as it would a small /var/log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use keyward::proto;
use serde_json::Value;

use crate::common::system::{helper, helper_param, helper_result, is_helper, is_root, skip, Cleanup, SharedDir, Uid};
use crate::common::{text, TestAgent, KEYWARD};

/// No grant: every key it asks for is refused.
const ATTACKER: Uid = Uid::member(2011);
/// Granted prod/billing-api: must keep being served during the flood.
const CALLER: Uid = Uid::member(2012);
const KEY: &str = "prod/billing-api";
const SECRET: &str = "sk_live_audit_flood_5c2e9a71";

/// GetKey calls of the first phase (same key, four processes).
const SAME_KEY_CALLS: usize = 40_000;
/// GetKey calls of the second phase (a new key or name each time).
const VARIED_CALLS: usize = 6_000;
/// Requests whose key is not UTF-8 (never decoded, never audited).
const NON_UTF8_CALLS: usize = 500;
/// What the whole attack may add to the audit log.
const GROWTH_LIMIT: u64 = 64 * 1024;

/// Mounts a tmpfs of `size` at `dir` (created); unmounted when the guard
/// drops, also when the test fails.
fn mount_tmpfs(dir: &Path, size: &str) -> Cleanup {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount tmpfs: {}", text(&out.stderr));
    let dir = dir.to_owned();
    Cleanup::new(move || {
        // Lazy: the agent may still hold the log open if the test failed.
        let _ = std::process::Command::new("umount").arg("-l").arg(&dir).status();
    })
}

/// Resizes the tmpfs at `dir`.
fn resize_tmpfs(dir: &Path, size: &str) {
    let out = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "remount: {}", text(&out.stderr));
}

/// A system-mode agent (see `start_system_shared`) whose audit log is
/// `audit_file`, started.
fn start_with_audit_at(audit_file: &Path, toml: &str) -> TestAgent {
    let mut agent = TestAgent::prepare_system_shared("", toml);
    let config = agent.dir.parent().unwrap().join("keyward.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let default = format!("audit_file = \"{}/audit.jsonl\"", agent.dir.display());
    assert!(text.contains(&default), "{text}");
    let text = text.replace(
        &default,
        &format!("audit_file = {:?}", audit_file.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let cmd = agent.system_command();
    agent.spawn_with(cmd).expect("agent starts");
    agent
}

fn records(file: &Path) -> Vec<(u64, Value)> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| (l.len() as u64 + 1, serde_json::from_str(l).unwrap()))
        .collect()
}

fn uid_of(r: &Value) -> Option<u64> {
    r["caller"]["uid"].as_u64()
}

/// How many refusals a record stands for.
fn weight(r: &Value) -> u64 {
    r["count"].as_u64().unwrap_or(1)
}

fn verify(file: &Path, install_key: &Path) {
    let out = std::process::Command::new(KEYWARD)
        .args(["audit", "verify"])
        .arg(file)
        .arg("--key")
        .arg(install_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keyward audit verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Starts the flood helper as `who` in `mode`.
fn spawn_helper(who: Uid, shared: &SharedDir, agent: &TestAgent, mode: &str, calls: usize, stop: &Path) -> Child {
    helper(Some(who), "trust::audit_flood::flood_helper", shared)
        .env("KEYWARD_HELPER_SOCKET", agent.keys_sock())
        .env("KEYWARD_HELPER_MODE", mode)
        .env("KEYWARD_HELPER_CALLS", calls.to_string())
        .env("KEYWARD_HELPER_STOP", stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

#[test]
fn a_flood_of_refusals_adds_little_to_the_audit_and_the_granted_caller_is_served() {
    if !is_root() {
        return skip("needs root: it runs callers as other uids and mounts a tmpfs");
    }
    let shared = SharedDir::new();
    let audit_dir = shared.path().join("audit");
    // 8 MiB: 40,000 refusals recorded one by one (~20 MB) would fill it.
    let _mounted = mount_tmpfs(&audit_dir, "8m");
    let audit_file = audit_dir.join("audit.jsonl");
    let mut agent = start_with_audit_at(
        &audit_file,
        &format!("[[grant]]\nuids = [{}]\nkeys = [\"{KEY}\"]\n", CALLER.uid),
    );
    agent.put(KEY, SECRET);
    let before = std::fs::metadata(&audit_file).unwrap().len();

    // The granted caller fetches every 2 ms from before the flood to after.
    let stop = shared.owned_dir("legit", CALLER).join("stop");
    let ready = stop.with_extension("ready");
    let caller = spawn_helper(CALLER, &shared, &agent, "legit", 0, &stop);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the granted caller never got its first key");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A second of fetches without the flood, for comparison.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(stop.with_extension("flood"), b"").unwrap();

    // Phase 1: the same refused key, from four processes (four pids).
    let started = Instant::now();
    let attackers: Vec<Child> = (0..4)
        .map(|_| spawn_helper(ATTACKER, &shared, &agent, "same", SAME_KEY_CALLS / 4, &stop))
        .collect();
    let mut refused = 0;
    for child in attackers {
        let r = helper_result(child.wait_with_output().unwrap(), "an attacker");
        assert_eq!(r["other"], 0, "every call is refused as denied: {r}");
        refused += r["denied"].as_u64().unwrap();
    }
    let same_key_secs = started.elapsed().as_secs_f64();
    assert_eq!(refused, SAME_KEY_CALLS as u64);

    // Phase 2: a new made-up key, invalid name or unknown environment each
    // time, then keys that are not UTF-8 at all.
    let varied = spawn_helper(ATTACKER, &shared, &agent, "varied", VARIED_CALLS, &stop);
    let varied = helper_result(varied.wait_with_output().unwrap(), "the varying attacker");
    assert_eq!(varied["ok"], 0, "{varied}");
    assert_eq!(
        varied["denied"].as_u64().unwrap() + varied["invalid"].as_u64().unwrap(),
        VARIED_CALLS as u64,
        "{varied}"
    );
    assert_eq!(varied["non_utf8_refused"], NON_UTF8_CALLS as u64, "{varied}");
    let flood_secs = started.elapsed().as_secs_f64();

    std::fs::write(&stop, b"").unwrap();
    let served = helper_result(caller.wait_with_output().unwrap(), "the granted caller");
    assert_eq!(
        served["failed"], 0,
        "the granted caller was refused during the flood: {served}"
    );
    assert!(served["ok"].as_u64().unwrap() > 100, "{served}");

    // Windows still open are written at shutdown, before agent_stop.
    assert!(agent.stop().success(), "{}", agent.logs());
    let records = records(&audit_file);
    let total = std::fs::metadata(&audit_file).unwrap().len();
    let mut attack_bytes = 0;
    let mut legit_bytes = 0;
    for (len, r) in &records {
        match uid_of(r) {
            Some(2012) => legit_bytes += len,
            Some(2011) => attack_bytes += len,
            _ => {}
        }
    }
    let growth = total - before - legit_bytes;
    let attack: Vec<&Value> = records
        .iter()
        .map(|(_, r)| r)
        .filter(|r| uid_of(r) == Some(2011) || (r.get("count").is_some() && r.get("caller").is_none()))
        .collect();
    let (calm, flood) = (&served["before_flood_us"], &served["during_flood_us"]);
    eprintln!(
        "FIGURES: {SAME_KEY_CALLS} same-key refusals in {same_key_secs:.1}s, then {VARIED_CALLS} varied + {NON_UTF8_CALLS} non-UTF-8 \
         (flood {flood_secs:.1}s): audit log grew {growth} bytes apart from the granted caller's records \
         ({attack_bytes} bytes in {} records of uid 2011); granted caller: {} fetches, 0 failed; GetKey latency \
         before the flood p50 {} µs p99 {} µs max {} µs ({} fetches), during it p50 {} µs p99 {} µs max {} µs ({} fetches)",
        attack.len(),
        served["ok"],
        calm["p50"],
        calm["p99"],
        calm["max"],
        calm["n"],
        flood["p50"],
        flood["p99"],
        flood["max"],
        flood["n"],
    );
    assert!(
        growth < GROWTH_LIMIT,
        "the attack added {growth} bytes to the audit log"
    );

    // Phase 1 is one record at once plus records counting the rest, and
    // together they account for every refusal.
    let same: Vec<&&Value> = attack.iter().filter(|r| r["key"] == KEY).collect();
    assert_eq!(same.iter().map(|r| weight(r)).sum::<u64>(), SAME_KEY_CALLS as u64);
    assert!(same.len() <= 4, "{same:#?}");
    assert!(
        same[0].get("count").is_none(),
        "the first is recorded at once, as it is"
    );
    let counted = same
        .iter()
        .find(|r| r.get("count").is_some())
        .expect("a coalesced record");
    assert_eq!(
        (counted["event"].as_str(), counted["outcome"].as_str()),
        (Some("fetch"), Some("denied"))
    );
    let time = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(time(&same[0]["time"]) <= time(&counted["first"]));
    assert!(time(&counted["first"]) < time(&counted["last"]));
    assert!(time(&counted["last"]) <= time(&counted["time"]));
    assert!(
        counted["detail"]
            .as_str()
            .unwrap()
            .contains("may not read prod/billing-api"),
        "{counted}"
    );
    let stop_at = records.iter().position(|(_, r)| r["event"] == "agent_stop").unwrap();
    assert_eq!(stop_at, records.len() - 1, "agent_stop is the last record");

    // Phase 2: at most 16 keys of its own per window, the rest folded into
    // records that name no key and count the distinct ones.
    let varied_records: Vec<&&Value> = attack.iter().filter(|r| r["key"] != KEY).collect();
    assert_eq!(
        varied_records.iter().map(|r| weight(r)).sum::<u64>(),
        VARIED_CALLS as u64,
        "every varied refusal is accounted for, and the non-UTF-8 ones never reached the audit"
    );
    let keys: BTreeSet<&str> = varied_records.iter().filter_map(|r| r["key"].as_str()).collect();
    assert!(keys.len() <= 3 * 16, "{} keys named", keys.len());
    let folded: Vec<&&&Value> = varied_records
        .iter()
        .filter(|r| r.get("distinct_keys").is_some())
        .collect();
    assert!(!folded.is_empty(), "the keys past 16 are folded");
    for f in &folded {
        assert!(f.get("key").is_none(), "{f}");
        assert_eq!(f["distinct_keys"], 100, "at least 100 distinct keys: {f}");
        assert!(f["count"].as_u64().unwrap() > 1000, "{f}");
    }

    // Allowed fetches are still recorded one by one.
    let fetched = records
        .iter()
        .filter(|(_, r)| uid_of(r) == Some(2012) && r["event"] == "fetch" && r["outcome"] == "ok")
        .count();
    assert_eq!(fetched as u64, served["ok"].as_u64().unwrap());
    assert!(records
        .iter()
        .all(|(_, r)| uid_of(r) != Some(2012) || r.get("count").is_none()));

    verify(&audit_file, &agent.dir.join("install.key"));
}

#[test]
fn a_window_ends_with_one_record_counting_the_rest_while_the_agent_runs() {
    if !is_root() {
        return skip("needs root: it runs a caller as another uid");
    }
    let shared = SharedDir::new();
    let agent = TestAgent::start_system_shared("", "[audit]\ncoalesce_window = \"2s\"\n");
    agent.put(KEY, SECRET);
    let stop = shared.path().join("stop");
    let run = |calls| {
        let child = spawn_helper(ATTACKER, &shared, &agent, "same", calls, &stop);
        let r = helper_result(child.wait_with_output().unwrap(), "the attacker");
        assert_eq!(r["denied"], calls as u64, "{r}");
    };
    run(50);
    let denied = || agent.audit_records("fetch", "denied");
    assert_eq!(denied().len(), 1, "only the first is written at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    while denied().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no record at the window's end: {:#?}",
            denied()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counted = &denied()[1];
    assert_eq!(counted["count"], 49, "{counted}");
    assert_eq!(counted["key"], KEY);
    assert_eq!(counted["caller"]["uid"], 2011);
    // The next refusal opens a new window: written at once.
    run(1);
    assert_eq!(denied().len(), 3);
    assert!(denied()[2].get("count").is_none());
    verify(&agent.audit_file(), &agent.dir.join("install.key"));
}

#[tokio::test]
async fn low_free_space_on_the_audit_disk_raises_an_alert_that_resolves() {
    if !is_root() {
        return skip("needs root: it mounts a tmpfs");
    }
    let shared = SharedDir::new();
    let audit_dir = shared.path().join("audit");
    let _mounted = mount_tmpfs(&audit_dir, "1m");
    let audit_file = audit_dir.join("audit.jsonl");
    let agent = start_with_audit_at(
        &audit_file,
        "[audit]\nmin_free = \"2MiB\"\n[alerts.detect]\nwindow = \"2s\"\n[[grant]]\nuids = [0]\nkeys = [\"prod/*\"]\n",
    );
    agent.put(KEY, SECRET);

    let health = |status: &proto::AgentStatus| {
        status
            .open_alerts
            .iter()
            .find(|a| a.signal == "agent_health" && a.dedup_key.ends_with("/agent/audit_disk/agent_health"))
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = loop {
        if let Some(a) = health(&agent.status().await) {
            break a;
        }
        assert!(Instant::now() < deadline, "no alert; logs: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alert.severity, "warning");
    for part in [
        format!("the filesystem at {}", audit_dir.display()),
        "free of 1 MiB".to_owned(),
        "below [audit] min_free (2 MiB)".to_owned(),
    ] {
        assert!(alert.summary.contains(&part), "{part:?} not in {}", alert.summary);
    }
    // The log sink's line follows the status (the sinks' dispatch is its
    // own task).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.logs().contains("alert firing: agent/audit_disk") {
        assert!(Instant::now() < deadline, "{}", agent.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It fires before the disk is full: fetches are still served.
    let set = agent.fetch("prod", "billing-api").await.unwrap();
    assert_eq!(&set.primary.unwrap().secret[..], SECRET.as_bytes());

    // Room again: it resolves.
    resize_tmpfs(&audit_dir, "8m");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&agent.status().await).is_some() {
        assert!(
            Instant::now() < deadline,
            "the alert did not resolve; logs: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Likewise for the resolution.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.logs().contains("alert resolved: resolved: agent/audit_disk") {
        assert!(Instant::now() < deadline, "{}", agent.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The helper: run as another uid by `spawn_helper`.

/// A GetKeyRequest whose key's strings are raw bytes (to send invalid
/// UTF-8, which the generated types cannot).
#[derive(Clone, PartialEq, prost::Message)]
struct RawKeyRef {
    #[prost(bytes = "vec", tag = "1")]
    environment: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    name: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawGetKeyRequest {
    #[prost(message, optional, tag = "1")]
    key: Option<RawKeyRef>,
}

/// Tallies of one helper run.
#[derive(Default)]
struct Tally {
    ok: u64,
    denied: u64,
    invalid: u64,
    other: u64,
    first_other: Option<String>,
}

impl Tally {
    fn add(&mut self, r: Result<tonic::Response<proto::KeySet>, tonic::Status>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(s) if s.code() == tonic::Code::PermissionDenied => self.denied += 1,
            Err(s) if s.code() == tonic::Code::InvalidArgument => self.invalid += 1,
            Err(s) => {
                self.other += 1;
                self.first_other
                    .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }
}

/// `same`: CALLS GetKey of prod/billing-api (8 at a time on one
/// connection); `varied`: CALLS GetKey of a new made-up key, invalid name
/// or unknown environment each, then NON_UTF8_CALLS keys that are not
/// UTF-8; `legit`: GetKey of prod/billing-api every 2 ms until the STOP
/// file exists, timing each.
#[tokio::test]
#[ignore = "a helper: run by the tests of this module as another uid"]
async fn flood_helper() {
    if !is_helper() {
        return;
    }
    let socket = PathBuf::from(helper_param("KEYWARD_HELPER_SOCKET"));
    let calls: usize = helper_param("KEYWARD_HELPER_CALLS").parse().unwrap();
    let stop = PathBuf::from(helper_param("KEYWARD_HELPER_STOP"));
    let channel = keyward_client::channel(&socket).await.expect("connect");
    let client = proto::keys_client::KeysClient::new(channel.clone());
    let request = |env: &str, name: &str| proto::GetKeyRequest {
        key: Some(proto::KeyRef {
            environment: env.to_owned(),
            name: name.to_owned(),
        }),
    };
    let (env, name) = KEY.split_once('/').unwrap();
    let result = match helper_param("KEYWARD_HELPER_MODE").as_str() {
        "same" => {
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let mut client = client.clone();
                    let n = calls / 8 + usize::from(t < calls % 8);
                    let req = request(env, name);
                    tokio::spawn(async move {
                        let mut tally = Tally::default();
                        for _ in 0..n {
                            tally.add(client.get_key(req.clone()).await);
                        }
                        tally
                    })
                })
                .collect();
            let mut all = Tally::default();
            for task in tasks {
                let t = task.await.unwrap();
                (all.ok, all.denied, all.invalid, all.other) = (
                    all.ok + t.ok,
                    all.denied + t.denied,
                    all.invalid + t.invalid,
                    all.other + t.other,
                );
                all.first_other = all.first_other.or(t.first_other);
            }
            serde_json::json!({"ok": all.ok, "denied": all.denied, "invalid": all.invalid,
                "other": all.other, "first_other": all.first_other})
        }
        "varied" => {
            let mut client = client.clone();
            let mut tally = Tally::default();
            for i in 0..calls {
                let req = match i % 3 {
                    0 => request("prod", &format!("made-up-{i}")),
                    1 => request("prod", &format!("Not_A_Name/{i}")),
                    _ => request(&format!("qa{i}"), "x"),
                };
                tally.add(client.get_key(req).await);
            }
            // Not UTF-8: refused by the decoder before any handler runs.
            let mut grpc = tonic::client::Grpc::new(channel);
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/keyward.v1.Keys/GetKey");
            let mut non_utf8_refused = 0u64;
            for i in 0..NON_UTF8_CALLS {
                let raw = RawGetKeyRequest {
                    key: Some(RawKeyRef {
                        environment: b"prod".to_vec(),
                        name: [b"\xff\xfe".as_slice(), i.to_string().as_bytes()].concat(),
                    }),
                };
                grpc.ready().await.expect("ready");
                let codec = tonic_prost::ProstCodec::<RawGetKeyRequest, proto::KeySet>::default();
                if grpc.unary(tonic::Request::new(raw), path.clone(), codec).await.is_err() {
                    non_utf8_refused += 1;
                }
            }
            serde_json::json!({"ok": tally.ok, "denied": tally.denied, "invalid": tally.invalid,
                "other": tally.other, "first_other": tally.first_other, "non_utf8_refused": non_utf8_refused})
        }
        "legit" => {
            let mut client = client.clone();
            let (ready, flood) = (stop.with_extension("ready"), stop.with_extension("flood"));
            // Latencies before the flood file appears, and after.
            let mut samples: [Vec<u64>; 2] = Default::default();
            let mut failed = 0u64;
            let mut first_error = None;
            while !stop.exists() {
                let during = usize::from(flood.exists());
                let t = Instant::now();
                match client.get_key(request(env, name)).await {
                    Ok(r) => {
                        samples[during].push(t.elapsed().as_micros() as u64);
                        assert_eq!(&r.into_inner().primary.unwrap().secret[..], SECRET.as_bytes());
                        if !ready.exists() {
                            std::fs::write(&ready, b"").unwrap();
                        }
                    }
                    Err(s) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let ok = samples[0].len() + samples[1].len();
            let [calm, flood] = samples.map(|mut s| {
                s.sort_unstable();
                let pct = |p: f64| {
                    s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)))
                        .copied()
                };
                serde_json::json!({"n": s.len(), "p50": pct(0.5), "p99": pct(0.99), "max": s.last()})
            });
            serde_json::json!({"ok": ok, "failed": failed, "first_error": first_error,
                "before_flood_us": calm, "during_flood_us": flood})
        }
        other => panic!("unknown mode {other}"),
    };
    println!("RESULT {result}");
}
