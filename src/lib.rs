//! Typed RAII guards for Linux `flock(2)` locks.
//!
//! A lock is held by a [`LockGuard<M>`] that owns its file descriptor; the
//! mode is part of the type ([`LockGuard<Exclusive>`], [`LockGuard<Shared>`]),
//! so an API can demand `&LockGuard<Exclusive>` and the compiler refuses a
//! shared guard. Dropping the guard releases the lock at once.
//!
//! ```
//! use flockguard::{try_flock, Exclusive, Shared};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! let writer = try_flock::<Exclusive>(&path)?;
//! assert!(try_flock::<Shared>(&path).unwrap_err().is_would_block());
//! let reader = writer.downgrade()?;          // never lets go
//! let second = try_flock::<Shared>(&path)?;  // readers share
//! # drop((reader, second));
//! # Ok::<(), flockguard::Error>(())
//! ```
//!
//! A shared guard has no `downgrade` and is not `Write`:
//!
//! ```compile_fail
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let reader = flockguard::try_flock::<flockguard::Shared>(path).unwrap();
//! let _ = reader.downgrade();
//! ```
//!
//! ```compile_fail
//! use std::io::Write;
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let mut reader = flockguard::try_flock::<flockguard::Shared>(path).unwrap();
//! reader.write_all(b"no");
//! ```
//!
//! Only a shared guard upgrades, and only an exclusive one truncates or
//! removes the file:
//!
//! ```compile_fail
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let writer = flockguard::try_flock::<flockguard::Exclusive>(path).unwrap();
//! let _ = writer.try_upgrade();
//! ```
//!
//! ```compile_fail
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let writer = flockguard::try_flock::<flockguard::Exclusive>(path).unwrap();
//! let _ = writer.upgrade();
//! ```
//!
//! ```compile_fail
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let reader = flockguard::try_flock::<flockguard::Shared>(path).unwrap();
//! let _ = reader.set_len(0);
//! ```
//!
//! ```compile_fail
//! # let path = std::path::Path::new("/tmp/x.lock");
//! let reader = flockguard::try_flock::<flockguard::Shared>(path).unwrap();
//! let _ = reader.unlink_and_unlock();
//! ```
//!
//! # Every way to take a lock
//! A path goes through [`LockOptions::open`] (or [`LockFile::open`] with
//! the defaults) to a [`LockFile`], and a `File` the caller opened goes
//! through [`LockOptions::adopt`]; the file's acquisitions combine with
//! every option. The shortcuts open with the defaults, creating the file
//! when it is missing (`LockOptions::create(false)` locks only a file that
//! exists).
//!
//! | call | waits | mode | on failure |
//! |---|---|---|---|
//! | [`LockFile::try_lock`] | never | type | [`LockError`] with the file |
//! | [`LockFile::lock`] | in `flock(2)` | type | [`LockError`] |
//! | [`LockFile::lock_timeout`] | at most a `Duration` | type | [`LockError`] |
//! | [`LockFile::lock_until`] | until an `Instant` | type | [`LockError`] |
//! | [`LockFile::lock_with`] | a [`Wait`]: none, kernel, deadline; notice, [`CancelToken`], context | type | [`LockError`] |
//! | [`LockFile::lock_any`] | a [`Wait`] | [`FlockMode`] value | [`LockError`] |
//! | [`try_flock`] | never | type | [`Error`] |
//! | [`block_flock`] | in `flock(2)` | type | [`Error`] |
//! | [`flock_timeout`] | at most a `Duration` | type | [`Error`] |
//!
//! Options ([`LockOptions`]): [`RemoteFs`], create, create_dirs,
//! follow_symlinks, allow_directory, permissions, [`Access`] (read-write or
//! read-only as `flock(1)`), and verify_path for lock files that are
//! removed. Conversions: [`LockGuard::downgrade`], [`LockGuard::upgrade`],
//! [`LockGuard::try_upgrade`]; release: [`LockGuard::unlock`] or drop.
//!
//! # What `flock(2)` locks
//! A lock belongs to an *open file description* (one `open(2)`), not to a
//! process or a file descriptor. Two opens of the same path contend, even in
//! one process; `dup(2)` and `fork(2)` share the description and therefore
//! the lock. A lock belongs to the process that opened its [`LockFile`]:
//! in a forked child, guards refuse to change it ([`Error::NotOwner`]) and
//! their drop only closes. Every descriptor this crate creates has
//! `FD_CLOEXEC`, so executed programs never inherit a lock.
//!
//! # Mode transitions
//! | call | [`LockKind::Flock`] | `LockKind::Ofd` |
//! |---|---|---|
//! | [`LockGuard::downgrade`] | exclusive → shared without letting go | the same |
//! | [`LockGuard::upgrade`] | drops shared, then waits for exclusive holding nothing | waits holding shared; a second upgrader fails with [`Error::UpgradeDeadlock`] instead of deadlocking |
//! | [`LockGuard::try_upgrade`] | on contention the shared lock is **lost**; the error returns an unlocked [`LockFile`] | the same (the shared lock is let go) |
//! | [`LockGuard::try_upgrade_in_place`] | refused with [`Error::NoAtomicUpgrade`], nothing changed | on contention the error returns the shared guard, still held |
//! | [`LockGuard::unlock`] | `LOCK_UN`, descriptor kept for reuse | `F_UNLCK` |
//! | drop | `LOCK_UN` then `close(2)` in the owning process; `close(2)` alone in a fork child | `F_UNLCK`, then the same |
//!
//! # Errors
//! One enum, [`Error`], whose messages name the path and the mode, with the
//! OS error as the source ([`Error::os_error`] gives the `errno`). Every
//! failure that leaves the descriptor usable hands it back in a
//! [`LockError<LockFile>`], which `?` converts to [`Error`] or
//! [`std::io::Error`].
//!
//! # Filesystems
//! On NFS, SMB, CephFS, AFS, FUSE, 9p and cluster filesystems `flock(2)`
//! may not serialize processes at all. Such paths are refused with
//! [`Error::RemoteFs`] unless [`RemoteFs::Allow`] is chosen; see
//! [`classify`].
//!
//! # Waiting with a deadline, and who holds the lock
//! A timed wait sleeps on the holder's close (inotify) and retries with a
//! bounded back-off otherwise. [`holders`] lists the processes holding or
//! waiting for a lock, as [`Error::Timeout`] does:
//!
//! ```
//! use std::time::Duration;
//! use flockguard::{flock_timeout, Exclusive};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! let first = flock_timeout::<Exclusive>(&path, Duration::from_secs(5))?;
//! let err = flock_timeout::<Exclusive>(&path, Duration::from_millis(50)).unwrap_err();
//! assert!(err.is_timeout());
//! assert_eq!(err.holders()[0].pid, std::process::id());
//! # drop(first);
//! # Ok::<(), flockguard::Error>(())
//! ```
//!
//! # Security
//! Put lock files where only the users who share the lock can create
//! files: `$XDG_RUNTIME_DIR` or a directory of the service's own, not a
//! world-writable directory such as `/tmp`, where another user can create
//! the file first (and hold its lock forever) or plant a symbolic link.
//! Symbolic links, FIFOs, sockets and devices at the path are refused by
//! default. Anyone who can open a file for reading can lock it, so a lock
//! file readable by others can be held against you. See `docs/security.md`.
//!
//! # Platform
//! Linux only; the crate does not compile elsewhere. Kernels from 5.8 on
//! give the mount id the holder diagnostics use; from 6.8 on, one `statx(2)`
//! checks type and filesystem (older kernels use `fstat` and `fstatfs`).
//!
//! # Features
//! - `cli`: the `flockguard` command, a drop-in for util-linux `flock(1)`.
//! - `tokio`: the `flockguard::tokio` module, async acquisition that never
//!   blocks an executor thread.
//! - `postgres`: the module `pg`, the same typed guards over PostgreSQL
//!   advisory locks for processes on several hosts, with fencing tokens,
//!   blocking (`PgLock`) and async (`AsyncPgLock`), over TLS with libpq's
//!   `sslmode` (adds `tokio-postgres`, `tokio-rustls` with `ring`, `sha2`).
//! - `ofd`: `LockKind::Ofd`, open file description locks
//!   (`F_OFD_SETLK`) that interoperate with the `fcntl(2)` and `lockf(3)`
//!   locks of other programs (adds `nix` for a safe `fcntl`).
//!
//! The default build depends on `rustix` and `thiserror` only.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms)]

