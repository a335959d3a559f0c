//! The in-process `tracing` log of a whole test binary, captured, for tests
//! of library code (sinks, the KV client) that check what it logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The captured log; the first call installs the subscriber (DEBUG, no
/// colours) for the whole test binary.
pub fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&shared)))
            .init();
        buffer
    })
    .clone()
}

/// Everything logged so far, as text.
pub fn captured_text() -> String {
    String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
