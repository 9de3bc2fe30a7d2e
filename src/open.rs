//! Opening a lock file: flags, creation, the type check and the filesystem
//! policy. A service of the core: [`open`] and [`adopt`] return a checked
//! descriptor, and a refused file that this call created is removed again.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, FileKind, PathProblem};
use crate::fs_policy::{
    classify, magic_of_mount, nfs_server_locks, UnreliableFs, NFS_LOCAL_RECORD_LOCKS, NFS_MAGIC,
    NFS_UNKNOWN_LOCAL_LOCK,
};
use crate::sys::{self, FileId, Kind, OpenHow};

/// Whether lock files on filesystems where `flock(2)` is unreliable are
/// refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RemoteFs {
    /// Refuse them with [`Error::RemoteFs`] (the default).
    #[default]
    Reject,
    /// Lock them anyway; the caller accepts that other hosts, or even other
    /// processes, may not be excluded.
    Allow,
}

/// How the lock file is opened: for writing, or read-only as `flock(1)`
/// opens it.
///
/// `flock(2)` needs no write access. A read-write descriptor lets an
/// exclusive guard [`Write`](std::io::Write) to the file; a read-only one
/// has none of the side effects of a writer: it can lock a running
/// executable, a read lease does not conflict with it, it does not keep a
/// filesystem from being remounted read-only, and its close raises
/// `IN_CLOSE_NOWRITE`, which file watchers do not read as a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read-write; an existing file that may not be written is opened
    /// read-only instead (the default).
    #[default]
    PreferWrite,
    /// Read-write, or [`Error::WriteRefused`].
    ReadWrite,
    /// Read-only, as `flock(1)` opens it.
    ReadOnly,
}

/// How [`open`] treats a path; the value behind
/// [`LockOptions`](crate::LockOptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenSpec {
    pub(crate) remote_fs: RemoteFs,
    pub(crate) permissions: u32,
    pub(crate) follow_symlinks: bool,
    pub(crate) create: bool,
    pub(crate) create_dirs: bool,
    pub(crate) allow_directory: bool,
    pub(crate) access: Access,
    /// The locks taken are record locks (OFD), which an NFS server
    /// arbitrates unless the mount keeps them local.
    pub(crate) record_locks: bool,
}

impl OpenSpec {
    pub(crate) const DEFAULT: OpenSpec = OpenSpec {
        remote_fs: RemoteFs::Reject,
        permissions: 0o666,
        follow_symlinks: false,
        create: true,
        create_dirs: false,
        allow_directory: false,
        access: Access::PreferWrite,
        record_locks: false,
    };
}

/// A checked descriptor.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: File,
    /// Opened for writing.
    pub(crate) writable: bool,
}

/// Attempts at opening a path whose file appears and disappears under us.
const CREATE_RACE_RETRIES: u32 = 16;

/// Opens `path` for locking: validates it, opens or creates it, checks its
/// type and filesystem. A file this call created and then refused is
/// closed and unlinked.
// Inlined into the caller with its error paths out of line, so that the
// open and the caller's `flock(2)` sit in one frame (docs/benchmarks.md).
#[inline(always)]
pub(crate) fn open(path: &Path, spec: &OpenSpec) -> Result<Opened, Error> {
    validate(path, spec)?;
    let how = OpenHow {
        create_excl: false,
        follow_symlinks: spec.follow_symlinks,
        read_only: spec.access == Access::ReadOnly,
        directory: false,
        perms: spec.permissions,
    };
    // Open without O_CREAT first: the common case, and the only way to
    // know afterwards whether this call created the file.
    let (fd, created, writable) = match sys::open(path, how) {
        Ok(fd) => (fd, false, !how.read_only),
        Err(err) => open_fd(path, spec, how, err)?,
    };
    match check(fd.as_fd(), path, spec) {
        Ok(()) => Ok(Opened {
            file: File::from(fd),
            writable,
        }),
        Err(err) => Err(discard_refused(path, fd, created, err)),
    }
}

/// A refused file: closed, and unlinked if this call created it.
#[cold]
#[inline(never)]
fn discard_refused(path: &Path, fd: OwnedFd, created: bool, err: Error) -> Error {
    if created {
        remove_if_same(path, fd);
    }
    err
}

/// Checks a caller's open file as [`open`] checks a path, and sets
/// `FD_CLOEXEC` on it; returns whether it is open for writing.
pub(crate) fn adopt(file: &File, spec: &OpenSpec) -> Result<bool, Error> {
    let stat_err = |source| Error::Stat {
        path: display_path(file),
        source,
    };
    let writable = sys::is_writable(file.as_fd()).map_err(stat_err)?;
    check(file.as_fd(), &display_path(file), spec)?;
    if spec.access == Access::ReadWrite && !writable {
        return Err(Error::ReadOnly {
            path: display_path(file),
        });
    }
    if !sys::is_cloexec(file.as_fd()).map_err(stat_err)? {
        sys::set_cloexec(file.as_fd()).map_err(stat_err)?;
    }
    Ok(writable)
}

