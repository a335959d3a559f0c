//! Hot reload, store side: what `Store::reload_file` makes of files other
//! tools write. The watcher itself is tested end to end in
//! `tests/it/hot_reload.rs`.

use super::*;
use crate::store::reload::{plan, FileContent, FileKind, PathClass, Plan, ReloadOutcome};

const LIMIT: usize = 1024;

/// Writes `bytes` as `prod/<name>.age`, mode 0600, as a tool would.
fn write_key_file(f: &Fixture, name: &str, bytes: &[u8]) -> PathBuf {
    let path = f.dir.join("prod").join(format!("{name}.age"));
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
    path
}

fn us(f: &Fixture) -> AgentIdentity {
    AgentIdentity::load(&f.identity_path).unwrap()
}

fn applied(outcome: ReloadOutcome) -> (Option<Arc<KeySetState>>, Arc<KeySetState>, FileKind) {
    match outcome {
        ReloadOutcome::Applied { before, after, kind } => (before, after, kind),
        other => panic!("not applied: {other:?}"),
    }
}

fn rejected(outcome: ReloadOutcome) -> String {
    match outcome {
        ReloadOutcome::Rejected { reason, .. } => reason,
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn classify_paths() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let prod = f.dir.join("prod");
    assert_eq!(
        store.classify_path(&prod.join("billing-api.age")),
        PathClass::Key(key("prod/billing-api"))
    );
    for ignored in [
        prod.join(".billing-api.age.tmp-abc"),
        prod.join(".billing-api.age"),
        prod.join("billing-api.age.tmp"),
        prod.join("x.tmp.age"),
        prod.join("README"),
        prod.join("billing-api.age~"),
        f.dir.join("staging/a.age"),
        f.dir.join("a.age"),
        prod.clone(),
        f.outside("prod/a.age"),
    ] {
        assert_eq!(
            store.classify_path(&ignored),
            PathClass::Ignored,
            "{}",
            ignored.display()
        );
    }
    match store.classify_path(&prod.join("Bad Name.age")) {
        PathClass::BadName(reason) => assert!(reason.contains("NAME.age"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn raw_secret_creates_a_new_key_in_record_format() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let path = write_key_file(&f, "new", &encrypt_to(&us(&f), b"sk_new_raw\n"));
    let (before, after, kind) = applied(store.reload_file(&key("prod/new"), LIMIT));
    assert!(before.is_none());
    assert_eq!(kind, FileKind::RawSecret);
    assert_eq!(after.generation, 1);
    assert_eq!(after.primary.number, 1);
    // One trailing newline (`echo … | age`) is not part of the key.
    assert_eq!(after.primary.secret.expose_secret(), b"sk_new_raw");
    assert_same(&store.get(&key("prod/new")).unwrap(), &after);
    // Rewritten as a record: the next look is a no-op, and a restart loads it.
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert!(matches!(
        store.reload_file(&key("prod/new"), LIMIT),
        ReloadOutcome::Unchanged
    ));
    drop(store);
    let (store, problems) = f.open();
    assert!(problems.is_empty(), "{problems:?}");
    assert_same(&store.get(&key("prod/new")).unwrap(), &after);
}

#[test]
fn raw_secret_overwrites_a_steady_key() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let mut old = steady(&store, "prod/a", b"sk_old");
    old.generation = 4;
    store.commit(old).unwrap();
    write_key_file(&f, "a", &encrypt_to(&us(&f), b"sk_replaced"));
    let (before, after, kind) = applied(store.reload_file(&key("prod/a"), LIMIT));
    assert_eq!(before.unwrap().generation, 4);
    assert_eq!(kind, FileKind::RawSecret);
    assert_eq!(after.generation, 5);
    assert_eq!(after.primary.number, 2);
    assert_eq!(after.primary.secret.expose_secret(), b"sk_replaced");
    assert_eq!(after.history.iter().map(|h| h.number).collect::<Vec<_>>(), [1]);
    assert!(matches!(
        store.reload_file(&key("prod/a"), LIMIT),
        ReloadOutcome::Unchanged
    ));
}

#[test]
fn raw_secret_equal_to_the_primary_only_normalizes_the_file() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let committed = store.commit(steady(&store, "prod/a", b"sk_same")).unwrap();
    write_key_file(&f, "a", &encrypt_to(&us(&f), b"sk_same"));
    match store.reload_file(&key("prod/a"), LIMIT) {
        ReloadOutcome::Normalized { current } => assert_same(&current, &committed),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get(&key("prod/a")).unwrap().generation, 1);
    assert!(matches!(
        store.reload_file(&key("prod/a"), LIMIT),
        ReloadOutcome::Unchanged
    ));
    drop(store);
    let (_, problems) = f.open();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn raw_secret_is_refused_mid_rotation() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let committed = store.commit(promoted(&store, "prod/a")).unwrap();
    let bytes = encrypt_to(&us(&f), b"sk_other");
    let path = write_key_file(&f, "a", &bytes);
    let reason = rejected(store.reload_file(&key("prod/a"), LIMIT));
    assert!(
        reason.contains("mid-rotation") && reason.contains("finish or abort"),
        "{reason}"
    );
    assert_same(&store.get(&key("prod/a")).unwrap(), &committed);
    assert_eq!(fs::read(&path).unwrap(), bytes, "the file is left alone");
}

#[test]
fn record_for_a_loaded_key_gets_the_next_generation() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let mut old = steady(&store, "prod/a", b"sk_one");
    old.generation = 7;
    store.commit(old).unwrap();
    // A record from elsewhere with a lower generation: never goes backwards.
    let mut file = promoted(&store, "prod/a");
    file.generation = 2;
    file.fallback.as_mut().unwrap().secret = Secret::copy_from(b"sk_one");
    file.fallback.as_mut().unwrap().fingerprint = store.get(&key("prod/a")).unwrap().primary.fingerprint.clone();
    write_key_file(&f, "a", &encrypt_to(&us(&f), &record::encode(&file).unwrap()));
    let (before, after, kind) = applied(store.reload_file(&key("prod/a"), LIMIT));
    assert_eq!(before.unwrap().generation, 7);
    assert_eq!(kind, FileKind::Record { file_generation: 2 });
    assert_eq!(after.generation, 8);
    assert_eq!(after.state, RotationState::Promoted);
    assert_eq!(after.primary.secret.expose_secret(), b"sk_new");
    assert!(matches!(
        store.reload_file(&key("prod/a"), LIMIT),
        ReloadOutcome::Unchanged
    ));
}

#[test]
fn record_for_a_new_key_keeps_its_generation() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let file = promoted(&store, "prod/b");
    write_key_file(&f, "b", &encrypt_to(&us(&f), &record::encode(&file).unwrap()));
    let (_, after, _) = applied(store.reload_file(&key("prod/b"), LIMIT));
    assert_eq!(after.generation, 5);
    let mut zero = steady(&store, "prod/c", b"c");
    zero.generation = 0;
    write_key_file(&f, "c", &encrypt_to(&us(&f), &record::encode(&zero).unwrap()));
    assert_eq!(applied(store.reload_file(&key("prod/c"), LIMIT)).1.generation, 1);
}

