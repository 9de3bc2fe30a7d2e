//! `flockguard`: util-linux `flock(1)` that also says who holds the lock.
//!
//! Every `flock(1)` invocation means the same here: options, operands,
//! messages and exit codes are `flock(1)`'s. See `docs/cli.md`.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms)]

/// `PROG: MESSAGE` on stderr; a closed or broken stderr changes nothing.
macro_rules! warn {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "{}: {}", crate::prog(), format_args!($($arg)*));
    }};
}

/// `warn!`, then the exit status `code`.
macro_rules! fail {
    ($code:expr, $($arg:tt)*) => {{
        warn!($($arg)*);
        $code
    }};
}

mod args;
mod report;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flockguard::{
    Access, ByteRange, Error, FlockMode, Holder, HolderKind, LockFile, LockKind, LockOptions,
    RemoteFs, Wait,
};
use rustix::io::Errno;

use args::{Action, Opts, Timeout, Usage};

/// sysexits(3) codes, as flock(1) uses them.
const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_OSERR: i32 = 71;
const EX_CANTCREAT: i32 = 73;
/// Not flock(1)'s: a lock file on a filesystem where `flock(2)` does not
/// serialize processes, refused without `--allow-remote-fs`.
const EX_CONFIG: i32 = 78;

/// How long finding the holders may take beyond one read of /proc/locks:
/// more than a library caller's default, since naming the holder is what
/// the command adds to flock(1).
const DIAGNOSTICS: Duration = Duration::from_millis(100);

/// The name messages start with: the last component of `argv[0]`, so that
/// a `flock` link speaks as `flock`.
static PROG: OnceLock<String> = OnceLock::new();

fn prog() -> &'static str {
    PROG.get().map_or("flockguard", String::as_str)
}

fn main() {
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_default();
    let name = Path::new(&arg0).file_name().map(OsStr::to_string_lossy);
    let prog = PROG.get_or_init(|| name.map_or("flockguard".into(), |n| n.into_owned()));
    let code = match args::parse(argv.collect()) {
        Ok(opts) => match &opts.action {
            Action::Help => print(&usage(prog)),
            Action::Version => print(&format!("{prog} {}\n", env!("CARGO_PKG_VERSION"))),
            Action::Holders(path) => report::holders(path.as_ref(), opts.json),
            Action::Locks(dir) => report::locks(dir.as_ref(), opts.json),
            Action::File(..) | Action::Fd(_) => run(&opts).unwrap_or_else(|code| code),
        },
        // glibc's getopt messages start with argv[0] as given.
        Err(usage) => {
            let (who, message, try_help) = match usage {
                Usage::Getopt(message) => (arg0.as_bytes(), message, true),
                Usage::Plain(message, try_help) => (prog.as_bytes(), Some(message), try_help),
            };
            if let Some(message) = message {
                let _ = io::stderr().write_all(&[who, b": ", &message, b"\n"].concat());
            }
            if try_help {
                let _ = writeln!(io::stderr(), "Try '{prog} --help' for more information.");
            }
            EX_USAGE
        }
    };
    std::process::exit(code);
}

/// Writes `text` to stdout; 1 if that fails, as flock(1) exits.
pub(crate) fn print(text: &str) -> i32 {
    let mut out = io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    i32::from(written.is_err())
}

/// The help text; `{prog}` stands for the name the command was run under.
fn usage(prog: &str) -> String {
    format!("\n{}", include_str!("usage.txt").replace("{prog}", prog))
}

/// Opens, locks and runs the command; `Err` is an early exit status.
fn run(opts: &Opts) -> Result<i32, i32> {
    let mut options = LockOptions::new();
    // As flock(1): read-only (no ETXTBSY for a running script, no broken
    // read lease, no busy read-only remount, no IN_CLOSE_WRITE), directories
    // as they are, symbolic links followed.
    // An exclusive fcntl(2) lock needs the file open for writing.
    let write = opts.fcntl && opts.mode == Some(FlockMode::Exclusive);
    let access = [Access::ReadOnly, Access::ReadWrite][usize::from(write)];
    let options = options.access(access).allow_directory(true);
    let options = options.follow_symlinks(true).remote_fs(opts.remote_fs);
    // As flock(1) --fcntl: an OFD lock on the range (whole file: 0, 0).
    let kind = [LockKind::Flock, LockKind::Ofd][usize::from(opts.fcntl)];
    // A length beyond 2^63, a negative off_t, counts back from the start.
    let back = (opts.length as i64).min(0).unsigned_abs();
    let len = [opts.length, back][usize::from(back > 0)];
    let range = flockguard::ByteRange::new(opts.start.wrapping_sub(back), len);
    let options = options.kind(kind).range(range);
    // flock(1)'s order: open the file, arm the timer, then use a descriptor.
    let timer = || match opts.timeout {
        Some(Timeout::Unusable) => Err(fail!(EX_OSERR, "cannot set up timer: Invalid argument")),
        _ => Ok(()),
    };
    let (file, name) = match &opts.action {
        Action::File(path, _) => {
            let file = options.open(path).map_err(|err| open_failure(&err))?;
            timer()?;
            (file, path.to_string_lossy().into_owned())
        }
        Action::Fd(raw) => {
            timer()?;
            let fd = inherited(*raw).map_err(|e| fail!(EX_DATAERR, "{raw}: {}", describe(&e)))?;
            // Its access mode is the caller's.
            let adopted = options.access(Access::ReadOnly).adopt(File::from(fd));
            let file = adopted.map_err(|e| open_failure(&e.error))?;
            (file, raw.to_string())
        }
        _ => unreachable!("run is called for a lock file or descriptor"),
    };
    let start = Instant::now();
    let held = lock(&name, opts, file)?;
    let took = start.elapsed();
    if opts.verbose {
        let took = format!("{}.{:06}", took.as_secs(), took.subsec_micros());
        let _ = writeln!(io::stdout(), "{}: getting lock took {took} seconds", prog());
    }
    match &opts.action {
        Action::File(_, argv) => Ok(execute(opts, argv, held)),
        // The caller's descriptor keeps the lock when this process exits.
        _ => Ok(0),
    }
}

