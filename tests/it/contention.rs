//! Contention and transitions, proven against a second open of the same path
//! in this process (flock locks belong to open file descriptions, so two opens
//! contend like two processes).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flockguard::{
    block_flock, materialize, try_flock, AnyGuard, Error, Exclusive, FileKind, FlockMode,
    LockError, LockFile, LockGuard, LockOptions, Shared,
};

use crate::support;
use crate::support::{block_flock_mode, try_flock_mode};
use crate::support::{expect_locks, held_through, wait_until};

/// Opens `path` with `O_PATH`: a descriptor that names the file but that
/// `flock(2)` rejects with `EBADF`.
fn o_path_file(path: &Path) -> std::fs::File {
    let fd: OwnedFd = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open O_PATH");
    fd.into()
}

const READ: (bool, bool) = (false, false);
const WRITE: (bool, bool) = (true, false);
const WAIT_WRITE: (bool, bool) = (true, true);

#[test]
fn two_opens_in_one_process_contend() {
    let (_dir, path) = support::lock_path();
    for held in [FlockMode::Exclusive, FlockMode::Shared] {
        for wanted in [FlockMode::Exclusive, FlockMode::Shared] {
            let guard = try_flock_mode(&path, held).unwrap();
            let result = try_flock_mode(&path, wanted);
            if held == FlockMode::Shared && wanted == FlockMode::Shared {
                assert_eq!(result.unwrap().mode(), FlockMode::Shared);
            } else {
                match result.unwrap_err() {
                    Error::WouldBlock { path: p, mode, .. } => {
                        assert_eq!(p, path);
                        assert_eq!(mode, wanted, "held {held}");
                    }
                    other => panic!("held {held}, wanted {wanted}: {other:?}"),
                }
            }
            drop(guard);
            support::assert_free(&path);
        }
    }
    support::assert_free(&path);
}

#[test]
fn typed_path_functions_report_would_block() {
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let err = try_flock::<Shared>(&path).unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    assert!(matches!(
        err,
        Error::WouldBlock {
            mode: FlockMode::Shared,
            ..
        }
    ));
    let err = try_flock::<Exclusive>(&path).unwrap_err();
    assert!(matches!(
        err,
        Error::WouldBlock {
            mode: FlockMode::Exclusive,
            ..
        }
    ));
    drop(held);
    support::assert_free(&path);
    drop(try_flock::<Exclusive>(&path).unwrap());
}

#[test]
fn try_flock_closes_the_descriptor_on_contention() {
    let (dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    assert_eq!(support::fds_under(dir.path()), 1);
    for _ in 0..100 {
        assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
        assert!(try_flock_mode(&path, FlockMode::Shared)
            .unwrap_err()
            .is_would_block());
    }
    assert_eq!(support::fds_under(dir.path()), 1, "descriptors leaked");
    drop(held);
    assert_eq!(support::fds_under(dir.path()), 0);
}

#[test]
fn try_lock_hands_the_file_back_for_a_retry() {
    let (dir, path) = support::lock_path();
    let held = try_flock::<Shared>(&path).unwrap();
    let file = LockFile::open(&path).unwrap();
    let fd = file.as_raw_fd();

    let err: LockError<LockFile> = file.try_lock::<Exclusive>().unwrap_err();
    assert!(err.is_would_block());
    assert!(matches!(
        &err.error,
        Error::WouldBlock { path: p, mode: FlockMode::Exclusive, .. } if p == &path
    ));
    assert_eq!(err.to_string(), err.error.to_string());
    let file = err.into_inner();
    assert_eq!(file.as_raw_fd(), fd, "a different descriptor came back");
    assert_eq!(held_through(&file), None);
    assert_eq!(support::fds_under(dir.path()), 2);

    // Retry with the same descriptor: still contended, then free.
    let (error, file) = file.try_lock::<Exclusive>().unwrap_err().into_parts();
    assert!(error.is_would_block());
    drop(held);
    support::assert_free(&path);
    let guard = file.try_lock::<Exclusive>().unwrap();
    assert_eq!(guard.as_raw_fd(), fd);
    assert_eq!(held_through(&guard), Some(FlockMode::Exclusive));
    assert!(!support::is_shareable(&path));
}

#[test]
fn flock_failure_other_than_contention_is_a_flock_error() {
    let (_dir, path) = support::lock_path();
    materialize(&path).unwrap();
    let ebadf = Some(rustix::io::Errno::BADF.raw_os_error());

    // Uncontended: flock(2) rejects an O_PATH descriptor with EBADF.
    let file = LockOptions::new().adopt(o_path_file(&path)).unwrap();
    let err = file.try_lock::<Exclusive>().unwrap_err();
    assert!(!err.is_would_block());
    match &err.error {
        Error::Flock {
            path: p,
            mode,
            source,
        } => {
            assert_eq!(p, &path, "the error names the file /proc/self/fd reports");
            assert_eq!(*mode, FlockMode::Exclusive);
            assert_eq!(source.raw_os_error(), ebadf);
        }
        other => panic!("{other:?}"),
    }

    // Contended: still EBADF, never mistaken for contention.
    let held = try_flock::<Exclusive>(&path).unwrap();
    let err = err.into_inner().try_lock::<Shared>().unwrap_err();
    assert!(
        matches!(&err.error, Error::Flock { mode: FlockMode::Shared, source, .. }
            if source.raw_os_error() == ebadf),
        "{err:?}"
    );
    let err = err.into_inner().lock::<Shared>().unwrap_err();
    assert!(
        matches!(&err.error, Error::Flock { source, .. } if source.raw_os_error() == ebadf),
        "{err:?}"
    );
    assert!(!err.is_would_block());
    let kind = io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error()).kind();
    assert_eq!(
        io::Error::from(err).kind(),
        kind,
        "the kind of the OS error"
    );
    drop(held);
}

