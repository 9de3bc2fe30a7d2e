//! Bad input: every refusal is a typed error naming the path, with no panic,
//! no descriptor leaked and nothing created where the call was refused.
//!
//! Tests here count every descriptor of the process, so each runs in a
//! process of its own ([`support::rerun_alone`]).

use std::ffi::OsStr;
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flockguard::{
    block_flock, materialize, try_flock, Error, Exclusive, FlockMode, LockFile, LockOptions,
    RemoteFs, Shared,
};

use crate::support;
use crate::support::rig;
use crate::support::rig::Mount;
use crate::support::Child;
use crate::support::{block_flock_verified, try_flock_mode};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `attempt` and checks the refusal contract: an error naming `path`
/// in its message, the same descriptors open afterwards, and no change
/// below `watch`. Prints the message for the reliability table.
fn refused<T: std::fmt::Debug>(
    case: &str,
    path: &Path,
    watch: &Path,
    attempt: impl FnOnce() -> Result<T, Error>,
) -> Error {
    let tree = rig::tree(watch);
    let fds = support::open_fds();
    let err = attempt().expect_err(case);
    assert_eq!(support::open_fds(), fds, "{case}: descriptor leaked");
    assert_eq!(
        rig::tree(watch),
        tree,
        "{case}: files changed below {watch:?}"
    );
    assert_eq!(err.path(), path, "{case}: error names another path");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("`{}`", path.display())),
        "{case}: message does not name the path: {msg}"
    );
    eprintln!("CASE {case}: {msg}");
    err
}

/// [`refused`] for every path entry point with default options: they must
/// all give the same message.
fn refused_everywhere(case: &str, path: &Path, watch: &Path) -> Error {
    let err = refused(case, path, watch, || LockOptions::new().open(path));
    let msg = err.to_string();
    let others = [
        refused(case, path, watch, || LockFile::open(path)).to_string(),
        refused(case, path, watch, || try_flock::<Exclusive>(path)).to_string(),
        refused(case, path, watch, || block_flock::<Shared>(path)).to_string(),
        refused(case, path, watch, || {
            try_flock_mode(path, FlockMode::Shared)
        })
        .to_string(),
        refused(case, path, watch, || materialize(path)).to_string(),
        refused(case, path, watch, || {
            block_flock_verified::<Exclusive>(path)
        })
        .to_string(),
    ];
    for other in others {
        assert_eq!(other, msg, "{case}: entry points disagree");
    }
    err
}

fn os_error(err: &Error) -> Option<i32> {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
}

fn assert_open_errno(err: &Error, errno: rustix::io::Errno, hint: &str) {
    assert!(
        matches!(err, Error::Open { .. }),
        "not Error::Open: {err:?}"
    );
    assert_eq!(os_error(err), Some(errno.raw_os_error()), "{err:?}");
    assert!(
        err.to_string().contains(hint),
        "hint {hint:?} missing: {err}"
    );
}

fn assert_not_regular(err: &Error, kind: &str) {
    match err {
        Error::NotRegularFile { kind: k, .. } => assert_eq!(k.to_string(), kind),
        other => panic!("not NotRegularFile: {other:?}"),
    }
}

// ---------------------------------------------------------------- file types

#[test]
fn directory_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    std::fs::create_dir(&path).unwrap();
    let err = refused_everywhere("directory", &path, dir.path());
    assert_not_regular(&err, "directory");
    let file = LockOptions::new()
        .allow_directory(true)
        .open(&path)
        .unwrap();
    drop(file.try_lock::<Exclusive>().unwrap());
}

#[test]
fn trailing_slash_is_refused_without_creating_anything() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    for name in ["d/", "missing/"] {
        let path = PathBuf::from(format!("{}/{name}", dir.path().display()));
        let err = refused_everywhere(&format!("trailing slash {name}"), &path, dir.path());
        assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");
    }
}

#[test]
fn fifo_is_refused_without_hanging() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    rig::run("mkfifo", &[path.to_str().unwrap()]).unwrap();
    // No reader or writer exists: an open without O_NONBLOCK would hang here.
    let err = refused_everywhere("FIFO", &path, dir.path());
    assert_not_regular(&err, "FIFO");
}

#[test]
fn socket_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = refused_everywhere("socket", &path, dir.path());
    assert_not_regular(&err, "socket");
}

#[test]
fn character_device_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let path = Path::new("/dev/null");
    let err = refused_everywhere("character device", path, Path::new("/dev/null"));
    assert_not_regular(&err, "character device");
}

