//! The names that go into a request URL: the server address, mounts and
//! secret paths, and the TTL strings OpenBao reads.
//!
//! Invariant: a path that passes [`check_path`] is one or more segments of
//! `[A-Za-z0-9._-]` joined by single `/`, none of them `.` or containing
//! `..`, so it goes into a URL as is and cannot climb out of its mount.

use std::time::Duration;

use reqwest::Url;

/// Why `path` cannot be used, or `None` when it can.
fn path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("is empty".to_owned());
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Some(format!("has the character {c:?}, outside [A-Za-z0-9._/-]"));
    }
    if path.contains("..") {
        return Some("contains \"..\"".to_owned());
    }
    if path.split('/').any(str::is_empty) {
        return Some("has an empty segment (a leading, trailing or double '/')".to_owned());
    }
    if path.split('/').any(|segment| segment == ".") {
        return Some("has a \".\" segment".to_owned());
    }
    None
}

/// Checks a secret path (or a mount), named `what` in the message.
pub(crate) fn check_path(what: &str, path: &str) -> Result<(), String> {
    match path_problem(path) {
        None => Ok(()),
        Some(problem) => Err(format!(
            "the {what} {path:?} {problem}: use segments of letters, digits, '.', '_' and '-' separated by single '/' \
             (e.g. keyward/keys/prod/billing-api)"
        )),
    }
}

/// Checks the server address and returns it without its trailing `/`: the
/// prefix of every request URL (`{address}/v1/…`).
pub(crate) fn check_address(address: &str) -> Result<String, String> {
    let trimmed = address.trim().trim_end_matches('/');
    let fix = "give it as http://HOST:PORT or https://HOST:PORT (e.g. https://openbao.example.org:8200)";
    // Before anything echoes the address: a user:password@ part is a
    // credential, and a parse error would print it.
    if trimmed
        .split_once("://")
        .map_or(trimmed, |(_, rest)| rest)
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(format!(
            "the OpenBao address has a user or password in it: remove the user:password@ part \
             (the token comes from the auth settings); {fix}"
        ));
    }
    let url = Url::parse(trimmed).map_err(|e| format!("the OpenBao address {trimmed:?} is not a URL ({e}): {fix}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the OpenBao address {trimmed:?} has the scheme {:?}, not http or https: {fix}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the OpenBao address {trimmed:?} has no host: {fix}"));
    }
    // Not shown: the address is in every message, and this part would be a
    // credential.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "the OpenBao address has a user or password in it: remove the user:password@ part \
             (the token comes from the auth settings); {fix}"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the OpenBao address {trimmed:?} has a query or fragment: {fix}"
        ));
    }
    Ok(trimmed.to_owned())
}

/// A duration as OpenBao's duration strings write it: whole seconds,
/// rounded up (`"0s"` stays zero, which OpenBao reads as "never").
pub(super) fn seconds_string(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds += 1;
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_pass() {
        for path in [
            "keyward/keys/prod/billing-api",
            "a",
            "A.b_c-d/E9",
            "keyward/.meta",
            "x/y.z",
        ] {
            assert_eq!(check_path("path", path), Ok(()), "{path}");
        }
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        let table = [
            ("", "is empty"),
            ("a/../b", "\"..\""),
            ("..", "\"..\""),
            ("a..b", "\"..\""),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("a//b", "empty segment"),
            ("a/./b", "\".\" segment"),
            (".", "\".\" segment"),
            ("a b", "' '"),
            ("a?b", "'?'"),
            ("a%2e", "'%'"),
            ("a\\b", "'\\\\'"),
            ("clé", "'é'"),
            ("a\nb", "'\\n'"),
        ];
        for (path, reason) in table {
            let message = check_path("path", path).unwrap_err();
            assert!(message.contains(reason), "{path:?}: {message}");
            assert!(message.contains("use segments"), "{path:?}: {message}");
            assert!(!message.contains('\n'), "{path:?}: one line: {message}");
        }
    }

    #[test]
    fn an_address_with_a_password_is_refused_without_echoing_it() {
        for bad in [
            "https://u:pw-secret@h:99999",
            "https://u:pw-secret@h:8200/",
            "http://pw-secret@[::1",
        ] {
            let e = check_address(bad).unwrap_err();
            assert!(!e.contains("pw-secret"), "{e}");
            assert!(e.contains("user or password"), "{e}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            check_address("http://127.0.0.1:8200/").unwrap(),
            "http://127.0.0.1:8200"
        );
        assert_eq!(
            check_address("https://bao.example.org").unwrap(),
            "https://bao.example.org"
        );
        assert_eq!(
            check_address("https://proxy.example.org/bao/").unwrap(),
            "https://proxy.example.org/bao"
        );
        for (address, reason) in [
            ("127.0.0.1:8200", "not a URL"),
            ("localhost:8200", "scheme \"localhost\""),
            ("ftp://h", "scheme \"ftp\""),
            ("not a url", "not a URL"),
            ("http://h:8200/?x=1", "query"),
            ("http://h#f", "fragment"),
        ] {
            let message = check_address(address).unwrap_err();
            assert!(message.contains(reason), "{address}: {message}");
            assert!(message.contains("http://HOST:PORT"), "{address}: {message}");
        }
        let message = check_address("https://admin:hunter2@h:8200").unwrap_err();
        assert!(message.contains("user:password@"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn durations_are_whole_seconds_rounded_up() {
        assert_eq!(seconds_string(Duration::ZERO), "0s");
        assert_eq!(seconds_string(Duration::from_secs(2)), "2s");
        assert_eq!(seconds_string(Duration::from_millis(1500)), "2s");
        assert_eq!(seconds_string(Duration::from_millis(1)), "1s");
        assert_eq!(seconds_string(Duration::from_secs(86_400)), "86400s");
    }
}
