//! Hook command lines (`generator`, `validator`, `revoker` in `[[key]]`,
//! `command` of an exec alert sink): argv lists whose program is an
//! absolute path, checked once at load. Running them is
//! [`crate::hooks`]' job.

use std::ops::Range;

use toml::Spanned;

use super::error::{ConfigError, Source};
use crate::secret::KeyRef;

/// A hook command line from the config. `Debug` is safe: it holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookCommand {
    /// The program (an absolute path, run without `PATH` lookup) and its
    /// arguments. Never a secret.
    pub argv: Vec<String>,
    /// Extra environment variables (never secrets), e.g. `KEYWARD_KEY`.
    pub env: Vec<(String, String)>,
}

/// Why a hook command line was refused (the config loader adds where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHookCommand {
    /// `[]`.
    #[error("is empty: give the program and its arguments, e.g. [\"/usr/local/bin/new-key\", \"--env\", \"prod\"]")]
    Empty,
    /// The program is not an absolute path.
    #[error("runs {program:?}, which is not an absolute path: write the full path, starting with '/' (hooks run as the agent's user, usually root, so they are never looked up in PATH)")]
    NotAbsolute {
        /// The program as written.
        program: String,
    },
    /// An argument holds a NUL byte, which no command line can carry.
    #[error("has a NUL byte in argument {index}: remove it")]
    Nul {
        /// 0-based index in the list.
        index: usize,
    },
}

impl HookCommand {
    /// Checks `argv`: non-empty, the program an absolute path, no NUL bytes.
    pub fn new(argv: Vec<String>) -> Result<HookCommand, InvalidHookCommand> {
        let Some(program) = argv.first() else {
            return Err(InvalidHookCommand::Empty);
        };
        if !program.starts_with('/') {
            return Err(InvalidHookCommand::NotAbsolute {
                program: program.clone(),
            });
        }
        if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
            return Err(InvalidHookCommand::Nul { index });
        }
        Ok(HookCommand { argv, env: Vec::new() })
    }

    /// The same command, told which key it works on through `KEYWARD_KEY`,
    /// `KEYWARD_ENV` and `KEYWARD_NAME`.
    pub fn for_key(mut self, key: &KeyRef) -> HookCommand {
        self.env.retain(|(k, _)| !k.starts_with("KEYWARD_"));
        self.env.push(("KEYWARD_KEY".to_owned(), key.to_string()));
        self.env.push(("KEYWARD_ENV".to_owned(), key.env().to_owned()));
        self.env.push(("KEYWARD_NAME".to_owned(), key.name().to_owned()));
        self
    }

    /// The program's path, for messages.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }
}

/// A hook's argv as written: the span of the list (for "empty") and of
/// each value.
pub(super) type RawArgv = Option<Spanned<Vec<Spanned<String>>>>;

/// A hook's argv, checked by [`HookCommand::new`]; the error points at the
/// offending value (the list itself when it is empty).
pub(super) fn hook_command(src: &Source<'_>, raw: RawArgv, hook: &str) -> Result<Option<HookCommand>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let list_span = raw.span();
    let values = raw.into_inner();
    let spans: Vec<Range<usize>> = values.iter().map(Spanned::span).collect();
    let argv = values.into_iter().map(Spanned::into_inner).collect();
    HookCommand::new(argv).map(Some).map_err(|e| {
        let span = match e {
            InvalidHookCommand::Empty => list_span,
            InvalidHookCommand::NotAbsolute { .. } => spans[0].clone(),
            InvalidHookCommand::Nul { index } => spans[index].clone(),
        };
        src.invalid(&span, format!("{hook} in [[key]] at {} {e}", src.at(&span)))
    })
}
