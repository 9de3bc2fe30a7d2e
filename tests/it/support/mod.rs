//! Shared plumbing for the integration tests: child processes, `/proc`
//! readers, probes of who holds a lock.
//!
//! A test re-executes this binary to run a child: [`Child::spawn`] names a
//! [`Role`] from some module's `CHILDREN` table, and the binary's one child
//! entry point (`__child_entry` in `main.rs`) runs it and exits. The child
//! talks over stdout lines; closing its stdin (or [`Child::release`]) tells
//! it to finish.

pub mod rig;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that carries the child's arguments, separated
/// by [`ARG_SEP`].
pub const CHILD_ENV: &str = "FLOCKGUARD_TEST_CHILD";

/// Separates the child's arguments in [`CHILD_ENV`]; not NUL, which an
/// environment variable cannot hold.
pub const ARG_SEP: char = '\u{1f}';

/// A child role: a name unique in this binary (`module::role`) and the
/// function a child started with that name runs on the arguments after it.
pub type Role = (&'static str, fn(&[String]));

/// The libtest arguments that run only the child entry point.
const CHILD_ENTRY_ARGS: [&str; 6] = [
    "__child_entry",
    "--exact",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// The role and arguments this process was started with, if it is a child
/// started by [`Child::spawn`] or [`child_command`].
pub fn child_request() -> Option<(String, Vec<String>)> {
    let all = std::env::var(CHILD_ENV).ok()?;
    let mut args = all.split(ARG_SEP).map(str::to_owned);
    let role = args.next().expect("a child role");
    Some((role, args.collect()))
}

/// The command that runs this test binary as a child in `role` on `args`.
pub fn child_command(role: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    let mut all = vec![role];
    all.extend_from_slice(args);
    cmd.args(CHILD_ENTRY_ARGS)
        .env(CHILD_ENV, all.join(&ARG_SEP.to_string()));
    cmd
}

/// Makes `wrapper` (`strace …`, `unshare …`) run `child` under it: appends
/// the child's program and arguments and copies its environment settings.
pub fn run_under<'a>(wrapper: &'a mut Command, child: &Command) -> &'a mut Command {
    wrapper.arg(child.get_program()).args(child.get_args());
    for (key, value) in child.get_envs() {
        if let Some(value) = value {
            wrapper.env(key, value);
        }
    }
    wrapper
}

/// The environment variable that names the test [`rerun_alone`] runs in a
/// process of its own.
const ALONE_ENV: &str = "FLOCKGUARD_TEST_ALONE";

/// For a test that counts or changes what belongs to the whole process
/// (every descriptor, the children forked meanwhile, mounts whose helpers
/// share its descriptors): runs the calling test again as the only test in
/// a fresh process of this binary, asserts that it passed there, and
/// returns `true`; the caller then returns. In that process it returns
/// `false` and the test body runs. Other tests of this binary run in
/// parallel threads of one process, so a count of `/proc/self/fd` or a
/// child forked by another test would disturb it.
pub fn rerun_alone() -> bool {
    let name = std::thread::current()
        .name()
        .expect("libtest names each test's thread after the test")
        .to_owned();
    if std::env::var(ALONE_ENV).is_ok_and(|alone| alone == name) {
        return false;
    }
    let out = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            &name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ALONE_ENV, &name)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed;"),
        "{name} in a process of its own: {}",
        out.status
    );
    true
}

/// A running child process of this test binary.
pub struct Child {
    pub child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts this test binary as a child running the role named by
    /// `args[0]` (`module::role`, from that module's `CHILDREN`) on the rest
    /// of `args`.
    pub fn spawn(args: &[&str]) -> Child {
        Self::spawn_with(args, |_| {})
    }

    /// As [`spawn`](Self::spawn), with a hook to adjust the command.
    pub fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Child {
        let (role, args) = args.split_first().expect("a child role");
        let mut cmd = child_command(role, args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Child {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one starts with `prefix`; returns that line.
    /// Panics if the child ends first or `timeout` passes.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read child stdout");
            assert!(n > 0, "child exited before printing {prefix:?}");
            if line.starts_with(prefix) {
                return line.trim_end().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} line from child within {timeout:?}"
            );
        }
    }

    /// Sends a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write child stdin");
        stdin.flush().expect("flush");
    }

    /// Closes the child's stdin (the "finish" signal) and waits for it.
    pub fn release(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        self.child.wait().expect("wait child")
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait child")
    }
}

/// In a child: blocks until the parent closes stdin; returns each line read
/// before that through `on_line`.
pub fn wait_for_parent(mut on_line: impl FnMut(&str)) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(line) => on_line(&line),
            Err(_) => break,
        }
    }
}

