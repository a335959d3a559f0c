//! Why a config could not be loaded, and where: [`ConfigError`], and the
//! [`Source`] that turns a byte span of the file into `keyward.toml:14`.
//!
//! Every section's validation words its errors through [`Source`], so every
//! message names the file and line the same way.

use std::io;
use std::ops::Range;
use std::path::PathBuf;

/// Why a config could not be loaded. Every message says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {} not found: pass --config PATH to use another file, or --dev DIR to run without one", path.display())]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read config file {}: {source}: check its permissions, or pass --config PATH or --dev DIR", path.display())]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file name.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What toml or serde said (plus a hint).
        message: String,
    },
    /// Well-formed, but a value is not acceptable. The message names the
    /// file and line (`keyward.toml:14`) and says what to do.
    #[error("{message}")]
    Invalid {
        /// The file name.
        origin: String,
        /// 1-based line of the offending value.
        line: usize,
        /// The whole message.
        message: String,
    },
}

/// The text being parsed and its name, to turn byte spans into locations.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// `keyward.toml:14`.
    pub(super) fn at(&self, span: &Range<usize>) -> String {
        format!("{}:{}", self.origin, self.line_col(span.start).0)
    }

    /// `keyward.toml line 14`: where a grant or `[[key]]` entry was
    /// written, as kept in the typed config for later messages.
    pub(super) fn origin_of(&self, span: &Range<usize>) -> String {
        format!("{} line {}", self.origin, self.line_col(span.start).0)
    }

    pub(super) fn invalid(&self, span: &Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line_col(span.start).0,
            message,
        }
    }

    pub(super) fn parse_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = self.line_col(e.span().map_or(0, |s| s.start));
        let mut message = e.message().trim_end().to_owned();
        if message.is_empty() {
            // toml says nothing for some cut-short input (`key = ` at the end of the file).
            message = "incomplete TOML here: a value, quote or bracket is missing (was the file cut short?)".to_owned();
        }
        if message.starts_with("unknown field") {
            message.push_str(": fix the spelling or remove it");
        }
        ConfigError::Parse {
            origin: self.origin.to_owned(),
            line,
            column,
            message,
        }
    }
}
