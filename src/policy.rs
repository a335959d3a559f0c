//! Who may read which keys: the access policy.
//!
//! Invariant: access is denied by default. A caller reads a key only when
//! some [`Grant`] applies to the caller *and* one of that grant's key
//! patterns matches the key. This module is pure (no I/O, no clock): the
//! server gathers the caller's identity from the kernel into a [`Principal`]
//! and asks [`Policy::allows`] or [`Policy::grant_for`].
//!
//! # Matching rule
//!
//! A grant lists up to four *selector kinds*; it applies to a caller when
//! **every** kind it lists matches (AND across kinds), and a kind matches
//! when **any** of its values does (OR within a kind):
//!
//! | kind | matches when |
//! |---|---|
//! | uid (`uids`, and `users` in the config) | the caller's uid is in the list |
//! | group (`gids`, and `groups` in the config) | the caller's primary gid, or any of its supplementary groups, is in the list |
//! | executable (`executables`) | the caller's running image is the file at one of the paths (see below) |
//! | unit (`units`) | the caller's systemd unit is one of the names, or its cgroup one of the paths (`/system.slice/x.service`) |
//!
//! An empty list means the kind is not listed. A grant that lists no kind
//! at all applies to nobody (the config loader rejects it outright, so that
//! a mistake cannot turn into "everyone"). A caller whose executable or
//! unit could not be verified never matches a grant that lists that kind.
//!
//! # Principals and what narrows them
//!
//! The **principal** is the caller's uid and groups, which the kernel
//! vouches for. Executables and units only *narrow* a principal: any
//! process of a uid can run, preload or trace a program that uid may run,
//! and any process can sit in a cgroup named like a unit inside a subtree
//! delegated to it. So a grant that applies to callers on `keys.sock` lists
//! users, uids, groups or gids ([`Grant::names_principal`]). A grant that
//! lists only `units` is a *credentials grant*: it applies to
//! `LoadCredential=` requests on `creds.sock`, which only the service
//! manager (PID 1) makes and for which it vouches for the unit
//! ([`Policy::credential_grant_for`]), and to nothing on `keys.sock`. A grant
//! that lists executables without a principal is refused by the config
//! loader.
//!
//! This module matches; it does not verify. The server verifies (see
//! `server::identity`) and fills the [`Principal`]: `executables` holds the
//! configured paths whose file *is* the caller's running image (same device
//! and inode, the caller in the agent's namespaces, no loader override, no
//! tracer, no code from a file a non-root user can write, every holder of
//! the connection alike), and `unit` the unit derived from the caller's
//! cgroup by systemd's rules outside any delegated subtree. A binary
//! replaced on disk while running is a different file and stops matching,
//! which is the safe outcome.
//!
//! # Key patterns
//!
//! A [`KeyPattern`] is `ENV/NAME` where each side is a glob: `*` stands for
//! any run of characters (possibly none), everything else is a literal from
//! the name alphabet `[a-z0-9._-]`. For example `prod/*`, `*/billing-*`,
//! `*/*`, `staging/crm-api`. A `*` never crosses the `/`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::secret::KeyRef;

/// The caller of a request, as the kernel and `/proc` describe it.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    /// Effective uid from `SO_PEERCRED`.
    pub uid: u32,
    /// Effective gid from `SO_PEERCRED`.
    pub gid: u32,
    /// Supplementary groups of the caller process.
    pub groups: &'a [u32],
    /// The configured executable paths whose file is, as verified, the
    /// caller's running image (empty when none is, or when the caller was
    /// not verified).
    pub executables: &'a [PathBuf],
    /// The caller's systemd unit, as verified (`None` when it has none, or
    /// was not verified).
    pub unit: Option<Unit<'a>>,
}