#[test]
fn block_device_is_refused() {
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return support::skip("block_device_is_refused", "needs root for mknod");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blk");
    // loop device 7:255 rarely exists; its open fails with ENXIO or succeeds.
    rig::run("mknod", &[path.to_str().unwrap(), "b", "7", "255"]).unwrap();
    let err = refused_everywhere("block device", &path, dir.path());
    assert_not_regular(&err, "block device");
}

// ------------------------------------------------------------ symbolic links

#[test]
fn symlink_is_refused_by_default_and_followed_on_request() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.lock");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = refused_everywhere("symlink", &link, dir.path());
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");

    let held = LockOptions::new()
        .follow_symlinks(true)
        .open(&link)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert!(try_flock::<Shared>(&target).unwrap_err().is_would_block());
    drop(held);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
}

#[test]
fn dangling_symlink_is_refused_and_target_not_created() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("absent.lock");
    let link = dir.path().join("dangling.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = refused_everywhere("dangling symlink", &link, dir.path());
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
    let err = refused(
        "dangling symlink, follow_symlinks(true)",
        &link,
        dir.path(),
        || LockOptions::new().follow_symlinks(true).open(&link),
    );
    assert!(matches!(err, Error::DanglingSymlink { .. }), "{err:?}");
    assert!(!target.exists());
}

#[test]
fn symlink_loop_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.lock");
    let b = dir.path().join("b.lock");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = refused_everywhere("symbolic link loop", &a, dir.path());
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
    let err = refused(
        "symlink loop, follow_symlinks(true)",
        &a,
        dir.path(),
        || LockOptions::new().follow_symlinks(true).open(&a),
    );
    assert_open_errno(&err, rustix::io::Errno::LOOP, "symbolic link loop");
}

// --------------------------------------------------------------------- paths

#[test]
fn missing_parent_directory_is_refused_unless_create_dirs() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/app.lock");
    let err = refused_everywhere("missing parent directory", &path, dir.path());
    assert_open_errno(&err, rustix::io::Errno::NOENT, "create_dirs(true)");
    let file = LockOptions::new().create_dirs(true).open(&path).unwrap();
    drop(file.try_lock::<Exclusive>().unwrap());
}

#[test]
fn missing_file_with_create_false_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.lock");
    let err = refused("missing file, create(false)", &path, dir.path(), || {
        LockOptions::new().create(false).open(&path)
    });
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn file_as_path_component_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let path = dir.path().join("file/app.lock");
    let err = refused_everywhere("path component is a file", &path, dir.path());
    assert_open_errno(&err, rustix::io::Errno::NOTDIR, "is a file");
}

#[test]
fn name_longer_than_name_max_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n".repeat(256));
    let err = refused_everywhere("name longer than NAME_MAX", &path, dir.path());
    assert_open_errno(&err, rustix::io::Errno::NAMETOOLONG, "NAME_MAX");
}

#[test]
fn path_longer_than_path_max_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().to_path_buf();
    while path.as_os_str().len() < 4200 {
        path.push("p".repeat(200));
    }
    path.push("app.lock");
    let err = refused_everywhere("path longer than PATH_MAX", &path, dir.path());
    assert_open_errno(&err, rustix::io::Errno::NAMETOOLONG, "PATH_MAX");
}

#[test]
fn empty_path_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let cwd = std::env::current_dir().unwrap();
    let err = refused_everywhere("empty path", Path::new(""), &cwd);
    assert!(
        matches!(err, Error::InvalidPath { reason, .. } if reason.to_string().contains("empty"))
    );
}

#[test]
fn nul_byte_in_path_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = dir.path().as_os_str().as_bytes().to_vec();
    bytes.extend_from_slice(b"/a\0b.lock");
    let path = PathBuf::from(OsStr::from_bytes(&bytes));
    let err = refused_everywhere("NUL byte in path", &path, dir.path());
    assert!(matches!(err, Error::InvalidPath { reason, .. } if reason.to_string().contains("NUL")));
}

// ------------------------------------------------------------- other users

/// In a child running as another user: the refusal contract, reported as
/// `REFUSED <errno> <message>`.
fn child_refuse(path: &str, watch: &str) {
    let path = Path::new(path);
    let err = refused("as another user", path, Path::new(watch), || {
        LockOptions::new().open(path)
    });
    support::tell(&format!("REFUSED {} {err}", os_error(&err).unwrap_or(0)));
}

