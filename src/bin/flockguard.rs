//! `flockguard`: a drop-in for util-linux `flock(1)` that also says who holds
//! the lock.
//!
//! Options, operands, messages and exit codes follow `flock(1)`; see
//! `docs/cli.md`.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms)]

#[path = "flockguard/args.rs"]
mod args;
#[path = "flockguard/fd.rs"]
mod fd;
#[path = "flockguard/json.rs"]
mod json;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flockguard::{Access, Error, Wait};
use flockguard::{FlockMode, Holder, LockFile, LockOptions, PidStatus, RemoteFs};

use text::escape;

use args::{Command, Op, Opts, Parsed, Target, Timeout};

/// A line on stdout; a closed or broken stdout does not change the outcome.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

/// A line on stderr, ignoring write errors like [`say!`].
macro_rules! warn_line {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

#[path = "flockguard/locks.rs"]
mod locks;
#[path = "flockguard/text.rs"]
mod text;

/// sysexits(3) codes, as flock(1) uses them.
const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_OSERR: i32 = 71;
const EX_CANTCREAT: i32 = 73;
/// Not used by flock(1): a lock file on a filesystem where `flock(2)` is
/// unreliable, refused without `--allow-remote-fs`.
const EX_CONFIG: i32 = 78;

/// How long the holder lines may take beyond one read of /proc/locks: more
/// than a library caller's default, since naming the holder is what the
/// command adds to flock(1).
const DIAGNOSTICS: Duration = Duration::from_millis(100);

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let prog = program_name(&argv);
    let code = match args::parse(&argv) {
        Ok(Parsed::Run(opts)) => run(&prog, &opts),
        Ok(Parsed::Holders(opts)) => holders(&prog, &opts),
        Ok(Parsed::Locks(opts)) => locks::run(&prog, &opts),
        Ok(Parsed::Help) => print_stdout(&usage(&prog)),
        Ok(Parsed::HoldersHelp) => print_stdout(&holders_usage(&prog)),
        Ok(Parsed::LocksHelp) => print_stdout(&locks_usage(&prog)),
        Ok(Parsed::Version) => print_stdout(&format!("{prog} {}\n", env!("CARGO_PKG_VERSION"))),
        Err(err) => {
            if let Some(message) = err.message {
                let line = [prog.as_bytes(), b": ", &message, b"\n"].concat();
                let _ = io::stderr().write_all(&line);
            }
            if err.try_help {
                warn_line!("Try '{prog} --help' for more information.");
            }
            EX_USAGE
        }
    };
    std::process::exit(code);
}

/// The name messages start with: the last component of `argv[0]`, so a
/// `flock` symlink to this binary speaks as `flock`.
fn program_name(argv: &[OsString]) -> String {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "flockguard".into())
}

pub(crate) fn print_stdout(text: &str) -> i32 {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn usage(prog: &str) -> String {
    format!(
        "
Usage:
 {prog} [options] <file>|<directory> <command> [<argument>...]
 {prog} [options] <file>|<directory> -c <command>
 {prog} [options] <file descriptor number>
 {prog} holders [--json] <file>
 {prog} locks [--json] <directory>

Manage file locks from shell scripts; on contention, say who holds the lock.

Options:
 -s, --shared             get a shared lock
 -x, --exclusive          get an exclusive lock (default)
 -u, --unlock             remove a lock
 -n, --nonblock           fail rather than wait
 -w, --timeout <secs>     wait for a limited amount of time
 -E, --conflict-exit-code <number>  exit code after conflict or timeout
 -o, --close              close file descriptor before running command
 -c, --command <command>  run a single command string through the shell
 -F, --no-fork            execute command without forking
     --verbose            increase verbosity
     --allow-remote-fs    lock even on NFS, SMB, FUSE and other filesystems
                            where flock(2) may not serialize processes

 -h, --help               display this help
 -V, --version            display version

Exit status: the command's, 128+N if it was killed by signal N, the conflict
exit code (default 1) on conflict or timeout, 64 usage, 65 lock failure,
66 cannot open, 69 cannot execute, 71 system error, 73 cannot create,
78 refused remote filesystem.

{DOCS}
"
    )
}

/// Where the full documentation is, for every help text.
const DOCS: &str = "Full documentation: docs/cli.md in the flockguard source package;
for the library behind it, https://docs.rs/flockguard.";

fn holders_usage(prog: &str) -> String {
    format!(
        "
Usage:
 {prog} holders [--json] <file>

List the processes holding or waiting for flock(2) locks on <file>.

Options:
     --json               print a JSON array
 -h, --help               display this help

{DOCS}
"
    )
}

fn locks_usage(prog: &str) -> String {
    format!(
        "
Usage:
 {prog} locks [--json] <directory>

List every file under <directory> (recursively, not following symbolic
links) that a process holds or waits for a flock(2) lock on.

Options:
     --json               print a JSON array
 -h, --help               display this help

{DOCS}
"
    )
}

/// A lock file, locked or (after `-u`) not, kept open until exit. The
/// lock is the descriptor's, as flock(1)'s is: exit closes this copy, and
/// the lock lives on in any other (the caller's, or a background child's).
enum Held {
    Locked(OwnedFd),
    Unlocked(LockFile),
}

impl AsFd for Held {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Held::Locked(guard) => guard.as_fd(),
            Held::Unlocked(file) => file.as_fd(),
        }
    }
}