impl<'a> Principal<'a> {
    /// A caller known by its credentials alone: no executable or unit
    /// selector matches it.
    pub fn of_credentials(uid: u32, gid: u32, groups: &'a [u32]) -> Principal<'a> {
        Principal {
            uid,
            gid,
            groups,
            executables: &[],
            unit: None,
        }
    }
}

/// Whether `who` may use the admin socket: root, the agent's own user
/// (`agent_uid`), or a member of the configured admin group. The socket's
/// mode already keeps others out; this is the second lock on the door (a
/// socket passed in by a service manager may have another mode).
pub fn may_administer(who: &Principal<'_>, agent_uid: u32, admin_group: Option<u32>) -> bool {
    let in_admin_group = admin_group.is_some_and(|g| who.gid == g || who.groups.contains(&g));
    who.uid == 0 || who.uid == agent_uid || in_admin_group
}

/// Whether a peer with `uid` and `pid` may ask for credentials on
/// `creds.sock`: the service manager (PID 1 as root), whose word on the
/// unit is believed; in dev mode, where there is no service manager to
/// prove, also the agent's own user.
pub fn may_ask_for_credentials(uid: u32, pid: Option<i32>, dev_mode: bool, agent_uid: u32) -> bool {
    (uid == 0 && pid == Some(1)) || (dev_mode && uid == agent_uid)
}

/// A caller known by its unit alone: the unit the service manager (PID 1)
/// names when it asks `creds.sock` for a credential. It has no uid, groups
/// or executable the policy could match, so only credentials grants (those
/// that name nothing but `units`) apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitPrincipal<'a> {
    /// The unit being started, e.g. `billing.service`.
    pub unit: &'a str,
}

/// A systemd unit as a `units` selector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit<'a> {
    /// The unit's name, e.g. `billing-worker.service`.
    pub name: &'a str,
    /// Its cgroup, e.g. `/system.slice/billing-worker.service`.
    pub cgroup: &'a str,
}

impl Unit<'_> {
    /// Whether the `units` value `selector` names this unit: a path (it
    /// starts with `/`) is compared with the cgroup, anything else with the
    /// name.
    pub fn is(&self, selector: &str) -> bool {
        if selector.starts_with('/') {
            selector == self.cgroup
        } else {
            selector == self.name
        }
    }
}

/// Why a key pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// No `/` between environment and name.
    #[error("key pattern {shown} is not of the form ENV/NAME: write e.g. \"prod/*\" or \"*/billing-api\"")]
    NoSlash {
        /// The pattern, escaped for printing.
        shown: String,
    },
    /// More than one `/`.
    #[error("key pattern {shown} has more than one '/': write ENV/NAME, e.g. \"prod/billing-*\"")]
    TooManySlashes {
        /// The pattern, escaped for printing.
        shown: String,
    },
    /// Nothing on one side of the `/`.
    #[error("key pattern {shown} has an empty {side} part: write \"*\" to match any {side}")]
    EmptySide {
        /// The pattern, escaped for printing.
        shown: String,
        /// "environment" or "name".
        side: &'static str,
    },
    /// A character that is neither `*` nor in `[a-z0-9._-]`.
    #[error("key pattern {shown} has the character {ch:?}: {hint}")]
    BadCharacter {
        /// The pattern, escaped for printing.
        shown: String,
        /// The offending character.
        ch: char,
        /// What to write instead.
        hint: &'static str,
    },
    /// A side starts with a literal that no name can start with.
    #[error("key pattern {shown} can never match: its {side} part starts with {ch:?}, but names start with a lowercase letter or digit")]
    NeverMatches {
        /// The pattern, escaped for printing.
        shown: String,
        /// "environment" or "name".
        side: &'static str,
        /// The first character.
        ch: char,
    },
}

/// A pattern over key addresses, `ENV/NAME` with `*` globs on each side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPattern {
    /// Environment glob, with runs of `*` collapsed to one.
    env: String,
    /// Name glob, with runs of `*` collapsed to one.
    name: String,
}

impl KeyPattern {
    /// Parses `ENV/NAME` globs; see the [module docs](self).
    pub fn parse(s: &str) -> Result<KeyPattern, PatternError> {
        let shown = format!("{s:?}");
        let mut parts = s.split('/');
        let (env, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(env), Some(name), None) => (env, name),
            (_, None, _) => return Err(PatternError::NoSlash { shown }),
            _ => return Err(PatternError::TooManySlashes { shown }),
        };
        Ok(KeyPattern {
            env: parse_side(env, "environment", &shown)?,
            name: parse_side(name, "name", &shown)?,
        })
    }

    /// The pattern matching every key, `*/*`.
    pub fn any() -> KeyPattern {
        KeyPattern {
            env: "*".to_owned(),
            name: "*".to_owned(),
        }
    }

    /// True when `key` matches both sides.
    pub fn matches(&self, key: &KeyRef) -> bool {
        glob_matches(self.env.as_bytes(), key.env().as_bytes())
            && glob_matches(self.name.as_bytes(), key.name().as_bytes())
    }

    /// The environment glob, e.g. `prod` or `*`.
    pub fn env_glob(&self) -> &str {
        &self.env
    }

    /// The name glob, e.g. `billing-*`.
    pub fn name_glob(&self) -> &str {
        &self.name
    }

    /// The environment, when the environment side has no `*` (it names
    /// exactly one environment). The config loader checks it is configured.
    pub fn literal_env(&self) -> Option<&str> {
        (!self.env.contains('*')).then_some(self.env.as_str())
    }

    /// True when the pattern could match some key in environment `env`.
    pub fn matches_env(&self, env: &str) -> bool {
        glob_matches(self.env.as_bytes(), env.as_bytes())
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.name)
    }
}

