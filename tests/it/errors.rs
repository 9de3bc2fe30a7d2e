//! Every error a call lists under `# Errors` is provoked here, and every
//! error provoked is listed: a table of (call, variant, how to provoke it),
//! checked both ways against the docs in `src/`.
//!
//! Most rows run in this process. A row that must fork (a child is not the
//! lock's owner), mount a FUSE filesystem, or make a system call fail runs
//! in a child process of its own; system calls fail there through a
//! seccomp filter on the child's thread, armed after the row's setup.

#[cfg(feature = "ofd")]
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "ofd")]
use flockguard::LockKind;
use flockguard::{
    block_flock, flock_timeout, holders, materialize, try_flock, Access, AnyGuard, ByteRange,
    CancelToken, Error, Exclusive, FlockMode, LockFile, LockGuard, LockOptions, Shared, Wait,
};

use crate::support::{self, Child};

pub const CHILDREN: &[support::Role] = &[("errors::row", |a| child_row(&a[0], &a[1], &a[2]))];

/// What a row's body found: the variant's name, or why it cannot run here.
type Outcome = Result<String, String>;

/// A row's body: given a fresh directory and the function that arms the
/// row's seccomp rules, provokes the error.
type Body = Box<dyn Fn(&Path, &dyn Fn()) -> Outcome>;

/// Where a row runs.
#[derive(Clone, Copy)]
enum Place {
    /// In the test process.
    Here,
    /// In a child process: the body forks or mounts.
    Child,
    /// In a child process whose thread, once armed, fails these calls.
    Seccomp(&'static [Rule]),
}

/// A system call that fails with `errno`, when its argument `arg.0` is
/// `arg.1` (any call of it when `None`).
#[derive(Clone, Copy)]
struct Rule {
    nr: libc::c_long,
    arg: Option<(u32, u32)>,
    errno: i32,
}

const fn fail(nr: libc::c_long, errno: i32) -> Rule {
    Rule {
        nr,
        arg: None,
        errno,
    }
}

const fn fail_with(nr: libc::c_long, arg: u32, value: u32, errno: i32) -> Rule {
    Rule {
        nr,
        arg: Some((arg, value)),
        errno,
    }
}

const EIO: i32 = libc::EIO;
const FSTATFS: &[Rule] = &[fail(libc::SYS_fstatfs, EIO)];
const FLOCK: &[Rule] = &[fail(libc::SYS_flock, EIO)];
const UNLOCK: &[Rule] = &[fail_with(libc::SYS_flock, 1, libc::LOCK_UN as u32, EIO)];
const GETFL: &[Rule] = &[fail_with(libc::SYS_fcntl, 1, libc::F_GETFL as u32, EIO)];
const STATX: &[Rule] = &[fail(libc::SYS_statx, EIO)];
const UNLINK: &[Rule] = &[
    #[cfg(target_arch = "x86_64")]
    fail(libc::SYS_unlink, EIO),
    fail(libc::SYS_unlinkat, EIO),
];
/// `lstat(2)` (rustix: `newfstatat(…, AT_SYMLINK_NOFOLLOW)`) finds nothing.
const LSTAT_MISSING: &[Rule] = &[fail_with(
    libc::SYS_newfstatat,
    3,
    libc::AT_SYMLINK_NOFOLLOW as u32,
    libc::ENOENT,
)];
/// Every `open(2)` is refused as a permission problem.
const OPEN_DENIED: &[Rule] = &[
    #[cfg(target_arch = "x86_64")]
    fail(libc::SYS_open, libc::EACCES),
    fail(libc::SYS_openat, libc::EACCES),
];

struct Row {
    call: &'static str,
    variant: &'static str,
    place: Place,
    body: Body,
}

fn row(
    call: &'static str,
    variant: &'static str,
    place: Place,
    body: impl Fn(&Path, &dyn Fn()) -> Outcome + 'static,
) -> Row {
    Row {
        call,
        variant,
        place,
        body: Box::new(body),
    }
}

/// The variant's name, from its `Debug` form.
fn name(err: &Error) -> String {
    let text = format!("{err:?}");
    text.split([' ', '{', '(']).next().unwrap().to_owned()
}

fn err_of<T: std::fmt::Debug>(result: Result<T, Error>) -> Outcome {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(err) => Ok(name(&err)),
    }
}

fn lock_err_of<T: std::fmt::Debug, H: std::fmt::Debug>(
    result: Result<T, flockguard::LockError<H>>,
) -> Outcome {
    err_of(result.map_err(|e| e.error))
}

fn opts() -> LockOptions {
    LockOptions::new()
}

fn verified() -> LockOptions {
    let mut o = LockOptions::new();
    o.verify_path(true);
    o
}

/// A file opened with `O_PATH`: `flock(2)` refuses it with `EBADF`.
fn o_path(path: &Path) -> LockFile {
    std::fs::write(path, "").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap();
    LockOptions::new().adopt(file).unwrap()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// Replaces the file at `path` with a fresh one, as a cleaner and a
/// re-creator would.
fn replace(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, "").unwrap();
}

// ------------------------------------------------------------- the calls

/// A call that opens a path with the default options.
type Opener = fn(&Path) -> Result<(), Error>;

