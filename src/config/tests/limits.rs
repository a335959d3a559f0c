//! `[limits]` and `[audit]`: the bounds and their checks against each other.

use super::*;

#[test]
fn audit_coalescing_and_free_space_settings() {
    let c = parse("[audit]\ncoalesce_window = \"0s\"\nmin_free = \"0\"\n").unwrap();
    assert_eq!(c.audit.coalesce_window, Duration::ZERO, "0s records every refusal");
    assert!(c.audit.min_free.is_off());
    let c = parse("[audit]\nmin_free = \"1.5 GiB\"\n").unwrap();
    assert_eq!(c.audit.min_free, size::MinFree::Bytes(3 << 29));
    let c = parse("[audit]\ncoalesce_window = \"5m\"\nmin_free = \"5%\"\n").unwrap();
    assert_eq!(c.audit.coalesce_window, Duration::from_secs(300));
    assert_eq!(c.audit.min_free, size::MinFree::Percent(500));

    let e = parse_err("[audit]\n\ncoalesce_window = \"a minute\"\n");
    assert_has(&e, &["keyward.toml:3", "coalesce_window", "not a duration", "\"10s\""]);
    for (value, why) in [
        ("256M", "unknown unit \"M\""),
        ("lots", "does not start with a number"),
        ("150%", "below 100%"),
    ] {
        let e = parse_err(&format!("[audit]\nmin_free = \"{value}\"\n"));
        assert_has(
            &e,
            &[
                "keyward.toml:2",
                &format!("min_free = \"{value}\""),
                "is not a size or a percentage",
                why,
                "\"256MiB\", \"1GB\" or \"5%\"",
            ],
        );
    }
    let e = parse_err("[audit]\nmin_free = 256\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
}

#[test]
fn stream_and_watch_limits_parse() {
    let c = parse(
        "[limits]\nmax_streams_per_connection = 32\nmax_streams_per_uid = 20\nmax_watches_per_uid = 10\nmax_watches = 50\nkeepalive_interval = \"45s\"\nkeepalive_timeout = \"5s\"\nidle_timeout = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_streams_per_connection: 32,
            max_streams_per_uid: 20,
            max_watches_per_uid: 10,
            max_watches: 50,
            keepalive_interval: Duration::from_secs(45),
            keepalive_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            ..Limits::default()
        }
    );
    let d = Limits::default();
    assert_eq!(
        (
            d.max_streams_per_connection,
            d.max_streams_per_uid,
            d.max_watches_per_uid,
            d.max_watches
        ),
        (64, 2048, 1024, 16384)
    );
    assert_eq!(
        (d.keepalive_interval, d.keepalive_timeout, d.idle_timeout),
        (
            Duration::from_secs(60),
            Duration::from_secs(20),
            Duration::from_secs(600)
        )
    );
}

#[test]
fn limits_are_checked() {
    let e = parse_err("[limits]\nmax_secret_bytes = 65536\nmax_message_bytes = 70000\n");
    assert_has(&e, &["keyward.toml:3", "at least 81920"]);
    // Raising only the secret limit is caught too.
    let e = parse_err("[limits]\nmax_secret_bytes = 2000000\n");
    assert_has(&e, &["keyward.toml:2", "max_message_bytes", "at least 2016384"]);
    let e = parse_err("[limits]\nmax_connections = 0\n");
    assert_has(&e, &["max_connections at keyward.toml:2 is 0"]);
    let e = parse_err("[audit]\nmax_batch = 0\n");
    assert_has(&e, &["max_batch at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_streams_per_connection = 4\n");
    assert_has(&e, &["max_streams_per_connection at keyward.toml:2 is 4", "at least 8"]);
    let e = parse_err("[limits]\nmax_streams_per_uid = 0\n");
    assert_has(&e, &["max_streams_per_uid at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_watches_per_uid = 0\n");
    assert_has(&e, &["max_watches_per_uid at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_watches = 0\n");
    assert_has(&e, &["max_watches at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nidle_timeout = \"0s\"\n");
    assert_has(&e, &["idle_timeout at keyward.toml:2 is zero"]);
    let e = parse_err("[limits]\nkeepalive_interval = \"soon\"\n");
    assert_has(
        &e,
        &["keepalive_interval = \"soon\" at keyward.toml:2 is not a duration"],
    );
    let e = parse_err("[limits]\nmax_connections = -3\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
}
