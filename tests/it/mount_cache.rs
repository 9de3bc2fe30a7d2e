//! The filesystem verdict is remembered per mount: repeated opens on one
//! mount keep their verdict, and a directory that changes mounts gets the
//! new mount's verdict.
//!
//! A test that mounts runs in a process of its own
//! ([`support::rerun_alone`]): a child forked from a process holds copies of
//! all its descriptors, and so their locks, until it executes, so mount
//! helpers and other tests' children would disturb each other.

use std::path::Path;
use std::process::Command;

use flockguard::{try_flock, Error, Exclusive, LockOptions, RemoteFs};

use crate::support;

/// A mount made for one test, lazily unmounted on drop.
struct Mount<'a>(&'a Path);

impl Mount<'_> {
    fn new<'a>(cmd: &str, args: &[&str], dir: &'a Path) -> Result<Mount<'a>, String> {
        let out = Command::new(cmd)
            .args(args)
            .arg(dir)
            .output()
            .map_err(|e| format!("{cmd}: {e}"))?;
        if out.status.success() {
            Ok(Mount(dir))
        } else {
            Err(format!(
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

fn remote_refusal(path: &Path) -> bool {
    matches!(
        try_flock::<Exclusive>(path),
        Err(Error::RemoteFs {
            fs: flockguard::UnreliableFs { name: "FUSE", .. },
            ..
        })
    )
}

#[test]
fn verdict_follows_the_mount_not_the_directory() {
    const TEST: &str = "verdict_follows_the_mount_not_the_directory";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return support::skip(TEST, "needs root to mount");
    }
    let src = tempfile::tempdir().unwrap();
    let over = tempfile::tempdir().unwrap();
    let path = over.path().join("app.lock");

    // Local first: accepted twice, the second time from the remembered verdict.
    drop(try_flock::<Exclusive>(&path).unwrap());
    drop(try_flock::<Exclusive>(&path).unwrap());

    {
        let fuse = match Mount::new(
            "bindfs",
            &["-o", "nonempty", src.path().to_str().unwrap()],
            over.path(),
        ) {
            Ok(m) => m,
            Err(why) => return support::skip(TEST, &why),
        };
        // FUSE on top: refused every time, and Allow still opens it.
        for _ in 0..3 {
            assert!(remote_refusal(&path), "FUSE lock file accepted");
        }
        let file = LockOptions::new()
            .remote_fs(RemoteFs::Allow)
            .open(&path)
            .unwrap();
        drop(file.try_lock::<Exclusive>().unwrap());
        drop(fuse);
    }

    // FUSE gone: the directory is local again and accepted.
    drop(try_flock::<Exclusive>(&path).unwrap());

    // A tmpfs over the same directory is a new mount with its own verdict.
    let tmpfs = match Mount::new("mount", &["-t", "tmpfs", "tmpfs"], over.path()) {
        Ok(m) => m,
        Err(why) => return support::skip(TEST, &why),
    };
    drop(try_flock::<Exclusive>(&path).unwrap());
    drop(tmpfs);
}

#[test]
fn two_mounts_keep_two_verdicts() {
    const TEST: &str = "two_mounts_keep_two_verdicts";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return support::skip(TEST, "needs root to mount");
    }
    let src = tempfile::tempdir().unwrap();
    let fuse_dir = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let _fuse = match Mount::new("bindfs", &[src.path().to_str().unwrap()], fuse_dir.path()) {
        Ok(m) => m,
        Err(why) => return support::skip(TEST, &why),
    };
    let remote = fuse_dir.path().join("app.lock");
    let local = local.path().join("app.lock");
    for _ in 0..3 {
        assert!(remote_refusal(&remote), "FUSE lock file accepted");
        drop(try_flock::<Exclusive>(&local).unwrap());
    }
}
