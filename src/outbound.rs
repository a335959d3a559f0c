//! What every outbound HTTP(S) client of the agent shares (the alert sinks
//! and the OpenBao client): one rustls crypto provider for the process, and
//! one User-Agent.

use std::sync::Once;

/// The User-Agent of every outbound HTTP request: `keywardd/VERSION`.
pub const USER_AGENT: &str = concat!("keywardd/", env!("CARGO_PKG_VERSION"));

/// Makes `ring` the process's rustls crypto provider (once; if another one
/// was installed first, that one stays).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
