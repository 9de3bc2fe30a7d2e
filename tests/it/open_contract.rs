//! The open contract: flags, symlinks, permissions, no truncation, refusal of
//! anything that is not a regular file, `FD_CLOEXEC` on every descriptor, and
//! no descriptor leaked on any error path.
//!
//! Tests here count every descriptor of the process, so each runs in a
//! process of its own ([`support::rerun_alone`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flockguard::{
    block_flock, try_flock, Error, Exclusive, FileKind, FlockMode, LockFile, LockOptions, Shared,
};
use rustix::fs::OFlags;

use crate::support;
use crate::support::try_flock_mode;
use crate::support::Child;

/// Runs `f` and asserts it left no descriptor open, neither in total nor
/// under `dir`.
fn no_leak<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
    let (total, under) = (support::open_fds(), support::fds_under(dir));
    let out = f();
    assert_eq!(support::open_fds(), total, "descriptor leaked");
    assert_eq!(
        support::fds_under(dir),
        under,
        "descriptor on the lock file leaked"
    );
    out
}

pub const CHILDREN: &[support::Role] = &[("open_contract::open-fifo", |a| open_fifo(&a[0]))];

/// Child, run as an unprivileged user: the read-write open of the FIFO is
/// refused, so the crate falls back to a read-only open, which would block
/// forever without O_NONBLOCK (no writer on the FIFO).
fn open_fifo(path: &str) {
    match LockFile::open(path) {
        Err(Error::NotRegularFile { kind, .. }) => {
            support::tell(&format!("result: refused {kind}"))
        }
        other => support::tell(&format!("result: unexpected {other:?}")),
    }
}

#[test]
fn opens_read_write_cloexec_nonblocking_nofollow() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let file = LockFile::open(&path).unwrap();
    let flags = support::fd_flags(&file);
    let has = |f: OFlags| flags & f.bits() == f.bits();
    assert_eq!(
        flags & OFlags::ACCMODE.bits(),
        OFlags::RDWR.bits(),
        "{flags:o}"
    );
    assert!(has(OFlags::CLOEXEC), "O_CLOEXEC missing: {flags:o}");
    assert!(has(OFlags::NONBLOCK), "O_NONBLOCK missing: {flags:o}");
    assert!(has(OFlags::NOFOLLOW), "O_NOFOLLOW missing: {flags:o}");
    assert!(!has(OFlags::APPEND), "O_APPEND set: {flags:o}");

    // The path functions use the same open, and so does a reopen of an
    // existing file.
    let guard = try_flock::<Shared>(&path).unwrap();
    assert_eq!(support::fd_flags(&guard), flags);
}

#[test]
fn follow_symlinks_drops_nofollow() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let file = LockOptions::new()
        .follow_symlinks(true)
        .open(&path)
        .unwrap();
    let flags = support::fd_flags(&file);
    assert_eq!(flags & OFlags::NOFOLLOW.bits(), 0, "{flags:o}");
    assert_eq!(flags & OFlags::ACCMODE.bits(), OFlags::RDWR.bits());
}

#[test]
fn symlink_is_refused_by_default() {
    if support::rerun_alone() {
        return;
    }
    let (dir, target) = support::lock_path();
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let err = no_leak(dir.path(), || LockFile::open(&link).unwrap_err());
    assert!(
        matches!(&err, Error::Symlink { path } if path == &link),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || try_flock::<Exclusive>(&link).unwrap_err());
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
    let err = no_leak(dir.path(), || flockguard::materialize(&link).unwrap_err());
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

#[test]
fn symlink_is_followed_when_asked() {
    if support::rerun_alone() {
        return;
    }
    let (dir, target) = support::lock_path();
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let via_link = LockOptions::new()
        .follow_symlinks(true)
        .open(&link)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert_eq!(via_link.path(), Some(link.as_path()));
    // The lock is on the target: a direct open of the target contends.
    let err = try_flock::<Shared>(&target).unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    drop(via_link);
    support::assert_free(&target);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

#[test]
fn dangling_symlink_is_refused_and_its_target_not_created() {
    if support::rerun_alone() {
        return;
    }
    let (dir, target) = support::lock_path();
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let err = no_leak(dir.path(), || LockFile::open(&link).unwrap_err());
    assert!(
        matches!(&err, Error::Symlink { path } if path == &link),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || {
        LockOptions::new()
            .follow_symlinks(true)
            .open(&link)
            .unwrap_err()
    });
    assert!(
        matches!(&err, Error::DanglingSymlink { path } if path == &link),
        "{err:?}"
    );
    assert!(!target.exists(), "target of the dangling link was created");
}

#[test]
fn new_file_gets_0o666_minus_umask() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let umask = support::umask();
    flockguard::materialize(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o666 & !umask, "umask {umask:o}");
}

#[test]
fn custom_mode_applies_to_new_files_only() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    let umask = support::umask();
    let file = LockOptions::new().permissions(0o640).open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640 & !umask, "umask {umask:o}");
    drop(file);

    let existing = dir.path().join("existing.lock");
    std::fs::File::create(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o604)).unwrap();
    let file = LockOptions::new()
        .permissions(0o600)
        .open(&existing)
        .unwrap();
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o604, "an existing file's permissions changed");
    drop(file);
}