/// How long to wait for the lock.
enum Patience {
    No,
    Forever,
    Limit(std::time::Duration),
}

fn run(prog: &str, opts: &Opts) -> i32 {
    match lock_and_run(prog, opts) {
        Ok(code) | Err(code) => code,
    }
}

/// Opens, locks and runs; `Err` is an early exit status.
fn lock_and_run(prog: &str, opts: &Opts) -> Result<i32, i32> {
    let mut options = LockOptions::new();
    // flock(1) opens read-only, locks directories and follows symbolic
    // links: no write access means no ETXTBSY for a running script, no
    // broken read lease, no busy read-only remount, no IN_CLOSE_WRITE.
    options
        .access(Access::ReadOnly)
        .allow_directory(true)
        .follow_symlinks(true)
        .remote_fs(if opts.allow_remote_fs {
            RemoteFs::Allow
        } else {
            RemoteFs::Reject
        });

    // Same order of checks as flock(1): open the file, arm the timer, then
    // touch an inherited descriptor.
    let (file, patience, name) = match &opts.target {
        Target::File { path, .. } => {
            let file = options
                .open(Path::new(path))
                .map_err(|err| open_failure(prog, &err))?;
            let name = Path::new(path).display().to_string();
            (file, patience(prog, opts)?, name)
        }
        Target::Fd(raw) => {
            let patience = patience(prog, opts)?;
            let owned = fd::adopt_inherited(*raw).map_err(|err| {
                warn_line!("{prog}: {raw}: {}", strerror(&err));
                EX_DATAERR
            })?;
            let name = std::fs::read_link(format!("/proc/self/fd/{raw}"))
                .map_or_else(|_| format!("descriptor {raw}"), |p| p.display().to_string());
            let file = options
                .adopt(File::from(owned))
                .map_err(|err| open_failure(prog, &err.error))?;
            (file, patience, name)
        }
    };

    let start = Instant::now();
    let held = lock(prog, &name, opts, file, patience)?;
    if opts.verbose {
        let took = start.elapsed();
        say!(
            "{prog}: getting lock took {}.{:06} seconds",
            took.as_secs(),
            took.subsec_micros()
        );
    }

    match &opts.target {
        Target::File { command, .. } => Ok(execute(prog, opts, command, &held)),
        // Closing this copy on exit leaves the lock with the caller's descriptor.
        Target::Fd(_) => Ok(0),
    }
}

/// How `-n` and `-w` say to wait; `Err` (EX_OSERR) for a `-w` value that
/// flock(1) cannot arm a timer with.
fn patience(prog: &str, opts: &Opts) -> Result<Patience, i32> {
    Ok(match opts.timeout {
        // flock(1) arms the timer even with -n, so -n does not hide a bad -w.
        Some(Timeout::Unusable) => {
            warn_line!("{prog}: cannot set up timer: Invalid argument");
            return Err(EX_OSERR);
        }
        _ if opts.nonblock => Patience::No,
        Some(Timeout::Zero) => Patience::No,
        Some(Timeout::Limit(limit)) => match Instant::now().checked_add(limit) {
            Some(_) => Patience::Limit(limit),
            // Beyond what a clock can express: as good as forever.
            None => Patience::Forever,
        },
        None => Patience::Forever,
    })
}

