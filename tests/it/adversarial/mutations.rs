//! Random mutations of key files and of the config.

use super::*;

/// One seeded mutation of `bytes`: replaced, inserted or removed bytes, a
/// cut, or bytes added at the end; never the same bytes.
fn mutate_bytes(rng: &mut StdRng, bytes: &[u8]) -> (String, Vec<u8>) {
    loop {
        let mut out = bytes.to_vec();
        let what = match rng.gen_range(0..6) {
            0 => {
                for _ in 0..rng.gen_range(1..=3) {
                    let at = rng.gen_range(0..out.len());
                    out[at] ^= rng.gen_range(1..=255u8);
                }
                "replaced bytes"
            }
            1 => {
                let at = rng.gen_range(0..=out.len());
                out.insert(at, rng.gen());
                "an inserted byte"
            }
            2 => {
                let at = rng.gen_range(0..out.len());
                out.remove(at);
                "a removed byte"
            }
            3 => {
                out.truncate(rng.gen_range(0..out.len()));
                "cut short"
            }
            4 => {
                let mut tail = vec![0u8; rng.gen_range(1..64)];
                rng.fill(&mut tail[..]);
                out.extend(tail);
                "bytes added at the end"
            }
            _ => {
                // Flip one bit in the header (the first lines) or the payload.
                let at = rng.gen_range(0..out.len());
                out[at] ^= 1 << rng.gen_range(0..8);
                "one bit flipped"
            }
        };
        if out != bytes {
            return (what.to_owned(), out);
        }
    }
}

/// Replaces `path` as a careful tool does (temp file, rename).
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tool-tmp", path.file_name().unwrap().to_string_lossy()));
    write_private(&tmp, bytes);
    std::fs::rename(&tmp, path).unwrap();
}

fn reload_records(agent: &TestAgent, key: &str) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "reload" && r["key"] == key)
        .collect()
}