#[test]
fn existing_content_is_never_truncated() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"pid 1234\n").unwrap();

    flockguard::materialize(&path).unwrap();
    drop(try_flock::<Exclusive>(&path).unwrap());
    drop(block_flock::<Shared>(&path).unwrap());
    support::assert_free(&path);
    drop(try_flock_mode(&path, FlockMode::Exclusive).unwrap());
    let mut guard = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
    let mut text = String::new();
    guard.read_to_string(&mut text).unwrap();
    assert_eq!(text, "pid 1234\n");
    drop(guard);
    assert_eq!(std::fs::read(&path).unwrap(), b"pid 1234\n");
}

#[test]
fn exclusive_guard_writes_and_truncates_only_when_asked() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"old content").unwrap();
    let mut guard = try_flock::<Exclusive>(&path).unwrap();
    guard.set_len(0).unwrap();
    guard.write_all(b"new").unwrap();
    guard.sync_data().unwrap();
    guard.sync_all().unwrap();
    drop(guard);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
}

#[test]
fn fifo_is_refused_without_hanging() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();

    // No writer or reader on the FIFO: a blocking open could wait forever;
    // the open runs in a thread so a regression fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    let total = support::open_fds();
    std::thread::spawn(move || tx.send(LockFile::open(&p).map(drop)).unwrap());
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("opening a FIFO hung")
        .unwrap_err();
    assert_eq!(support::open_fds(), total, "descriptor leaked");
    assert_eq!(support::fds_under(dir.path()), 0);
    assert!(
        matches!(&err, Error::NotRegularFile { path: p, kind: FileKind::Fifo } if p == &path),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || try_flock::<Exclusive>(&path).unwrap_err());
    assert!(
        matches!(
            err,
            Error::NotRegularFile {
                kind: FileKind::Fifo,
                ..
            }
        ),
        "{err:?}"
    );
    let ft = std::fs::symlink_metadata(&path).unwrap().file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft), "FIFO removed");
}