/// Takes (or with `-u` drops) the lock; `Err` is the exit status.
fn lock(
    prog: &str,
    name: &str,
    opts: &Opts,
    file: LockFile,
    patience: Patience,
) -> Result<Held, i32> {
    let mode = match opts.op {
        Op::Exclusive => FlockMode::Exclusive,
        Op::Shared => FlockMode::Shared,
        Op::Unlock => {
            return match file.unlock_inherited() {
                Ok(()) => Ok(Held::Unlocked(file)),
                Err(err) => Err(lock_failure(prog, &err)),
            }
        }
    };
    let limit = match patience {
        Patience::No => {
            // A zero deadline rather than Wait::none(): the error then
            // carries the holders, found within the diagnostics budget.
            return match file.lock_any(mode, Wait::timeout(Duration::ZERO).diagnostics(DIAGNOSTICS))
            {
                Ok(guard) => Ok(Held::Locked(guard.into_locked_fd())),
                Err(err) if err.is_timeout() => {
                    if opts.verbose {
                        warn_line!("{prog}: failed to get lock");
                    }
                    // Diagnostics only: an unreadable /proc must not change the status.
                    print_holders(prog, name, err.error.holders());
                    Err(i32::from(opts.conflict_exit_code))
                }
                Err(err) => Err(lock_failure(prog, &err.error)),
            };
        }
        Patience::Forever if !opts.verbose => {
            return file
                .lock_any(mode, Wait::forever())
                .map(|guard| Held::Locked(guard.into_locked_fd()))
                .map_err(|err| lock_failure(prog, &err.error));
        }
        Patience::Forever => None,
        Patience::Limit(limit) => Some(limit),
    };
    let mut wait = match limit {
        Some(limit) => Wait::timeout(limit).diagnostics(DIAGNOSTICS),
        None => Wait::forever().diagnostics(DIAGNOSTICS),
    };
    // Set once the holders have been printed, so a timeout does not print
    // them a second time.
    let announced = AtomicBool::new(false);
    if opts.verbose {
        let announced = &announced;
        wait = wait.on_wait(move |holders| {
            warn_line!("{prog}: waiting for {} lock on {}", mode, escape(name));
            print_holders(prog, name, holders);
            announced.store(true, Ordering::Relaxed);
        });
    }
    match file.lock_any(mode, wait) {
        Ok(guard) => Ok(Held::Locked(guard.into_locked_fd())),
        Err(err) if err.is_timeout() => {
            if opts.verbose {
                warn_line!("{prog}: timeout while waiting to get lock");
            } else {
                warn_line!(
                    "{prog}: timed out after {} seconds waiting for {} lock on {}",
                    seconds(limit.unwrap_or_default()),
                    with_article(mode),
                    escape(name)
                );
            }
            if !announced.load(Ordering::Relaxed) {
                if let Error::Timeout { holders, .. } = &err.error {
                    print_holders(prog, name, holders);
                }
            }
            Err(i32::from(opts.conflict_exit_code))
        }
        Err(err) => Err(lock_failure(prog, &err.error)),
    }
}

/// A `-w` value as seconds, without trailing zeros (`0.05`, `2`).
fn seconds(limit: Duration) -> String {
    let text = format!("{}.{:06}", limit.as_secs(), limit.subsec_micros());
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `an exclusive` or `a shared`.
fn with_article(mode: FlockMode) -> &'static str {
    match mode {
        FlockMode::Exclusive => "an exclusive",
        FlockMode::Shared => "a shared",
    }
}

/// Who holds or waits for the lock, one line each on stderr, control
/// characters in the name and command lines escaped.
fn print_holders(prog: &str, name: &str, holders: &[Holder]) {
    let mut err = io::stderr().lock();
    let name = escape(name);
    if !holders.iter().any(|h| !h.waiting) {
        let _ = writeln!(
            err,
            "{prog}: {name} is locked by a process not visible in /proc/locks"
        );
    }
    for h in holders {
        let cmd = h
            .cmdline
            .as_deref()
            .map_or_else(String::new, |c| format!(" ({})", escape(c)));
        let line = match h.status {
            _ if h.waiting => format!(
                "{name}: pid {}{cmd} is waiting for {} lock",
                h.pid,
                with_article(h.mode)
            ),
            PidStatus::Confirmed | PidStatus::Unverified => {
                format!("{name} is held {} by pid {}{cmd}", h.mode, h.pid)
            }
            _ => format!("{name}: {}", escape(&h.to_string())),
        };
        let _ = writeln!(err, "{prog}: {line}");
    }
}