impl FromStr for KeyPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<KeyPattern, PatternError> {
        KeyPattern::parse(s)
    }
}

/// Validates one side of a pattern and collapses `**` runs to `*`.
fn parse_side(side: &str, what: &'static str, shown: &str) -> Result<String, PatternError> {
    if side.is_empty() {
        return Err(PatternError::EmptySide {
            shown: shown.to_owned(),
            side: what,
        });
    }
    let mut out = String::with_capacity(side.len());
    for ch in side.chars() {
        let ok = ch == '*' || ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-');
        if !ok {
            let hint = if ch.is_ascii_uppercase() {
                "names are lowercase"
            } else if matches!(ch, '?' | '[' | ']' | '{' | '}') {
                "the only wildcard is '*'"
            } else {
                "use lowercase letters, digits, '.', '_', '-' and the wildcard '*'"
            };
            return Err(PatternError::BadCharacter {
                shown: shown.to_owned(),
                ch,
                hint,
            });
        }
        if !(ch == '*' && out.ends_with('*')) {
            out.push(ch);
        }
    }
    // A literal first character must be one a name may start with; otherwise
    // the pattern is silently useless, which is worth an error.
    let first = out.as_bytes()[0];
    if !(first == b'*' || first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(PatternError::NeverMatches {
            shown: shown.to_owned(),
            side: what,
            ch: first as char,
        });
    }
    Ok(out)
}

/// Glob match where `*` is any run of bytes and everything else is literal.
///
/// The classic linear backtracking algorithm: on a mismatch, retry from the
/// last `*`, letting it swallow one more byte. Only the last `*` needs
/// remembering, so this is O(pattern × text) at worst and never recursive.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether a file with owner `uid` and `mode` can be changed by a user other
/// than root: it is not root's (its owner may chmod it), or group or others
/// may write it. A group write bit counts even for group 0, whose members
/// need not be root. Code loaded from such a file never counts as a granted
/// program, and such a program never matches an executable selector.
pub fn writable_by_non_root(uid: u32, mode: u32) -> bool {
    uid != 0 || mode & 0o022 != 0
}

/// One rule of the policy: which callers (selectors) may read which keys.
///
/// Empty selector lists mean "kind not listed"; see the [module
/// docs](self) for the matching rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Caller uids (the uid kind).
    pub uids: Vec<u32>,
    /// Caller gids, primary or supplementary (the group kind).
    pub gids: Vec<u32>,
    /// Exact executable paths (the executable kind).
    pub executables: Vec<PathBuf>,
    /// systemd unit names, e.g. `billing-worker.service`, or their cgroups,
    /// e.g. `/system.slice/billing-worker.service` (the unit kind).
    pub units: Vec<String>,
    /// The keys this grant gives access to.
    pub keys: Vec<KeyPattern>,
    /// Whether the callers it names may report auth failures on its keys
    /// (`report = false` withholds it: they read, but cannot influence the
    /// retire gate, rollbacks or alerts).
    pub report: bool,
    /// Where the grant came from, e.g. `keyward.toml line 12`, for messages,
    /// the audit log and `keyward doctor`.
    pub origin: String,
}

impl Grant {
    /// True when the grant lists at least one selector kind. A grant that
    /// lists none applies to nobody.
    pub fn has_selectors(&self) -> bool {
        !(self.uids.is_empty() && self.gids.is_empty() && self.executables.is_empty() && self.units.is_empty())
    }

    /// True when the grant names a principal (users, uids, groups or gids):
    /// only such grants apply on `keys.sock` (see the [module docs](self)).
    pub fn names_principal(&self) -> bool {
        !(self.uids.is_empty() && self.gids.is_empty())
    }