#[test]
fn unlock_releases_and_keeps_the_descriptor() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let fd = guard.as_raw_fd();
    let file = guard.unlock().unwrap();
    assert_eq!(file.as_raw_fd(), fd);
    assert_eq!(held_through(&file), None);
    support::assert_free(&path);
    assert_eq!(file.path(), Some(path.as_path()));
    let guard = file.lock::<Shared>().unwrap();
    assert_eq!(guard.as_raw_fd(), fd);
    assert!(!support::is_free(&path));
    support::assert_shareable(&path);
}

#[test]
fn drop_releases() {
    let (_dir, path) = support::lock_path();
    let guard = block_flock::<Exclusive>(&path).unwrap();
    expect_locks(&path, &[WRITE]);
    drop(guard);
    expect_locks(&path, &[]);
    support::assert_free(&path);
}

#[test]
fn a_duplicated_descriptor_shares_the_lock() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let dup = rustix::io::dup(&guard).unwrap();
    // dup(2) clears FD_CLOEXEC: the reason the crate never hands out duplicates.
    assert!(!support::is_cloexec(&dup));
    assert!(!support::is_shareable(&path), "the guard holds the lock");
    // Drop sends LOCK_UN, which releases the lock for every duplicate.
    drop(guard);
    assert!(
        support::is_free(&path),
        "the guard's drop left the lock with a duplicate"
    );
    drop(dup);
    support::assert_free(&path);
}

#[test]
fn downgrade_keeps_a_lock_throughout() {
    let (_dir, path) = support::lock_path();
    let writer = try_flock::<Exclusive>(&path).unwrap();

    // An exclusive waiter queued behind the writer: if the downgrade let go
    // for an instant, the waiter would be woken and could take the lock.
    let got_it = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (path, got_it) = (path.clone(), Arc::clone(&got_it));
        std::thread::spawn(move || {
            let guard = block_flock::<Exclusive>(&path).unwrap();
            got_it.store(true, Ordering::SeqCst);
            drop(guard);
        })
    };
    wait_until("the waiter blocks", || support::has_waiter(&path));

    let reader = writer.downgrade().unwrap();
    assert_eq!(held_through(&reader), Some(FlockMode::Shared));
    wait_until("the waiter blocks again", || support::has_waiter(&path));
    assert!(!got_it.load(Ordering::SeqCst), "the waiter got in");
    expect_locks(&path, &[READ, WAIT_WRITE]);

    // A second open: exclusive refused, shared granted beside the reader.
    let err = try_flock::<Exclusive>(&path).unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    let second = try_flock::<Shared>(&path).unwrap();
    assert!(!got_it.load(Ordering::SeqCst), "the waiter got in");

    drop((reader, second));
    waiter.join().unwrap();
    assert!(got_it.load(Ordering::SeqCst));
}

