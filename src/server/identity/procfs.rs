//! What `/proc/<pid>` says about a process, for verifying a caller: its
//! start time, ids and tracer, namespaces, running image, initial
//! environment, executable mappings and cgroup.
//!
//! The parsers are pure and tested on captured text; the readers are thin.
//! Every reader fails (never guesses) when the kernel refuses: a caller that
//! cannot be inspected is a caller that cannot be verified.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use crate::agent::caller::FileId;

/// `/proc/<pid>`.
pub fn dir(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// The process's start time, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names one process, never a later
/// one that reuses the pid.
pub fn start_time(proc: &Path) -> io::Result<u64> {
    let stat = std::fs::read_to_string(proc.join("stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// Field 22 of a `stat` line. The command name (field 2) is in parentheses
/// and may hold spaces and `)`, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: field 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Lines of `/proc/<pid>/status` the checks use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Effective uid (second value of `Uid:`).
    pub euid: u32,
    /// Supplementary groups (`Groups:`).
    pub groups: Vec<u32>,
    /// The pid of the process tracing it, 0 when none (`TracerPid:`).
    pub tracer_pid: i32,
}

/// Reads `/proc/<pid>/status`.
pub fn status(proc: &Path) -> io::Result<Status> {
    let text = std::fs::read_to_string(proc.join("status"))?;
    parse_status(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/status"))
}

/// Parses a `status` file; `None` when a line the checks need is missing.
pub fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
    let euid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let tracer_pid = field("TracerPid:")?.trim().parse().ok()?;
    let groups = field("Groups:")
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    Some(Status {
        euid,
        groups,
        tracer_pid,
    })
}

/// The user and mount namespaces the process is in.
pub fn namespaces(proc: &Path) -> io::Result<(FileId, FileId)> {
    let ns = |name: &str| std::fs::metadata(proc.join("ns").join(name)).map(|m| FileId::of(&m));
    Ok((ns("user")?, ns("mnt")?))
}

/// The file the process runs (`stat` through `/proc/<pid>/exe`, which
/// reaches the running image even when its path was replaced or removed).
pub fn image(proc: &Path) -> io::Result<FileId> {
    std::fs::metadata(proc.join("exe")).map(|m| FileId::of(&m))
}

/// The dynamic loader's variables that make a program run code it was not
/// built with.
pub const LOADER_VARIABLES: [&str; 3] = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// The first loader variable set in the process's initial environment
/// (`/proc/<pid>/environ`), if any.
pub fn loader_override(proc: &Path) -> io::Result<Option<&'static str>> {
    Ok(parse_loader_override(&std::fs::read(proc.join("environ"))?))
}

/// The first of [`LOADER_VARIABLES`] among NUL-separated `NAME=value`
/// entries (even set empty: the loader reads `LD_LIBRARY_PATH=` as the
/// current directory).
pub fn parse_loader_override(environ: &[u8]) -> Option<&'static str> {
    environ.split(|b| *b == 0).find_map(|entry| {
        LOADER_VARIABLES.into_iter().find(|var| {
            entry
                .strip_prefix(var.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b'='))
        })
    })
}

/// One executable, file-backed line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `start-end`, the name of its `/proc/<pid>/map_files` entry.
    pub range: String,
    /// Device as `major:minor`.
    pub major: u64,
    /// Minor device number.
    pub minor: u64,
    /// Inode.
    pub inode: u64,
    /// The path as the kernel shows it (` (deleted)` when removed).
    pub path: String,
}

/// The executable mappings of files in a `maps` text (anonymous memory,
/// `[vdso]` and the like have inode 0 and are left out). One per file.
pub fn parse_executable_mappings(maps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_offset), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.next().unwrap_or("").trim_start().to_owned();
        let inode: u64 = inode.parse().unwrap_or(0);
        if !perms.contains('x') || inode == 0 {
            continue;
        }
        let Some((major, minor)) = dev
            .split_once(':')
            .and_then(|(a, b)| Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?)))
        else {
            continue;
        };
        if out
            .iter()
            .any(|m| m.inode == inode && (m.major, m.minor) == (major, minor))
        {
            continue;
        }
        out.push(Mapping {
            range: range.to_owned(),
            major,
            minor,
            inode,
            path,
        });
    }
    out
}

