//! `[backend]`: local by default, OpenBao with its settings, and its mistakes explained.

use super::*;

const RECIPIENT: &str = "age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d";

#[test]
fn backend_defaults_to_local_and_openbao_takes_its_settings() {
    assert_eq!(parse("").unwrap().backend, crate::config::backend::BackendConfig::Local);
    let c = parse(&format!(
        "[backend]\nkind = \"openbao\"\naddress = \"https://bao.internal:8200/\"\nprefix = \"/teams/keyward/\"\ntoken_file = \"/etc/keyward/bao.token\"\nrecipients = [\"{RECIPIENT}\", \"{RECIPIENT}\"]\nagent_id = \"web-1\"\npoll_interval = \"250ms\"\n"
    ))
    .unwrap();
    let crate::config::backend::BackendConfig::OpenBao(b) = c.backend else {
        panic!("openbao")
    };
    assert_eq!(b.address, "https://bao.internal:8200");
    assert_eq!(b.mount, "secret");
    assert_eq!(b.prefix, "teams/keyward");
    assert_eq!(b.recipients, [RECIPIENT], "duplicates are dropped");
    assert_eq!(b.agent_id, "web-1");
    assert_eq!(b.poll_interval, Duration::from_millis(250));
    assert_eq!(b.status_ttl, crate::config::backend::DEFAULT_STATUS_TTL);
    assert_eq!(b.rotation_lease, crate::config::backend::DEFAULT_ROTATION_LEASE);
    assert_eq!(
        b.auth,
        crate::config::backend::OpenBaoAuth::TokenFile("/etc/keyward/bao.token".into())
    );
    let c = parse(
        "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\napprole = { role_id_file = \"/r\", secret_id_file = \"/s\" }\n",
    )
    .unwrap();
    let crate::config::backend::BackendConfig::OpenBao(b) = c.backend else {
        panic!("openbao")
    };
    assert_eq!(
        b.auth,
        crate::config::backend::OpenBaoAuth::AppRole {
            mount: "approle".into(),
            role_id_file: "/r".into(),
            secret_id_file: "/s".into()
        }
    );
}

#[test]
fn backend_mistakes_are_explained() {
    let base = "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\n";
    let cases = [
        ("[backend]\nkind = \"consul\"\n", "is not a backend keyward knows"),
        ("[backend]\nkind = \"openbao\"\ntoken_file = \"/t\"\n", "needs address"),
        (
            "[backend]\nkind = \"openbao\"\naddress = \"bao:8200\"\ntoken_file = \"/t\"\n",
            "not http or https",
        ),
        (
            "[backend]\nkind = \"openbao\"\naddress = \"https://u:pw-secret@bao:99999\"\ntoken_file = \"/t\"\n",
            "user or password",
        ),
        (base, "needs a login"),
        (&format!("{base}token_file = \"t\"\n"), "is not an absolute path"),
        (
            &format!("{base}token_file = \"/t\"\napprole = {{ role_id_file = \"/r\", secret_id_file = \"/s\" }}\n"),
            "keep one",
        ),
        (
            &format!("{base}token_file = \"/t\"\nprefix = \"a/../b\"\n"),
            "contains \"..\"",
        ),
        (
            &format!("{base}token_file = \"/t\"\nprefix = \"a..b\"\n"),
            "contains \"..\"",
        ),
        (
            &format!("{base}token_file = \"/t\"\nagent_id = \"web..1\"\n"),
            "is not 1 to 128 letters",
        ),
        (
            &format!("{base}token_file = \"/t\"\nrecipients = [\"age1nope\"]\n"),
            "is not an age X25519 public key",
        ),
        (
            &format!("{base}token_file = \"/t\"\nagent_id = \"web 1\"\n"),
            "is not 1 to 128 letters",
        ),
        (
            &format!("{base}token_file = \"/t\"\nstatus_ttl = \"1s\"\n"),
            "shorter than 2s",
        ),
        (
            &format!("{base}token_file = \"/t\"\nrotation_lease = \"2s\"\n"),
            "rotation_lease = 2s is shorter than 3s",
        ),
        (
            &format!("{base}token_file = \"/t\"\npoll_interval = \"soon\"\n"),
            "poll_interval",
        ),
        (
            &format!("{base}token_file = \"/t\"\ncolour = \"red\"\n"),
            "unknown field",
        ),
        (
            "[backend]\nkind = \"local\"\naddress = \"http://x\"\n",
            "takes no OpenBao settings",
        ),
    ];
    for (text, want) in cases {
        let err = parse_err(text);
        assert!(err.contains(want), "{text}\n=> {err}");
        assert!(
            !err.contains("pw-secret"),
            "a password in the address is never echoed: {err}"
        );
    }
}

/// A valid `ed25519:` public key (the base point's encoding is not weak).
fn signing_key(seed: u8) -> String {
    crate::config::backend::format_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key())
}

#[test]
fn members_are_parsed_and_their_mistakes_explained() {
    let base = "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"/t\"\n";
    let member = |name: &str, key: &str| {
        format!("[[backend.member]]\nname = {name:?}\nrecipient = {RECIPIENT:?}\nsigning_key = {key:?}\n")
    };
    let c = parse(&format!(
        "{base}{}{}",
        member("web-1", &signing_key(1)),
        member("web-2", &signing_key(2))
    ))
    .unwrap();
    let crate::config::backend::BackendConfig::OpenBao(b) = c.backend else {
        panic!("openbao")
    };
    assert_eq!(b.members.len(), 2);
    assert_eq!(b.members[1].name, "web-2");
    assert_eq!(
        crate::config::backend::format_signing_key(&b.members[0].signing_key),
        signing_key(1)
    );
    // A small-order point (the identity) is refused as weak.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = format!(
        "ed25519:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, identity)
    );
    let cases = [
        (format!("{base}{}", member("web 1", &signing_key(1))), "name is not"),
        (
            format!("{base}{}", member("a", "ssh-ed25519 AAAA")),
            "does not start with \"ed25519:\"",
        ),
        (format!("{base}{}", member("a", "ed25519:AAAA")), "not 32 bytes"),
        (format!("{base}{}", member("a", &weak)), "weak"),
        (
            format!("{base}{}{}", member("a", &signing_key(1)), member("a", &signing_key(2))),
            "is listed twice",
        ),
        (
            format!("{base}{}{}", member("a", &signing_key(1)), member("b", &signing_key(1))),
            "has the signing_key of another member",
        ),
        (
            format!(
                "{base}[[backend.member]]\nname = \"a\"\nrecipient = \"age1nope\"\nsigning_key = {:?}\n",
                signing_key(1)
            ),
            "recipient is not an age X25519 public key",
        ),
        (
            format!("[backend]\nkind = \"local\"\n{}", member("a", &signing_key(1))),
            "takes no OpenBao settings",
        ),
    ];
    for (text, want) in cases {
        let err = parse_err(&text);
        assert!(err.contains(want), "{text}\n=> {err}");
        assert!(
            err.contains("keyward fleet member") || want.contains("OpenBao"),
            "{err}"
        );
    }
}