/// A `LockFile` acquisition, in the mode the row asks for.
type Acquire = fn(LockFile) -> Result<(), Error>;

const SHORT: Duration = Duration::from_millis(10);

fn acquisitions() -> Vec<(&'static str, Acquire)> {
    vec![
        ("LockFile::try_lock", |f| {
            f.try_lock::<Exclusive>().map(drop).map_err(|e| e.error)
        }),
        ("LockFile::lock", |f| {
            f.lock::<Exclusive>().map(drop).map_err(|e| e.error)
        }),
        ("LockFile::lock_timeout", |f| {
            f.lock_timeout::<Exclusive>(SHORT)
                .map(drop)
                .map_err(|e| e.error)
        }),
        ("LockFile::lock_until", |f| {
            f.lock_until::<Exclusive>(Instant::now() + SHORT)
                .map(drop)
                .map_err(|e| e.error)
        }),
        ("LockFile::lock_with", |f| {
            f.lock_with::<Exclusive>(Wait::none())
                .map(drop)
                .map_err(|e| e.error)
        }),
        ("LockFile::lock_any", |f| {
            f.lock_any(FlockMode::Exclusive, Wait::none())
                .map(drop)
                .map_err(|e| e.error)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::lock", |f| {
            block_on(flockguard::tokio::lock::<Exclusive>(f))
                .map(drop)
                .map_err(|e| e.error)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::lock_timeout", |f| {
            block_on(flockguard::tokio::lock_timeout::<Exclusive>(f, SHORT))
                .map(drop)
                .map_err(|e| e.error)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::lock_until", |f| {
            let deadline = Instant::now() + SHORT;
            block_on(flockguard::tokio::lock_until::<Exclusive>(f, deadline))
                .map(drop)
                .map_err(|e| e.error)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::lock_with", |f| {
            block_on(flockguard::tokio::lock_with::<Exclusive>(f, Wait::none()))
                .map(drop)
                .map_err(|e| e.error)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::lock_any", |f| {
            let wait = Wait::none();
            block_on(flockguard::tokio::lock_any(f, FlockMode::Exclusive, wait))
                .map(drop)
                .map_err(|e| e.error)
        }),
    ]
}

/// Runs a future of the async front-end on a current-thread runtime.
#[cfg(feature = "tokio")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn openers() -> Vec<(&'static str, Opener)> {
    vec![
        ("LockOptions::open", |p| {
            LockOptions::new().open(p).map(drop)
        }),
        ("LockFile::open", |p| LockFile::open(p).map(drop)),
        ("materialize", |p| materialize(p)),
        ("try_flock", |p| try_flock::<Exclusive>(p).map(drop)),
        ("block_flock", |p| block_flock::<Exclusive>(p).map(drop)),
        ("flock_timeout", |p| {
            flock_timeout::<Exclusive>(p, SHORT).map(drop)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::block_flock", |p| {
            block_on(flockguard::tokio::block_flock::<Exclusive>(p)).map(drop)
        }),
        #[cfg(feature = "tokio")]
        ("tokio::flock_timeout", |p| {
            block_on(flockguard::tokio::flock_timeout::<Exclusive>(p, SHORT)).map(drop)
        }),
    ]
}

/// The refusals of an open with the default options, for every opener.
fn open_rows(rows: &mut Vec<Row>) {
    for (call, open) in openers() {
        rows.push(row(call, "InvalidPath", Place::Here, move |_, _| {
            err_of(open(Path::new("")))
        }));
        rows.push(row(call, "Open", Place::Here, move |dir, _| {
            err_of(open(&dir.join("missing/app.lock")))
        }));
        rows.push(row(call, "Symlink", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            std::os::unix::fs::symlink(dir.join("target"), &path).unwrap();
            err_of(open(&path))
        }));
        rows.push(row(call, "NotRegularFile", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            mkfifo(&path);
            err_of(open(&path))
        }));
        rows.push(row(
            call,
            "Stat",
            Place::Seccomp(FSTATFS),
            move |dir, arm| {
                arm();
                err_of(open(&dir.join("app.lock")))
            },
        ));
        rows.push(row(call, "RemoteFs", Place::Child, move |dir, _| {
            let mount = Fuse::mount(dir)?;
            err_of(open(&mount.at.join("app.lock")))
        }));
    }
    // What only options make possible.
    let call = "LockOptions::open";
    rows.push(row(call, "Missing", Place::Here, |dir, _| {
        err_of(opts().create(false).open(dir.join("app.lock")))
    }));
    rows.push(row(call, "DanglingSymlink", Place::Here, |dir, _| {
        let path = dir.join("app.lock");
        std::os::unix::fs::symlink(dir.join("target"), &path).unwrap();
        err_of(opts().follow_symlinks(true).open(&path))
    }));
    rows.push(row(call, "WriteRefused", Place::Here, |_, _| {
        // The running test binary: O_RDWR fails with ETXTBSY.
        let exe = std::env::current_exe().unwrap();
        err_of(opts().access(Access::ReadWrite).open(exe))
    }));
    // The shortcuts' waits.
    rows.push(row("try_flock", "WouldBlock", Place::Here, |dir, _| {
        let path = dir.join("app.lock");
        let _held = try_flock::<Exclusive>(&path).unwrap();
        err_of(try_flock::<Exclusive>(&path))
    }));
    rows.push(row("flock_timeout", "Timeout", Place::Here, |dir, _| {
        let path = dir.join("app.lock");
        let _held = try_flock::<Exclusive>(&path).unwrap();
        err_of(flock_timeout::<Exclusive>(&path, SHORT))
    }));
    #[cfg(feature = "tokio")]
    rows.push(row(
        "tokio::flock_timeout",
        "Timeout",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            let _held = try_flock::<Exclusive>(&path).unwrap();
            err_of(block_on(flockguard::tokio::flock_timeout::<Exclusive>(
                &path, SHORT,
            )))
        },
    ));
    let waiting = [
        "try_flock",
        "block_flock",
        "flock_timeout",
        "tokio::block_flock",
        "tokio::flock_timeout",
    ];
    for (call, open) in openers()
        .into_iter()
        .filter(|(call, _)| waiting.contains(call))
    {
        rows.push(row(
            call,
            "Flock",
            Place::Seccomp(FLOCK),
            move |dir, arm| {
                arm();
                err_of(open(&dir.join("app.lock")))
            },
        ));
    }
}

