//! Settings that may hold a token (webhook URLs, routing keys, passwords):
//! given inline or, better, in a root-only file, and kept [`Sensitive`] so
//! that no message or log line ever shows them.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::config::error::{ConfigError, Source};
use crate::config::value::absolute_path;

/// Largest token file read (a URL or key is far smaller).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// A setting that may hold a token (a webhook URL, a routing key, a
/// password). Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a value.
    pub fn new(value: String) -> Sensitive {
        Sensitive(value)
    }

    /// The value, for the one place that uses it (a request, a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A value given inline or in a file (`KEY` or `KEY_file`), exactly one.
pub(super) fn token(
    src: &Source<'_>,
    here: &str,
    sink_span: &std::ops::Range<usize>,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    key: &str,
) -> Result<Sensitive, ConfigError> {
    match (inline, file) {
        (Some(v), None) => {
            if v.get_ref().trim().is_empty() {
                return Err(src.invalid(&v.span(), format!("{key} in {here} is empty: fill it in")));
            }
            Ok(Sensitive::new(v.get_ref().trim().to_owned()))
        }
        (None, Some(f)) => {
            let path = absolute_path(src, &f, &format!("{key}_file"))?;
            read_token_file(&path)
                .map_err(|why| src.invalid(&f.span(), format!("{key}_file {} in {here} {why}", path.display())))
        }
        (Some(v), Some(_)) => Err(src.invalid(
            &v.span(),
            format!("{here} has both {key} and {key}_file: keep one (the file keeps the token out of the config)"),
        )),
        (None, None) => Err(src.invalid(
            sink_span,
            format!("{here} needs {key} or {key}_file (a root-only file holding it)"),
        )),
    }
}

/// The token in `path`: the whole file, trimmed. The message says what is
/// wrong without quoting the content.
fn read_token_file(path: &Path) -> Result<Sensitive, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot be read ({e}): create it, readable by root only"))?;
    if !meta.is_file() || meta.len() > MAX_TOKEN_FILE {
        return Err(format!(
            "is not a regular file of at most {MAX_TOKEN_FILE} bytes: point it at the file holding the token"
        ));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        tracing::warn!(path = %path.display(), "a token file is readable by every local user: chmod 600 it");
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err("is empty: write the token in it".to_owned());
    }
    Ok(Sensitive::new(value.to_owned()))
}

/// An http(s) URL with a host, given inline or in a file. Messages never
/// quote the URL: it may hold a token.
pub(super) fn http_url(
    src: &Source<'_>,
    here: &str,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    key: &str,
) -> Result<Sensitive, ConfigError> {
    let span = inline
        .as_ref()
        .map(Spanned::span)
        .or(file.as_ref().map(Spanned::span))
        .unwrap_or(0..0);
    let empty = 0..0;
    let url = token(src, here, if span == empty { &empty } else { &span }, inline, file, key)?;
    let problem = match reqwest::Url::parse(url.expose()) {
        Err(e) => Some(format!("is not a URL ({e})")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Some(format!("has scheme {:?}: use an https:// (or http://) URL", u.scheme()))
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("has no host".to_owned()),
        Ok(_) => None,
    };
    match problem {
        None => Ok(url),
        Some(p) => Err(src.invalid(
            &span,
            format!("{key} in {here} {p}: give the full endpoint, e.g. https://hooks.example.com/alerts (not quoted here: it may hold a token)"),
        )),
    }
}