#[test]
fn record_reusing_a_version_number_is_rejected() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/a", b"sk_one")).unwrap();
    let other = steady(&store, "prod/a", b"sk_not_one");
    write_key_file(&f, "a", &encrypt_to(&us(&f), &record::encode(&other).unwrap()));
    let reason = rejected(store.reload_file(&key("prod/a"), LIMIT));
    assert!(reason.contains("never reused"), "{reason}");
}

#[test]
fn bad_files_are_rejected_and_left_alone() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let committed = store.commit(steady(&store, "prod/a", b"sk_good")).unwrap();
    let stranger = AgentIdentity::generate();
    let full = encrypt_to(&us(&f), b"sk_half_written_secret");
    let big = vec![b'x'; LIMIT + 1];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"this is not age".to_vec(), "cannot decrypt"),
        ("another identity", encrypt_to(&stranger, b"sk_x"), "cannot decrypt"),
        ("half written", full[..full.len() / 2].to_vec(), "cannot decrypt"),
        (
            "bad record",
            encrypt_to(&us(&f), b"keyward-keyset v1\n{}\n"),
            "not a valid keyward record",
        ),
        ("too big", encrypt_to(&us(&f), &big), "limits.max_secret_bytes"),
        ("empty", encrypt_to(&us(&f), b""), "empty"),
    ];
    for (what, bytes, want) in cases {
        let path = write_key_file(&f, "a", &bytes);
        let reason = rejected(store.reload_file(&key("prod/a"), LIMIT));
        assert!(reason.contains(want), "{what}: {reason}");
        if want == "cannot decrypt" {
            assert!(reason.contains(&us(&f).recipient()), "{what}: {reason}");
        }
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: the file is left alone");
        assert_same(&store.get(&key("prod/a")).unwrap(), &committed);
    }
    // Loose permissions: refused with the fix, nothing changed.
    let path = write_key_file(&f, "a", &encrypt_to(&us(&f), b"sk_loose"));
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let reason = rejected(store.reload_file(&key("prod/a"), LIMIT));
    assert!(reason.contains("chmod 600"), "{reason}");
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    assert_same(&store.get(&key("prod/a")).unwrap(), &committed);
}

