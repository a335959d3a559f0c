//! The README's first example: fetch a key from the agent at
//! `$KEYWARD_SOCKET` (else `/run/keyward/keys.sock`).
//!
//! ```sh
//! keywardd --dev /tmp/kw &
//! printf %s sk_test | keyward --dev /tmp/kw put prod/billing-api
//! KEYWARD_SOCKET=/tmp/kw/keys.sock cargo run -p keyward-client --example get_key
//! ```

use keyward_client::Client;

#[tokio::main]
async fn main() -> Result<(), keyward_client::Error> {
    let client = Client::connect().await?; // $KEYWARD_SOCKET, else /run/keyward/keys.sock
    let keys = client.get("prod/billing-api").await?;
    let token = keys.primary.secret.expose_str().expect("UTF-8");
    let header = format!("Bearer {token}"); // send it to the service
    println!(
        "v{} ({}), {} bytes",
        keys.primary.version,
        keys.primary.fingerprint,
        header.len()
    );
    Ok(())
}
