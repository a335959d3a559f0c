//! Store tests against real files in a temp directory.

use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use super::identity::AgentIdentity;
use super::*;
use crate::keyset::{RotationState, VersionMeta};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    identity_path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let identity_path = tmp.path().join("identity.txt");
        AgentIdentity::load_or_create(&identity_path).unwrap();
        Fixture {
            _tmp: tmp,
            dir,
            identity_path,
        }
    }

    fn options(&self) -> StoreOptions {
        StoreOptions {
            dir: self.dir.clone(),
            identity: AgentIdentity::load(&self.identity_path).unwrap(),
            extra_recipients: vec![],
            environments: vec!["prod".to_owned(), "dev".to_owned()],
            fingerprinter: Fingerprinter::new(&[9; 32]),
        }
    }

    fn open(&self) -> (Store, Vec<LoadProblem>) {
        Store::open(self.options()).unwrap()
    }

    fn outside(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }
}

fn key(s: &str) -> KeyRef {
    s.parse().unwrap()
}

fn ms(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(n)
}

/// A promoted key with a fallback, history and expiry.
fn promoted(store: &Store, k: &str) -> KeySetState {
    let now = SystemTime::now();
    let mut new = store.new_version(
        2,
        Secret::copy_from(b"sk_new"),
        now,
        Some(now + Duration::from_secs(3600)),
    );
    new.promoted_at = Some(now);
    KeySetState {
        key: key(k),
        generation: 5,
        state: RotationState::Promoted,
        primary: new,
        fallback: Some(store.new_version(1, Secret::copy_from(b"sk_old"), ms(1_000), None)),
        history: vec![VersionMeta {
            number: 0,
            fingerprint: "00112233aabbccdd".to_owned(),
            created_at: ms(10),
            expires_at: None,
            promoted_at: Some(ms(20)),
            retired_at: Some(ms(30)),
        }],
        backend_version: None,
    }
}

fn steady(store: &Store, k: &str, secret: &[u8]) -> KeySetState {
    KeySetState::create(
        key(k),
        store.new_version(1, Secret::copy_from(secret), SystemTime::now(), None),
    )
}

fn assert_same(a: &KeySetState, b: &KeySetState) {
    assert_eq!(a.key, b.key);
    assert_eq!(a.generation, b.generation);
    assert_eq!(a.state, b.state);
    assert_eq!(a.history, b.history);
    assert_eq!(a.primary.meta(), b.primary.meta());
    assert_eq!(a.primary.secret.expose_secret(), b.primary.secret.expose_secret());
    assert_eq!(
        a.fallback.as_ref().map(Version::meta),
        b.fallback.as_ref().map(Version::meta)
    );
    assert_eq!(
        a.fallback.as_ref().map(|f| f.secret.expose_secret().to_vec()),
        b.fallback.as_ref().map(|f| f.secret.expose_secret().to_vec())
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn open_creates_private_dirs() {
    let f = Fixture::new();
    let (store, problems) = f.open();
    assert!(problems.is_empty());
    assert!(store.is_empty());
    for d in [f.dir.clone(), f.dir.join("prod"), f.dir.join("dev")] {
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700, "{}", d.display());
    }
    assert_eq!(store.dir(), f.dir);
    assert_eq!(store.environments().collect::<Vec<_>>(), ["dev", "prod"]);
}

#[test]
fn put_get_reopen_keeps_everything() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let state = promoted(&store, "prod/billing-api");
    let committed = store.commit(state.clone()).unwrap();
    // What is committed is what a reload gives: times in whole milliseconds.
    let mut want = state.clone();
    record::normalize_times(&mut want);
    assert_same(&committed, &want);
    assert_same(&store.get(&key("prod/billing-api")).unwrap(), &want);
    store.commit(steady(&store, "prod/crm", b"crm")).unwrap();
    store.commit(steady(&store, "dev/crm", b"dev-crm")).unwrap();
    assert_eq!(store.len(), 3);

    let path = f.dir.join("prod/billing-api.age");
    assert_eq!(store.key_path(&key("prod/billing-api")), path);
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let raw = fs::read(&path).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(!raw.windows(6).any(|w| w == b"sk_new"));
    assert_eq!(names_in(&f.dir.join("prod")), ["billing-api.age", "crm.age"]);

    drop(store);
    let (store, problems) = f.open();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(store.len(), 3);
    let back = store.get(&key("prod/billing-api")).unwrap();
    assert_same(&back, &committed);
    assert_eq!(back.primary.fingerprint, committed.primary.fingerprint);
    let listed: Vec<String> = store.list(None).iter().map(|s| s.key.to_string()).collect();
    assert_eq!(listed, ["dev/crm", "prod/billing-api", "prod/crm"]);
    let prod: Vec<String> = store.list(Some("prod")).iter().map(|s| s.key.to_string()).collect();
    assert_eq!(prod, ["prod/billing-api", "prod/crm"]);
    assert!(store.list(Some("staging")).is_empty());
}