#[cfg(not(target_os = "linux"))]
compile_error!("flockguard supports Linux only: it relies on flock(2) semantics, /proc/locks and inotify as Linux provides them");

// Everything else is Linux only; the compile_error above is then the one
// message a build on another target shows.
#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod fs_policy;
#[cfg(target_os = "linux")]
mod holder;
#[cfg(target_os = "linux")]
mod holders;
#[cfg(target_os = "linux")]
mod kind;
#[cfg(target_os = "linux")]
mod lock;
#[cfg(target_os = "linux")]
mod mode;
#[cfg(target_os = "linux")]
mod open;
#[cfg(all(target_os = "linux", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod pg;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(all(target_os = "linux", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
#[cfg(target_os = "linux")]
mod wait;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/migrating.md")]
struct MigratingDoctests;

#[cfg(target_os = "linux")]
pub use crate::{
    error::{Error, FileKind, LockError, PathProblem},
    fs_policy::{classify, UnreliableFs},
    holder::{Holder, HolderKind, LockProcess, PidStatus},
    holders::holders,
    kind::{ByteRange, LockKind},
    lock::{
        block_flock, flock_timeout, materialize, try_flock, AnyGuard, LockFile, LockGuard,
        LockOptions,
    },
    mode::{Exclusive, FlockMode, Mode, Shared},
    open::{Access, RemoteFs},
    wait::{CancelToken, Wait},
};