/// The errors of every `LockFile` acquisition, plain and under path
/// verification.
fn acquisition_rows(rows: &mut Vec<Row>) {
    for (call, acquire) in acquisitions() {
        let method = call.rsplit("::").next().unwrap();
        let no_wait = matches!(method, "try_lock" | "lock_with" | "lock_any");
        let timed = matches!(method, "lock_timeout" | "lock_until");
        if no_wait {
            rows.push(row(call, "WouldBlock", Place::Here, move |dir, _| {
                let path = dir.join("app.lock");
                let _held = try_flock::<Exclusive>(&path).unwrap();
                err_of(acquire(LockFile::open(&path).unwrap()))
            }));
            rows.push(row(
                call,
                "PathChanged",
                Place::Seccomp(LSTAT_MISSING),
                move |dir, arm| {
                    let file = verified().open(dir.join("app.lock")).unwrap();
                    arm(); // the path never names the locked file again
                    err_of(acquire(file))
                },
            ));
        }
        if timed {
            rows.push(row(call, "Timeout", Place::Here, move |dir, _| {
                let path = dir.join("app.lock");
                let _held = try_flock::<Exclusive>(&path).unwrap();
                err_of(acquire(LockFile::open(&path).unwrap()))
            }));
        }
        rows.push(row(call, "Flock", Place::Here, move |dir, _| {
            err_of(acquire(o_path(&dir.join("app.lock"))))
        }));
        #[cfg(feature = "ofd")]
        rows.push(row(call, "OfdNeedsWrite", Place::Here, move |dir, _| {
            let file = opts()
                .kind(LockKind::Ofd)
                .access(Access::ReadOnly)
                .open(dir.join("app.lock"))
                .unwrap();
            err_of(acquire(file))
        }));
        rows.push(row(call, "NotOwner", Place::Child, move |dir, _| {
            let file = LockFile::open(dir.join("app.lock")).unwrap();
            Ok(in_fork(file, |file| name(&acquire(file).unwrap_err())))
        }));
        // Under verification: the path is examined, and opened again.
        rows.push(row(call, "Stat", Place::Here, move |dir, _| {
            let sub = dir.join("sub");
            std::fs::create_dir(&sub).unwrap();
            let file = verified().open(sub.join("app.lock")).unwrap();
            // `sub/app.lock` now fails with ENOTDIR.
            std::fs::remove_file(sub.join("app.lock")).unwrap();
            std::fs::remove_dir(&sub).unwrap();
            std::fs::write(&sub, "").unwrap();
            err_of(acquire(file))
        }));
        rows.push(row(call, "Open", Place::Here, move |dir, _| {
            let sub = dir.join("sub");
            std::fs::create_dir(&sub).unwrap();
            let file = verified().open(sub.join("app.lock")).unwrap();
            std::fs::remove_file(sub.join("app.lock")).unwrap();
            std::fs::remove_dir(&sub).unwrap(); // reopening: ENOENT
            err_of(acquire(file))
        }));
        rows.push(row(call, "Missing", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            std::fs::write(&path, "").unwrap();
            let file = verified().create(false).open(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            err_of(acquire(file))
        }));
        rows.push(row(call, "Symlink", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            let file = verified().open(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(dir.join("target"), &path).unwrap();
            err_of(acquire(file))
        }));
        rows.push(row(call, "NotRegularFile", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            let file = verified().open(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
            err_of(acquire(file))
        }));
        rows.push(row(
            call,
            "WriteRefused",
            Place::Seccomp(OPEN_DENIED),
            move |dir, arm| {
                let path = dir.join("app.lock");
                let file = verified().access(Access::ReadWrite).open(&path).unwrap();
                replace(&path);
                arm();
                err_of(acquire(file))
            },
        ));
        rows.push(row(call, "RemoteFs", Place::Child, move |dir, _| {
            let local = dir.join("local");
            std::fs::create_dir(&local).unwrap();
            let file = verified().open(local.join("app.lock")).unwrap();
            // The directory moves away and a FUSE mount takes its name: the
            // path names a new file there, which the reopening refuses.
            std::fs::rename(&local, dir.join("moved")).unwrap();
            std::fs::create_dir(&local).unwrap();
            let _mount = Fuse::mount_at(dir, &local)?;
            err_of(acquire(file))
        }));
    }
    rows.push(row(
        "LockFile::lock_with",
        "Cancelled",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            let _held = try_flock::<Exclusive>(&path).unwrap();
            let token = CancelToken::new();
            token.cancel();
            lock_err_of(
                LockFile::open(&path)
                    .unwrap()
                    .lock_with::<Exclusive>(Wait::forever().cancel(token)),
            )
        },
    ));
    rows.push(row(
        "LockFile::lock_any",
        "Cancelled",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            let _held = try_flock::<Exclusive>(&path).unwrap();
            let token = CancelToken::new();
            token.cancel();
            lock_err_of(
                LockFile::open(&path)
                    .unwrap()
                    .lock_any(FlockMode::Exclusive, Wait::forever().cancel(token)),
            )
        },
    ));
    rows.push(row(
        "LockFile::lock_with",
        "Timeout",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            let _held = try_flock::<Exclusive>(&path).unwrap();
            let file = LockFile::open(&path).unwrap();
            lock_err_of(file.lock_with::<Exclusive>(Wait::timeout(SHORT)))
        },
    ));
    rows.push(row(
        "LockFile::lock_any",
        "Timeout",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            let _held = try_flock::<Exclusive>(&path).unwrap();
            let file = LockFile::open(&path).unwrap();
            lock_err_of(file.lock_any(FlockMode::Exclusive, Wait::timeout(SHORT)))
        },
    ));
}