#[test]
fn fingerprints_depend_on_the_install() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let committed = store.commit(steady(&store, "prod/a", b"secret")).unwrap();
    drop(store);
    let mut opts = f.options();
    opts.fingerprinter = Fingerprinter::new(&[1; 32]);
    let (store, _) = Store::open(opts).unwrap();
    let other = store.get(&key("prod/a")).unwrap();
    assert_eq!(other.primary.secret.expose_secret(), b"secret");
    assert_ne!(other.primary.fingerprint, committed.primary.fingerprint);
}

#[test]
fn symlink_in_env_dir_is_not_loaded() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/real", b"x")).unwrap();
    drop(store);
    // A valid key file, outside the store, and a link to it inside.
    let elsewhere = f.outside("elsewhere.age");
    fs::rename(f.dir.join("prod/real.age"), &elsewhere).unwrap();
    let link = f.dir.join("prod/evil.age");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (store, problems) = f.open();
    assert!(store.get(&key("prod/evil")).is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, link);
    assert!(problems[0].reason.contains("symlink"), "{}", problems[0]);
    assert!(fs::symlink_metadata(&link).is_ok(), "the link is left in place");
}

#[test]
fn bad_file_name_is_skipped() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/good", b"x")).unwrap();
    drop(store);
    let bad = f.dir.join("prod/Upper.age");
    fs::copy(f.dir.join("prod/good.age"), &bad).unwrap();
    fs::set_permissions(&bad, Permissions::from_mode(0o600)).unwrap();
    fs::write(f.dir.join("prod/README"), b"not a key").unwrap();
    let (store, problems) = f.open();
    assert_eq!(store.len(), 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, bad);
    assert!(problems[0].reason.contains("not a valid key"), "{}", problems[0]);
    assert!(bad.exists());
}

#[test]
fn undecryptable_and_foreign_files_are_skipped_and_kept() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/good", b"x")).unwrap();
    drop(store);
    let garbage = f.dir.join("prod/garbage.age");
    fs::write(&garbage, b"this is not age").unwrap();
    // Encrypted to someone else.
    let stranger = AgentIdentity::generate();
    let foreign = f.dir.join("prod/foreign.age");
    fs::write(&foreign, encrypt_to(&stranger, b"keyward-keyset v1\n")).unwrap();
    // Encrypted to us, but a raw secret, not a record (for now).
    let raw = f.dir.join("prod/raw.age");
    let us = AgentIdentity::load(&f.identity_path).unwrap();
    fs::write(&raw, encrypt_to(&us, b"sk_live_raw")).unwrap();
    for p in [&garbage, &foreign, &raw] {
        fs::set_permissions(p, Permissions::from_mode(0o600)).unwrap();
    }

    let (store, problems) = f.open();
    assert_eq!(store.len(), 1);
    let reasons: BTreeMap<PathBuf, String> = problems.into_iter().map(|p| (p.path, p.reason)).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[&garbage].contains("cannot decrypt"), "{}", reasons[&garbage]);
    assert!(reasons[&foreign].contains("cannot decrypt"), "{}", reasons[&foreign]);
    assert!(reasons[&raw].contains("not a keyward record"), "{}", reasons[&raw]);
    for p in [&garbage, &foreign, &raw] {
        assert!(p.exists(), "{} was deleted", p.display());
    }
}