/// In a child: opens and locks `path` exclusively without waiting, reports
/// `LOCKED` or `BUSY`, then whether a write through the guard works.
fn child_lock(path: &str) {
    let file = LockOptions::new().open(path).expect("open");
    match file.try_lock::<Exclusive>() {
        Ok(mut guard) => {
            support::tell("LOCKED");
            let write = guard.write_all(b"x");
            support::tell(&format!(
                "WRITE {:?}",
                write.map_err(|e| (e.kind(), e.to_string().contains("is open read-only")))
            ));
            support::wait_for_parent(|_| {});
            drop(guard);
        }
        Err(err) => {
            assert!(err.is_would_block(), "{err}");
            support::tell("BUSY");
        }
    }
}

/// In a child: lowers `RLIMIT_NOFILE`, uses up the descriptors, checks the
/// refusal, then frees one descriptor and locks. Counting descriptors needs
/// one, so the counts are taken with the hog released.
fn child_emfile(path: &str, watch: &str) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let path = Path::new(path);
    let tree = rig::tree(Path::new(watch));
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: old.maximum,
        },
    )
    .expect("setrlimit");
    let fds = support::open_fds();
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    let err = LockOptions::new().open(path).expect_err("open at EMFILE");
    let again = try_flock::<Exclusive>(path).expect_err("try_flock at EMFILE");
    assert_eq!(again.to_string(), err.to_string());
    drop(hog);
    assert_eq!(support::open_fds(), fds, "descriptor leaked");
    assert_eq!(rig::tree(Path::new(watch)), tree, "files changed");
    assert_eq!(err.path(), path);
    support::tell(&format!("REFUSED {} {err}", os_error(&err).unwrap_or(0)));
    let guard = try_flock::<Exclusive>(path).expect("lock with descriptors free");
    support::tell("LOCKED");
    drop(guard);
}

pub const CHILDREN: &[support::Role] = &[
    ("bad_input::refuse", |a| child_refuse(&a[0], &a[1])),
    ("bad_input::lock", |a| child_lock(&a[0])),
    ("bad_input::emfile", |a| child_emfile(&a[0], &a[1])),
];

/// Runs `child_refuse` as `uid`; returns (errno, message).
fn refuse_as(uid: u32, path: &Path, watch: &Path) -> (i32, String) {
    let mut child = Child::spawn_with(
        &[
            "bad_input::refuse",
            path.to_str().unwrap(),
            watch.to_str().unwrap(),
        ],
        rig::as_user(uid),
    );
    let line = child.expect_line("REFUSED", WAIT);
    assert!(child.release().success(), "child failed the refusal checks");
    let rest = line.strip_prefix("REFUSED ").unwrap();
    let (errno, msg) = rest.split_once(' ').unwrap();
    eprintln!("CASE as uid {uid}: {msg}");
    (errno.parse().unwrap(), msg.to_owned())
}

#[test]
fn permission_denied_as_nobody() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_switch_user() {
        return support::skip("permission_denied_as_nobody", &why);
    }
    let dir = rig::shared_dir(0o755);
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = dir.path().join("root600.lock");
    std::fs::write(&secret, "").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let eacces = rustix::io::Errno::ACCESS.raw_os_error();
    let hint = "must be readable by you";
    for path in [
        dir.path().join("new.lock"), // create in a directory nobody may not write
        secret.clone(),              // neither writable nor readable
        private.join("app.lock"),    // directory not searchable
    ] {
        let (errno, msg) = refuse_as(rig::NOBODY, &path, dir.path());
        assert_eq!(errno, eacces, "{msg}");
        assert!(
            msg.contains(hint) && msg.contains(path.to_str().unwrap()),
            "{msg}"
        );
    }
    assert!(!dir.path().join("new.lock").exists());
}

#[test]
fn readable_file_of_another_user_is_locked_read_only() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_switch_user() {
        return support::skip("readable_file_of_another_user_is_locked_read_only", &why);
    }
    let dir = rig::shared_dir(0o755);
    let path = dir.path().join("root644.lock");
    std::fs::write(&path, "content").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut child = Child::spawn_with(
        &["bad_input::lock", path.to_str().unwrap()],
        rig::as_user(rig::NOBODY),
    );
    child.expect_line("LOCKED", WAIT);
    let write = child.expect_line("WRITE", WAIT);
    // Opened read-only: the lock is real, writes are refused naming the path.
    assert_eq!(write, "WRITE Err((PermissionDenied, true))");
    assert!(try_flock::<Shared>(&path).unwrap_err().is_would_block());
    assert!(child.release().success());
    let mine = try_flock::<Exclusive>(&path).unwrap();
    let mut child = Child::spawn_with(
        &["bad_input::lock", path.to_str().unwrap()],
        rig::as_user(rig::NOBODY),
    );
    child.expect_line("BUSY", WAIT);
    assert!(child.release().success());
    drop(mine);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "content");
}