#[test]
fn symlinks_are_not_followed() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let target = f.outside("target.age");
    let bytes = encrypt_to(&us(&f), b"sk_planted");
    fs::write(&target, &bytes).unwrap();
    fs::set_permissions(&target, Permissions::from_mode(0o600)).unwrap();
    let link = f.dir.join("prod/evil.age");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let reason = rejected(store.reload_file(&key("prod/evil"), LIMIT));
    assert!(reason.contains("symlink"), "{reason}");
    assert!(store.get(&key("prod/evil")).is_none());
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&target).unwrap(), bytes);
}

#[test]
fn removals_and_directories() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let committed = store.commit(steady(&store, "prod/a", b"sk")).unwrap();
    fs::remove_file(f.dir.join("prod/a.age")).unwrap();
    match store.reload_file(&key("prod/a"), LIMIT) {
        ReloadOutcome::RemovedOutside { current } => assert_same(&current, &committed),
        other => panic!("{other:?}"),
    }
    assert!(store.get(&key("prod/a")).is_some(), "still serving");
    assert!(matches!(
        store.reload_file(&key("prod/none"), LIMIT),
        ReloadOutcome::Gone
    ));
    fs::create_dir(f.dir.join("prod/dir.age")).unwrap();
    assert!(matches!(
        store.reload_file(&key("prod/dir"), LIMIT),
        ReloadOutcome::NotAFile
    ));
}

#[test]
fn plan_table() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let now = SystemTime::now();
    let k = key("prod/a");
    let cur = store.commit(steady(&store, "prod/a", b"one")).unwrap();
    let raw = |s: &[u8]| FileContent::Raw(store.new_version(0, Secret::copy_from(s), now, None));
    // Identical record: no-op; same record, other generation: applied.
    let same = (*cur).clone();
    assert!(matches!(
        plan(&k, Some(&cur), FileContent::Record(Box::new(same.clone())), now),
        Ok(Plan::Unchanged)
    ));
    let mut older = same;
    older.generation = 0;
    match plan(&k, Some(&cur), FileContent::Record(Box::new(older)), now) {
        Ok(Plan::Apply(next, FileKind::Record { file_generation: 0 })) => assert_eq!(next.generation, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(plan(&k, Some(&cur), raw(b"one"), now), Ok(Plan::Rewrite)));
    match plan(&k, None, raw(b"two"), now) {
        Ok(Plan::Apply(next, FileKind::RawSecret)) => {
            assert_eq!((next.generation, next.primary.number), (1, 1));
            assert_eq!(next.key, k);
        }
        other => panic!("{other:?}"),
    }
    let staged = promoted(&store, "prod/a");
    assert!(plan(&k, Some(&staged), raw(b"three"), now).is_err());
}