fn encrypt_to(id: &AgentIdentity, plaintext: &[u8]) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(std::iter::once(id.age_recipient() as &dyn age::Recipient)).unwrap();
    let mut out = vec![];
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(plaintext).unwrap();
    w.finish().unwrap();
    out
}

#[test]
fn loose_key_file_fails_open() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/a", b"x")).unwrap();
    drop(store);
    let path = f.dir.join("prod/a.age");
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(f.options()).err().expect("open must fail");
    assert!(matches!(err, StoreError::Permissions { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("chmod 600"),
        "{msg}"
    );
}

#[test]
fn loose_env_dir_fails_open() {
    let f = Fixture::new();
    drop(f.open());
    let prod = f.dir.join("prod");
    fs::set_permissions(&prod, Permissions::from_mode(0o777)).unwrap();
    let msg = Store::open(f.options()).err().expect("open must fail").to_string();
    assert!(
        msg.contains("chmod 700") && msg.contains(&prod.display().to_string()),
        "{msg}"
    );
}

#[test]
fn leftover_temp_files_are_removed_at_open() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/a", b"x")).unwrap();
    drop(store);
    let tmp = f.dir.join("prod/.a.age.tmp-abc123");
    fs::write(&tmp, b"torn").unwrap();
    let (store, problems) = f.open();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!tmp.exists());
    assert_eq!(names_in(&f.dir.join("prod")), ["a.age"]);
    assert_eq!(store.get(&key("prod/a")).unwrap().primary.secret.expose_secret(), b"x");
}

#[test]
fn delete_removes_the_file() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/a", b"x")).unwrap();
    store.commit(steady(&store, "prod/b", b"y")).unwrap();
    let removed = store.delete(&key("prod/a")).unwrap();
    assert_eq!(removed.primary.secret.expose_secret(), b"x");
    assert!(store.get(&key("prod/a")).is_none());
    assert_eq!(names_in(&f.dir.join("prod")), ["b.age"]);
    assert!(matches!(store.delete(&key("prod/a")), Err(StoreError::NotFound { .. })));
    drop(store);
    let (store, _) = f.open();
    assert!(store.get(&key("prod/a")).is_none());
    assert_eq!(store.len(), 1);
}

#[test]
fn commit_refuses_unconfigured_environment() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let err = store.commit(steady(&store, "staging/a", b"x")).err().unwrap();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if m.contains("staging")),
        "{err}"
    );
    assert!(!f.dir.join("staging").exists());
}

#[test]
fn failed_commit_keeps_the_old_state() {
    let f = Fixture::new();
    let (store, _) = f.open();
    let k = key("prod/a");
    let old = store.commit(steady(&store, "prod/a", b"old")).unwrap();

    // 1. An inconsistent state is refused before anything is written.
    let mut bad = old.overwrite(
        store.new_version(0, Secret::copy_from(b"new"), SystemTime::now(), None),
        SystemTime::now(),
    );
    bad.fallback = Some(bad.primary.clone());
    bad.state = RotationState::Staged;
    assert!(matches!(store.commit(bad), Err(StoreError::Invalid(_))));
    assert_eq!(store.get(&k).unwrap().primary.secret.expose_secret(), b"old");

    // 2. The environment's directory replaced by a file: the write fails.
    let prod = f.dir.join("prod");
    let aside = f.outside("prod-aside");
    fs::rename(&prod, &aside).unwrap();
    fs::write(&prod, b"not a directory").unwrap();
    let next = old.overwrite(
        store.new_version(0, Secret::copy_from(b"new"), SystemTime::now(), None),
        SystemTime::now(),
    );
    let err = store.commit(next.clone()).err().unwrap();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    let now = store.get(&k).unwrap();
    assert_eq!(now.generation, old.generation);
    assert_eq!(now.primary.secret.expose_secret(), b"old");
    fs::remove_file(&prod).unwrap();
    fs::rename(&aside, &prod).unwrap();

    // 3. The rename itself fails (a directory where the file goes): the temp
    // file is removed and the other keys' files are untouched.
    fs::create_dir_all(f.dir.join("prod/b.age/blocker")).unwrap();
    assert!(store.commit(steady(&store, "prod/b", b"b")).is_err());
    assert!(store.get(&key("prod/b")).is_none());
    assert_eq!(names_in(&prod), ["a.age", "b.age"]);
    fs::remove_dir_all(f.dir.join("prod/b.age")).unwrap();

    drop(store);
    let (store, problems) = f.open();
    assert!(problems.is_empty(), "{problems:?}");
    assert_same(&store.get(&k).unwrap(), &old);

    // And a later commit works again.
    store.commit(next).unwrap();
    assert_eq!(store.get(&k).unwrap().primary.secret.expose_secret(), b"new");
}