    /// True for a credentials grant: `units` and nothing else, for systemd's
    /// `LoadCredential=` on `creds.sock`.
    pub fn is_credentials_grant(&self) -> bool {
        !self.units.is_empty() && !self.names_principal() && self.executables.is_empty()
    }

    /// True when the grant lists executables or units, which only a
    /// verified caller can match.
    pub fn narrows_by_process(&self) -> bool {
        !(self.executables.is_empty() && self.units.is_empty())
    }

    /// True when the uid and group kinds the grant lists match `who` (the
    /// kinds the kernel vouches for).
    fn principal_matches(&self, who: &Principal<'_>) -> bool {
        let uid_ok = self.uids.is_empty() || self.uids.contains(&who.uid);
        let group_ok = self.gids.is_empty() || self.gids.iter().any(|g| *g == who.gid || who.groups.contains(g));
        uid_ok && group_ok
    }

    /// True when the grant applies on `keys.sock` to `who`: it names a
    /// principal, and every selector kind it lists matches.
    pub fn applies_to(&self, who: &Principal<'_>) -> bool {
        if !self.names_principal() || !self.principal_matches(who) {
            return false;
        }
        let exe_ok = self.executables.is_empty() || self.executables.iter().any(|p| who.executables.contains(p));
        let unit_ok = self.units.is_empty() || who.unit.is_some_and(|unit| self.units.iter().any(|u| unit.is(u)));
        exe_ok && unit_ok
    }

    /// True when one of the grant's key patterns matches `key`.
    pub fn covers(&self, key: &KeyRef) -> bool {
        self.keys.iter().any(|p| p.matches(key))
    }
}

/// The whole policy: an ordered list of grants. Empty denies everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The grants, in file order.
    pub grants: Vec<Grant>,
}

impl Policy {
    /// A policy made of `grants`.
    pub fn new(grants: Vec<Grant>) -> Policy {
        Policy { grants }
    }

    /// Dev mode's policy: uid `uid` may read every key.
    pub fn allow_all_for_uid(uid: u32) -> Policy {
        Policy::new(vec![Grant::allow_all_for_uid(uid)])
    }

    /// True when some grant applies to `who` and covers `key`.
    pub fn allows(&self, who: &Principal<'_>, key: &KeyRef) -> bool {
        self.grant_for(who, key).is_some()
    }

    /// The first grant (in file order) that lets `who` read `key` on
    /// `keys.sock`, for the audit record; `None` means denied.
    pub fn grant_for(&self, who: &Principal<'_>, key: &KeyRef) -> Option<&Grant> {
        self.grants.iter().find(|g| g.applies_to(who) && g.covers(key))
    }

    /// Whether a grant could let `who` read `key` once its executable or
    /// unit is verified: one that names `who`'s principal, covers `key`,
    /// and lists executables or units. Only then is the (costly) process
    /// verification worth doing.
    pub fn needs_process_identity(&self, who: &Principal<'_>, key: &KeyRef) -> bool {
        self.grants
            .iter()
            .any(|g| g.names_principal() && g.narrows_by_process() && g.principal_matches(who) && g.covers(key))
    }

    /// The first grant that lets `who` read `key` *and* report auth failures
    /// on it (`report` not withheld).
    pub fn report_grant_for(&self, who: &Principal<'_>, key: &KeyRef) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| g.report && g.applies_to(who) && g.covers(key))
    }

    /// The first credentials grant (only `units`) that lets the unit
    /// `who` names have `key` through `LoadCredential=`.
    pub fn credential_grant_for(&self, who: &UnitPrincipal<'_>, key: &KeyRef) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| g.is_credentials_grant() && g.units.iter().any(|u| u == who.unit) && g.covers(key))
    }

    /// Every executable path the grants name (each once).
    pub fn executable_paths(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = Vec::new();
        for p in self.grants.iter().flat_map(|g| &g.executables) {
            if !paths.contains(&p.as_path()) {
                paths.push(p);
            }
        }
        paths
    }
}

