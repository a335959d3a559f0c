//! Connection floods.

use super::*;

/// Lets uid 65534 connect to keys.sock and read prod/shared.
fn flood_config(limits: &str) -> String {
    format!(
        "[sockets]\nservice_group = \"{NOBODY}\"\nservice_mode = \"0660\"\n[limits]\n{limits}\n[[grant]]\nuids = [{NOBODY}]\nkeys = [\"prod/shared\"]\n"
    )
}

/// `keyward get --primary prod/shared` as uid 65534 (given up after 20 s:
/// a CLI that hangs is a failure too).
fn get_as_nobody(agent: &TestAgent, cli: &Path) -> Result<(), String> {
    let mut child = Command::new(cli)
        .arg("--socket")
        .arg(agent.keys_sock())
        .args(["get", "--primary", "prod/shared"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("uid {NOBODY}'s keyward get hung for 20 s"));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    if status.success() && stdout == "sk_adv_shared\n" {
        Ok(())
    } else {
        Err(format!("uid {NOBODY} was not served: {status} {stderr}"))
    }
}

/// Opens `n` connections to `sock` as this uid and leaves them idle; some
/// send nothing, some the HTTP/2 preface, some open a stream and stop.
fn flood(sock: &Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    let mut open_stream = h2raw::start();
    open_stream.extend(h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS,
        1,
        &h2raw::grpc_headers(GET_KEY),
    ));
    (0..n)
        .map(|i| {
            let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect for the flood");
            // Past twice the per-uid limit the agent closes the connection
            // at once, so a write may meet a closed socket.
            let _ = match i % 3 {
                0 => Ok(()),
                1 => s.write_all(&h2raw::start()),
                _ => s.write_all(&open_stream),
            };
            s
        })
        .collect()
}