#[test]
fn fifo_read_only_fallback_does_not_hang_unprivileged() {
    if support::rerun_alone() {
        return;
    }
    const TEST: &str = "fifo_read_only_fallback_does_not_hang_unprivileged";
    if !support::is_root() {
        return support::skip(TEST, "needs root to run a child as user nobody");
    }
    let (dir, path) = support::lock_path();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Readable by everyone, writable by nobody but root: the read-write open
    // fails with EACCES and the crate retries read-only.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o444),
        0,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let exe = std::env::current_exe().unwrap();
    if !exe
        .ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    {
        return support::skip(TEST, "the test binary is not reachable by user nobody");
    }

    let mut child = Child::spawn_with(
        &["open_contract::open-fifo", path.to_str().unwrap()],
        |cmd| {
            std::os::unix::process::CommandExt::uid(cmd, 65534);
            std::os::unix::process::CommandExt::gid(cmd, 65534);
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill();
            panic!("the unprivileged open of a FIFO hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let line = child.expect_line("result: ", Duration::from_secs(5));
    assert_eq!(line, "result: refused FIFO");
}

#[test]
fn directory_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let (dir, _) = support::lock_path();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = no_leak(dir.path(), || LockFile::open(&sub).unwrap_err());
    assert!(
        matches!(&err, Error::NotRegularFile { path, kind: FileKind::Directory } if path == &sub),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || flockguard::materialize(&sub).unwrap_err());
    assert!(
        matches!(
            err,
            Error::NotRegularFile {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || {
        LockOptions::new()
            .adopt(File::open(&sub).unwrap())
            .unwrap_err()
            .error
    });
    assert!(
        matches!(
            err,
            Error::NotRegularFile {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(sub.is_dir());
}

#[test]
fn socket_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = no_leak(dir.path(), || LockFile::open(&path).unwrap_err());
    assert!(
        matches!(&err, Error::NotRegularFile { path: p, kind: FileKind::Socket } if p == &path),
        "{err:?}"
    );
    let err = no_leak(dir.path(), || block_flock::<Shared>(&path).unwrap_err());
    assert!(
        matches!(
            err,
            Error::NotRegularFile {
                kind: FileKind::Socket,
                ..
            }
        ),
        "{err:?}"
    );
    drop(listener);
    assert!(std::fs::symlink_metadata(&path).is_ok(), "socket removed");
}

#[test]
fn character_device_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dev_null = Path::new("/dev/null");
    let err = no_leak(dev_null, || LockFile::open(dev_null).unwrap_err());
    assert!(
        matches!(&err, Error::NotRegularFile { path, kind: FileKind::CharacterDevice } if path == dev_null),
        "{err:?}"
    );
    let err = no_leak(dev_null, || try_flock::<Exclusive>(dev_null).unwrap_err());
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
    let err = no_leak(dev_null, || {
        LockOptions::new()
            .adopt(File::open(dev_null).unwrap())
            .unwrap_err()
            .error
    });
    assert!(
        matches!(&err, Error::NotRegularFile { path, kind: FileKind::CharacterDevice } if path == dev_null),
        "{err:?}"
    );
}

#[test]
fn missing_parent_is_an_open_error_without_leak() {
    if support::rerun_alone() {
        return;
    }
    let (dir, _) = support::lock_path();
    let path = dir.path().join("missing/dir/app.lock");
    let err = no_leak(dir.path(), || LockFile::open(&path).unwrap_err());
    match &err {
        Error::Open { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join("missing").exists());
    // create_dirs makes the parents.
    drop(LockOptions::new().create_dirs(true).open(&path).unwrap());
    assert!(path.is_file());
}

#[test]
fn create_false_does_not_create() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    let err = no_leak(dir.path(), || {
        LockOptions::new().create(false).open(&path).unwrap_err()
    });
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn contention_error_path_closes_the_descriptor() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let err = no_leak(dir.path(), || try_flock::<Shared>(&path).unwrap_err());
    assert!(err.is_would_block(), "{err:?}");
    let err = no_leak(dir.path(), || {
        try_flock_mode(&path, FlockMode::Exclusive).unwrap_err()
    });
    assert!(err.is_would_block(), "{err:?}");
    drop(held);
}

#[test]
fn every_descriptor_has_cloexec_through_every_transition() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let file = LockFile::open(&path).unwrap();
    assert!(support::is_cloexec(&file), "after open");
    let ex = file.try_lock::<Exclusive>().unwrap();
    assert!(support::is_cloexec(&ex), "after try_lock");
    let sh = ex.downgrade().unwrap();
    assert!(support::is_cloexec(&sh), "after downgrade");
    let ex = sh.upgrade().unwrap();
    assert!(support::is_cloexec(&ex), "after upgrade");
    let file = ex.unlock().unwrap();
    assert!(support::is_cloexec(&file), "after unlock");
    let sh = file.lock::<Shared>().unwrap();
    assert!(support::is_cloexec(&sh), "after lock");
    let ex = sh.try_upgrade().unwrap();
    assert!(support::is_cloexec(&ex), "after try_upgrade");

    // Failed try_lock and failed try_upgrade hand back descriptors too.
    let other = LockFile::open(&path).unwrap();
    let err = other.try_lock::<Shared>().unwrap_err();
    assert!(support::is_cloexec(&err.handle), "after failed try_lock");
    let sh = ex.downgrade().unwrap();
    let other = err.into_inner().try_lock::<Shared>().unwrap();
    let err = sh.try_upgrade().unwrap_err();
    assert!(err.is_would_block());
    assert!(support::is_cloexec(&err.handle), "after failed try_upgrade");
    drop(other);

    for guard in [
        try_flock_mode(&path, FlockMode::Shared).unwrap(),
        support::block_flock_mode(&path, FlockMode::Shared).unwrap(),
    ] {
        assert!(support::is_cloexec(&guard), "path functions");
    }
    assert!(support::is_cloexec(&block_flock::<Shared>(&path).unwrap()));
}

#[test]
fn adopt_sets_cloexec_on_an_inheritable_descriptor() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(0)
        .open(&path)
        .unwrap();
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
    assert!(
        !support::is_cloexec(&file),
        "precondition: FD_CLOEXEC cleared"
    );
    let fd = file.as_raw_fd();

    let adopted = LockOptions::new().adopt(file).unwrap();
    assert_eq!(adopted.as_raw_fd(), fd, "adopt keeps the descriptor");
    assert!(support::is_cloexec(&adopted), "after adopt");
    assert_eq!(adopted.path(), None);
    let guard = adopted.try_lock::<Exclusive>().unwrap();
    assert!(support::is_cloexec(&guard));
    assert!(!support::is_free(&path));
    drop(guard);
    support::assert_free(&path);
}

#[test]
fn adopt_accepts_a_read_only_descriptor() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"x").unwrap();
    let guard = LockOptions::new()
        .adopt(File::open(&path).unwrap())
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert!(!support::is_shareable(&path));
    drop(guard);
}

#[test]
fn read_only_file_is_locked_through_a_read_only_open() {
    if support::rerun_alone() {
        return;
    }
    const TEST: &str = "read_only_file_is_locked_through_a_read_only_open";
    if !support::is_root() {
        return support::skip(TEST, "needs root to run a child as user nobody");
    }
    // Root bypasses permission bits, so use a read-only bind mount instead:
    // the read-write open fails with EROFS and the crate opens read-only.
    let (dir, path) = support::lock_path();
    std::fs::write(&path, b"x").unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let bind = Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(dir.path())
        .arg(&ro)
        .status();
    if !bind.is_ok_and(|s| s.success()) {
        return support::skip(TEST, "mount --bind -o ro failed");
    }
    let _unmount = Unmount(&ro);
    let ro_path = ro.join("test.lock");
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(&ro_path)
        .is_err());

    let file = LockFile::open(&ro_path).unwrap();
    assert_eq!(
        support::fd_flags(&file) & OFlags::ACCMODE.bits(),
        OFlags::RDONLY.bits()
    );
    assert!(support::is_cloexec(&file));
    let mut guard = file.try_lock::<Exclusive>().unwrap();
    // An exclusive guard on a read-only descriptor cannot write.
    let err = guard.write_all(b"x").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    let msg = err.to_string();
    assert!(
        msg.contains("is open read-only") && msg.contains("Access::ReadWrite"),
        "{msg}"
    );
    assert!(msg.contains(&format!("`{}`", ro_path.display())), "{msg}");
    // Same inode through the writable path: the locks contend.
    assert!(!support::is_shareable(&path));
    drop(guard);

    // A missing file cannot be created there: an open error, nothing made.
    let err = LockFile::open(ro.join("new.lock")).unwrap_err();
    assert!(
        matches!(&err, Error::Open { source, .. }
        if source.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())),
        "{err:?}"
    );
}

/// Lazily unmounts a mount point when dropped, even on panic.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_refused_adoption_gives_the_callers_file_back() {
    use std::os::fd::AsRawFd;
    if support::rerun_alone() {
        return;
    }
    let dev_null = std::path::Path::new("/dev/null");
    let file = File::open(dev_null).unwrap();
    let fd = file.as_raw_fd();
    let err = LockOptions::new().adopt(file).unwrap_err();
    assert!(matches!(err.error, Error::NotRegularFile { .. }), "{err:?}");
    let file = err.into_inner();
    assert_eq!(file.as_raw_fd(), fd);
    assert!(
        file.metadata().is_ok(),
        "the caller's descriptor was closed"
    );

    // Write access required, a read-only descriptor offered: refused, and
    // the file comes back too.
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"").unwrap();
    let err = LockOptions::new()
        .access(flockguard::Access::ReadWrite)
        .adopt(File::open(&path).unwrap())
        .unwrap_err();
    assert!(matches!(err.error, Error::ReadOnly { .. }), "{err:?}");
    assert!(err.into_inner().metadata().is_ok());
}