#[test]
fn running_executable_is_locked_read_only() {
    if support::rerun_alone() {
        return;
    }
    // O_RDWR on a file being executed fails with ETXTBSY; the read-only
    // fallback still locks it. The test binary itself is running.
    let exe = std::env::current_exe().unwrap();
    let fds = support::open_fds();
    let mut guard = try_flock::<Exclusive>(&exe).expect("lock the running executable");
    assert!(try_flock::<Shared>(&exe).unwrap_err().is_would_block());
    let write = guard
        .write_all(b"")
        .and_then(|()| guard.write(b"x").map(drop));
    let err = write.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("is open read-only"), "{err}");
    drop(guard);
    assert_eq!(support::open_fds(), fds);
    // Write access can be required: a typed error, nothing left open.
    let err = LockOptions::new()
        .access(flockguard::Access::ReadWrite)
        .open(&exe)
        .unwrap_err();
    assert!(matches!(err, Error::WriteRefused { .. }), "{err:?}");
    assert_eq!(
        err.os_error(),
        Some(rustix::io::Errno::TXTBSY.raw_os_error())
    );
    assert_eq!(support::open_fds(), fds);
}

// -------------------------------------------------------------- filesystems

#[test]
fn read_only_tmpfs_locks_existing_file_and_refuses_creation() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_mount() {
        return support::skip(
            "read_only_tmpfs_locks_existing_file_and_refuses_creation",
            &why,
        );
    }
    let mnt = match Mount::tmpfs("size=64k") {
        Ok(m) => m,
        Err(why) => {
            return support::skip(
                "read_only_tmpfs_locks_existing_file_and_refuses_creation",
                &why,
            )
        }
    };
    let existing = mnt.dir.join("existing.lock");
    std::fs::write(&existing, "").unwrap();
    mnt.remount_ro().unwrap();

    let missing = mnt.dir.join("missing.lock");
    let err = refused_everywhere("read-only filesystem, missing file", &missing, &mnt.dir);
    assert_open_errno(&err, rustix::io::Errno::ROFS, "read-only");

    let mut held = try_flock::<Exclusive>(&existing).expect("existing file on a read-only fs");
    assert!(try_flock::<Shared>(&existing).unwrap_err().is_would_block());
    let write = held.write_all(b"x").unwrap_err();
    assert_eq!(
        write.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{write}"
    );
    assert!(write.to_string().contains("is open read-only"), "{write}");
    let shared = held.downgrade().unwrap();
    drop(try_flock::<Shared>(&existing).unwrap());
    drop(shared);
}

#[test]
fn read_only_bind_mount_shares_the_lock_with_the_writable_view() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_mount() {
        return support::skip(
            "read_only_bind_mount_shares_the_lock_with_the_writable_view",
            &why,
        );
    }
    let src = tempfile::tempdir().unwrap();
    let rw = src.path().join("app.lock");
    std::fs::write(&rw, "").unwrap();
    let mnt = match Mount::bind(src.path(), true) {
        Ok(m) => m,
        Err(why) => {
            return support::skip(
                "read_only_bind_mount_shares_the_lock_with_the_writable_view",
                &why,
            )
        }
    };
    let ro = mnt.dir.join("app.lock");

    let held = try_flock::<Exclusive>(&ro).expect("lock through the read-only view");
    assert!(try_flock::<Shared>(&rw).unwrap_err().is_would_block());
    drop(held);
    let held = try_flock::<Exclusive>(&rw).unwrap();
    assert!(try_flock::<Shared>(&ro).unwrap_err().is_would_block());
    drop(held);

    let missing = mnt.dir.join("missing.lock");
    let err = refused_everywhere("read-only bind mount, missing file", &missing, src.path());
    assert_open_errno(&err, rustix::io::Errno::ROFS, "read-only");
}

#[test]
fn no_inodes_left_is_refused() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_mount() {
        return support::skip("no_inodes_left_is_refused", &why);
    }
    let mnt = match Mount::tmpfs("size=64k,nr_inodes=4") {
        Ok(m) => m,
        Err(why) => return support::skip("no_inodes_left_is_refused", &why),
    };
    let mut n = 0;
    while std::fs::write(mnt.dir.join(format!("fill{n}")), "").is_ok() {
        n += 1;
    }
    let path = mnt.dir.join("app.lock");
    let err = refused_everywhere("no inodes left", &path, &mnt.dir);
    assert_open_errno(&err, rustix::io::Errno::NOSPC, "free space or inodes");
    std::fs::remove_file(mnt.dir.join("fill0")).unwrap();
    drop(try_flock::<Exclusive>(&path).unwrap());
}