/// Waits until the agent's count of open connections has not changed for
/// 300 ms (it has worked through a flood), and returns it.
async fn settled_connections(admin: &mut proto::admin_client::AdminClient<tonic::transport::Channel>) -> u64 {
    let start = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        let open = admin
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .connections;
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(300) || start.elapsed() > DEADLINE {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One uid opens far more idle connections than its limit (idle, preface
/// only, a stream opened and left): its connections past the limit are
/// refused with a clear message, the agent does not spin, and another uid
/// is served throughout. (tests/security.rs covers the limit's message and
/// the connections within it.)
#[tokio::test]
async fn a_connection_flood_past_the_per_uid_limit_does_not_starve_another_uid() {
    let agent = TestAgent::start_with_config(&flood_config("max_connections_per_uid = 8"));
    agent.put("prod/shared", "sk_adv_shared");
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    get_as_nobody(&agent, &cli).unwrap();
    // Within the limit before the flood: these keep working.
    // Calls make sure the agent has accepted (and counted) these
    // connections before the flood fills root's share.
    let mut admin = agent.admin().await;
    admin.get_status(proto::GetStatusRequest {}).await.unwrap();
    let mut keys = agent.keys().await;
    keys.get_key(proto::GetKeyRequest {
        key: key("prod", "shared"),
    })
    .await
    .unwrap();
    let mut tally = Tally::new("connection_flood_per_uid");
    let held = flood(&agent.keys_sock(), 300);
    // Root keeps at most twice its limit open (the rest are closed at once).
    let open = settled_connections(&mut admin).await;
    tally.check(if open <= 16 {
        Ok(())
    } else {
        Err(format!("uid 0 holds {open} connections with a limit of 8"))
    });
    let cpu = cpu_time(agent.pid());
    for _ in 0..5 {
        tally.check(get_as_nobody(&agent, &cli));
        let r = keys
            .get_key(proto::GetKeyRequest {
                key: key("prod", "shared"),
            })
            .await;
        tally.check(
            r.map(|_| ())
                .map_err(|s| format!("root's connection within its limit: {s:?}")),
        );
    }
    // Past twice the limit a new connection is closed at once (the client
    // sees it closed while connecting, or its first call fails).
    let r = match keyward_client::channel(&agent.keys_sock()).await {
        Err(_) => Ok(()),
        Ok(channel) => match proto::keys_client::KeysClient::new(channel)
            .get_key(proto::GetKeyRequest {
                key: key("prod", "shared"),
            })
            .await
        {
            Err(s) if s.code() == Code::Unknown || s.code() == Code::Unavailable => Ok(()),
            other => Err(format!(
                "a new connection past twice the limit: {:?}",
                other.map(|_| ())
            )),
        },
    };
    tally.check(r);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_time(agent.pid()) - cpu;
    tally.check(if spent > Duration::from_millis(500) {
        Err(format!(
            "the agent used {spent:?} of CPU in one second while the flood sat idle"
        ))
    } else {
        Ok(())
    });
    drop(held);
    // Past the limit but within twice it, a call gets the clear refusal.
    settled_connections(&mut admin).await;
    let within = flood(&agent.keys_sock(), 7);
    settled_connections(&mut admin).await;
    let r = agent.fetch("prod", "shared").await;
    tally.check(match r {
        Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("max_connections_per_uid") => Ok(()),
        other => Err(format!("a new connection past the limit: {:?}", other.map(|_| ()))),
    });
    drop(within);
    // Asked on a connection from before the flood (within the limit).
    let start = Instant::now();
    let mut open = u64::MAX;
    while open > 2 && start.elapsed() < DEADLINE {
        open = admin
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .connections;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open <= 2, "{open} connections left after the flood went away");
    agent.fetch("prod", "shared").await.unwrap();
    assert_no_panic(&agent);
    tally.finish();
}

/// The same flood against an agent whose total is small: one uid past its
/// own limit must not use up the connections the agent keeps for everyone.
#[tokio::test]
async fn one_uid_cannot_use_up_the_total_connection_limit() {
    let agent = TestAgent::start_with_config(&flood_config("max_connections_per_uid = 8\nmax_connections = 64"));
    agent.put("prod/shared", "sk_adv_shared");
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    let mut admin = agent.admin().await;
    // A call makes sure the agent has accepted (and counted) this
    // connection before the flood fills root's share.
    admin.get_status(proto::GetStatusRequest {}).await.unwrap();
    let mut tally = Tally::new("connection_flood_total");
    let held = flood(&agent.keys_sock(), 100);
    settled_connections(&mut admin).await;
    for _ in 0..5 {
        tally.check(get_as_nobody(&agent, &cli));
    }
    drop(held);
    admin.get_status(proto::GetStatusRequest {}).await.unwrap();
    assert_no_panic(&agent);
    tally.finish();
}

/// The agent out of file descriptors (its limit lowered with prlimit, then
/// a flood): accept fails; the agent must not spin or flood its log, and it
/// serves again once the flood is gone.
#[tokio::test]
async fn running_out_of_file_descriptors_does_not_spin_and_recovers() {
    let agent = TestAgent::start_with_config(&flood_config("max_connections_per_uid = 8"));
    agent.put("prod/shared", "sk_adv_shared");
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    let pid = agent.pid();
    let limit = open_fds(pid) + 8;
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit: {}", text(&out.stderr));
    let mut tally = Tally::new("file_descriptor_exhaustion");
    let held = flood(&agent.keys_sock(), 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu, log_len) = (cpu_time(pid), agent.logs().len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_time(pid) - cpu;
    tally.check(if spent > Duration::from_millis(300) {
        Err(format!(
            "the agent used {spent:?} of CPU in one second with its descriptors used up"
        ))
    } else {
        Ok(())
    });
    let logged = agent.logs().len() - log_len;
    tally.check(if logged > 64 * 1024 {
        Err(format!(
            "the agent logged {logged} bytes in one second with its descriptors used up"
        ))
    } else {
        Ok(())
    });
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tally.check(get_as_nobody(&agent, &cli).map_err(|e| format!("after the flood: {e}")));
    let shared = served(&agent, "prod", "shared").await.unwrap();
    assert!(
        shared.secret == b"sk_adv_shared",
        "prod/shared serves {shared:?}, not {}",
        fingerprint(b"sk_adv_shared")
    );
    assert_no_panic(&agent);
    tally.finish();
}