/// Why code the process runs may not be the program's own, if it may not:
/// an executable mapping of a file a non-root user can write, or one that
/// cannot be verified (removed, replaced, unreadable).
pub fn foreign_code(proc: &Path) -> io::Result<Option<String>> {
    let maps = std::fs::read_to_string(proc.join("maps"))?;
    for m in parse_executable_mappings(&maps) {
        // map_files reaches the mapped file itself (it needs
        // CAP_SYS_ADMIN); else the path, if it still holds the same inode.
        let meta = std::fs::metadata(proc.join("map_files").join(&m.range))
            .ok()
            .or_else(|| {
                let meta = std::fs::metadata(&m.path).ok()?;
                let same = meta.ino() == m.inode && meta.dev() == nix::sys::stat::makedev(m.major, m.minor);
                same.then_some(meta)
            });
        let Some(meta) = meta else {
            return Ok(Some(format!(
                "it runs code from {} that cannot be verified (removed or replaced since it was loaded)",
                m.path
            )));
        };
        if crate::policy::writable_by_non_root(meta.uid(), meta.mode()) {
            return Ok(Some(format!(
                "it runs code from {} (uid {}, mode {:o}), which a non-root user can change",
                m.path,
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(None)
}

/// The process's cgroup path: the unified hierarchy's (`0::/…`), else the
/// `name=systemd` v1 hierarchy's, with which of the two it is.
pub fn cgroup(proc: &Path) -> io::Result<Option<(Hierarchy, String)>> {
    Ok(parse_cgroup(&std::fs::read_to_string(proc.join("cgroup"))?))
}

/// Which cgroup hierarchy a path is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 (`0::`).
    Unified,
    /// v1's `name=systemd`.
    SystemdV1,
}

/// The path of a `/proc/<pid>/cgroup` text (see [`cgroup`]).
pub fn parse_cgroup(text: &str) -> Option<(Hierarchy, String)> {
    if let Some(p) = text.lines().find_map(|l| l.strip_prefix("0::")) {
        return Some((Hierarchy::Unified, p.to_owned()));
    }
    text.lines()
        .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        .map(|p| (Hierarchy::SystemdV1, p.to_owned()))
}

/// The pid in a pidfd's `/proc/self/fdinfo` text: -1 once the process has
/// been reaped (its pid free for reuse), 0 when it is in a pid namespace
/// the reader cannot see.
pub fn parse_pidfd_pid(fdinfo: &str) -> Option<i64> {
    fdinfo.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let rest = fields.join(" ");
        assert_eq!(parse_start_time(&format!("42 (worker) {rest}")), Some(22));
        assert_eq!(parse_start_time(&format!("42 (a) (b c) {rest}")), Some(22));
        assert_eq!(parse_start_time("42 (short) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn status_gives_effective_uid_groups_and_tracer() {
        let text = "Name:\tw\nUid:\t1000\t1001\t1001\t1001\nGid:\t5\t5\t5\t5\nGroups:\t4 27 \nTracerPid:\t77\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                euid: 1001,
                groups: vec![4, 27],
                tracer_pid: 77
            })
        );
        assert_eq!(parse_status("Uid:\t1\t1\t1\t1\n"), None, "no TracerPid line");
    }

    #[test]
    fn loader_variables_are_found_in_environ() {
        assert_eq!(parse_loader_override(b"A=1\0LD_PRELOAD=/x.so\0"), Some("LD_PRELOAD"));
        assert_eq!(parse_loader_override(b"LD_LIBRARY_PATH=\0"), Some("LD_LIBRARY_PATH"));
        assert_eq!(parse_loader_override(b"X=LD_AUDIT=1\0LD_AUDITX=1\0"), None);
        assert_eq!(parse_loader_override(b"LD_AUDIT=a"), Some("LD_AUDIT"));
        assert_eq!(parse_loader_override(b""), None);
    }

    #[test]
    fn executable_mappings_of_files_once_each() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 131 /usr/bin/worker
55d0c0001000-55d0c0005000 r-xp 00001000 fd:01 131 /usr/bin/worker
7f0000000000-7f0000100000 r-xp 00000000 fd:01 262 /usr/lib/libc.so.6
7f0000200000-7f0000300000 r-xp 00000000 fd:01 262 /usr/lib/libc.so.6
7f0000400000-7f0000401000 r-xp 00000000 00:01 9 /memfd:jit (deleted)
7f0000500000-7f0000600000 rwxp 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
7f0000700000-7f0000800000 r-xp 00000000 fd:01 300 /home/u/my lib.so (deleted)
";
        let m = parse_executable_mappings(maps);
        let got: Vec<(&str, u64, u64, u64)> = m.iter().map(|m| (m.path.as_str(), m.major, m.minor, m.inode)).collect();
        assert_eq!(
            got,
            [
                ("/usr/bin/worker", 0xfd, 1, 131),
                ("/usr/lib/libc.so.6", 0xfd, 1, 262),
                ("/memfd:jit (deleted)", 0, 1, 9),
                ("/home/u/my lib.so (deleted)", 0xfd, 1, 300),
            ]
        );
        assert_eq!(m[0].range, "55d0c0001000-55d0c0005000");
    }

    #[test]
    fn cgroup_prefers_the_unified_hierarchy() {
        assert_eq!(
            parse_cgroup("9:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n"),
            Some((Hierarchy::Unified, "/system.slice/a.service".to_owned()))
        );
        assert_eq!(
            parse_cgroup("12:cpu:/\n1:name=systemd:/system.slice/crm.service\n"),
            Some((Hierarchy::SystemdV1, "/system.slice/crm.service".to_owned()))
        );
        assert_eq!(parse_cgroup("3:cpu:/\n"), None);
    }

    #[test]
    fn pidfd_fdinfo_pid() {
        assert_eq!(
            parse_pidfd_pid("pos:\t0\nflags:\t02000002\nPid:\t4242\nNSpid:\t4242\n"),
            Some(4242)
        );
        assert_eq!(parse_pidfd_pid("Pid:\t-1\n"), Some(-1));
        assert_eq!(parse_pidfd_pid("pos:\t0\n"), None);
    }

    #[test]
    fn this_process_reads_back() {
        let me = dir(std::process::id() as i32);
        assert!(start_time(&me).unwrap() > 0);
        assert!(status(&me).is_ok());
        assert_eq!(
            image(&me).unwrap(),
            FileId::of(&std::fs::metadata(std::env::current_exe().unwrap()).unwrap())
        );
        let (user, mnt) = namespaces(&me).unwrap();
        assert_eq!((user, mnt), namespaces(Path::new("/proc/self")).unwrap());
    }
}