#[test]
fn upgrade_waits_holding_nothing() {
    let (_dir, path) = support::lock_path();
    let upgrader = try_flock::<Shared>(&path).unwrap();
    let other = try_flock::<Shared>(&path).unwrap();
    let upgrader_fd = upgrader.as_raw_fd();
    expect_locks(&path, &[READ, READ]);

    let upgrade = std::thread::spawn(move || upgrader.upgrade());
    wait_until("the upgrade blocks", || support::has_waiter(&path));

    // While it waits, the upgrader's descriptor holds no lock at all: the
    // only holder is the other reader, and the upgrade is a queued request.
    assert_eq!(held_through(&upgrader_fd), None);
    expect_locks(&path, &[READ, WAIT_WRITE]);

    // So a third open takes a shared lock after the upgrade started...
    let third = try_flock::<Shared>(&path).unwrap();
    // ...and when the first reader leaves, the upgrade still cannot finish.
    drop(other);
    assert!(!upgrade.is_finished(), "upgrade finished beside a reader");
    wait_until("the upgrade blocks again", || support::has_waiter(&path));
    assert_eq!(held_through(&upgrader_fd), None);
    expect_locks(&path, &[READ, WAIT_WRITE]);
    assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());

    drop(third);
    let writer: LockGuard<Exclusive> = upgrade.join().unwrap().unwrap();
    assert_eq!(writer.as_raw_fd(), upgrader_fd);
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));
    expect_locks(&path, &[WRITE]);
    assert!(!support::is_shareable(&path));
}

#[test]
fn upgrade_without_other_holders_does_not_wait() {
    let (_dir, path) = support::lock_path();
    let reader = try_flock::<Shared>(&path).unwrap();
    let writer = reader.upgrade().unwrap();
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));
    let reader = writer.downgrade().unwrap();
    let writer = reader.try_upgrade().unwrap();
    assert_eq!(writer.mode(), FlockMode::Exclusive);
    assert!(!support::is_shareable(&path));
}

#[test]
fn failed_try_upgrade_has_lost_the_shared_lock() {
    let (_dir, path) = support::lock_path();
    let mine = try_flock::<Shared>(&path).unwrap();
    let other = try_flock::<Shared>(&path).unwrap();
    let fd = mine.as_raw_fd();

    let err: LockError<LockFile> = mine.try_upgrade().unwrap_err();
    assert!(err.is_would_block());
    assert!(matches!(
        &err.error,
        Error::WouldBlock { path: p, mode: FlockMode::Exclusive, .. } if p == &path
    ));
    assert!(
        err.to_string()
            .ends_with("; the shared lock this guard held was released"),
        "{err}"
    );
    assert!(matches!(
        err.error,
        Error::WouldBlock {
            shared_lost: true,
            ..
        }
    ));
    let file: LockFile = err.into_inner();
    assert_eq!(file.as_raw_fd(), fd);
    assert_eq!(held_through(&file), None, "the shared lock survived");
    expect_locks(&path, &[READ]);

    // Once the other reader leaves, nobody holds anything: a second open
    // takes the exclusive lock.
    drop(other);
    support::assert_free(&path);
    let intruder = try_flock::<Exclusive>(&path).unwrap();
    let (error, file) = file.try_lock::<Shared>().unwrap_err().into_parts();
    assert!(error.is_would_block());
    drop(intruder);
    support::assert_free(&path);
    let writer = file.try_lock::<Exclusive>().unwrap();
    assert_eq!(writer.as_raw_fd(), fd);
}

#[test]
fn guards_and_errors_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_send_sync::<LockGuard<Exclusive>>();
    assert_send_sync::<LockGuard<Shared>>();
    assert_send_sync::<LockFile>();
    assert_send_sync::<AnyGuard>();
    assert_send_sync::<LockOptions>();
    assert_error::<Error>();
    assert_error::<LockError<LockFile>>();
    assert_error::<LockError<LockGuard<Exclusive>>>();
    assert_error::<LockError<AnyGuard>>();
    assert_error::<LockError<std::fs::File>>();
}

#[test]
fn a_guard_moves_to_another_thread() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let p = path.clone();
    std::thread::spawn(move || {
        assert!(!support::is_shareable(&p));
        drop(guard);
    })
    .join()
    .unwrap();
    support::assert_free(&path);
}

