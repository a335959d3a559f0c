//! The drill on a schedule (issue 16): the agent rotates the key by itself,
//! back to back, with no CLI in the loop, while the main drill's workers
//! (`call_with_fallback` through the Rust client) and `keyward run`
//! children call the provider.
//!
//! The key's `every` (200 ms) is shorter than a rotation takes (hooks
//! included), so the key is due again as soon as a job retires the old
//! key, and the agent's schedule, which it checks twice a second, starts
//! the next job within 500 ms.
//!
//! The schedule is switched on by a config reload (SIGHUP) once every
//! worker and child is under way and subscribed, so that every rotation is
//! seen whole by all of them, and off again once the wanted number of
//! rotations has been promoted; the job under way then finishes. Progress
//! is followed through the admin socket (`GetRotationStatus`: the key's
//! primary, the job's result); durations come from the audit log's
//! `rotation_job` records (`started`, then `ok`, with microsecond times).
//!
//! Asserted: no request failed, through the client or `keyward run`; every
//! job was started by the schedule and ended ok; each `keyward run` child
//! started its program once plus once per rotation (counted by the
//! program's copies themselves: one restart per rotation, at the promote);
//! one key issued, validated twice and revoked per rotation, and the
//! agent's primary the only valid one; no alert; no provider key in the
//! agent's output, the audit log or keyward run's output; the audit chain
//! verifies.
//!
//! Prints `drill-schedule: rotations=… requests=… failed=… …
//! restarts_per_rotation=… rotation_ms p50=… p99=… …` (a rotation's time
//! is from its job's start record to its end record; `interval_ms` is from
//! one job's start to the next's). Parameters: those of the main drill
//! (`KEYWARD_DRILL_ROTATIONS`, here 5 by default; `_WORKERS`,
//! `_RUN_CHILDREN`, `_RUN_SPLAY`, `_GRACE`), and `KEYWARD_DRILL_EVERY`
//! (`200ms`), the key's `every`.

use super::*;

use std::io::BufRead;
use std::time::SystemTime;

use keyward::proto::RotationStatus;

/// How long the drill waits for the next rotation before it calls the
/// schedule stuck.
const STALL: Duration = Duration::from_secs(60);

/// One rotation job of the key, from its audit records.
struct AuditedJob {
    started: SystemTime,
    ended: SystemTime,
    /// Its start record says the schedule started it.
    scheduled: bool,
    /// The end record's outcome (ok, failed, rolled_back, cancelled).
    outcome: String,
    /// The end record's detail.
    detail: String,
}

impl AuditedJob {
    fn took(&self) -> Duration {
        self.ended.duration_since(self.started).unwrap_or_default()
    }
}

/// The key's rotation jobs in the audit log, in order. The file is read
/// line by line and only `rotation_job` lines are parsed: a long drill's
/// log holds millions of fetch records.
///
/// The agent writes a job's end record just after marking the job ended,
/// so the schedule may start the next job, and write its start record,
/// before it: the n-th end is the n-th job's (one job per key at a time).
fn audited_jobs(agent: &TestAgent) -> Vec<AuditedJob> {
    let file = std::fs::File::open(agent.audit_file()).expect("the audit log");
    let mut jobs = Vec::new();
    let mut open: std::collections::VecDeque<(SystemTime, bool)> = Default::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.expect("an audit line");
        if !line.contains(r#""event":"rotation_job""#) {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&line).expect("an audit record");
        if record["key"] != KEY {
            continue;
        }
        let time = record["time"].as_str().expect("a record's time");
        let time = humantime::parse_rfc3339(time).expect("an RFC 3339 time");
        let detail = record["detail"].as_str().unwrap_or_default().to_owned();
        match record["outcome"].as_str().unwrap_or_default() {
            "started" => open.push_back((time, detail.starts_with("rotation job started (schedule)"))),
            outcome => {
                let (started, scheduled) = open
                    .pop_front()
                    .unwrap_or_else(|| panic!("a job ended that never started: {line}"));
                jobs.push(AuditedJob {
                    started,
                    ended: time,
                    scheduled,
                    outcome: outcome.to_owned(),
                    detail,
                });
            }
        }
    }
    assert!(open.is_empty(), "{} job(s) without an end in the audit log", open.len());
    jobs
}

/// The key's primary version in `status`.
fn primary(status: &RotationStatus) -> u64 {
    status
        .key
        .as_ref()
        .and_then(|k| k.primary.as_ref())
        .map_or(0, |p| p.version)
}