/// Runs the command, the lock held; returns the exit status.
fn execute(prog: &str, opts: &Opts, command: &Command, held: &Held) -> i32 {
    let (program, args): (OsString, Vec<&OsStr>) = match command {
        Command::Argv(argv) => (
            argv[0].clone(),
            argv[1..].iter().map(OsString::as_os_str).collect(),
        ),
        Command::Shell(line) => {
            let shell = std::env::var_os("SHELL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into());
            (shell, vec![OsStr::new("-c"), line.as_os_str()])
        }
    };
    if opts.verbose {
        say!("{prog}: executing {}", program.to_string_lossy());
    }
    // Output printed so far must not be lost in the exec.
    let _ = io::stdout().flush();

    // The library's descriptors are close-on-exec; flock(1)'s are not, so its
    // commands inherit the lock unless -o is given.
    if !opts.close {
        if let Err(err) = fd::set_inheritable(held.as_fd()) {
            warn_line!(
                "{prog}: cannot pass the lock descriptor on: {}",
                strerror(&err)
            );
            return EX_OSERR;
        }
    }
    let mut cmd = std::process::Command::new(&program);
    cmd.args(args);
    if opts.no_fork {
        let err = cmd.exec();
        return exec_failure(prog, &program, &err);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return exec_failure(prog, &program, &err),
    };
    match child.wait() {
        Ok(status) => exit_code(status),
        Err(err) => {
            warn_line!("{prog}: waitpid failed: {}", strerror(&err));
            1
        }
    }
}

/// The child's exit status as flock(1) reports it.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EX_OSERR,
    }
}

fn exec_failure(prog: &str, program: &OsStr, err: &io::Error) -> i32 {
    warn_line!(
        "{prog}: failed to execute {}: {}",
        program.to_string_lossy(),
        strerror(err)
    );
    if errno_is(err, rustix::io::Errno::NOMEM) {
        EX_OSERR
    } else {
        EX_UNAVAILABLE
    }
}

/// Exit status and message for a file that could not be opened or adopted.
fn open_failure(prog: &str, err: &Error) -> i32 {
    use rustix::io::Errno;
    match err {
        Error::Open { path, source } => {
            warn_line!(
                "{prog}: cannot open lock file {}: {}",
                path.display(),
                strerror(source)
            );
            if [Errno::NOMEM, Errno::MFILE, Errno::NFILE]
                .iter()
                .any(|e| errno_is(source, *e))
            {
                EX_OSERR
            } else if errno_is(source, Errno::ROFS) || errno_is(source, Errno::NOSPC) {
                EX_CANTCREAT
            } else {
                EX_NOINPUT
            }
        }
        Error::RemoteFs { .. } => {
            warn_line!("{prog}: {}", escape(&describe(err)));
            warn_line!("{prog}: to lock there anyway, pass --allow-remote-fs");
            EX_CONFIG
        }
        Error::DanglingSymlink { .. } => {
            warn_line!("{prog}: {}", escape(&describe(err)));
            EX_CANTCREAT
        }
        Error::NotRegularFile { .. } | Error::Symlink { .. } => {
            warn_line!("{prog}: {}", escape(&describe(err)));
            EX_NOINPUT
        }
        _ => {
            warn_line!("{prog}: {}", escape(&describe(err)));
            EX_OSERR
        }
    }
}

/// Exit status and message for a failed `flock(2)` other than contention.
fn lock_failure(prog: &str, err: &Error) -> i32 {
    use rustix::io::Errno;
    warn_line!("{prog}: {}", escape(&describe(err)));
    let source = std::error::Error::source(err).and_then(|s| s.downcast_ref::<io::Error>());
    match source {
        Some(source) if errno_is(source, Errno::NOLCK) || errno_is(source, Errno::NOMEM) => {
            EX_OSERR
        }
        _ => EX_DATAERR,
    }
}

/// The error and its sources, joined with ": ", without Rust's
/// "(os error N)" suffixes.
pub(crate) fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        match s.downcast_ref::<io::Error>() {
            Some(io) => text.push_str(&strerror(io)),
            None => text.push_str(&s.to_string()),
        }
        source = s.source();
    }
    text
}

/// `strerror(3)` text of an I/O error.
pub(crate) fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match (err.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(cut)) => text[..cut].to_owned(),
        _ => text,
    }
}

fn errno_is(err: &io::Error, errno: rustix::io::Errno) -> bool {
    err.raw_os_error() == Some(errno.raw_os_error())
}

/// `holders [--json] FILE`.
fn holders(prog: &str, opts: &args::HoldersOpts) -> i32 {
    let path = Path::new(&opts.path);
    match flockguard::holders(path) {
        Ok(list) => {
            let text = if opts.json {
                json::holders(&list)
            } else {
                list.iter()
                    .map(|h| format!("{}\n", escape(&h.to_string())))
                    .collect()
            };
            print_stdout(&text)
        }
        Err(err) => {
            warn_line!("{prog}: {}", escape(&describe(&err)));
            match &err {
                Error::Holders { file, .. } if file == path => EX_NOINPUT,
                _ => EX_OSERR,
            }
        }
    }
}
