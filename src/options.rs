//! [`LockOptions`]: how a lock file is opened, and the checks applied to it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::fs_policy::{classify, magic_of_mount};
use crate::lockfile::LockFile;
use crate::sys::{self, FileId, Kind, OpenHow};

/// What to do when the lock file is on a filesystem where `flock(2)` does
/// not reliably serialize processes (see [`classify`](crate::classify)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RemoteFs {
    /// Refuse with [`Error::RemoteFs`]. The default.
    #[default]
    Reject,
    /// Lock anyway; the caller accepts whatever the filesystem does.
    Allow,
}

/// How many times a create race (the file appears or vanishes between two
/// opens) is retried before the last error is returned.
const CREATE_RACE_RETRIES: u32 = 16;

/// Options for opening a lock file; a builder in the style of
/// [`std::fs::OpenOptions`].
///
/// The defaults: create the file if missing with permissions `0o666` before
/// the umask, never truncate, refuse symbolic links, refuse directories,
/// refuse remote filesystems, do not create parent directories.
///
/// # Examples
/// ```
/// use flockguard::{Exclusive, LockOptions, RemoteFs};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let file = LockOptions::new().mode(0o644).remote_fs(RemoteFs::Reject).open(&path)?;
/// let guard = file.lock::<Exclusive>()?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LockOptions {
    remote_fs: RemoteFs,
    perms: u32,
    follow_symlinks: bool,
    create: bool,
    create_dirs: bool,
    allow_directory: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOptions {
    /// The default options.
    pub const fn new() -> Self {
        LockOptions {
            remote_fs: RemoteFs::Reject,
            perms: 0o666,
            follow_symlinks: false,
            create: true,
            create_dirs: false,
            allow_directory: false,
        }
    }

    /// Whether to refuse or allow filesystems where `flock(2)` is unreliable.
    pub fn remote_fs(&mut self, policy: RemoteFs) -> &mut Self {
        self.remote_fs = policy;
        self
    }

    /// Permission bits for a newly created lock file, before the umask.
    /// Default `0o666`. An existing file keeps its permissions.
    pub fn mode(&mut self, perms: u32) -> &mut Self {
        self.perms = perms & 0o7777;
        self
    }

    /// Whether a symbolic link as the final path component is followed.
    /// Default `false`: the open fails with [`Error::Symlink`].
    pub fn follow_symlinks(&mut self, follow: bool) -> &mut Self {
        self.follow_symlinks = follow;
        self
    }

    /// Whether a missing lock file is created. Default `true`.
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.create = create;
        self
    }

    /// Whether missing parent directories are created (mode `0o777` before
    /// the umask). Default `false`.
    pub fn create_dirs(&mut self, create_dirs: bool) -> &mut Self {
        self.create_dirs = create_dirs;
        self
    }

    /// Whether a directory at the path may be locked (opened read-only), as
    /// `flock(1)` allows. Default `false`: [`Error::NotRegularFile`].
    pub fn allow_directory(&mut self, allow: bool) -> &mut Self {
        self.allow_directory = allow;
        self
    }

    /// The current filesystem policy.
    pub fn remote_fs_policy(&self) -> RemoteFs {
        self.remote_fs
    }

    /// Opens (creating if allowed) the lock file at `path`; takes no lock.
    ///
    /// The file is opened `O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
    /// O_NOCTTY` and never truncated; when write access is refused (a
    /// read-only filesystem, or a file owned by someone else without write
    /// permission) an existing file is opened read-only instead, which
    /// `flock(2)` accepts. Then the file type and the filesystem are checked
    /// on the open descriptor; on Linux 6.8 and later the filesystem's
    /// verdict is remembered per mount, so a file on a mount seen before
    /// costs one `statx(2)` for both checks. When the open is refused after
    /// this call created the file, the file is removed again.
    ///
    /// # Errors
    /// [`Error::Open`], [`Error::Symlink`], [`Error::DanglingSymlink`],
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`];
    /// [`Error::InvalidPath`] for an empty path, a NUL byte, or a trailing
    /// `/` (unless [`allow_directory`](Self::allow_directory));
    /// [`Error::Missing`] when the file is absent and
    /// [`create(false)`](Self::create) is set.
    ///
    /// # References
    /// - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html)
    /// - [statx(2)](https://man7.org/linux/man-pages/man2/statx.2.html)
    /// - [statfs(2)](https://man7.org/linux/man-pages/man2/statfs.2.html)
    pub fn open(&self, path: impl AsRef<Path>) -> Result<LockFile, Error> {
        let path = path.as_ref();
        self.validate(path)?;
        let (fd, created) = self.open_fd(path)?;
        match self.check(fd.as_fd(), path) {
            Ok(()) => Ok(LockFile::new(File::from(fd), Some(path.into()))),
            Err(err) => {
                if created {
                    remove_if_same(path, fd);
                }
                Err(err)
            }
        }
    }

    /// Adopts a file the caller already opened; takes no lock.
    ///
    /// The same file-type and filesystem checks as [`open`](Self::open)
    /// apply, and `FD_CLOEXEC` is set on the descriptor if it was clear.
    /// The resulting [`LockFile`] has no path.
    ///
    /// # Errors
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]; the
    /// path in the error is the one `/proc/self/fd` reports.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let file = std::fs::File::create(&path).unwrap();
    /// let guard = LockOptions::new().adopt(file)?.try_lock::<Exclusive>()?;
    /// assert!(guard.path().is_none());
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn adopt(&self, file: File) -> Result<LockFile, Error> {
        let stat_err = |source| Error::Stat {
            path: display_path(&file),
            source,
        };
        if !sys::is_cloexec(file.as_fd()).map_err(stat_err)? {
            sys::set_cloexec(file.as_fd()).map_err(stat_err)?;
        }
        self.check(file.as_fd(), &display_path(&file))?;
        Ok(LockFile::new(file, None))
    }

    /// Whether a symbolic link as the final component is followed.
    pub(crate) fn follows_symlinks(&self) -> bool {
        self.follow_symlinks
    }

    /// Refuses paths `open(2)` would reject with a misleading error: empty
    /// (`ENOENT`), with a NUL byte (`EINVAL`), or with a trailing `/`
    /// (`EISDIR` even when nothing is there).
    fn validate(&self, path: &Path) -> Result<(), Error> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let reason = if bytes.is_empty() {
            "the path is empty"
        } else if bytes.contains(&0) {
            "the path contains a NUL byte"
        } else if bytes.ends_with(b"/") && !self.allow_directory {
            "the path ends with `/`, so it can only name a directory"
        } else {
            return Ok(());
        };
        Err(Error::InvalidPath {
            path: path.into(),
            reason,
        })
    }

    /// File-type check and filesystem policy: `fstat` alone under
    /// [`RemoteFs::Allow`]; otherwise one `statx` for the type and the mount,
    /// and `fstatfs` only for a mount not seen before (or on kernels without
    /// unique mount ids).
    fn check(&self, fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
        let stat_err = |source| Error::Stat {
            path: path.into(),
            source,
        };
        let reject = self.remote_fs == RemoteFs::Reject;
        let (kind, mount) = match reject.then(|| sys::kind_and_mount(fd)) {
            Some(Ok(found)) => found,
            _ => (sys::fstat(fd).map_err(stat_err)?.kind, None),
        };
        match kind {
            Kind::RegularFile => {}
            Kind::Directory if self.allow_directory => {}
            other => {
                return Err(Error::NotRegularFile {
                    path: path.into(),
                    kind: kind_name(other),
                })
            }
        }
        if reject {
            let magic = match mount {
                Some(mount) => magic_of_mount(mount, || sys::fs_magic(fd)),
                None => sys::fs_magic(fd),
            }
            .map_err(stat_err)?;
            if let Some(fs) = classify(magic) {
                return Err(Error::RemoteFs {
                    path: path.into(),
                    fs: fs.name,
                    magic,
                });
            }
        }
        Ok(())
    }

    /// Opens the path; reports whether this call created the file.
    fn open_fd(&self, path: &Path) -> Result<(OwnedFd, bool), Error> {
        let open_err = |source| Error::Open {
            path: path.into(),
            source,
        };
        let mut how = OpenHow {
            create_excl: false,
            follow_symlinks: self.follow_symlinks,
            read_only: false,
            directory: false,
            perms: self.perms,
        };
        let mut last = None;
        for _ in 0..CREATE_RACE_RETRIES {
            // Open without O_CREAT first: the common case, and the only way
            // to know afterwards whether this call created the file.
            let err = match sys::open(path, how) {
                Ok(fd) => return Ok((fd, false)),
                Err(err) => err,
            };
            if err.kind() == io::ErrorKind::NotFound && self.create {
                match sys::open(
                    path,
                    OpenHow {
                        create_excl: true,
                        ..how
                    },
                ) {
                    Ok(fd) => return Ok((fd, true)),
                    // Created by someone else meanwhile, or a dangling symlink.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if sys::lstat(path).is_ok_and(|id| id.kind == Kind::Symlink) {
                            return Err(if self.follow_symlinks {
                                Error::DanglingSymlink { path: path.into() }
                            } else {
                                Error::Symlink { path: path.into() }
                            });
                        }
                        last = Some(e);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.create_dirs => {
                        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                            std::fs::create_dir_all(parent).map_err(open_err)?;
                        }
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(self.explain_open_error(path, e)),
                }
            }
            if sys::is_eisdir(&err) && self.allow_directory {
                how.directory = true;
                last = Some(err);
                continue;
            }
            if sys::is_write_refused(&err) && !how.read_only && !how.directory {
                // flock(2) needs no write access: an existing file that may
                // not be written is still lockable through a read-only open.
                match sys::open(
                    path,
                    OpenHow {
                        read_only: true,
                        ..how
                    },
                ) {
                    Ok(fd) => return Ok((fd, false)),
                    // Missing: the read-write error (EROFS, EACCES) says why
                    // it cannot be created. Otherwise the read-only error
                    // says why the existing file cannot be opened.
                    Err(ro) if ro.kind() == io::ErrorKind::NotFound => {
                        return Err(self.explain_open_error(path, err))
                    }
                    Err(ro) => return Err(self.explain_open_error(path, ro)),
                }
            }
            return Err(self.explain_open_error(path, err));
        }
        Err(open_err(
            last.unwrap_or_else(|| io::Error::from(io::ErrorKind::Other)),
        ))
    }

    /// Turns a failed `open(2)` into the most specific error.
    fn explain_open_error(&self, path: &Path, err: io::Error) -> Error {
        if sys::is_eloop(&err)
            && !self.follow_symlinks
            && sys::lstat(path).is_ok_and(|id| id.kind == Kind::Symlink)
        {
            return Error::Symlink { path: path.into() };
        }
        if sys::is_eisdir(&err) {
            return Error::NotRegularFile {
                path: path.into(),
                kind: "directory",
            };
        }
        if err.kind() == io::ErrorKind::NotFound && !self.create && parent_exists(path) {
            return Error::Missing { path: path.into() };
        }
        if sys::is_enxio(&err) {
            if let Ok(id) = sys::lstat(path) {
                return Error::NotRegularFile {
                    path: path.into(),
                    kind: kind_name(id.kind),
                };
            }
        }
        Error::Open {
            path: path.into(),
            source: err,
        }
    }
}

/// Whether the directory that would hold `path` exists.
fn parent_exists(path: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sys::lstat(parent).is_ok()
}

/// Closes `fd`, then removes `path` if it still names the inode `fd` had.
///
/// Closing first matters on FUSE, whose servers hide a file unlinked while
/// open as `.fuse_hidden*` instead of removing it.
fn remove_if_same(path: &Path, fd: OwnedFd) {
    let Ok(ours) = sys::fstat(fd.as_fd()) else {
        return;
    };
    drop(fd);
    let same = |id: FileId| id.dev == ours.dev && id.ino == ours.ino;
    if sys::lstat(path).is_ok_and(same) {
        // Best effort: the refusal is the error the caller sees.
        let _ = sys::unlink(path);
    }
}

/// The path to name in errors for a descriptor without a known path.
pub(crate) fn display_path(fd: impl AsFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    let fd = fd.as_fd();
    sys::fd_path(fd).unwrap_or_else(|| PathBuf::from(format!("<fd {}>", fd.as_raw_fd())))
}

pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::RegularFile => "regular file",
        Kind::Directory => "directory",
        Kind::Symlink => "symbolic link",
        Kind::Fifo => "FIFO",
        Kind::Socket => "socket",
        Kind::CharacterDevice => "character device",
        Kind::BlockDevice => "block device",
        _ => "special file",
    }
}
