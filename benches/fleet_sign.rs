//! The cost of fleet record signatures: building a record's canonical bytes
//! (src/agent/fleet/sign.rs), signing them with the agent's Ed25519 key and
//! verifying them (strict), per record, at three record sizes (a key
//! record's age armor is about 1.5 KB with a few versions and three
//! members). Every write signs one key record, one change marker and, every
//! third of `status_ttl`, one status; every agent verifies each record it
//! applies and each status `keyward fleet status` or `rotate --fleet` reads.
//!
//! Run with `cargo bench --bench fleet_sign` (about 2 seconds).

use std::time::{Duration, Instant};

use keyward::agent::fleet::sign::{self, Kind};
use keyward::config::backend::Member;
use keyward::store::identity::SigningKey;

fn main() {
    let key = SigningKey::generate();
    let members = [Member {
        name: "a".to_owned(),
        recipient: "age1".to_owned(),
        signing_key: key.verifying_key(),
    }];
    let path = "secret/keyward/keys/prod/billing-api";
    for size in [1_500usize, 8_000, 64_000] {
        let armor = vec![b'A'; size];
        let n = 3_000u32;
        let mut values = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for version in 0..n {
            let message = sign::canonical(Kind::Key, path, "prod/billing-api", u64::from(version), &[&armor]);
            let mut value = serde_json::json!({});
            sign::attach(&mut value, "a", &key.sign(&message));
            values.push(value);
        }
        let signing = start.elapsed() / n;
        let start = Instant::now();
        for (version, value) in values.iter().enumerate() {
            let message = sign::canonical(Kind::Key, path, "prod/billing-api", version as u64, &[&armor]);
            sign::verify(value, &message, &members, None).expect("verifies");
        }
        let verifying = start.elapsed() / n;
        println!(
            "record of {size:>6} B: sign {:>7.1} us, verify {:>7.1} us per record",
            us(signing),
            us(verifying)
        );
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