/// A duplicate of descriptor `raw`, inherited from the caller. It shares
/// the caller's open file description, so a lock taken through it is the
/// caller's and outlives this process, as with flock(1); the caller's
/// descriptor itself is never owned or closed here.
#[allow(unsafe_code)] // no safe API turns a descriptor number into a descriptor; reasoning below
fn inherited(raw: i32) -> Result<OwnedFd, Errno> {
    let raw = Some(raw).filter(|raw| *raw >= 0).ok_or(Errno::BADF)?;
    // SAFETY: `raw` is not -1. The borrow lives for one
    // fcntl(F_DUPFD_CLOEXEC), which neither closes nor takes ownership of
    // `raw`. This process has one thread until the lock is taken, so no
    // other code can close `raw` or reuse its number during the call; a
    // number that is not open makes the call fail with EBADF, which is
    // reported as flock(1) reports it.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// Takes (with `-u`: releases) the lock; `Err` is the exit status.
/// The lock file is `name`: its path, or the descriptor's number.
fn lock(name: &str, opts: &Opts, file: LockFile) -> Result<OwnedFd, i32> {
    let Some(mode) = opts.mode else {
        let unlocked = file.unlock_inherited().map_err(|e| lock_failure(name, &e));
        return unlocked.map(|()| file.into());
    };
    let nonblock = opts.nonblock || opts.timeout == Some(Timeout::Zero);
    let wait = match opts.timeout {
        // A zero deadline, not Wait::none(): a timeout, as flock(1) says.
        _ if nonblock => Wait::timeout(Duration::ZERO),
        Some(Timeout::Limit(limit)) => Wait::timeout(limit),
        _ => Wait::forever(),
    };
    let mut wait = wait.diagnostics(DIAGNOSTICS);
    // With --verbose, the holders are printed when the wait begins, which
    // it does before any timeout.
    let announce = opts.verbose && !nonblock;
    if announce {
        wait = wait.on_wait(|holders| {
            warn!("waiting for {mode} lock on {}", escape(name));
            print_holders(name, holders);
        });
    }
    let (err, file) = match file.lock_any(mode, wait) {
        Ok(guard) => return Ok(guard.into_locked_fd()),
        Err(err) if err.is_timeout() => (err.error, err.handle),
        Err(err) => return Err(lock_failure(name, &err.error)),
    };
    let article = if mode == FlockMode::Shared { "a" } else { "an" };
    let escaped = escape(name);
    match opts.timeout {
        _ if opts.verbose && nonblock => warn!("failed to get lock"),
        _ if opts.verbose => warn!("timeout while waiting to get lock"),
        Some(Timeout::Limit(limit)) if !nonblock => warn!(
            "timed out after {} seconds waiting for {article} {mode} lock on {escaped}",
            limit.as_secs_f64()
        ),
        _ => {}
    }
    if !announce {
        // A wait shorter than 20 ms names no holders (it ends at its
        // deadline instead): read them now.
        let holders = match err.holders() {
            [] => {
                let mut all = file.holders().unwrap_or_default();
                // Record locks that can be in the way overlap the bytes
                // asked for. A flock(2) lock without --allow-remote-fs is on
                // a local filesystem, where record locks ignore it; an OFD
                // lock may be on NFS, where the client's flock is a record
                // lock at the server, so flock holders stay listed for it.
                let range = file.range();
                let local_flock = !opts.fcntl && opts.remote_fs == RemoteFs::Reject;
                all.retain(|h| match h.kind {
                    HolderKind::Flock => true,
                    _ => !local_flock && h.range.unwrap_or(ByteRange::WHOLE).overlaps(&range),
                });
                all
            }
            named => named.to_vec(),
        };
        print_holders(name, &holders);
    }
    Err(i32::from(opts.conflict_exit_code))
}

/// Who holds or waits for the lock on `name`: one line each on stderr.
fn print_holders(name: &str, holders: &[Holder]) {
    let name = escape(name);
    if holders.iter().all(|h| h.waiting) {
        warn!("{name}: held by a process not visible in /proc/locks");
    }
    for holder in holders {
        warn!("{name}: {holder}");
    }
}

/// Runs the command with the lock held; returns its exit status as
/// flock(1) reports it.
fn execute(opts: &Opts, argv: &[OsString], held: OwnedFd) -> i32 {
    let program = argv[0].to_string_lossy();
    if opts.verbose {
        let _ = writeln!(io::stdout(), "{}: executing {program}", prog());
    }
    // The library's descriptors are close-on-exec; flock(1)'s command
    // inherits the lock unless -o is given.
    if !opts.close {
        // F_SETFD does not fail on an open descriptor.
        let _ = rustix::io::fcntl_setfd(&held, rustix::io::FdFlags::empty());
    }
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let failed = |err: io::Error| {
        let nomem = err.raw_os_error() == Some(Errno::NOMEM.raw_os_error());
        let code = if nomem { EX_OSERR } else { EX_UNAVAILABLE };
        fail!(code, "failed to execute {program}: {}", describe(&err))
    };
    if opts.no_fork {
        return failed(cmd.exec());
    }
    match cmd.spawn().map(|mut child| child.wait()) {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, signal) => signal.map_or(EX_OSERR, |s| 128 + s),
        },
        Ok(Err(err)) => fail!(1, "waitpid failed: {}", describe(&err)),
        Err(err) => failed(err),
    }
}