impl Grant {
    /// The dev-mode grant: `uids = [uid]`, `keys = ["*/*"]`, origin "dev mode".
    pub fn allow_all_for_uid(uid: u32) -> Grant {
        Grant {
            uids: vec![uid],
            gids: Vec::new(),
            executables: Vec::new(),
            units: Vec::new(),
            keys: vec![KeyPattern::any()],
            report: true,
            origin: "dev mode".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_service_manager_asks_in_system_mode() {
        // (uid, pid, dev mode, agent's uid) → may ask
        let cases = [
            (0, Some(1), false, 0, true),
            (0, Some(2), false, 0, false),
            (0, None, false, 0, false),
            (1000, Some(1), false, 0, false),
            (1000, Some(55), true, 1000, true),
            (1001, Some(55), true, 1000, false),
            (0, Some(55), true, 1000, false),
        ];
        for (uid, pid, dev, own, want) in cases {
            assert_eq!(
                may_ask_for_credentials(uid, pid, dev, own),
                want,
                "uid {uid} pid {pid:?} dev {dev} own {own}"
            );
        }
    }

    #[test]
    fn the_admin_socket_takes_root_the_agents_user_and_the_admin_group() {
        // (uid, gid, groups, agent's uid, admin group) → may administer
        type Case = (u32, u32, &'static [u32], u32, Option<u32>, bool);
        let cases: [Case; 8] = [
            (0, 0, &[], 999, None, true),
            (999, 999, &[], 999, None, true),
            (1000, 1000, &[], 999, None, false),
            (1000, 1000, &[], 999, Some(50), false),
            (1000, 50, &[], 999, Some(50), true),
            (1000, 1000, &[7, 50], 999, Some(50), true),
            (1000, 1000, &[7], 999, Some(50), false),
            (4294967295, 4294967295, &[], 999, None, false),
        ];
        for (uid, gid, groups, agent, group, want) in cases {
            let who = Principal::of_credentials(uid, gid, groups);
            assert_eq!(
                may_administer(&who, agent, group),
                want,
                "uid {uid} gid {gid} groups {groups:?} agent {agent} admin group {group:?}"
            );
        }
    }

    fn key(s: &str) -> KeyRef {
        s.parse().unwrap()
    }

    fn pat(s: &str) -> KeyPattern {
        KeyPattern::parse(s).unwrap()
    }

    fn grant(origin: &str) -> Grant {
        Grant {
            uids: vec![],
            gids: vec![],
            executables: vec![],
            units: vec![],
            keys: vec![KeyPattern::any()],
            report: true,
            origin: origin.to_owned(),
        }
    }

    /// A caller with its verified identity spelled out: `exes` are the
    /// configured paths its image was verified to be, `unit` its unit and
    /// the unit's cgroup.
    struct Caller {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
        exes: Vec<PathBuf>,
        unit: Option<(String, String)>,
    }

    impl Caller {
        fn new(uid: u32, gid: u32) -> Caller {
            Caller {
                uid,
                gid,
                groups: vec![],
                exes: vec![],
                unit: None,
            }
        }
        fn groups(mut self, g: &[u32]) -> Caller {
            self.groups = g.to_vec();
            self
        }
        fn exe(mut self, e: &str) -> Caller {
            self.exes.push(e.into());
            self
        }
        fn unit(mut self, u: &str) -> Caller {
            self.unit = Some((u.into(), format!("/system.slice/{u}")));
            self
        }
        fn principal(&self) -> Principal<'_> {
            Principal {
                uid: self.uid,
                gid: self.gid,
                groups: &self.groups,
                executables: &self.exes,
                unit: self.unit.as_ref().map(|(name, cgroup)| Unit { name, cgroup }),
            }
        }
    }

    #[test]
    fn pattern_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("prod/*", "prod/billing-api", true),
            ("prod/*", "staging/billing-api", false),
            ("prod/*", "production/x", false),
            ("*/billing-*", "prod/billing-api", true),
            ("*/billing-*", "dev/billing-", true),
            ("*/billing-*", "dev/billing", false),
            ("*/billing-*", "dev/crm-billing-x", false),
            ("*/*", "dev/a", true),
            ("staging/crm-api", "staging/crm-api", true),
            ("staging/crm-api", "staging/crm-api2", false),
            ("staging/crm-api", "staging/crm", false),
            ("staging/crm-api", "prod/crm-api", false),
            ("*/*-api", "prod/crm-api", true),
            ("*/*-api", "prod/crm-api-v2", false),
            ("*/a*b*c", "x/abc", true),
            ("*/a*b*c", "x/axbyc", true),
            ("*/a*b*c", "x/acb", false),
            ("*/*a*a*", "x/banana", true),
            ("*/*a*a*", "x/bnn", false),
            ("p*d/*", "prod/x", true),
            ("p*d/*", "pd/x", true),
            ("p*d/*", "prodx/x", false),
            ("prod/**", "prod/x", true),
            ("*/key.v1", "dev/key.v1", true),
            ("*/key.v1", "dev/keyxv1", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(pat(p).matches(&key(k)), *want, "{p} vs {k}");
        }
    }

    #[test]
    fn pattern_parse_table() {
        // (input, Ok(display) or Err(substring of the message))
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("prod/*", Ok("prod/*")),
            ("*/*", Ok("*/*")),
            ("**/a**b", Ok("*/a*b")),
            ("staging/crm-api", Ok("staging/crm-api")),
            ("0/9._-", Ok("0/9._-")),
            ("prod", Err("not of the form ENV/NAME")),
            ("", Err("not of the form ENV/NAME")),
            ("prod/a/b", Err("more than one '/'")),
            ("//", Err("more than one '/'")),
            ("/x", Err("empty environment part")),
            ("prod/", Err("empty name part")),
            ("Prod/*", Err("lowercase")),
            ("prod/Billing", Err("lowercase")),
            ("prod/billing-?", Err("only wildcard")),
            ("prod/[ab]", Err("only wildcard")),
            ("prod/a b", Err("' '")),
            ("prod/.hidden", Err("can never match")),
            ("-x/*", Err("can never match")),
        ];
        for (input, want) in cases {
            let got = KeyPattern::parse(input);
            match (want, got) {
                (Ok(shown), Ok(p)) => assert_eq!(p.to_string(), *shown, "{input:?}"),
                (Err(needle), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{input:?}: {msg}");
                    assert!(msg.contains(&format!("{input:?}")), "{input:?}: {msg}");
                }
                (want, got) => panic!("{input:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn literal_env_and_env_match() {
        assert_eq!(pat("prod/*").literal_env(), Some("prod"));
        assert_eq!(pat("*/x").literal_env(), None);
        assert_eq!(pat("st*/x").literal_env(), None);
        assert!(pat("st*/x").matches_env("staging"));
        assert!(!pat("st*/x").matches_env("prod"));
        assert_eq!("prod/a*".parse::<KeyPattern>().unwrap(), pat("prod/a*"));
    }

    #[test]
    fn selector_table() {
        let by_uid = Grant {
            uids: vec![1001, 1002],
            ..grant("uid")
        };
        let by_gid = Grant {
            gids: vec![500],
            ..grant("gid")
        };
        // Executables and units narrow a principal; alone they apply to
        // nobody on keys.sock.
        let by_exe = Grant {
            uids: vec![1],
            executables: vec!["/usr/bin/worker".into()],
            ..grant("exe")
        };
        let by_unit = Grant {
            uids: vec![1],
            units: vec!["a.service".into(), "/system.slice/b.service".into()],
            ..grant("unit")
        };
        let bare_exe = Grant {
            executables: vec!["/usr/bin/worker".into()],
            ..grant("bare exe")
        };
        let bare_unit = Grant {
            units: vec!["a.service".into()],
            ..grant("bare unit")
        };
        let uid_and_exe = Grant {
            uids: vec![1001],
            executables: vec!["/usr/bin/worker".into(), "/usr/bin/other".into()],
            ..grant("uid+exe")
        };
        let all_kinds = Grant {
            uids: vec![1001],
            gids: vec![500],
            executables: vec!["/usr/bin/worker".into()],
            units: vec!["a.service".into()],
            ..grant("all")
        };
        let nothing = grant("no selectors");

        let full = || {
            Caller::new(1001, 100)
                .groups(&[500])
                .exe("/usr/bin/worker")
                .unit("a.service")
        };
        let cases: Vec<(&Grant, Caller, bool)> = vec![
            // uid kind: OR within the kind.
            (&by_uid, Caller::new(1001, 1), true),
            (&by_uid, Caller::new(1002, 1), true),
            (&by_uid, Caller::new(1003, 1001), false),
            // group kind: primary gid or any supplementary group.
            (&by_gid, Caller::new(1, 500), true),
            (&by_gid, Caller::new(1, 1).groups(&[7, 500]), true),
            (&by_gid, Caller::new(500, 1).groups(&[7]), false),
            // executable kind: a verified path, unverified never matches.
            (&by_exe, Caller::new(1, 1).exe("/usr/bin/worker"), true),
            (&by_exe, Caller::new(1, 1).exe("/usr/bin/worker2"), false),
            (&by_exe, Caller::new(1, 1), false),
            (&by_exe, Caller::new(2, 1).exe("/usr/bin/worker"), false),
            // unit kind: a name, or a cgroup path; no unit never matches.
            (&by_unit, Caller::new(1, 1).unit("a.service"), true),
            (&by_unit, Caller::new(1, 1).unit("b.service"), true),
            (&by_unit, Caller::new(1, 1).unit("c.service"), false),
            (&by_unit, Caller::new(1, 1), false),
            // Without a principal they apply to nobody on keys.sock.
            (&bare_exe, Caller::new(1, 1).exe("/usr/bin/worker"), false),
            (&bare_unit, Caller::new(1, 1).unit("a.service"), false),
            // AND across kinds, OR within one.
            (&uid_and_exe, Caller::new(1001, 1).exe("/usr/bin/other"), true),
            (&uid_and_exe, Caller::new(1001, 1).exe("/usr/bin/x"), false),
            (&uid_and_exe, Caller::new(1001, 1), false),
            (&uid_and_exe, Caller::new(1002, 1).exe("/usr/bin/worker"), false),
            (&all_kinds, full(), true),
            (&all_kinds, full().groups(&[]), false),
            (&all_kinds, full().unit("b.service"), false),
            (&all_kinds, Caller { uid: 1, ..full() }, false),
            (&all_kinds, Caller { exes: vec![], ..full() }, false),
            // A grant with no selectors applies to nobody.
            (&nothing, full(), false),
            (&nothing, Caller::new(0, 0), false),
        ];
        for (g, caller, want) in &cases {
            assert_eq!(
                g.applies_to(&caller.principal()),
                *want,
                "grant {} vs uid={} gid={} groups={:?} exes={:?} unit={:?}",
                g.origin,
                caller.uid,
                caller.gid,
                caller.groups,
                caller.exes,
                caller.unit
            );
        }
    }

    #[test]
    fn policy_table() {
        let policy = Policy::new(vec![
            Grant {
                uids: vec![1001],
                keys: vec![pat("prod/billing-*"), pat("*/crm-api")],
                ..grant("billing")
            },
            Grant {
                gids: vec![600],
                keys: vec![pat("staging/*")],
                ..grant("staging-readers")
            },
            Grant {
                uids: vec![3000],
                units: vec!["crm.service".into()],
                keys: vec![pat("*/crm-*")],
                ..grant("crm")
            },
        ]);
        let billing = Caller::new(1001, 1001);
        let stager = Caller::new(2000, 2000).groups(&[600]);
        let crm = Caller::new(3000, 3000).unit("crm.service");
        let nobody = Caller::new(65534, 65534);
        let cases: &[(&Caller, &str, Option<&str>)] = &[
            (&billing, "prod/billing-api", Some("billing")),
            (&billing, "dev/crm-api", Some("billing")),
            (&billing, "staging/billing-api", None),
            (&billing, "prod/crm-api2", None),
            (&stager, "staging/anything", Some("staging-readers")),
            (&stager, "prod/billing-api", None),
            (&crm, "prod/crm-api", Some("crm")),
            (&crm, "dev/crm-x", Some("crm")),
            (&crm, "prod/billing-api", None),
            (&nobody, "prod/billing-api", None),
            (&nobody, "staging/x", None),
        ];
        for (caller, k, want) in cases {
            let who = caller.principal();
            let got = policy.grant_for(&who, &key(k)).map(|g| g.origin.as_str());
            assert_eq!(got, *want, "uid {} key {k}", caller.uid);
            assert_eq!(policy.allows(&who, &key(k)), want.is_some());
        }
    }

    #[test]
    fn first_matching_grant_is_reported() {
        let policy = Policy::new(vec![
            Grant {
                uids: vec![1],
                keys: vec![pat("prod/x")],
                ..grant("first")
            },
            Grant {
                uids: vec![1],
                ..grant("second")
            },
        ]);
        let c = Caller::new(1, 1);
        let origin = |k| policy.grant_for(&c.principal(), &key(k)).unwrap().origin.clone();
        assert_eq!(origin("prod/x"), "first");
        assert_eq!(origin("prod/y"), "second");
    }

    #[test]
    fn empty_policy_denies_everything() {
        let policy = Policy::default();
        for c in [Caller::new(0, 0), Caller::new(1000, 1000).groups(&[0])] {
            assert!(!policy.allows(&c.principal(), &key("dev/x")));
        }
    }

    #[test]
    fn dev_mode_allows_only_its_uid() {
        let policy = Policy::allow_all_for_uid(1000);
        assert_eq!(policy.grants[0].origin, "dev mode");
        assert_eq!(policy.grants[0].keys, vec![pat("*/*")]);
        let me = Caller::new(1000, 1000);
        let other = Caller::new(1001, 1000).groups(&[1000]);
        for k in ["dev/a", "prod/billing-api", "x.y/z_0"] {
            assert!(policy.allows(&me.principal(), &key(k)), "{k}");
            assert!(!policy.allows(&other.principal(), &key(k)), "{k}");
        }
    }

    #[test]
    fn credentials_grants_apply_to_units_on_creds_sock_only() {
        let policy = Policy::new(vec![
            Grant {
                units: vec!["billing.service".into()],
                keys: vec![pat("prod/billing-*")],
                ..grant("creds")
            },
            Grant {
                uids: vec![1001],
                units: vec!["crm.service".into()],
                keys: vec![pat("prod/*")],
                ..grant("uid+unit")
            },
        ]);
        let origin = |unit, k| {
            let who = UnitPrincipal { unit };
            policy.credential_grant_for(&who, &key(k)).map(|g| g.origin.clone())
        };
        assert_eq!(origin("billing.service", "prod/billing-api").as_deref(), Some("creds"));
        assert_eq!(origin("billing.service", "prod/crm-api"), None);
        // A grant with a principal is not a credentials grant.
        assert_eq!(origin("crm.service", "prod/crm-api"), None);
        // And a credentials grant applies to nobody on keys.sock, whatever
        // unit the caller claims.
        let claims = Caller::new(1001, 1001).unit("billing.service");
        assert!(!policy.allows(&claims.principal(), &key("prod/billing-api")));
        assert!(policy.grants[0].is_credentials_grant() && !policy.grants[1].is_credentials_grant());
    }

    #[test]
    fn process_identity_is_needed_only_where_an_exe_or_unit_grant_could_apply() {
        let policy = Policy::new(vec![
            Grant {
                uids: vec![1001],
                keys: vec![pat("dev/*")],
                ..grant("uid only")
            },
            Grant {
                uids: vec![1001],
                executables: vec!["/usr/bin/worker".into()],
                keys: vec![pat("prod/*")],
                ..grant("uid+exe")
            },
            Grant {
                gids: vec![500],
                units: vec!["a.service".into()],
                keys: vec![pat("staging/*")],
                ..grant("group+unit")
            },
        ]);
        let needs = |c: &Caller, k| policy.needs_process_identity(&c.principal(), &key(k));
        let uid = Caller::new(1001, 1001);
        assert!(!needs(&uid, "dev/x"), "a uid-only grant stays on the fast path");
        assert!(needs(&uid, "prod/x"));
        assert!(!needs(&uid, "staging/x"), "not in group 500");
        assert!(needs(&Caller::new(7, 7).groups(&[500]), "staging/x"));
        assert!(!needs(&Caller::new(7, 7), "prod/x"), "not uid 1001");
        assert_eq!(policy.executable_paths(), [Path::new("/usr/bin/worker")]);
    }

    #[test]
    fn report_false_withholds_reporting_but_not_reading() {
        let policy = Policy::new(vec![
            Grant {
                uids: vec![1],
                report: false,
                keys: vec![pat("prod/*")],
                ..grant("reader")
            },
            Grant {
                uids: vec![2],
                keys: vec![pat("prod/*")],
                ..grant("reporter")
            },
        ]);
        let (one, two) = (Caller::new(1, 1), Caller::new(2, 2));
        assert!(policy.allows(&one.principal(), &key("prod/x")));
        assert!(policy.report_grant_for(&one.principal(), &key("prod/x")).is_none());
        assert_eq!(
            policy
                .report_grant_for(&two.principal(), &key("prod/x"))
                .map(|g| g.origin.as_str()),
            Some("reporter")
        );
    }
}

#[cfg(test)]
mod proptests;