#[inline]
fn validate(path: &Path, spec: &OpenSpec) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let reason = if bytes.is_empty() {
        PathProblem::Empty
    } else if bytes.contains(&0) {
        PathProblem::Nul
    } else if bytes.ends_with(b"/") && !spec.allow_directory {
        PathProblem::TrailingSlash
    } else {
        return Ok(());
    };
    Err(invalid_path_error(path, reason))
}

#[cold]
#[inline(never)]
fn invalid_path_error(path: &Path, reason: PathProblem) -> Error {
    Error::InvalidPath {
        path: path.into(),
        reason,
    }
}

/// The type check and, under [`RemoteFs::Reject`], the filesystem check:
/// one `statx(2)`, and `fstatfs(2)` once per mount.
#[inline]
fn check(fd: BorrowedFd<'_>, path: &Path, spec: &OpenSpec) -> Result<(), Error> {
    let reject = spec.remote_fs == RemoteFs::Reject;
    let (kind, mount) = match reject.then(|| sys::kind_and_mount(fd)) {
        Some(Ok(found)) => found,
        _ => (sys::fstat(fd).map_err(|e| stat_error(path, e))?.kind, None),
    };
    match kind {
        Kind::RegularFile => {}
        Kind::Directory if spec.allow_directory => {}
        other => return Err(not_regular_error(path, other)),
    }
    if reject {
        let magic = match mount {
            Some(mount) => magic_of_mount(mount, || sys::fs_magic(fd)),
            None => sys::fs_magic(fd),
        }
        .map_err(|e| stat_error(path, e))?;
        if let Some(fs) = classify(magic) {
            if !(spec.record_locks && fs.magic == NFS_MAGIC) {
                return Err(remote_fs_error(path, fs));
            }
            if let Some(fs) = nfs_refusal(fd) {
                return Err(remote_fs_error(path, fs));
            }
        }
    }
    Ok(())
}

/// For OFD locks on NFS: `None` when the server arbitrates them (the
/// mount's `local_lock` is `none` or `flock`), else why not.
#[cold]
#[inline(never)]
fn nfs_refusal(fd: BorrowedFd<'_>) -> Option<&'static UnreliableFs> {
    let server = sys::statx_fd(fd)
        .ok()
        .and_then(|id| id.mnt_id)
        .zip(sys::proc_self_mountinfo().ok())
        .and_then(|(mnt_id, info)| nfs_server_locks(&info, mnt_id));
    match server {
        Some(true) => None,
        Some(false) => Some(&NFS_LOCAL_RECORD_LOCKS),
        None => Some(&NFS_UNKNOWN_LOCAL_LOCK),
    }
}

#[cold]
#[inline(never)]
fn stat_error(path: &Path, source: io::Error) -> Error {
    Error::Stat {
        path: path.into(),
        source,
    }
}

#[cold]
#[inline(never)]
fn not_regular_error(path: &Path, kind: Kind) -> Error {
    Error::NotRegularFile {
        path: path.into(),
        kind: file_kind(kind),
    }
}

#[cold]
#[inline(never)]
fn remote_fs_error(path: &Path, fs: &'static UnreliableFs) -> Error {
    Error::RemoteFs {
        path: path.into(),
        fs,
    }
}

/// After the first open (`how`, without `O_CREAT`) failed with `first`:
/// creates the file, falls back to read-only or retries as the error
/// says. Returns the descriptor, whether this call created the file, and
/// whether it is open for writing.
#[cold]
#[inline(never)]
fn open_fd(
    path: &Path,
    spec: &OpenSpec,
    mut how: OpenHow,
    first: io::Error,
) -> Result<(OwnedFd, bool, bool), Error> {
    let open_err = |source| Error::Open {
        path: path.into(),
        source,
    };
    let mut last = None;
    let mut first = Some(first);
    for _ in 0..CREATE_RACE_RETRIES {
        let opened = match first.take() {
            Some(err) => lease_retry(path, how, err),
            None => open_leased(path, how),
        };
        let err = match opened {
            Ok(fd) => return Ok((fd, false, !how.read_only && !how.directory)),
            Err(err) => err,
        };
        if err.kind() == io::ErrorKind::NotFound && spec.create {
            let excl = OpenHow {
                create_excl: true,
                ..how
            };
            match sys::open(path, excl) {
                Ok(fd) => return Ok((fd, true, !how.read_only)),
                // Created by someone else meanwhile, or a dangling symlink.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if sys::lstat(path).is_ok_and(|id| id.kind == Kind::Symlink) {
                        return Err(if spec.follow_symlinks {
                            Error::DanglingSymlink { path: path.into() }
                        } else {
                            Error::Symlink { path: path.into() }
                        });
                    }
                    last = Some(e);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && spec.create_dirs => {
                    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        sys::create_dir_all(parent).map_err(open_err)?;
                    }
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(explain_open_error(path, spec, e)),
            }
        }
        if sys::is_eisdir(&err) && spec.allow_directory {
            how.directory = true;
            last = Some(err);
            continue;
        }
        if sys::is_write_refused(&err) && !how.read_only && !how.directory {
            if spec.access == Access::ReadWrite {
                return Err(match sys::lstat(path) {
                    Ok(_) => Error::WriteRefused {
                        path: path.into(),
                        source: err,
                    },
                    Err(_) => explain_open_error(path, spec, err),
                });
            }
            // flock(2) needs no write access: an existing file that may
            // not be written is still lockable through a read-only open.
            let read_only = OpenHow {
                read_only: true,
                ..how
            };
            match open_leased(path, read_only) {
                Ok(fd) => return Ok((fd, false, false)),
                // Missing: the read-write error (EROFS, EACCES) says why
                // it cannot be created. Otherwise the read-only error
                // says why the existing file cannot be opened.
                Err(ro) if ro.kind() == io::ErrorKind::NotFound => {
                    return Err(explain_open_error(path, spec, err))
                }
                Err(ro) => return Err(explain_open_error(path, spec, ro)),
            }
        }
        return Err(explain_open_error(path, spec, err));
    }
    Err(open_err(
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::Other)),
    ))
}

