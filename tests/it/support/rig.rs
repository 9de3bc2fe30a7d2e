//! Hostile environments for the hardening tests: mounts that unmount on
//! drop, other users, descriptor and directory snapshots.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `nobody` user and group.
pub const NOBODY: u32 = 65534;

/// A second unprivileged user with no passwd entry (the kernel does not care).
pub const STRANGER: u32 = 54321;

/// Runs `cmd` with its arguments; the error names the command and its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mount point in a fresh temporary directory, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Mount {
    fn at(mount: impl FnOnce(&str) -> Result<(), String>) -> Result<Mount, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        mount(dir.to_str().expect("utf-8 temp path"))?;
        Ok(Mount {
            dir,
            _parent: parent,
        })
    }

    /// A tmpfs with `mount -o` options such as `size=64k,nr_inodes=4`.
    pub fn tmpfs(options: &str) -> Result<Mount, String> {
        Self::at(|dir| run("mount", &["-t", "tmpfs", "-o", options, "tmpfs", dir]))
    }

    /// A bind mount of `src`, read-only if `read_only`.
    pub fn bind(src: &Path, read_only: bool) -> Result<Mount, String> {
        let src = src.to_str().expect("utf-8 path").to_owned();
        Self::at(|dir| {
            run("mount", &["--bind", &src, dir])?;
            if read_only {
                if let Err(e) = run("mount", &["-o", "remount,bind,ro", dir]) {
                    let _ = run("umount", &[dir]);
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    /// A FUSE mount of `src` through bindfs.
    pub fn bindfs(src: &Path) -> Result<Mount, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing".into());
        }
        let src = src.to_str().expect("utf-8 path").to_owned();
        Self::at(|dir| run("bindfs", &[&src, dir]))
    }

    /// Remounts this (tmpfs) mount read-only.
    pub fn remount_ro(&self) -> Result<(), String> {
        run("mount", &["-o", "remount,ro", self.dir.to_str().unwrap()])
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap();
        if run("umount", &[dir]).is_err() {
            // Busy (a child still running): detach now, freed when unused.
            let _ = run("umount", &["-l", dir]);
        }
    }
}

/// Why tests that need mounts cannot run here, if they cannot.
pub fn cannot_mount() -> Option<String> {
    if !crate::support::is_root() {
        return Some("needs root to mount filesystems".into());
    }
    None
}

/// Why a child cannot run as another user here, if it cannot: the test
/// binary and every directory above it must be usable by others.
pub fn cannot_switch_user() -> Option<String> {
    if !crate::support::is_root() {
        return Some("needs root to run a child as another user".into());
    }
    let exe = std::env::current_exe().expect("current_exe");
    let exe_mode = std::fs::metadata(&exe).expect("stat exe").mode();
    if exe_mode & 0o005 != 0o005 {
        return Some(format!(
            "{} is not readable and executable by others",
            exe.display()
        ));
    }
    for dir in exe.ancestors().skip(1) {
        let mode = std::fs::metadata(dir).expect("stat dir").mode();
        if mode & 0o001 == 0 {
            return Some(format!("{} is not searchable by others", dir.display()));
        }
    }
    None
}

/// The `Child::spawn_with` hook that drops to `uid`/`gid` (and no
/// supplementary groups) before exec.
pub fn as_user(uid: u32) -> impl FnOnce(&mut Command) {
    move |cmd| {
        cmd.uid(uid).gid(uid);
    }
}

/// A fresh directory under /tmp with mode `mode` (such as `0o1777`), owned
/// by root, removed on drop.
pub fn shared_dir(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("flockguard-shared")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    dir
}

/// Every path below `dir` (not descending into build output or `.git`),
/// for "nothing was created" checks.
pub fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let skip = p.ends_with("target") || p.ends_with(".git");
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !skip {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// The targets of this process's open descriptors.
pub fn fd_targets() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect()
}

/// `MAJ:MIN:INODE` of `path` as /proc/locks prints it (hex device numbers).
pub fn proc_locks_id(path: &Path) -> String {
    let meta = std::fs::metadata(path).expect("stat lock file");
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}:{}", meta.ino())
}

/// How many waiters are blocked in `flock(2)` on `path`, from /proc/locks
/// (lines with `->` after the id).
pub fn blocked_waiters(path: &Path) -> usize {
    let id = proc_locks_id(path);
    std::fs::read_to_string("/proc/locks")
        .expect("read /proc/locks")
        .lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.nth(1) == Some("->") && l.split_whitespace().any(|t| t == id)
        })
        .count()
}

/// Polls until `cond` holds; panics after `limit` (a hang guard, not a
/// speed check).
pub fn wait_until(what: &str, limit: std::time::Duration, cond: impl FnMut() -> bool) {
    crate::support::wait_until_within(what, limit, cond);
}
