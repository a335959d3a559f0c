//! Reading a secret: from a file, from stdin, or typed at a hidden prompt;
//! never from the command line. The buffers are wiped when dropped.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

/// Reads a secret from `file`, or stdin (a hidden prompt on a terminal).
/// One trailing newline is removed unless `raw`.
pub(crate) fn read_secret(key: &str, file: Option<&Path>, raw: bool) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        Some(path) => {
            let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            f.read_to_end(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        None if std::io::stdin().is_terminal() => {
            eprint!("secret for {key} (input hidden): ");
            let _ = std::io::stderr().flush();
            let line = read_hidden_line()?;
            buf.extend_from_slice(&line);
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
        }
    }
    if !raw {
        if buf.ends_with(b"\r\n") {
            let n = buf.len() - 2;
            buf.truncate(n);
        } else if buf.ends_with(b"\n") {
            let n = buf.len() - 1;
            buf.truncate(n);
        }
    }
    Ok(buf)
}

/// Reads one line from the terminal with echo off.
fn read_hidden_line() -> Result<Zeroizing<Vec<u8>>, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read terminal settings: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| format!("cannot turn off echo: {e}"))?;
    let mut line = Zeroizing::new(Vec::new());
    let mut byte = [0u8; 1];
    let result = loop {
        match stdin.lock().read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) => break Err(format!("cannot read the secret: {e}")),
        }
    };
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    result.map(|()| line)
}
