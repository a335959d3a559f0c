//! `[audit]` segments, retention and anchors.

use std::time::Duration;

use super::{assert_has, parse, parse_err};
use crate::config::audit::{Retain, DEFAULT_ANCHOR_INTERVAL, DEFAULT_SEGMENT_SIZE};
use crate::config::audit_anchor::AnchorKind;

#[test]
fn segment_and_retention_settings_parse() {
    let c = parse("").unwrap();
    assert_eq!(c.audit.segment_size, DEFAULT_SEGMENT_SIZE);
    assert_eq!((c.audit.segment_age, c.audit.retain), (None, None));
    assert_eq!(c.audit.anchor_interval, DEFAULT_ANCHOR_INTERVAL);

    let c = parse("[audit]\nsegment_size = \"16MiB\"\nsegment_age = \"1d\"\nretain = 30\n").unwrap();
    assert_eq!(c.audit.segment_size, 16 << 20);
    assert_eq!(c.audit.segment_age, Some(Duration::from_secs(86_400)));
    assert_eq!(c.audit.retain, Some(Retain::Count(30)));
    let c = parse("[audit]\nretain = \"90d\"\n").unwrap();
    assert_eq!(c.audit.retain, Some(Retain::Age(Duration::from_secs(90 * 86_400))));
    let c = parse("[audit]\nretain = \"12\"\n").unwrap();
    assert_eq!(c.audit.retain, Some(Retain::Count(12)));

    let e = parse_err("[audit]\nsegment_size = \"100\"\n");
    assert_has(&e, &["keyward.toml:2", "segment_size", "below 1KiB", "\"64MiB\""]);
    let e = parse_err("[audit]\nsegment_size = \"64M\"\n");
    assert_has(&e, &["segment_size", "not a size", "unknown unit"]);
    for bad in ["0", "\"0\"", "\"forever\"", "-3"] {
        let e = parse_err(&format!("[audit]\nretain = {bad}\n"));
        assert_has(&e, &["keyward.toml:2", "retain", "retain = 30", "retain = \"90d\""]);
    }
    let e = parse_err("[audit]\nsegment_age = \"0s\"\n");
    assert_has(&e, &["segment_age", "zero"]);
}

#[test]
fn anchors_parse_and_bad_ones_are_refused_without_quoting_the_url() {
    let c = parse(concat!(
        "[audit]\nanchor_interval = \"15m\"\n",
        "[[audit.anchor]]\nkind = \"exec\"\ncommand = [\"/usr/local/bin/keep\", \"--x\"]\n",
        "[[audit.anchor]]\nkind = \"webhook\"\nname = \"remote\"\nurl = \"https://a.example/t0ken\"\nheaders = { Authorization = \"Bearer s3cret\" }\ntimeout = \"3s\"\n",
    ))
    .unwrap();
    assert_eq!(c.audit.anchor_interval, Duration::from_secs(900));
    let [exec, hook] = &c.audit.anchors[..] else {
        panic!("two anchors")
    };
    assert_eq!(exec.name, "exec-1");
    assert!(matches!(&exec.kind, AnchorKind::Exec(cmd) if cmd.argv[0] == "/usr/local/bin/keep"));
    assert_eq!((hook.name.as_str(), hook.timeout), ("remote", Duration::from_secs(3)));
    assert!(!format!("{:?}", c.audit.anchors).contains("s3cret"));
    assert!(!format!("{:?}", c.audit.anchors).contains("t0ken"));

    for (toml, needles) in [
        (
            "kind = \"carrier-pigeon\"",
            &["kind = \"carrier-pigeon\"", "\"exec\" or \"webhook\""][..],
        ),
        ("kind = \"exec\"", &["needs `command`"]),
        ("kind = \"exec\"\ncommand = [\"keep\"]", &["not an absolute path"]),
        ("kind = \"webhook\"", &["needs `url`"]),
        (
            "kind = \"webhook\"\nurl = \"ftp://t0ken@x\"",
            &["not an http:// or https:// URL"],
        ),
        (
            "kind = \"exec\"\ncommand = [\"/bin/true\"]\nurl = \"https://x\"",
            &["takes `command`, not `url`"],
        ),
        (
            "kind = \"exec\"\nname = \"backend\"\ncommand = [\"/bin/true\"]",
            &["name = \"backend\" is kept for the fleet backend's anchors"],
        ),
    ] {
        let e = parse_err(&format!("[[audit.anchor]]\n{toml}\n"));
        assert_has(&e, needles);
        assert_has(&e, &["[[audit.anchor]] at keyward.toml:2"]);
        assert!(!e.contains("t0ken"), "{e}");
    }
}