/// [`sys::open`], retried without `O_NONBLOCK` when a lease makes the
/// non-blocking open fail: only regular files carry leases, and a blocking
/// open waits for the lease holder to let go, as any other open would.
fn open_leased(path: &Path, how: OpenHow) -> io::Result<OwnedFd> {
    sys::open(path, how).or_else(|err| lease_retry(path, how, err))
}

/// After [`sys::open`] failed with `err`: the blocking open if a lease
/// refused it, else `err`.
fn lease_retry(path: &Path, how: OpenHow, err: io::Error) -> io::Result<OwnedFd> {
    if sys::is_contention(&err) && sys::lstat(path).is_ok_and(|id| id.kind == Kind::RegularFile) {
        sys::open_blocking(path, how)
    } else {
        Err(err)
    }
}

fn explain_open_error(path: &Path, spec: &OpenSpec, err: io::Error) -> Error {
    if sys::is_eloop(&err)
        && !spec.follow_symlinks
        && sys::lstat(path).is_ok_and(|id| id.kind == Kind::Symlink)
    {
        return Error::Symlink { path: path.into() };
    }
    if sys::is_eisdir(&err) {
        return Error::NotRegularFile {
            path: path.into(),
            kind: FileKind::Directory,
        };
    }
    if err.kind() == io::ErrorKind::NotFound && !spec.create && parent_exists(path) {
        return Error::Missing { path: path.into() };
    }
    if sys::is_enxio(&err) {
        if let Ok(id) = sys::lstat(path) {
            return Error::NotRegularFile {
                path: path.into(),
                kind: file_kind(id.kind),
            };
        }
    }
    Error::Open {
        path: path.into(),
        source: err,
    }
}

fn parent_exists(path: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sys::lstat(parent).is_ok()
}

/// Closes `fd`, then unlinks `path` if it still names the same file.
/// Closing first matters on FUSE, which keeps an unlinked open file as a
/// hidden file.
fn remove_if_same(path: &Path, fd: OwnedFd) {
    let Ok(ours) = sys::fstat(fd.as_fd()) else {
        return;
    };
    drop(fd);
    if sys::lstat(path).is_ok_and(|id| same_file(id, ours)) {
        // Best effort: the refusal is the error the caller sees.
        let _ = sys::unlink(path);
    }
}

/// Whether two identities name one inode.
pub(crate) fn same_file(a: FileId, b: FileId) -> bool {
    a.dev == b.dev && a.ino == b.ino
}

/// Whether `path` still names the file open as `fd` (`false` if it names
/// nothing).
pub(crate) fn names_file(path: &Path, fd: BorrowedFd<'_>) -> Result<bool, Error> {
    let stat_err = |source| Error::Stat {
        path: path.into(),
        source,
    };
    let ours = sys::fstat(fd).map_err(stat_err)?;
    match sys::lstat(path) {
        Ok(id) => Ok(same_file(id, ours)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(stat_err(err)),
    }
}

/// The path the kernel reports for a descriptor, or `<fd N>`.
pub(crate) fn display_path(fd: impl AsFd) -> PathBuf {
    let fd = fd.as_fd();
    sys::fd_path(fd).unwrap_or_else(|| PathBuf::from(format!("<fd {}>", fd.as_raw_fd())))
}

fn file_kind(kind: Kind) -> FileKind {
    match kind {
        Kind::Directory => FileKind::Directory,
        Kind::Symlink => FileKind::Symlink,
        Kind::Fifo => FileKind::Fifo,
        Kind::Socket => FileKind::Socket,
        Kind::CharacterDevice => FileKind::CharacterDevice,
        Kind::BlockDevice => FileKind::BlockDevice,
        _ => FileKind::Other,
    }
}