/// The message and exit status for a lock file that could not be opened
/// or adopted.
fn open_failure(err: &Error) -> i32 {
    let errno = match err {
        Error::Open { source, .. } | Error::WriteRefused { source, .. } => {
            source.raw_os_error().map(Errno::from_raw_os_error)
        }
        // flock(1)'s open("") fails with ENOENT.
        Error::InvalidPath { .. } => Some(Errno::NOENT),
        _ => None,
    };
    let path = err.path().display();
    match errno {
        Some(errno) => warn!("cannot open lock file {path}: {}", describe(&errno)),
        None => warn!("{}", escape(&describe(err))),
    }
    match (err, errno) {
        (Error::RemoteFs { .. }, _) => {
            fail!(EX_CONFIG, "to lock there anyway, pass --allow-remote-fs")
        }
        (Error::DanglingSymlink { .. }, _) | (_, Some(Errno::ROFS | Errno::NOSPC)) => EX_CANTCREAT,
        // fcntl(2) refuses an offset beyond off_t with EINVAL.
        (Error::InvalidRange { .. }, _) => EX_DATAERR,
        (_, Some(Errno::NOMEM | Errno::MFILE | Errno::NFILE)) => EX_OSERR,
        (Error::NotRegularFile { .. }, _) | (_, Some(_)) => EX_NOINPUT,
        _ => EX_OSERR,
    }
}

/// The message (flock(1)'s: the file or descriptor, then the error) and
/// exit status for a failed `flock(2)` other than contention.
fn lock_failure(label: &str, err: &Error) -> i32 {
    let code = match err.os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOLCK | Errno::NOMEM) => EX_OSERR,
        _ => EX_DATAERR,
    };
    match std::error::Error::source(err) {
        Some(source) => fail!(code, "{label}: {}", describe(source)),
        None => fail!(code, "{}", escape(&describe(err))),
    }
}

/// The error and its sources joined by `: `, each without Rust's
/// ` (os error N)`, so that system errors read as strerror(3) words them.
pub(crate) fn describe(err: &dyn std::error::Error) -> String {
    let chain = std::iter::successors(Some(err), |e| e.source());
    let strip =
        |e: &dyn std::error::Error| e.to_string().split(" (os error ").next().map(str::to_owned);
    chain.filter_map(strip).collect::<Vec<_>>().join(": ")
}

/// The bidirectional-text controls, which reorder the text around them.
const BIDI: &str = "\u{61c}\u{200e}\u{200f}\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}\u{2066}\u{2067}\u{2068}\u{2069}";

/// `text` with control characters written as escapes, as the library's
/// holder lines write them (`\n`, `\t`, `\\`, `\x1b`, `\u{85}`, and the
/// bidirectional-text controls), so that a file name cannot move the
/// cursor, reorder the line or start a line of its own.
pub(crate) fn escape(text: &str) -> String {
    let escaped = text.chars().map(|c| match c {
        '\n' | '\r' | '\t' | '\\' => c.escape_default().to_string(),
        c if c.is_ascii_control() => format!("\\x{:02x}", u32::from(c)),
        c if c.is_control() || BIDI.contains(c) => c.escape_unicode().to_string(),
        c => c.to_string(),
    });
    escaped.collect()
}
