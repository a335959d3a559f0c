//! A caller's systemd unit, from its cgroup, by systemd's rules.
//!
//! Invariant: a unit comes from the part of the cgroup tree that only root
//! (the service manager) shapes. The unit is the first component of the
//! cgroup path after the slices (systemd's `cg_path_get_unit`), never a
//! component further down: below a unit, a `Delegate=` service or a user
//! manager (`user@UID.service`) may create cgroups of any name, so
//! `…/user@2002.service/app.slice/billing-worker.service` is a process of
//! uid 2002's user manager, not of `billing-worker.service`. A caller under
//! any `user@*.service`, or in a cgroup with any directory on its path not
//! owned by root (a delegated subtree), has no unit at all.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::procfs::Hierarchy;

pub use crate::agent::caller::CgroupUnit;

/// The unit types that own processes in the cgroup tree.
const UNIT_TYPES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// systemd escapes a cgroup name that could clash with a kernel file by
/// prefixing `_` (`cg_escape`); this undoes it.
fn unescape(component: &str) -> &str {
    component.strip_prefix('_').unwrap_or(component)
}

/// The unit owning cgroup `path` by systemd's rules, `Ok(None)` when the
/// path names none (the root, or slices only), and `Err` with the reason
/// when the path is inside a user manager, whose units no grant may name.
pub fn unit_of(path: &str) -> Result<Option<CgroupUnit>, String> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if let Some(manager) = components.iter().map(|c| unescape(c)).find(|c| is_user_manager(c)) {
        return Err(format!(
            "its cgroup {path} is inside the user manager {manager}, where the user names its own units"
        ));
    }
    let Some(at) = components.iter().position(|c| !unescape(c).ends_with(".slice")) else {
        return Ok(None);
    };
    let name = unescape(components[at]);
    if !UNIT_TYPES.iter().any(|t| name.len() > t.len() && name.ends_with(t)) {
        return Ok(None);
    }
    Ok(Some(CgroupUnit {
        name: name.to_owned(),
        cgroup: format!("/{}", components[..=at].join("/")),
    }))
}

/// `user@UID.service`, the per-user service manager.
fn is_user_manager(name: &str) -> bool {
    name.strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty())
}

/// Where the hierarchy is mounted, from `/proc/self/mountinfo`: the cgroup2
/// mount, or the v1 mount with option `name=systemd`.
pub fn mount_point(hierarchy: Hierarchy) -> io::Result<Option<PathBuf>> {
    Ok(parse_mount_point(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        hierarchy,
    ))
}

/// [`mount_point`] on a `mountinfo` text.
pub fn parse_mount_point(mountinfo: &str, hierarchy: Hierarchy) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fstype, super_options) = (right.next()?, right.nth(1).unwrap_or(""));
        let wanted = match hierarchy {
            Hierarchy::Unified => fstype == "cgroup2",
            Hierarchy::SystemdV1 => fstype == "cgroup" && super_options.split(',').any(|o| o == "name=systemd"),
        };
        // mountinfo escapes space, tab, newline and backslash as \ooo.
        wanted.then(|| PathBuf::from(unescape_mountinfo(mount)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let n = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first directory from the hierarchy's root down to `path` that is not
/// owned by root, with its owner: a subtree delegated to that user, where
/// it may name cgroups as it likes. `None` when every one is root's.
pub fn delegated_at(mount: &Path, path: &str) -> io::Result<Option<(PathBuf, u32)>> {
    let mut dir = mount.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == ".." || component == "." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cgroup path {path:?} is not a plain path"),
            ));
        }
        dir.push(component);
        dirs.push(dir.clone());
    }
    for d in dirs {
        let meta = std::fs::symlink_metadata(&d)?;
        if !meta.is_dir() || meta.uid() != 0 {
            return Ok(Some((d, meta.uid())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(path: &str) -> Option<(String, String)> {
        unit_of(path).unwrap().map(|u| (u.name, u.cgroup))
    }

    #[test]
    fn the_unit_is_the_first_component_after_the_slices() {
        let s = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            unit("/system.slice/billing-worker.service"),
            s("billing-worker.service", "/system.slice/billing-worker.service")
        );
        // A service's own sub-cgroups (Delegate=) stay the service's.
        assert_eq!(
            unit("/system.slice/docker.service/app.slice/billing-worker.service"),
            s("docker.service", "/system.slice/docker.service")
        );
        assert_eq!(
            unit("/user.slice/user-1000.slice/session-2.scope"),
            s("session-2.scope", "/user.slice/user-1000.slice/session-2.scope")
        );
        assert_eq!(
            unit("/system.slice/_cpu.service"),
            s("cpu.service", "/system.slice/_cpu.service")
        );
        assert_eq!(unit("/"), None);
        assert_eq!(unit(""), None);
        assert_eq!(unit("/system.slice"), None);
        assert_eq!(unit("/machine.slice/some-dir"), None, "not a unit");
        assert_eq!(
            unit("/keyward-test/billing-worker.service"),
            None,
            "not a unit, not a slice"
        );
    }

    #[test]
    fn nothing_under_a_user_manager_is_a_unit() {
        for path in [
            "/user.slice/user-2002.slice/user@2002.service/app.slice/billing-worker.service",
            "/user.slice/user-2002.slice/user@2002.service/init.scope",
            "/test.slice/user@2002.service/billing-worker.service",
            "/test.slice/_user@2002.service",
        ] {
            let e = unit_of(path).unwrap_err();
            assert!(e.contains("user@2002.service"), "{path}: {e}");
        }
        // Not a user manager: "user@" needs a uid and ".service".
        assert!(unit_of("/system.slice/user@.service").is_ok());
    }

    #[test]
    fn mount_points_from_mountinfo() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu rw,nosuid shared:11 - cgroup cgroup rw,cpu
34 30 0:30 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mount_point(info, Hierarchy::Unified),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mount_point(info, Hierarchy::SystemdV1),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(
            parse_mount_point(info.lines().nth(4).unwrap(), Hierarchy::Unified),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(parse_mount_point("", Hierarchy::Unified), None);
    }

    #[test]
    fn a_directory_not_owned_by_root_is_a_delegation() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a.slice/b.service/c")).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(delegated_at(tmp.path(), "/a.slice/b.service/c").unwrap(), None);
            nix::unistd::chown(
                &tmp.path().join("a.slice/b.service"),
                Some(nix::unistd::Uid::from_raw(2002)),
                None,
            )
            .unwrap();
            let (dir, uid) = delegated_at(tmp.path(), "/a.slice/b.service/c").unwrap().unwrap();
            assert_eq!((dir, uid), (tmp.path().join("a.slice/b.service"), 2002));
        } else {
            // Not root: the temp dir itself is the user's.
            assert!(delegated_at(tmp.path(), "/a.slice").unwrap().is_some());
        }
        assert!(delegated_at(tmp.path(), "/a.slice/../x").is_err());
        assert!(delegated_at(tmp.path(), "/missing").is_err());
    }
}