#[test]
fn no_space_left_still_locks_but_writes_fail() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_mount() {
        return support::skip("no_space_left_still_locks_but_writes_fail", &why);
    }
    let mnt = match Mount::tmpfs("size=16k") {
        Ok(m) => m,
        Err(why) => return support::skip("no_space_left_still_locks_but_writes_fail", &why),
    };
    let mut filler = std::fs::File::create(mnt.dir.join("filler")).unwrap();
    let chunk = [0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    // An empty lock file needs an inode but no data blocks.
    let path = mnt.dir.join("app.lock");
    let mut guard = try_flock::<Exclusive>(&path).expect("lock on a full filesystem");
    let err = guard.write_all(&chunk).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NOSPC.raw_os_error())
    );
    assert!(try_flock::<Shared>(&path).unwrap_err().is_would_block());
}

#[test]
fn too_many_open_files_is_refused() {
    if support::rerun_alone() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.lock");
    let mut child = Child::spawn(&[
        "bad_input::emfile",
        path.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    let line = child.expect_line("REFUSED", WAIT);
    eprintln!("CASE EMFILE: {line}");
    assert!(line.starts_with(&format!(
        "REFUSED {} ",
        rustix::io::Errno::MFILE.raw_os_error()
    )));
    assert!(line.contains("raise RLIMIT_NOFILE"), "{line}");
    child.expect_line("LOCKED", WAIT);
    assert!(child.release().success());
}

#[test]
fn fuse_is_refused_and_created_file_removed() {
    if support::rerun_alone() {
        return;
    }
    if let Some(why) = rig::cannot_mount() {
        return support::skip("fuse_is_refused_and_created_file_removed", &why);
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("existing.lock"), "keep").unwrap();
    let mnt = match Mount::bindfs(src.path()) {
        Ok(m) => m,
        Err(why) => return support::skip("fuse_is_refused_and_created_file_removed", &why),
    };
    // New file: created by the open, refused, removed again.
    let path = mnt.dir.join("app.lock");
    let err = refused_everywhere("FUSE (bindfs)", &path, src.path());
    assert!(
        matches!(
            err,
            Error::RemoteFs {
                fs: flockguard::UnreliableFs { name: "FUSE", .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_remote_fs());
    assert!(!src.path().join("app.lock").exists());
    // Existing file: refused and left alone.
    let existing = mnt.dir.join("existing.lock");
    let err = refused_everywhere("FUSE (bindfs), existing file", &existing, src.path());
    assert!(err.is_remote_fs());
    assert_eq!(
        std::fs::read_to_string(src.path().join("existing.lock")).unwrap(),
        "keep"
    );
    // Opt-in works.
    let file = LockOptions::new()
        .remote_fs(RemoteFs::Allow)
        .open(&path)
        .unwrap();
    drop(file.try_lock::<Exclusive>().unwrap());
}

// ------------------------------------------------ changed while held

#[test]
fn lock_file_unlinked_while_held_is_detected() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    held.verify_path().unwrap();
    std::fs::remove_file(&path).unwrap();
    // The hazard: a newcomer creates and locks a new file at the same path.
    let newcomer = try_flock::<Exclusive>(&path).expect("new inode, free lock");
    let err = held.verify_path().unwrap_err();
    assert!(matches!(err, Error::PathChanged { .. }), "{err:?}");
    eprintln!("CASE lock file unlinked while held: {err}");
    newcomer.verify_path().unwrap();
    let err = held.unlink_and_unlock().unwrap_err();
    assert!(matches!(err.error, Error::PathChanged { .. }));
    assert!(path.exists(), "the newcomer's file must not be removed");
    // The refused removal hands the guard back, still holding its lock.
    let held = err.into_inner();
    assert_eq!(support::held_through(&held), Some(FlockMode::Exclusive));
    drop(newcomer);
    drop(held);
}

#[test]
fn lock_file_replaced_while_held_is_detected() {
    if support::rerun_alone() {
        return;
    }
    let (dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, "").unwrap();
    std::fs::rename(&other, &path).unwrap();
    let err = held.verify_path().unwrap_err();
    assert!(matches!(err, Error::PathChanged { .. }), "{err:?}");
    eprintln!("CASE lock file replaced while held: {err}");
    drop(held);
}
