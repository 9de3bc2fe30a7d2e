//! Typed RAII guards for Linux `flock(2)` locks.
//!
//! A lock is held by a [`LockGuard<M>`] that owns its file descriptor; the
//! mode is part of the type ([`LockGuard<Exclusive>`], [`LockGuard<Shared>`]),
//! so an API can demand `&LockGuard<Exclusive>` and the compiler refuses a
//! shared guard. Dropping the guard closes the descriptor, which releases the
//! lock.
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
//! # What `flock(2)` locks
//! A lock belongs to an *open file description* (one `open(2)`), not to a
//! process or a file descriptor. Two opens of the same path contend, even in
//! one process; `dup(2)` and `fork(2)` share the description and therefore
//! the lock. Guards refuse to change a lock from a forked child
//! ([`Error::NotOwner`]), and every descriptor this crate creates has
//! `FD_CLOEXEC`, so executed programs never inherit a lock.
//!
//! # Filesystems
//! On NFS, SMB, CephFS, AFS, FUSE, 9p and cluster filesystems `flock(2)`
//! may not serialize processes at all. Such paths are refused with
//! [`Error::RemoteFs`] unless [`RemoteFs::Allow`] is chosen; see
//! [`classify`].
//!
//! # Removing lock files
//! Unlinking a lock file while others may be opening it lets two processes
//! lock different files under one name. To remove lock files safely, remove
//! them only with [`LockGuard::unlink_and_unlock`] and acquire them only with
//! [`block_flock_verified`] / [`try_flock_verified`], which re-check the path
//! after locking; [`LockGuard::verify_path`] tells a holder whether the path
//! still names its file.
//!
//! # Mode transitions
//! | call | what the kernel does |
//! |---|---|
//! | [`LockGuard::downgrade`] | exclusive → shared without letting go |
//! | [`LockGuard::upgrade`] | drops shared, then waits for exclusive holding nothing |
//! | [`LockGuard::try_upgrade`] | on contention the shared lock is **lost**; the error returns an unlocked [`LockFile`] |
//! | [`LockGuard::unlock`] | `LOCK_UN`, descriptor kept for reuse |
//! | drop | `close(2)`: released when the last duplicate closes |
//!
//! # Waiting with a deadline, and who holds the lock
//! [`LockFile::lock_timeout`] and [`flock_timeout`] wait at most a given
//! time; [`LockFile::lock_with`] adds a notice just before waiting, a
//! [`CancelToken`] and a description for the message. The wait wakes on the
//! holder's close (inotify) and retries with a bounded back-off otherwise.
//! [`holders`] lists the processes holding or waiting for a lock, as
//! [`Error::Timeout`] does:
//!
//! ```
//! use std::time::Duration;
//! use flockguard::{flock_timeout, Exclusive};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! let first = flock_timeout::<Exclusive>(&path, Duration::from_secs(5))?;
//! let err = flock_timeout::<Exclusive>(&path, Duration::ZERO).unwrap_err();
//! assert!(err.is_timeout());
//! assert_eq!(err.holders()[0].pid, std::process::id());
//! # drop(first);
//! # Ok::<(), flockguard::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms)]

mod acquire;
mod error;
mod fs_policy;
mod guard;
mod holders;
mod lockfile;
mod mode;
mod options;
mod removal;
mod sys;
mod timed;
mod wait;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use acquire::{block_flock, block_flock_mode, materialize, try_flock, try_flock_mode};
pub use error::Error;
pub use fs_policy::{classify, UnreliableFs};
pub use guard::{AnyGuard, LockGuard, TryUpgradeError};
pub use lockfile::{LockFile, TryLockError};
pub use mode::{Exclusive, FlockMode, Mode, Shared};
pub use options::{LockOptions, RemoteFs};
pub use removal::{block_flock_verified, try_flock_verified};

pub use holders::{holders, Holder, LockProcess, PidStatus};
pub use timed::{flock_timeout, TimeoutError, Wait};
pub use wait::CancelToken;