/// In a child: prints a line to the parent, flushed.
pub fn tell(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write stdout");
    out.flush().expect("flush stdout");
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Whether the tests run as root (mounts, other users).
pub fn is_root() -> bool {
    rustix_free_euid() == 0
}

fn rustix_free_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Prints a skip reason in a form that stands out in test output. Writes to
/// the stderr handle rather than with `eprintln!`, which the test harness
/// captures and hides for passing tests.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A fresh temporary directory and a lock path inside it.
pub fn lock_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.lock");
    (dir, path)
}

/// Whether `path` is currently lockable exclusively by a fresh open (a second
/// open file description), which proves nobody else holds any lock on it.
/// The probe unlocks before it closes, so it never leaves a lock behind.
pub fn is_free(path: &Path) -> bool {
    probe::<flockguard::Exclusive>(path)
}

/// Whether a fresh open can take a shared lock on `path`.
pub fn is_shareable(path: &Path) -> bool {
    probe::<flockguard::Shared>(path)
}

fn probe<M: flockguard::Mode>(path: &Path) -> bool {
    let file = flockguard::LockOptions::new()
        .remote_fs(flockguard::RemoteFs::Allow)
        .open(path)
        .expect("open");
    match file.try_lock::<M>() {
        Ok(guard) => {
            drop(guard.unlock().expect("unlock probe"));
            true
        }
        Err(err) if err.is_would_block() => false,
        Err(err) => panic!("probe: {err:?}"),
    }
}

/// Waits until a fresh open can lock `path` exclusively; panics after a
/// minute. A released lock can stay visible for a moment after `close(2)`:
/// whoever reads `/proc/PID/fd` or `/proc/PID/fdinfo` at that instant holds
/// a reference to the open file description, and the lock goes when that
/// reference does.
pub fn assert_free(path: &Path) {
    wait_until("the lock is released", || is_free(path));
}

/// Waits until a fresh open can take a shared lock on `path`; see
/// [`assert_free`].
pub fn assert_shareable(path: &Path) {
    wait_until("no exclusive lock is held", || is_shareable(path));
}

/// The lock held through descriptor `fd`, from the `lock:` lines of
/// `/proc/self/fdinfo/FD` (they list the locks of its open file description).
pub fn held_through(fd: &impl std::os::fd::AsRawFd) -> Option<flockguard::FlockMode> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .expect("read fdinfo");
    let mut modes = info
        .lines()
        .filter(|l| l.starts_with("lock:") && l.contains("FLOCK"))
        .map(|l| {
            if l.contains(" WRITE ") {
                flockguard::FlockMode::Exclusive
            } else {
                flockguard::FlockMode::Shared
            }
        });
    let mode = modes.next();
    assert!(modes.next().is_none(), "two flock locks on one descriptor");
    mode
}

/// The open flags of descriptor `fd`, from `flags:` in `/proc/self/fdinfo/FD`
/// (printed in octal).
pub fn fd_flags(fd: &impl std::os::fd::AsRawFd) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .expect("read fdinfo");
    let field = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("flags: line");
    u32::from_str_radix(field.trim(), 8).expect("octal flags")
}

/// Whether `FD_CLOEXEC` is set on `fd` (`fcntl(F_GETFD)`).
pub fn is_cloexec(fd: &impl std::os::fd::AsFd) -> bool {
    rustix::io::fcntl_getfd(fd)
        .expect("fcntl(F_GETFD)")
        .contains(rustix::io::FdFlags::CLOEXEC)
}

/// One `FLOCK` line of `/proc/locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcLock {
    /// A blocked request (`->` after the id) rather than a held lock.
    pub waiter: bool,
    /// `WRITE` (exclusive) rather than `READ` (shared).
    pub write: bool,
    /// The process that took (or waits for) the lock.
    pub pid: u32,
}

/// The `FLOCK` lines of one read of `/proc/locks` for the file at `path`,
/// matched by device (`MAJ:MIN` in hex) and inode.
///
/// One read is not a reliable snapshot: while other locks on the system
/// change, a read now and then lists some locks twice or leaves some out
/// (measured on Linux 6.18: 71 of 20 000 reads with three threads locking and
/// unlocking other files). Use [`wait_for_locks`] to assert on the lines.
pub fn proc_locks(path: &Path) -> Vec<ProcLock> {
    proc_locks_once(path)
}