/// The async front-end's waits with a `Wait`, and its upgrade.
#[cfg(feature = "tokio")]
fn tokio_rows(rows: &mut Vec<Row>) {
    use flockguard::tokio as fg;
    fn held_and_waiting(dir: &Path) -> (LockGuard<Exclusive>, LockFile) {
        let path = dir.join("app.lock");
        (
            try_flock::<Exclusive>(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        )
    }
    fn cancelled() -> Wait<'static> {
        let token = CancelToken::new();
        token.cancel();
        Wait::forever().cancel(token)
    }
    rows.push(row(
        "tokio::lock_with",
        "Cancelled",
        Place::Here,
        |dir, _| {
            let (_held, file) = held_and_waiting(dir);
            lock_err_of(block_on(fg::lock_with::<Exclusive>(file, cancelled())))
        },
    ));
    rows.push(row(
        "tokio::lock_any",
        "Cancelled",
        Place::Here,
        |dir, _| {
            let (_held, file) = held_and_waiting(dir);
            lock_err_of(block_on(fg::lock_any(
                file,
                FlockMode::Exclusive,
                cancelled(),
            )))
        },
    ));
    rows.push(row("tokio::lock_with", "Timeout", Place::Here, |dir, _| {
        let (_held, file) = held_and_waiting(dir);
        lock_err_of(block_on(fg::lock_with::<Exclusive>(
            file,
            Wait::timeout(SHORT),
        )))
    }));
    rows.push(row("tokio::lock_any", "Timeout", Place::Here, |dir, _| {
        let (_held, file) = held_and_waiting(dir);
        let wait = Wait::timeout(SHORT);
        lock_err_of(block_on(fg::lock_any(file, FlockMode::Exclusive, wait)))
    }));
    let shared = |dir: &Path| try_flock::<Shared>(dir.join("app.lock")).unwrap();
    rows.push(row(
        "tokio::upgrade",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(shared(dir), |g| {
                name(&block_on(fg::upgrade(g)).unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "tokio::upgrade",
        "Flock",
        Place::Seccomp(FLOCK),
        move |dir, arm| {
            let guard = shared(dir);
            arm();
            lock_err_of(block_on(fg::upgrade(guard)))
        },
    ));
    #[cfg(feature = "ofd")]
    {
        fn ofd_shared(dir: &Path, access: Access) -> LockGuard<Shared> {
            opts()
                .kind(LockKind::Ofd)
                .access(access)
                .open(dir.join("app.lock"))
                .unwrap()
                .try_lock::<Shared>()
                .unwrap()
        }
        rows.push(row(
            "tokio::upgrade",
            "OfdNeedsWrite",
            Place::Here,
            |dir, _| lock_err_of(block_on(fg::upgrade(ofd_shared(dir, Access::ReadOnly)))),
        ));
        rows.push(row(
            "tokio::upgrade",
            "UpgradeDeadlock",
            Place::Here,
            |dir, _| {
                let mine = ofd_shared(dir, Access::PreferWrite);
                let _other = ofd_shared(dir, Access::PreferWrite); // the upgrade must wait
                let _ticket = try_flock::<Exclusive>(dir.join("app.lock")).unwrap();
                lock_err_of(block_on(fg::upgrade(mine)))
            },
        ));
    }
}

/// The rest of `LockFile`, the guards and `holders`.
fn guard_rows(rows: &mut Vec<Row>) {
    rows.push(row(
        "LockOptions::open",
        "InvalidRange",
        Place::Here,
        |dir, _| {
            // flock(2) locks whole files only.
            err_of(
                opts()
                    .range(ByteRange::new(0, 10))
                    .open(dir.join("app.lock")),
            )
        },
    ));
    rows.push(row(
        "LockOptions::adopt",
        "InvalidRange",
        Place::Here,
        |dir, _| {
            let file = File::create(dir.join("app.lock")).unwrap();
            lock_err_of(opts().range(ByteRange::new(0, 10)).adopt(file))
        },
    ));
    rows.push(row(
        "LockOptions::adopt",
        "NotRegularFile",
        Place::Here,
        |dir, _| lock_err_of(opts().adopt(File::open(dir).unwrap())),
    ));
    rows.push(row(
        "LockOptions::adopt",
        "ReadOnly",
        Place::Here,
        |dir, _| {
            let path = dir.join("app.lock");
            std::fs::write(&path, "").unwrap();
            lock_err_of(
                opts()
                    .access(Access::ReadWrite)
                    .adopt(File::open(&path).unwrap()),
            )
        },
    ));
    rows.push(row(
        "LockOptions::adopt",
        "Stat",
        Place::Seccomp(GETFL),
        |dir, arm| {
            let file = File::create(dir.join("app.lock")).unwrap();
            arm();
            lock_err_of(opts().adopt(file))
        },
    ));
    rows.push(row(
        "LockOptions::adopt",
        "RemoteFs",
        Place::Child,
        |dir, _| {
            let mount = Fuse::mount(dir)?;
            let file = File::create(mount.at.join("app.lock")).unwrap();
            lock_err_of(opts().adopt(file))
        },
    ));
    rows.push(row(
        "LockFile::unlock_inherited",
        "Unlock",
        Place::Here,
        |dir, _| err_of(o_path(&dir.join("app.lock")).unlock_inherited()),
    ));
    rows.push(row(
        "LockFile::unlock_inherited",
        "NotOwner",
        Place::Child,
        |dir, _| {
            let file = LockFile::open(dir.join("app.lock")).unwrap();
            Ok(in_fork(file, |file| {
                name(&file.unlock_inherited().unwrap_err())
            }))
        },
    ));
    rows.push(row(
        "LockFile::holders",
        "Holders",
        Place::Seccomp(STATX),
        |dir, arm| {
            let file = LockFile::open(dir.join("app.lock")).unwrap();
            arm();
            err_of(file.holders())
        },
    ));
    rows.push(row("holders", "Holders", Place::Here, |dir, _| {
        err_of(holders(dir.join("missing.lock")))
    }));

    let exclusive = |dir: &Path| try_flock::<Exclusive>(dir.join("app.lock")).unwrap();
    let shared = |dir: &Path| try_flock::<Shared>(dir.join("app.lock")).unwrap();
    rows.push(row(
        "LockGuard::unlock",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(exclusive(dir), |g| {
                name(&g.unlock().unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "LockGuard::unlock",
        "Unlock",
        Place::Seccomp(UNLOCK),
        move |dir, arm| {
            let guard = exclusive(dir);
            arm();
            lock_err_of(guard.unlock())
        },
    ));
    rows.push(row(
        "AnyGuard::unlock",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            let guard = AnyGuard::from(exclusive(dir));
            Ok(in_fork(guard, |g| name(&g.unlock().unwrap_err().error)))
        },
    ));
    rows.push(row(
        "AnyGuard::unlock",
        "Unlock",
        Place::Seccomp(UNLOCK),
        move |dir, arm| {
            let guard = AnyGuard::from(exclusive(dir));
            arm();
            lock_err_of(guard.unlock())
        },
    ));
    rows.push(row(
        "LockGuard::downgrade",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(exclusive(dir), |g| {
                name(&g.downgrade().unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "LockGuard::downgrade",
        "Flock",
        Place::Seccomp(FLOCK),
        move |dir, arm| {
            let guard = exclusive(dir);
            arm();
            lock_err_of(guard.downgrade())
        },
    ));
    rows.push(row(
        "LockGuard::upgrade",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(shared(dir), |g| {
                name(&g.upgrade().unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "LockGuard::upgrade",
        "Flock",
        Place::Seccomp(FLOCK),
        move |dir, arm| {
            let guard = shared(dir);
            arm();
            lock_err_of(guard.upgrade())
        },
    ));
    rows.push(row(
        "LockGuard::try_upgrade",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(shared(dir), |g| {
                name(&g.try_upgrade().unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "LockGuard::try_upgrade",
        "Flock",
        Place::Seccomp(FLOCK),
        move |dir, arm| {
            let guard = shared(dir);
            arm();
            lock_err_of(guard.try_upgrade())
        },
    ));
    rows.push(row(
        "LockGuard::try_upgrade",
        "WouldBlock",
        Place::Here,
        move |dir, _| {
            let guard = shared(dir);
            let _other = shared(dir);
            lock_err_of(guard.try_upgrade())
        },
    ));
    #[cfg(feature = "ofd")]
    for call in ["LockGuard::upgrade", "LockGuard::try_upgrade"] {
        rows.push(row(call, "OfdNeedsWrite", Place::Here, move |dir, _| {
            let guard = opts()
                .kind(LockKind::Ofd)
                .access(Access::ReadOnly)
                .open(dir.join("app.lock"))
                .unwrap()
                .try_lock::<Shared>()
                .unwrap();
            if call == "LockGuard::upgrade" {
                lock_err_of(guard.upgrade())
            } else {
                lock_err_of(guard.try_upgrade())
            }
        }));
    }
    #[cfg(feature = "ofd")]
    ofd_rows(rows);
    rows.push(row(
        "LockGuard::set_len",
        "ReadOnly",
        Place::Here,
        |dir, _| {
            let guard = opts()
                .access(Access::ReadOnly)
                .open(dir.join("app.lock"))
                .unwrap()
                .try_lock::<Exclusive>()
                .unwrap();
            let err = guard.set_len(0).unwrap_err();
            let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
            Ok(name(
                inner.expect("a flockguard::Error inside the io::Error"),
            ))
        },
    ));

    // Checks of the path: verify_path and unlink_and_unlock.
    type Check = fn(LockGuard<Exclusive>) -> Result<(), Error>;
    let checks: [(&'static str, Check); 2] = [
        ("LockGuard::verify_path", |g| g.verify_path()),
        ("LockGuard::unlink_and_unlock", |g| {
            g.unlink_and_unlock().map_err(|e| e.error)
        }),
    ];
    for (call, check) in checks {
        rows.push(row(call, "PathChanged", Place::Here, move |dir, _| {
            let guard = exclusive(dir);
            replace(&dir.join("app.lock"));
            err_of(check(guard))
        }));
        rows.push(row(call, "InvalidPath", Place::Here, move |dir, _| {
            let path = dir.join("app.lock");
            let guard = opts()
                .adopt(File::create(&path).unwrap())
                .unwrap()
                .try_lock::<Exclusive>()
                .unwrap();
            err_of(check(guard))
        }));
        rows.push(row(call, "Stat", Place::Here, move |dir, _| {
            let sub = dir.join("sub");
            std::fs::create_dir(&sub).unwrap();
            let guard = try_flock::<Exclusive>(sub.join("app.lock")).unwrap();
            std::fs::remove_file(sub.join("app.lock")).unwrap();
            std::fs::remove_dir(&sub).unwrap();
            std::fs::write(&sub, "").unwrap(); // ENOTDIR
            err_of(check(guard))
        }));
    }
    rows.push(row(
        "LockGuard::unlink_and_unlock",
        "NotOwner",
        Place::Child,
        move |dir, _| {
            Ok(in_fork(exclusive(dir), |g| {
                name(&g.unlink_and_unlock().unwrap_err().error)
            }))
        },
    ));
    rows.push(row(
        "LockGuard::unlink_and_unlock",
        "Remove",
        Place::Seccomp(UNLINK),
        move |dir, arm| {
            let guard = exclusive(dir);
            arm();
            lock_err_of(guard.unlink_and_unlock())
        },
    ));
}

/// The OFD-only conversions' errors.
#[cfg(feature = "ofd")]
fn ofd_rows(rows: &mut Vec<Row>) {
    fn ofd_shared(dir: &Path, access: Access) -> LockGuard<Shared> {
        opts()
            .kind(LockKind::Ofd)
            .access(access)
            .open(dir.join("app.lock"))
            .unwrap()
            .try_lock::<Shared>()
            .unwrap()
    }
    const SETLK: &[Rule] = &[fail_with(libc::SYS_fcntl, 1, libc::F_OFD_SETLK as u32, EIO)];
    let call = "LockGuard::try_upgrade_in_place";
    rows.push(row(call, "WouldBlock", Place::Here, |dir, _| {
        let mine = ofd_shared(dir, Access::PreferWrite);
        let _other = ofd_shared(dir, Access::PreferWrite);
        lock_err_of(mine.try_upgrade_in_place())
    }));
    rows.push(row(call, "NoAtomicUpgrade", Place::Here, |dir, _| {
        let mine = try_flock::<Shared>(dir.join("app.lock")).unwrap();
        lock_err_of(mine.try_upgrade_in_place())
    }));
    rows.push(row(call, "OfdNeedsWrite", Place::Here, |dir, _| {
        lock_err_of(ofd_shared(dir, Access::ReadOnly).try_upgrade_in_place())
    }));
    rows.push(row(call, "NotOwner", Place::Child, |dir, _| {
        let mine = ofd_shared(dir, Access::PreferWrite);
        Ok(in_fork(mine, |g| {
            name(&g.try_upgrade_in_place().unwrap_err().error)
        }))
    }));
    rows.push(row(call, "Flock", Place::Seccomp(SETLK), |dir, arm| {
        let mine = ofd_shared(dir, Access::PreferWrite);
        arm();
        lock_err_of(mine.try_upgrade_in_place())
    }));
    rows.push(row(
        "LockGuard::upgrade",
        "UpgradeDeadlock",
        Place::Here,
        |dir, _| {
            let mine = ofd_shared(dir, Access::PreferWrite);
            let _other = ofd_shared(dir, Access::PreferWrite); // the upgrade must wait
                                                               // The upgrade ticket, a flock(2) lock that OFD locks never see,
                                                               // held as another upgrading holder would hold it.
            let _ticket = try_flock::<Exclusive>(dir.join("app.lock")).unwrap();
            lock_err_of(mine.upgrade())
        },
    ));
}

fn table() -> Vec<Row> {
    let mut rows = Vec::new();
    open_rows(&mut rows);
    acquisition_rows(&mut rows);
    guard_rows(&mut rows);
    #[cfg(feature = "tokio")]
    tokio_rows(&mut rows);
    rows
}

// ------------------------------------------------------ the docs, parsed

/// Every (call, variant) the `# Errors` sections of `src/` name; a section
/// that says "As [`other`]" names what `other`'s does.
#[cfg(feature = "ofd")]
fn documented() -> BTreeSet<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut direct: Vec<(String, BTreeSet<String>, Vec<String>)> = Vec::new();
    let mut files = vec!["lock.rs", "holders.rs"];
    if cfg!(feature = "tokio") {
        files.push("tokio.rs");
    }
    for file in files {
        // The async front-end's free functions are named by their module.
        let module = if file == "tokio.rs" { "tokio::" } else { "" };
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut owner: Option<String> = None;
        let mut docs: Vec<String> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if line.starts_with("impl") {
                owner = impl_owner(line);
                continue;
            }
            if line == "}" {
                owner = None;
                continue;
            }
            if let Some(doc) = trimmed.strip_prefix("///") {
                docs.push(doc.trim().to_owned());
                continue;
            }
            if trimmed.starts_with("#[") {
                continue;
            }
            let signature = trimmed
                .strip_prefix("pub fn ")
                .or_else(|| trimmed.strip_prefix("pub async fn "));
            if let Some(rest) = signature {
                let fn_name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let call = match &owner {
                    Some(owner) => format!("{owner}::{fn_name}"),
                    None if line.starts_with("pub ") => format!("{module}{fn_name}"),
                    None => String::new(),
                };
                if !call.is_empty() {
                    let (variants, mut refs) = errors_section(&docs, owner.as_deref());
                    for r in &mut refs {
                        if let Some(bare) = r.strip_prefix("crate::") {
                            *r = bare.to_owned();
                        } else if !r.contains("::") {
                            *r = format!("{module}{r}");
                        }
                    }
                    if !variants.is_empty() || !refs.is_empty() {
                        direct.push((call, variants, refs));
                    }
                }
            }
            docs.clear();
        }
    }
    let mut out = BTreeSet::new();
    for (call, variants, refs) in &direct {
        let mut all = variants.clone();
        for r in refs {
            let (_, v, _) = direct
                .iter()
                .find(|(c, _, _)| c == r)
                .unwrap_or_else(|| panic!("{call}: `As {r}` names no documented call"));
            all.extend(v.iter().cloned());
        }
        for v in all {
            out.insert((call.clone(), v));
        }
    }
    out
}

/// The type an `impl` block's methods belong to, or `None` for a trait's.
#[cfg(feature = "ofd")]
fn impl_owner(line: &str) -> Option<String> {
    if line.contains(" for ") {
        return None;
    }
    let after = line.trim_start_matches("impl");
    let after = if after.starts_with('<') {
        &after[after.find('>').unwrap() + 1..]
    } else {
        after
    };
    let name: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The variants named in a doc comment's `# Errors` section, and the calls
/// it refers to with "As [`…`]".
#[cfg(feature = "ofd")]
fn errors_section(docs: &[String], owner: Option<&str>) -> (BTreeSet<String>, Vec<String>) {
    let mut variants = BTreeSet::new();
    let mut refs = Vec::new();
    let Some(start) = docs.iter().position(|l| l == "# Errors") else {
        return (variants, refs);
    };
    let section: Vec<&String> = docs[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("# "))
        .collect();
    let text = section
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for piece in text.split("[`Error::").skip(1) {
        let v: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
        variants.insert(v);
    }
    if let Some(rest) = text.strip_prefix("As [`") {
        let shown: String = rest.chars().take_while(|c| *c != '`').collect();
        let target = rest
            .split_once("](")
            .filter(|(before, _)| !before.contains(' '))
            .map(|(_, after)| after.chars().take_while(|c| *c != ')').collect::<String>())
            .unwrap_or(shown);
        let target = match (target.strip_prefix("Self::"), owner) {
            (Some(method), Some(owner)) => format!("{owner}::{method}"),
            _ => target,
        };
        refs.push(target);
    }
    (variants, refs)
}

// ------------------------------------------------------------- the tests

// The docs list `OfdNeedsWrite`, which only the `ofd` feature can provoke.
#[cfg(feature = "ofd")]
#[test]
fn every_documented_error_has_a_row_and_every_row_is_documented() {
    let documented = documented();
    let rows: BTreeSet<(String, String)> = table()
        .iter()
        .map(|r| (r.call.to_owned(), r.variant.to_owned()))
        .collect();
    let unprovoked: Vec<_> = documented.difference(&rows).collect();
    let undocumented: Vec<_> = rows.difference(&documented).collect();
    assert!(
        unprovoked.is_empty() && undocumented.is_empty(),
        "documented but never provoked: {unprovoked:?}\nprovoked but not documented: {undocumented:?}"
    );
    // The parse found the sections it must find.
    assert!(documented.contains(&("LockFile::lock_until".into(), "Timeout".into())));
    assert!(documented.contains(&("AnyGuard::unlock".into(), "Unlock".into())));
    #[cfg(feature = "tokio")]
    assert!(documented.contains(&("tokio::lock_until".into(), "Timeout".into())));
    assert!(documented.len() > 100, "{}", documented.len());
}

#[test]
fn every_row_provokes_its_error() {
    let mut failures = Vec::new();
    for (i, r) in table().iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = match r.place {
            Place::Here => run_body(r, dir.path(), &|| {}),
            Place::Child | Place::Seccomp(_) => in_child(i, dir.path()),
        };
        match outcome {
            Ok(found) if found == r.variant => {}
            Ok(found) => failures.push(format!("{} {}: got {found}", r.call, r.variant)),
            Err(why) => {
                support::skip(
                    &format!("every_row_provokes_its_error ({} {})", r.call, r.variant),
                    &why,
                );
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{} {} cannot run in CI: {why}",
                    r.call,
                    r.variant
                );
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Runs a row's body; a panic is an outcome that matches no variant.
fn run_body(r: &Row, dir: &Path, arm: &dyn Fn()) -> Outcome {
    let run = std::panic::AssertUnwindSafe(|| (r.body)(dir, arm));
    std::panic::catch_unwind(run).unwrap_or_else(|_| Ok("a panic".to_owned()))
}

/// Runs row `index` in a child process; its outcome.
fn in_child(index: usize, dir: &Path) -> Outcome {
    let mut child = Child::spawn_with(
        &[
            "errors::row",
            &index.to_string(),
            "-",
            dir.to_str().unwrap(),
        ],
        |cmd| {
            cmd.stderr(Stdio::inherit());
        },
    );
    let line = child.expect_line("outcome ", Duration::from_secs(60));
    assert!(child.release().success(), "row {index} child failed");
    let rest = &line["outcome ".len()..];
    match rest.split_once(' ') {
        Some(("variant", v)) => Ok(v.to_owned()),
        Some(("skip", why)) => Err(why.to_owned()),
        _ => panic!("bad line {line:?}"),
    }
}

/// Child: runs row `index` on `dir`, arming its seccomp rules when the body
/// asks, and prints its outcome.
fn child_row(index: &str, _: &str, dir: &str) {
    let rows = table();
    let r = &rows[index.parse::<usize>().unwrap()];
    let rules: &[Rule] = match r.place {
        Place::Seccomp(rules) => rules,
        _ => &[],
    };
    let arm = move || arm_seccomp(rules);
    let line = match run_body(r, Path::new(dir), &arm) {
        Ok(v) => format!("outcome variant {v}"),
        Err(why) => format!("outcome skip {why}"),
    };
    support::tell(&line);
}

/// Installs a seccomp filter on the calling thread under which every call
/// matching one of `rules` fails with its errno; everything else runs.
fn arm_seccomp(rules: &[Rule]) {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jf: u8| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    // seccomp_data: nr at 0, arch at 4, ip at 8, args[i] at 16 + 8 i (the
    // low half first on this little-endian machine).
    let mut prog = Vec::new();
    for rule in rules {
        prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, 0));
        match rule.arg {
            None => prog.push(jump(rule.nr as u32, 1)),
            Some((index, value)) => {
                prog.push(jump(rule.nr as u32, 3));
                prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, 16 + 8 * index));
                prog.push(jump(value, 1));
            }
        }
        prog.push(stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | rule.errno as u32,
        ));
    }
    prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    let fprog = sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes no pointer; the filter
    // program is a valid, live array of `len` instructions for the call,
    // which copies it. The filter binds only this child's thread.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `op` on `handle` in a forked child of this (child) process, where
/// the handle is inherited and so not the child's own; returns what `op`
/// returned, passed back through a file.
fn in_fork<T>(handle: T, op: impl FnOnce(T) -> String) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let out_path = out.path().to_path_buf();
    // SAFETY: this process is a child of the test binary running one row;
    // the forked process runs `op`, writes a file and ends with _exit(2)
    // without returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let text = op(handle);
        let code = i32::from(std::fs::write(&out_path, text).is_err());
        // SAFETY: ends the forked process without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(handle);
    let mut status = 0;
    // SAFETY: `pid` is this process's child; `status` is a live i32.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child failed: {status:#x}"
    );
    std::fs::read_to_string(&out_path).unwrap()
}

/// A bindfs (FUSE) view of a fresh directory, mounted at `at` until drop.
struct Fuse {
    at: PathBuf,
}

impl Fuse {
    /// Mounts at `dir/mnt`.
    fn mount(dir: &Path) -> Result<Fuse, String> {
        let at = dir.join("mnt");
        std::fs::create_dir(&at).unwrap();
        Self::mount_at(dir, &at)
    }

    /// Mounts on the empty directory `at`, backed by a new directory in
    /// `dir`.
    fn mount_at(dir: &Path, at: &Path) -> Result<Fuse, String> {
        if !support::is_root() {
            return Err("needs root to mount".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        let backing = dir.join("backing");
        std::fs::create_dir(&backing).unwrap();
        let status = Command::new("bindfs")
            .arg(&backing)
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Ok(Fuse { at: at.to_owned() }),
            Ok(s) => Err(format!("bindfs failed: {s}")),
            Err(e) => Err(format!("no bindfs binary (apt-get install bindfs): {e}")),
        }
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let ok = Command::new("fusermount")
            .arg("-u")
            .arg(&self.at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}
