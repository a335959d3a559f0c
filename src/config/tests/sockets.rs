//! `[sockets]`: modes, groups and the credentials socket.

use super::*;

#[test]
fn service_mode_table() {
    let cases: &[(&str, Option<u32>)] = &[
        ("\"0660\"", Some(0o660)),
        ("\"0600\"", Some(0o600)),
        ("\"0666\"", Some(0o666)),
        ("\"660\"", Some(0o660)),
        ("\"0o660\"", Some(0o660)),
        ("0o660", Some(0o660)),
        ("\"0755\"", None),
        ("\"0670\"", None),
        ("\"0662\"", None),
        ("\"0640\"", None),
        ("\"04660\"", None),
        ("\"0777\"", None),
        ("\"rw-rw----\"", None),
        ("\"\"", None),
        ("\"0o\"", None),
        ("\"0000660\"", None),
        ("660", None),
        ("-1", None),
    ];
    for (value, want) in cases {
        let text = format!("[sockets]\nservice_mode = {value}\n");
        match (parse(&text), want) {
            (Ok(c), Some(m)) => assert_eq!(c.service_socket_mode, *m, "{value}"),
            (Err(e), None) => assert_has(&e.to_string(), &["keyward.toml:2", "service_mode", "\"0660\""]),
            (got, _) => panic!("{value}: {:?}", got.map(|c| c.service_socket_mode)),
        }
    }
    let c = parse("[sockets]\nservice_mode = \"0666\"\n").unwrap();
    assert_eq!(c.warnings().len(), 1);
    assert_has(&c.warnings()[0], &["0666", "0660"]);
}

#[test]
fn credentials_socket_is_opt_in() {
    assert!(parse("[sockets]\ncredentials = true\n").unwrap().credentials_socket);
    assert!(!parse("[sockets]\n").unwrap().credentials_socket);
    let e = parse_err("[sockets]\ncredentials = \"yes\"\n");
    assert_has(&e, &["keyward.toml:2", "expected a boolean"]);
}

#[test]
fn socket_groups() {
    let c = parse("[sockets]\nservice_group = \"root\"\nadmin_group = \"77\"\n").unwrap();
    assert_eq!((c.service_socket_group, c.admin_group), (Some(0), Some(77)));
    let c = parse("[sockets]\nservice_group = 1234\n").unwrap();
    assert_eq!(c.service_socket_group, Some(1234));
    let e = parse_err("[sockets]\n\nadmin_group = \"no-such-group-kw\"\n");
    assert_has(
        &e,
        &[
            "unknown group 'no-such-group-kw'",
            "admin_group at keyward.toml:3",
            "groupadd",
        ],
    );
    let e = parse_err("[sockets]\nservice_group = -5\n");
    assert_has(&e, &["keyward.toml:2", "not a gid"]);
}