/// Reads `/proc/locks` until the lines for `path` satisfy `pred`, and
/// returns them; panics with the last lines seen after a minute. Reading
/// again skips the occasional inconsistent read; a state that is really
/// wrong never satisfies `pred`.
pub fn wait_for_locks(
    path: &Path,
    what: &str,
    mut pred: impl FnMut(&[ProcLock]) -> bool,
) -> Vec<ProcLock> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let locks = proc_locks_once(path);
        if pred(&locks) {
            return locks;
        }
        assert!(
            Instant::now() < deadline,
            "/proc/locks never showed {what}; last read: {locks:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `/proc/locks` shows exactly `expected` for `path`, as sorted
/// `(write, waiter)` pairs.
pub fn expect_locks(path: &Path, expected: &[(bool, bool)]) {
    wait_for_locks(path, &format!("{expected:?}"), |locks| {
        let mut lines: Vec<(bool, bool)> = locks.iter().map(|l| (l.write, l.waiter)).collect();
        lines.sort();
        lines == expected
    });
}

fn proc_locks_once(path: &Path) -> Vec<ProcLock> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("stat lock file");
    let dev = meta.dev();
    let (major, minor) = (
        ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
        ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
    );
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let text = read_proc_locks();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let waiter = fields.get(1) == Some(&"->");
            let rest = &fields[if waiter { 2 } else { 1 }..];
            // FLOCK ADVISORY WRITE|READ PID MAJ:MIN:INODE START END
            (rest.first() == Some(&"FLOCK") && rest.get(4) == Some(&id.as_str())).then(|| {
                ProcLock {
                    waiter,
                    write: rest[2] == "WRITE",
                    pid: rest[3].parse().expect("pid"),
                }
            })
        })
        .collect()
}

/// Whether some request is blocked waiting for the lock on `path`.
pub fn has_waiter(path: &Path) -> bool {
    proc_locks(path).iter().any(|l| l.waiter)
}

/// Polls `cond` until it holds. Panics after a minute: a guard against a
/// hang, not a timing assertion.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(60), cond);
}

/// Waits until a fresh open can take the lock on `path`. A released lock
/// can stay held for a moment by a copy of the descriptor in a child that
/// another test is spawning (between its fork and exec).
pub fn wait_free(path: &Path) {
    wait_until(&format!("`{}` is free", path.display()), || is_free(path));
}

/// As [`wait_until`], giving up after `limit`.
pub fn wait_until_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut polls = 0u32;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        // Most waits are for a reference that goes within microseconds.
        polls += 1;
        if polls < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Descriptors of this process whose target lies under `dir`; immune to
/// other tests running in parallel, which use their own directories.
pub fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// The process umask, from `Umask:` in `/proc/self/status`.
pub fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let field = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask: line");
    u32::from_str_radix(field.trim(), 8).expect("octal umask")
}

/// Reads `/proc/locks` in large chunks. Reads shorter than a line make the
/// kernel repeat some lines and skip others (measured on Linux 6.18), and
/// `std::fs::read_to_string` starts with a 32-byte read.
pub fn read_proc_locks() -> String {
    let mut file = std::fs::File::open("/proc/locks").expect("open /proc/locks");
    let mut text = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf).expect("read /proc/locks");
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(text).expect("/proc/locks is ASCII")
}

/// Opens `path` with the default options and takes `mode`, chosen at run
/// time, without waiting.
pub fn try_flock_mode(
    path: impl AsRef<Path>,
    mode: flockguard::FlockMode,
) -> Result<flockguard::AnyGuard, flockguard::Error> {
    Ok(flockguard::LockFile::open(path)?.lock_any(mode, flockguard::Wait::none())?)
}

/// Opens `path` with the default options and takes `mode`, chosen at run
/// time, waiting in the kernel.
pub fn block_flock_mode(
    path: impl AsRef<Path>,
    mode: flockguard::FlockMode,
) -> Result<flockguard::AnyGuard, flockguard::Error> {
    Ok(flockguard::LockFile::open(path)?.lock_any(mode, flockguard::Wait::forever())?)
}

/// Path-verified `try_lock` with otherwise default options.
pub fn try_flock_verified<M: flockguard::Mode>(
    path: impl AsRef<Path>,
) -> Result<flockguard::LockGuard<M>, flockguard::Error> {
    Ok(flockguard::LockOptions::new()
        .verify_path(true)
        .open(path)?
        .try_lock()?)
}

/// Path-verified blocking `lock` with otherwise default options.
pub fn block_flock_verified<M: flockguard::Mode>(
    path: impl AsRef<Path>,
) -> Result<flockguard::LockGuard<M>, flockguard::Error> {
    Ok(flockguard::LockOptions::new()
        .verify_path(true)
        .open(path)?
        .lock()?)
}
