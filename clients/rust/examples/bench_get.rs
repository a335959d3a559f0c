//! Latency of `Client::get` on one connection.
//!
//! ```sh
//! KEYWARD_SOCKET=/tmp/kw/keys.sock \
//!   cargo run --release -p keyward-client --example bench_get -- prod/billing-api [N]
//! ```
//!
//! Runs 1,000 warm-up calls, then N (default 5,000) timed calls one after
//! the other, and prints `p50_us=<float> p99_us=<float>`.

use std::process::ExitCode;
use std::time::Instant;

use keyward_client::Client;

const WARM_UP: usize = 1_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(key), n) = (args.next(), args.next()) else {
        eprintln!("usage: bench_get ENV/NAME [N]  (socket: $KEYWARD_SOCKET)");
        return ExitCode::from(2);
    };
    let n: usize = match n.map(|n| n.parse()) {
        None => 5_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("N must be a positive number");
            return ExitCode::from(2);
        }
    };
    let client = match Client::connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut micros = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        if let Err(e) = client.get(&key).await {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        if i >= WARM_UP {
            micros.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    println!("p50_us={:.1} p99_us={:.1}", at(0.50), at(0.99));
    ExitCode::SUCCESS
}