#[test]
fn commit_recreates_a_missing_env_dir() {
    let f = Fixture::new();
    let (store, _) = f.open();
    fs::remove_dir(f.dir.join("dev")).unwrap();
    store.commit(steady(&store, "dev/a", b"x")).unwrap();
    assert_eq!(fs::metadata(f.dir.join("dev")).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn extra_recipients_can_decrypt() {
    let f = Fixture::new();
    let breakglass = AgentIdentity::generate();
    let mut opts = f.options();
    opts.extra_recipients = vec![breakglass.recipient()];
    let (store, _) = Store::open(opts).unwrap();
    store.commit(steady(&store, "prod/a", b"glass")).unwrap();
    let ciphertext = fs::read(f.dir.join("prod/a.age")).unwrap();
    let plaintext = breakglass.decrypt(&ciphertext).unwrap();
    assert!(plaintext.ends_with(b"glass"));

    let mut opts = f.options();
    opts.extra_recipients = vec!["age1notakey".to_owned()];
    let msg = Store::open(opts).err().expect("bad recipient").to_string();
    assert!(msg.contains("age1notakey"), "{msg}");
}

#[test]
fn bad_environment_name_is_refused() {
    let f = Fixture::new();
    let mut opts = f.options();
    opts.environments.push("../etc".to_owned());
    assert!(matches!(Store::open(opts), Err(StoreError::Invalid(_))));
}

#[test]
fn unknown_env_dirs_are_ignored() {
    let f = Fixture::new();
    let (store, _) = f.open();
    store.commit(steady(&store, "prod/a", b"x")).unwrap();
    drop(store);
    fs::create_dir(f.dir.join("old-env")).unwrap();
    fs::copy(f.dir.join("prod/a.age"), f.dir.join("old-env/a.age")).unwrap();
    let (store, problems) = f.open();
    assert!(problems.is_empty());
    assert_eq!(store.len(), 1);
}

#[test]
fn concurrent_commits_on_different_keys() {
    let f = Fixture::new();
    let (store, _) = f.open();
    std::thread::scope(|s| {
        for i in 0..8 {
            let store = &store;
            s.spawn(move || {
                for g in 0..5u64 {
                    let mut st = steady(store, &format!("prod/k{i}"), format!("{i}-{g}").as_bytes());
                    st.generation = g + 1;
                    store.commit(st).unwrap();
                }
            });
        }
    });
    assert_eq!(store.len(), 8);
    drop(store);
    let (store, problems) = f.open();
    assert!(problems.is_empty());
    for i in 0..8 {
        let st = store.get(&key(&format!("prod/k{i}"))).unwrap();
        assert_eq!(st.generation, 5);
        assert_eq!(st.primary.secret.expose_secret(), format!("{i}-4").as_bytes());
    }
    assert_eq!(names_in(&f.dir.join("prod")).len(), 8);
}

mod reload;