/// Seeded random byte mutations of key files the agent wrote (four keys
/// at a time, rewritten by a tool): every one is rejected with an audit
/// record and an error line naming the file, the last good value keeps
/// serving at the same generation, and a good file afterwards is still
/// applied. (tests/hot_reload.rs covers garbage, a file for another
/// identity and a half-written file.)
#[tokio::test]
async fn random_mutations_of_key_files_are_rejected_and_the_last_good_value_serves() {
    let agent = TestAgent::start();
    let names = ["m0", "m1", "m2", "m3"];
    for n in names {
        agent.put(&format!("prod/{n}"), &format!("sk_adv_mut_{n}"));
    }
    let originals: Vec<(PathBuf, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let p = agent.dir.join(format!("store/prod/{n}.age"));
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(0x6b65_7973);
    let mut tally = Tally::new("key_file_mutations");
    let rounds = 15;
    for round in 0..rounds {
        let mut what = Vec::new();
        for (i, (path, original)) in originals.iter().enumerate() {
            let (kind, bytes) = mutate_bytes(&mut rng, original);
            replace_file(path, &bytes);
            what.push(format!("prod/{} round {round}: {kind}", names[i]));
        }
        for (i, n) in names.iter().enumerate() {
            let key = format!("prod/{n}");
            let start = Instant::now();
            let records = loop {
                let r = reload_records(&agent, &key);
                if r.len() > round || start.elapsed() > DEADLINE {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let got = served(&agent, "prod", n).await;
            tally.check(match (records.get(round), got) {
                (Some(r), Ok(got))
                    if r["outcome"] == "rejected"
                        && r["generation_after"] == 1
                        && got == Served::new(format!("sk_adv_mut_{n}").as_bytes(), 1) =>
                {
                    Ok(())
                }
                (r, got) => Err(format!("{}: record {r:?}, serving {got:?}", what[i])),
            });
        }
    }
    // One error line per rejected file, naming it and what still serves.
    let start = Instant::now();
    let lines = loop {
        let lines: Vec<String> = agent
            .logs()
            .lines()
            .filter(|l| l.contains("not applied") && l.contains("still serving generation 1"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= rounds * names.len() || start.elapsed() > DEADLINE {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // At least one per file (a file whose events straddle the debounce on
    // a loaded machine is read, and rejected, twice).
    tally.check(
        if lines.len() >= rounds * names.len() && lines.iter().all(|l| l.contains("ERROR") && l.contains(".age")) {
            Ok(())
        } else {
            Err(format!(
                "{} error lines for {} rejected files:\n{}",
                lines.len(),
                rounds * names.len(),
                agent
                    .logs()
                    .lines()
                    .filter(|l| l.contains("not applied") && !l.contains("still serving generation 1"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        },
    );
    // The reloader still works: a good file for m0 is applied.
    replace_file(&originals[0].0, &encrypt_to(&agent.recipient(), b"sk_adv_mut_fresh"));
    let start = Instant::now();
    loop {
        match served(&agent, "prod", "m0").await {
            Ok(got) if got == Served::new(b"sk_adv_mut_fresh", 2) => break,
            other => assert!(start.elapsed() < DEADLINE, "the good file was not applied: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_no_panic(&agent);
    tally.finish();
}

/// One seeded mutation of config text: bytes (as in key files) or whole
/// lines (dropped, repeated, a value swapped for a hostile one).
fn mutate_config(rng: &mut StdRng, text: &str) -> (String, String) {
    const VALUES: &[&str] = &[
        "0",
        "-1",
        "\"\"",
        "[]",
        "[\"PROD/*\"]",
        "[\"prod/../x\"]",
        "\"0s\"",
        "18446744073709551616",
        "{}",
        "true",
        "\"../etc/shadow\"",
        "[\"*/*\"]",
        "[65534]",
    ];
    let lines: Vec<&str> = text.lines().collect();
    match rng.gen_range(0..5) {
        0 | 1 => {
            let (what, bytes) = mutate_bytes(rng, text.as_bytes());
            (what, String::from_utf8_lossy(&bytes).into_owned())
        }
        2 => {
            let at = rng.gen_range(0..lines.len());
            let mut out = lines.clone();
            out.remove(at);
            (format!("line {} dropped", at + 1), out.join("\n"))
        }
        3 => {
            let at = rng.gen_range(0..lines.len());
            let mut out = lines.clone();
            out.insert(at, lines[at]);
            (format!("line {} repeated", at + 1), out.join("\n"))
        }
        _ => {
            let candidates: Vec<usize> = (0..lines.len()).filter(|i| lines[*i].contains(" = ")).collect();
            let at = candidates[rng.gen_range(0..candidates.len())];
            let value = VALUES[rng.gen_range(0..VALUES.len())];
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            let key = out[at].split(" = ").next().unwrap().to_owned();
            out[at] = format!("{key} = {value}");
            (format!("line {}: {key} = {value}", at + 1), out.join("\n"))
        }
    }
}

fn config_reloads(agent: &TestAgent) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "config_reload")
        .collect()
}

/// SIGHUP, then the `config_reload` record it produced.
async fn reload(agent: &TestAgent) -> serde_json::Value {
    let n = config_reloads(agent).len();
    agent.sighup();
    let start = Instant::now();
    loop {
        let all = config_reloads(agent);
        if all.len() > n {
            return all[n].clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no config_reload record after SIGHUP:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The good config's policy: prod/cfg reads, staging/other is denied.
async fn serving_as_before(agent: &TestAgent) -> Result<(), String> {
    let granted = served(agent, "prod", "cfg").await;
    let denied = agent.fetch("staging", "other").await;
    match (granted, denied) {
        (Ok(g), Err(d)) if g == Served::new(b"sk_adv_cfg", 1) && d.code() == Code::PermissionDenied => Ok(()),
        (g, d) => Err(format!("granted: {g:?}, other: {:?}", d.map(|_| ()))),
    }
}

/// Seeded random mutations of a valid config, each loaded with SIGHUP. One
/// the parser refuses is rejected (audited with the file and line, logged)
/// and the running config keeps serving: the granted key still reads, the
/// other one is still denied. One it accepts is applied (and the good
/// config is put back). (tests/watch.rs covers one unknown field.)
#[tokio::test]
async fn random_mutations_of_the_config_are_rejected_on_sighup_and_the_last_good_config_serves() {
    let uid = nix::unistd::geteuid().as_raw();
    let good = format!(
        "[[grant]]\nuids = [{uid}]\nkeys = [\"prod/*\"]\n\n[rotation]\ngrace = \"10m\"\nfailure_threshold = 3\n\n[alerts]\nreport_rate = 20\n\n[alerts.detect]\nspike_threshold = 5\nwindow = \"60s\"\n\n[[key]]\nkeys = [\"prod/cfg\"]\ngrace = \"15m\"\n"
    );
    let agent = TestAgent::start_system(&good);
    agent.put("prod/cfg", "sk_adv_cfg");
    agent.put("staging/other", "sk_adv_other");
    let config_path = agent.dir.parent().unwrap().join("keyward.toml");
    serving_as_before(&agent).await.unwrap();
    let mut rng = StdRng::seed_from_u64(0x636f_6e66);
    let mut tally = Tally::new("config_mutations");
    let (mut rejected, mut accepted) = (0, 0);
    for i in 0..40 {
        let (what, mutated) = mutate_config(&mut rng, &good);
        agent.rewrite_config(&mutated);
        let full = std::fs::read_to_string(&config_path).unwrap();
        let expected = keyward::config::Config::parse(&full, &config_path.display().to_string());
        let record = reload(&agent).await;
        match expected {
            Err(e) => {
                rejected += 1;
                tally.check(
                    if record["outcome"] == "rejected"
                        && record["detail"].as_str().is_some_and(|d| d.contains("keyward.toml"))
                    {
                        Ok(())
                    } else {
                        Err(format!(
                            "mutation {i} ({what}) should be rejected ({e}); audit: {record}"
                        ))
                    },
                );
                tally.check(
                    serving_as_before(&agent)
                        .await
                        .map_err(|e| format!("after rejected mutation {i} ({what}): {e}")),
                );
            }
            Ok(_) => {
                accepted += 1;
                tally.check(if record["outcome"] == "ok" {
                    Ok(())
                } else {
                    Err(format!("mutation {i} ({what}) is valid but was {record}"))
                });
                agent.rewrite_config(&good);
                let back = reload(&agent).await;
                assert_eq!(back["outcome"], "ok", "{back}");
                tally.check(
                    serving_as_before(&agent)
                        .await
                        .map_err(|e| format!("after restoring from mutation {i}: {e}")),
                );
            }
        }
    }
    // The log is read by a thread and may lag the audit log a little.
    let start = Instant::now();
    let mut logged = 0;
    while logged < rejected && start.elapsed() < DEADLINE {
        logged = agent.logs().matches("config reload rejected").count();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally.check(if logged >= rejected {
        Ok(())
    } else {
        Err(format!(
            "{logged} 'config reload rejected' log lines for {rejected} rejected reloads"
        ))
    });
    eprintln!("adversarial: config mutations: {rejected} rejected, {accepted} accepted (then restored)");
    assert_no_panic(&agent);
    tally.finish();
}
