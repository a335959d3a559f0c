//! The checks of single values that every section shares: paths,
//! durations, counts and lists, each refused with its key, file and line.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Source};

/// A list in a grant or `[[key]]` entry: the span of the whole list (for
/// "empty") and of each value (for "unknown user" and the like).
pub(super) type RawList<T> = Option<Spanned<Vec<Spanned<T>>>>;

/// The values of one list in a grant or `[[key]]` entry (`context`, e.g.
/// "grant at keyward.toml:3"), or an error when it was written empty (an
/// empty list would silently widen or void the entry).
pub(super) fn list<T>(
    src: &Source<'_>,
    raw: RawList<T>,
    key: &str,
    context: &str,
) -> Result<Vec<Spanned<T>>, ConfigError> {
    match raw {
        None => Ok(Vec::new()),
        Some(v) if v.get_ref().is_empty() => Err(src.invalid(
            &v.span(),
            format!("{key} = [] in {context} is empty: add a value or remove the line"),
        )),
        Some(v) => Ok(v.into_inner()),
    }
}

pub(super) fn at_least_one(src: &Source<'_>, v: &Spanned<usize>, key: &str) -> Result<usize, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} at {} is 0: give a positive number, or remove the line for the default",
                src.at(&v.span())
            ),
        ));
    }
    Ok(*v.get_ref())
}

pub(super) fn absolute_path(src: &Source<'_>, v: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
    let path = v.get_ref();
    if !path.is_absolute() {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} = {:?} at {} is not an absolute path: write the full path, starting with '/'",
                path.display().to_string(),
                src.at(&v.span())
            ),
        ));
    }
    Ok(path.clone())
}

pub(super) fn duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.get_ref()).map_err(|e| {
        src.invalid(
            &v.span(),
            format!(
                "{key} = {:?} at {} is not a duration ({e}): write e.g. \"10s\", \"500ms\" or \"2m\"",
                v.get_ref(),
                src.at(&v.span())
            ),
        )
    })
}

/// A timeout: zero would fail every hook or every wait before it starts.
pub(super) fn positive_duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
    let d = duration(src, v, key)?;
    if d.is_zero() {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} at {} is zero: give a positive duration such as \"30s\", or remove the line for the default",
                src.at(&v.span())
            ),
        ));
    }
    Ok(d)
}