#[test]
fn errors_convert_to_io_errors_of_fitting_kinds() {
    let path = std::path::PathBuf::from("/run/app.lock");
    let os = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let cases = [
        (
            Error::RemoteFs {
                path: path.clone(),
                fs: flockguard::classify(0x6969).unwrap(),
            },
            io::ErrorKind::Unsupported,
        ),
        (
            Error::WouldBlock {
                path: path.clone(),
                mode: FlockMode::Exclusive,
                shared_lost: false,
            },
            io::ErrorKind::WouldBlock,
        ),
        (
            Error::Open {
                path: path.clone(),
                source: os(rustix::io::Errno::NOENT),
            },
            io::ErrorKind::NotFound,
        ),
        (
            Error::Open {
                path: path.clone(),
                source: os(rustix::io::Errno::ACCESS),
            },
            io::ErrorKind::PermissionDenied,
        ),
        (
            Error::NotRegularFile {
                path: path.clone(),
                kind: FileKind::Fifo,
            },
            io::ErrorKind::InvalidInput,
        ),
        (
            Error::Symlink { path: path.clone() },
            io::ErrorKind::InvalidInput,
        ),
        (
            Error::DanglingSymlink { path: path.clone() },
            io::ErrorKind::NotFound,
        ),
        (
            Error::NotOwner {
                path: path.clone(),
                owner: 1,
                current: 2,
            },
            io::ErrorKind::PermissionDenied,
        ),
        (
            Error::Flock {
                path: path.clone(),
                mode: FlockMode::Shared,
                source: os(rustix::io::Errno::NOLCK),
            },
            os(rustix::io::Errno::NOLCK).kind(),
        ),
    ];
    for (err, kind) in cases {
        let message = err.to_string();
        assert_eq!(err.kind(), kind, "{err:?}");
        assert_eq!(err.path(), path);
        let io_err = io::Error::from(err);
        assert_eq!(io_err.kind(), kind);
        assert_eq!(io_err.to_string(), message);
        let inner = io_err.get_ref().expect("wrapped error");
        assert!(inner.downcast_ref::<Error>().is_some());
    }
}

#[test]
fn try_lock_error_converts_to_error_and_io_error() {
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let attempt = || -> Result<LockGuard<Shared>, Error> {
        let file = LockFile::open(&path)?;
        Ok(file.try_lock::<Shared>()?)
    };
    assert!(attempt().unwrap_err().is_would_block());
    let io_err: io::Error = LockFile::open(&path)
        .unwrap()
        .try_lock::<Shared>()
        .unwrap_err()
        .into();
    assert_eq!(io_err.kind(), io::ErrorKind::WouldBlock);
    drop(held);
}

#[test]
fn any_guard_for_a_mode_chosen_at_run_time() {
    let (_dir, path) = support::lock_path();
    let writer = try_flock_mode(&path, FlockMode::Exclusive).unwrap();
    assert!(matches!(writer, AnyGuard::Exclusive(_)));
    assert_eq!(writer.mode(), FlockMode::Exclusive);
    assert_eq!(writer.path(), Some(path.as_path()));
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));
    let err = try_flock_mode(&path, FlockMode::Shared).unwrap_err();
    assert!(matches!(
        err,
        Error::WouldBlock {
            mode: FlockMode::Shared,
            ..
        }
    ));

    let file = writer.unlock().unwrap();
    assert_eq!(held_through(&file), None);
    let reader = file
        .lock_any(FlockMode::Shared, flockguard::Wait::forever())
        .unwrap();
    assert!(matches!(reader, AnyGuard::Shared(_)));
    let second = block_flock_mode(&path, FlockMode::Shared).unwrap();
    assert_eq!(second.mode(), FlockMode::Shared);
    let err = LockFile::open(&path)
        .unwrap()
        .lock_any(FlockMode::Exclusive, flockguard::Wait::none())
        .unwrap_err();
    assert!(err.is_would_block());
    drop((reader, second));

    let typed: AnyGuard = try_flock::<Shared>(&path).unwrap().into();
    assert_eq!(typed.mode(), FlockMode::Shared);
    drop(typed);
    let typed: AnyGuard = block_flock::<Exclusive>(&path).unwrap().into();
    assert_eq!(typed.mode(), FlockMode::Exclusive);
    assert!(!support::is_shareable(&path));
}

#[test]
fn materialize_creates_without_locking() {
    let (_dir, path) = support::lock_path();
    materialize(&path).unwrap();
    assert!(path.is_file());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    expect_locks(&path, &[]);
    support::assert_free(&path);

    // Takes no lock at all, so it neither waits for nor fails on a holder.
    let held = try_flock::<Exclusive>(&path).unwrap();
    materialize(&path).unwrap();
    expect_locks(&path, &[WRITE]);
    drop(held);
}

#[test]
fn debug_output_names_path_mode_and_descriptor() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Shared>(&path).unwrap();
    let text = format!("{guard:?}");
    assert!(text.contains("test.lock"), "{text}");
    assert!(text.contains("Shared"), "{text}");
    assert!(
        text.contains(&format!("fd: {}", guard.as_raw_fd())),
        "{text}"
    );
    let file = guard.unlock().unwrap();
    assert!(format!("{file:?}").contains("test.lock"));
}
