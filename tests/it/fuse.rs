//! A real FUSE mount (a bindfs view of a temporary directory): lock files on
//! it are refused with `Error::RemoteFs`, nothing is left behind, and
//! `RemoteFs::Allow` locks there anyway.
//!
//! Needs root, `/dev/fuse` and the `bindfs` binary; each test prints
//! `SKIPPED <test>: <reason>` and returns when one is missing.
//!
//! A test that mounts runs in a process of its own
//! ([`support::rerun_alone`]): a child forked from a process holds copies of
//! all its descriptors, and so their locks, until it executes, so mount
//! helpers and other tests' children would disturb each other.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flockguard::{
    block_flock, materialize, try_flock, Error, Exclusive, FlockMode, LockFile, LockOptions,
    RemoteFs, Shared,
};

use crate::support;
use crate::support::try_flock_mode;

const FUSE_MAGIC: u64 = 0x6573_5546;

/// A bindfs mount of `backing` at `mnt`, unmounted on drop (also when the
/// test panics).
struct BindMount {
    backing: PathBuf,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl BindMount {
    /// Mounts a fresh view, or says why this machine cannot.
    fn new() -> Result<BindMount, String> {
        if !support::is_root() {
            return Err("needs root to mount".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        let bindfs = Command::new("bindfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !bindfs.is_ok_and(|s| s.success()) {
            return Err("no bindfs binary (apt-get install bindfs)".into());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let status = Command::new("bindfs")
            .arg(&backing)
            .arg(&mnt)
            .status()
            .expect("run bindfs");
        assert!(status.success(), "bindfs failed: {status}");
        let mount = BindMount {
            backing,
            mnt,
            _dir: dir,
        };
        let magic = rustix::fs::statfs(&mount.mnt).expect("statfs").f_type as u64;
        assert_eq!(magic & 0xFFFF_FFFF, FUSE_MAGIC, "not a FUSE mount");
        Ok(mount)
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Asserts that neither the mount nor the directory behind it holds a
    /// file.
    fn assert_empty(&self) {
        assert_eq!(Self::entries(&self.mnt), Vec::<PathBuf>::new());
        assert_eq!(Self::entries(&self.backing), Vec::<PathBuf>::new());
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(Command::new("fusermount").arg("-u").arg(&self.mnt)) {
            quiet(Command::new("umount").arg("-l").arg(&self.mnt));
        }
    }
}

macro_rules! mount_or_skip {
    ($test:literal) => {
        match BindMount::new() {
            Ok(mount) => mount,
            Err(why) => return support::skip($test, &why),
        }
    };
}

fn assert_fuse_refusal(err: &Error, path: &Path) {
    match err {
        Error::RemoteFs { path: p, fs } if fs.name == "FUSE" && fs.magic == FUSE_MAGIC => {
            assert_eq!(p, path)
        }
        other => panic!("expected a FUSE refusal, got {other:?}"),
    }
}

#[test]
fn a_new_lock_file_on_fuse_is_refused_and_not_created() {
    if support::rerun_alone() {
        return;
    }
    let mount = mount_or_skip!("a_new_lock_file_on_fuse_is_refused_and_not_created");
    let path = mount.mnt.join("app.lock");
    let (fds, under) = (support::open_fds(), support::fds_under(&mount.mnt));

    let err = LockFile::open(&path).unwrap_err();
    assert_fuse_refusal(&err, &path);
    mount.assert_empty();
    for err in [
        try_flock::<Exclusive>(&path).unwrap_err(),
        block_flock::<Shared>(&path).unwrap_err(),
        try_flock_mode(&path, FlockMode::Shared).unwrap_err(),
        materialize(&path).unwrap_err(),
        LockOptions::new().open(&path).unwrap_err(),
    ] {
        assert_fuse_refusal(&err, &path);
        mount.assert_empty();
    }
    assert_eq!(support::open_fds(), fds, "descriptor leaked");
    assert_eq!(support::fds_under(&mount.mnt), under);

    let msg = err.to_string();
    assert!(msg.starts_with(&format!("refusing to lock `{}` on FUSE: ", path.display())));
    assert!(msg.contains("RemoteFs::Allow"), "{msg}");
    assert!(err.is_remote_fs());
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::Unsupported);
}

#[test]
fn an_existing_lock_file_on_fuse_is_refused_and_kept() {
    if support::rerun_alone() {
        return;
    }
    let mount = mount_or_skip!("an_existing_lock_file_on_fuse_is_refused_and_kept");
    std::fs::write(mount.backing.join("app.lock"), b"keep").unwrap();
    let path = mount.mnt.join("app.lock");
    let err = try_flock::<Exclusive>(&path).unwrap_err();
    assert_fuse_refusal(&err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    assert_eq!(
        std::fs::read(mount.backing.join("app.lock")).unwrap(),
        b"keep"
    );
}

#[test]
fn the_filesystem_of_the_opened_file_decides_not_the_path() {
    // A symbolic link on a local filesystem that points into the mount:
    // the check runs fstatfs on the opened descriptor, so it sees FUSE.
    if support::rerun_alone() {
        return;
    }
    let mount = mount_or_skip!("the_filesystem_of_the_opened_file_decides_not_the_path");
    let (local, _) = support::lock_path();
    let link = local.path().join("link.lock");
    std::fs::write(mount.backing.join("target.lock"), b"").unwrap();
    std::os::unix::fs::symlink(mount.mnt.join("target.lock"), &link).unwrap();
    let err = LockOptions::new()
        .follow_symlinks(true)
        .open(&link)
        .unwrap_err();
    assert_fuse_refusal(&err, &link);

    // A missing target behind the link is not created either.
    let dangling = local.path().join("dangling.lock");
    std::os::unix::fs::symlink(mount.mnt.join("missing.lock"), &dangling).unwrap();
    let err = LockOptions::new()
        .follow_symlinks(true)
        .open(&dangling)
        .unwrap_err();
    assert!(matches!(err, Error::DanglingSymlink { .. }), "{err:?}");
    assert!(!mount.backing.join("missing.lock").exists());
}

#[test]
fn an_adopted_file_on_fuse_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let mount = mount_or_skip!("an_adopted_file_on_fuse_is_refused");
    let path = mount.mnt.join("adopted.lock");
    let file = File::create(&path).unwrap();
    let err = LockOptions::new().adopt(file).unwrap_err();
    assert_fuse_refusal(&err.error, &path);
    // The caller created this file; the crate does not remove it.
    assert!(mount.backing.join("adopted.lock").exists());
}

#[test]
fn remote_fs_allow_locks_on_fuse() {
    if support::rerun_alone() {
        return;
    }
    let mount = mount_or_skip!("remote_fs_allow_locks_on_fuse");
    let path = mount.mnt.join("allowed.lock");
    let allow = || {
        LockOptions::new()
            .remote_fs(RemoteFs::Allow)
            .open(&path)
            .unwrap()
    };
    let writer = allow().try_lock::<Exclusive>().unwrap();
    assert_eq!(support::held_through(&writer), Some(FlockMode::Exclusive));
    assert!(mount.backing.join("allowed.lock").is_file(), "not created");

    // Two opens through the mount contend: the kernel keeps the lock on the
    // FUSE inode.
    let err = allow().try_lock::<Shared>().unwrap_err();
    assert!(err.is_would_block(), "{err}");
    let reader = writer.downgrade().unwrap();
    let second = allow().try_lock::<Shared>().unwrap();
    drop((reader, second));
    support::assert_free(&path);

    // Why FUSE is refused by default: bindfs (without lock forwarding)
    // does not pass the lock on, so a process that opens the same file
    // directly does not see it at all.
    let writer = allow().try_lock::<Exclusive>().unwrap();
    let direct = try_flock::<Exclusive>(mount.backing.join("allowed.lock")).unwrap();
    assert_eq!(support::held_through(&writer), Some(FlockMode::Exclusive));
    assert_eq!(support::held_through(&direct), Some(FlockMode::Exclusive));
}