/// Panics if `status` shows a job that ended other than ok.
fn assert_no_failed_job(status: &RotationStatus) {
    if let Some(job) = &status.job {
        assert!(
            job.active || job.result == "ok",
            "a {} rotation job ended {}: {}\n{}",
            job.trigger,
            job.result,
            job.message,
            job.log.join("\n")
        );
    }
}

/// Switches the key's schedule (`every`) on or off: a new config, SIGHUP,
/// and a wait (10 s at most) until the agent reports the key's schedule
/// accordingly.
async fn set_schedule(agent: &TestAgent, config: String, on: bool) {
    agent.replace_config(&config);
    agent.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = rotation_status(agent).await;
        if status.schedule.is_empty() != on {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded config did not turn the schedule {}: {status:#?}\nagent logs:\n{}",
            if on { "on" } else { "off" },
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the key's primary is `first + rotations` or later; fails as
/// soon as a job ends other than ok, or no rotation comes for [`STALL`].
/// Says how far it is every 100 rotations.
async fn wait_for_rotations(agent: &TestAgent, first: u64, rotations: u64) {
    let started = Instant::now();
    let mut last = (first, Instant::now());
    loop {
        let status = rotation_status(agent).await;
        assert_no_failed_job(&status);
        let version = primary(&status);
        if version >= first + rotations {
            return;
        }
        if version != last.0 {
            let done = version - first;
            if done / 100 != (last.0 - first) / 100 {
                eprintln!(
                    "drill-schedule: {done} of {rotations} rotations in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
            last = (version, Instant::now());
        }
        assert!(
            last.1.elapsed() < STALL,
            "no scheduled rotation for {STALL:?} after {} of {rotations}: {status:#?}",
            version - first
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (60 s at most) until no job runs for the key; returns the status
/// then.
async fn wait_for_no_job(agent: &TestAgent) -> RotationStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = rotation_status(agent).await;
        assert_no_failed_job(&status);
        if !status.job.as_ref().is_some_and(|j| j.active) {
            return status;
        }
        assert!(Instant::now() < deadline, "the last job did not end: {status:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scheduled drill: the agent rotates the key again and again on its
/// own while 32 `call_with_fallback` workers and 2 `keyward run` children
/// call the provider. No call fails, and each child restarts its program
/// exactly once per rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotations_under_load_fail_no_call_and_restart_keyward_run_once_each() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rotations: u64 = param("KEYWARD_DRILL_ROTATIONS", 5);
    let workers: usize = param("KEYWARD_DRILL_WORKERS", 32);
    let run_children: usize = param("KEYWARD_DRILL_RUN_CHILDREN", 2);
    let run_splay: String = param("KEYWARD_DRILL_RUN_SPLAY", "0s".to_owned());
    let grace: String = param("KEYWARD_DRILL_GRACE", "0s".to_owned());
    let every: String = param("KEYWARD_DRILL_EVERY", "200ms".to_owned());
    assert!(rotations > 0, "KEYWARD_DRILL_ROTATIONS must be at least 1");

    let Drill {
        provider,
        alerts,
        clock,
        agent,
        scratch: _scratch,
        pool,
        children,
        subscribers,
    } = Drill::start(&grace, workers, run_children, &run_splay).await;
    for child in &children {
        assert_eq!(child.starts(), 1, "keyward run started its program once");
    }
    let first = primary(&rotation_status(&agent).await);

    // The agent alone from here: the schedule on, N rotations, off.
    let started = Instant::now();
    let on = scheduled_config(&provider, &alerts, &grace, Some(&every));
    set_schedule(&agent, on, true).await;
    wait_for_rotations(&agent, first, rotations).await;
    set_schedule(&agent, config(&provider, &alerts, &grace), false).await;
    let status = wait_for_no_job(&agent).await;
    let elapsed = started.elapsed();
    // Perhaps one more than asked: a job may have started before the
    // schedule went off.
    let last_version = primary(&status);
    let done = last_version - first;

    // Each child's copy with the final primary is running, then a last
    // stretch of calls on it.
    for child in &children {
        child.wait_for_starts(1 + done).await;
        child.wait_for_restart_with(last_version).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tally = pool.stop().await;
    let mut run = RunCounts::default();
    for child in children {
        child.stop(&mut run);
    }

    let jobs = audited_jobs(&agent);
    let mut times: Vec<Duration> = jobs.iter().map(AuditedJob::took).collect();
    times.sort();
    let mut intervals: Vec<Duration> = jobs
        .windows(2)
        .map(|w| w[1].started.duration_since(w[0].started).unwrap_or_default())
        .collect();
    intervals.sort();
    let restarts: Vec<u64> = run.starts.iter().map(|s| s.saturating_sub(1)).collect();
    let per_rotation: Vec<String> = restarts
        .iter()
        .map(|r| format!("{:.2}", *r as f64 / done as f64))
        .collect();
    let alerts_seen = clock.bodies();
    let count = |signal: &str| alerts_seen.iter().filter(|b| b["signal"] == signal).count();
    let ms = |sorted: &[Duration], p: f64| if sorted.is_empty() { 0.0 } else { percentile(sorted, p) };
    println!(
        "drill-schedule: rotations={done} every={every} workers={workers} run_children={run_children} grace={grace} \
         requests={} failed={} fell_back={} run_requests={} run_failed={} run_fell_back={} \
         run_restarts={} restarts_per_rotation={} rotation_ms p50={:.0} p90={:.0} p99={:.0} max={:.0} \
         interval_ms p50={:.0} elapsed_s={:.1} subscribers={subscribers} provider_accepted={} \
         provider_refused={} alerts_stale_version={}",
        tally.requests(),
        tally.failed(),
        tally.fell_back(),
        run.requests,
        run.failed,
        run.fell_back,
        restarts.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        per_rotation.join(","),
        ms(&times, 0.5),
        ms(&times, 0.9),
        ms(&times, 0.99),
        ms(&times, 1.0),
        ms(&intervals, 0.5),
        elapsed.as_secs_f64(),
        provider.accepted(),
        provider.refused(),
        count("stale_version"),
    );

    // The promise: no call failed, through the client or keyward run.
    assert_eq!(
        tally.failed(),
        0,
        "requests failed during the scheduled rotations:\n{}",
        tally.failures.lock().unwrap().join("\n")
    );
    assert_eq!(
        run.failed,
        0,
        "keyward run children's requests failed:\n{}\nkeyward run said:\n{}",
        run.failures.join("\n"),
        text(&run.logs)
    );
    assert!(tally.requests() >= workers as u64 * 10, "the workers made progress");
    if run_children > 0 {
        assert!(run.requests > 0, "the keyward run children made requests");
    }

    // The agent alone rotated, every time to the end.
    assert!(done >= rotations, "{done} rotations, {rotations} asked");
    assert_eq!(jobs.len() as u64, done, "one audited job per rotation");
    for (i, job) in jobs.iter().enumerate() {
        assert!(job.scheduled, "job {} was not started by the schedule", i + 1);
        assert_eq!(job.outcome, "ok", "job {} ended {}: {}", i + 1, job.outcome, job.detail);
    }

    // One restart per rotation, at its promote, for each child.
    for (n, r) in restarts.iter().enumerate() {
        assert_eq!(
            *r, done,
            "keyward run child {n} restarted its program {r} times in {done} rotations (target: once per rotation)"
        );
    }
    for (n, restart) in run.last_restart.iter().enumerate() {
        assert!(
            restarted_with(restart, last_version),
            "keyward run child {n}'s last restart was with {restart:?}, not the final primary v{last_version}"
        );
    }

    // Every rotation went through the provider.
    assert_eq!(provider.keys().len() as u64, done + 1, "one key issued per rotation");
    assert_eq!(provider.checks(), 2 * done, "the validator checked each new key twice");
    assert_eq!(provider.revokes(), done, "the revoker ran once per rotation");
    let valid = provider.valid_keys();
    assert_eq!(valid.len(), 1, "every retired key was revoked");
    let now = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .get(KEY)
        .await
        .unwrap();
    assert_eq!(now.state, RotationState::Steady);
    assert!(
        now.primary.secret.expose() == valid[0].as_bytes(),
        "the agent's primary is the provider's valid key"
    );
    assert_eq!(
        now.generation,
        1 + 3 * done,
        "put, then stage, promote and retire per rotation"
    );

    for signal in [
        "spike",
        "fallback_failing",
        "agent_health",
        "rotation_failed",
        "no_evidence",
    ] {
        assert_eq!(
            count(signal),
            0,
            "{signal} alert during a clean scheduled drill: {alerts_seen:#?}"
        );
    }
    assert_clean_end(&agent, &provider, &[("keyward run's output", &run.logs)]);
}
