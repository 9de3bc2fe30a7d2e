//! The `flockguard` command against real processes: its own instances,
//! util-linux `flock(1)` and Python's `fcntl.flock`.
//!
//! Processes synchronise on pipes (a holder prints `locked` and keeps the
//! lock until its stdin closes) and on `/proc/locks` (a waiter is known to be
//! blocked once the kernel lists it there); nothing here sleeps for a guess.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support;

const BIN: &str = env!("CARGO_BIN_EXE_flockguard");

/// How long any single synchronisation may take before the test gives up;
/// a hang guard only, never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn fg() -> Command {
    Command::new(BIN)
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed: {:?}", out.status))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process that holds a lock: it prints `locked` once it has it and keeps
/// it until its stdin closes.
struct Holder {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: BufReader<ChildStderr>,
}

impl Holder {
    /// Starts `cmd` and waits for its `locked` line.
    fn start(cmd: &mut Command) -> Holder {
        let mut holder = Holder::spawn(cmd);
        holder.expect_line("locked");
        holder
    }

    /// Starts `cmd` without waiting for anything.
    fn spawn(cmd: &mut Command) -> Holder {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        Holder {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one equals `want`.
    fn expect_line(&mut self, want: &str) {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read stdout");
            if n == 0 {
                let mut err = String::new();
                let _ = self.stderr.read_to_string(&mut err);
                panic!("process ended before printing {want:?}; stderr: {err}");
            }
            if line.trim_end() == want {
                return;
            }
        }
    }

    /// Reads stderr lines until one starts with `prefix`; returns it.
    fn expect_err_line(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("read stderr");
            assert!(n > 0, "process ended before printing {prefix:?} on stderr");
            if line.starts_with(prefix) {
                return line.trim_end().to_owned();
            }
        }
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Closes stdin and collects the rest of the output and the status.
    fn finish(mut self) -> Output {
        drop(self.stdin.take());
        let mut out = Vec::new();
        self.stdout.read_to_end(&mut out).expect("read stdout");
        let mut err = Vec::new();
        self.stderr.read_to_end(&mut err).expect("read stderr");
        let status = self.child.wait().expect("wait");
        Output {
            status,
            stdout: out,
            stderr: err,
        }
    }
}

/// `flockguard [opts] PATH sh -c 'echo locked; read x || :'`.
fn ours_holding(opts: &[&str], path: &Path) -> Holder {
    Holder::start(
        fg().args(opts)
            .arg(path)
            .args(["sh", "-c", "echo locked; read x || :"]),
    )
}

fn flock1_holding(opts: &[&str], path: &Path) -> Holder {
    Holder::start(Command::new("flock").args(opts).arg(path).args([
        "sh",
        "-c",
        "echo locked; read x || :",
    ]))
}

const PY_LOCKER: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a")
op = fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX
if len(sys.argv) > 3:
    op |= fcntl.LOCK_NB
try:
    fcntl.flock(f, op)
except BlockingIOError:
    print("busy", flush=True)
    sys.exit(3)
print("locked", flush=True)
sys.stdin.read()
"#;

fn python(path: &Path, mode: &str, nonblock: bool) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PY_LOCKER]).arg(path).arg(mode);
    if nonblock {
        cmd.arg("nb");
    }
    cmd
}

/// Waits until the kernel lists a blocked `flock` waiter on `path` (by
/// `pid` if given) in `/proc/locks`.
fn wait_blocked(path: &Path, pid: Option<u32>) {
    let ino = std::fs::metadata(path).expect("stat").ino();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let locks = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let found = locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `N: -> FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`
            fields.get(1) == Some(&"->")
                && fields.get(2) == Some(&"FLOCK")
                && fields
                    .get(6)
                    .and_then(|id| id.rsplit(':').next())
                    .and_then(|i| i.parse::<u64>().ok())
                    == Some(ino)
                && pid.map_or(true, |p| fields.get(5) == Some(&p.to_string().as_str()))
        });
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "no blocked waiter on {path:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Descriptors of process `pid` that refer to `path`.
fn fds_on(pid: &str, path: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

fn bash(script: &str, path: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script, "bash"]).arg(path).env("FG", BIN);
    cmd
}

// ---------------------------------------------------------------------------
// Compatibility with util-linux flock(1), output for output.

/// Runs the same arguments through flock(1) and through this binary, both
/// started with `argv[0]` set to `/usr/bin/flock`, in fresh directories;
/// status, stdout and stderr must be identical. (glibc's getopt messages
/// start with `argv[0]` as given, flock(1)'s own with its last component.)
#[test]
fn same_status_and_messages_as_util_linux_flock() {
    use std::os::unix::process::CommandExt;
    if !have("flock") {
        support::skip(
            "same_status_and_messages_as_util_linux_flock",
            "flock(1) not installed",
        );
        return;
    }
    let cases: &[&[&str]] = &[
        &[],
        &["-z", "f", "true"],
        &["-é", "f", "true"],
        &["--é=ü", "f", "true"],
        &["-w", "ü", "f", "true"],
        &["-E", "é", "f", "true"],
        &["-:"],
        &["-W", "f"],
        &["--foo=bar", "f", "true"],
        &["--=x", "f", "true"],
        &["-w"],
        &["-nE"],
        &["--wait"],
        &["--wa"],
        &["--shared=1", "f", "true"],
        &["--nb=1", "f", "true"],
        &["--verbose=2", "f", "true"],
        &["--he=1"],
        &["--version=1"],
        &["--c=3", "f", "true"],
        &["--n", "f", "true"],
        &["--no", "f", "true"],
        &["--v", "f", "true"],
        &["-?", "f"],
        &["-E", "256", "f", "true"],
        &["-E", "-1", "f", "true"],
        &["-E", "abc", "f", "true"],
        &["-E", "0x10", "f", "true"],
        &["-E", "99999999999", "f", "true"],
        &["-E", "2147483648", "f", "true"],
        &["-E", " +5", "-n", "f", "sh", "-c", "exit 5"],
        &["--conflict-exit-code", "300", "f", "true"],
        &["-w", "abc", "f", "true"],
        &["-w", "", "f", "true"],
        &["-w", "2 ", "f", "true"],
        &["-w", "1..2", "f", "true"],
        &["-w", ".e5", "f", "true"],
        &["-w", "+-1", "f", "true"],
        &["-w", "0x", "f", "true"],
        &["-w", "0x1p", "f", "true"],
        &["-swx", "1", "f", "true"],
        &["-w", "-1", "f", "true"],
        &["--wait=-1", "f", "true"],
        &["-w", "inf", "f", "true"],
        &["-w", "-inf", "f", "true"],
        &["-w", "-0.5", "f", "true"],
        &["-w", "1e19", "f", "true"],
        &["-w", "1e400", "f", "true"],
        &["-w", "1.18e4932", "f", "true"],
        &["-w", "1.19e4932", "f", "true"],
        &["-w", "1e5000", "f", "true"],
        &["-w", "-1e5000", "f", "true"],
        &["-w", "1e-5000", "f", "true"],
        &["-w", "3.3e-4932", "f", "true"],
        &["-w", "0e5000", "-n", "f", "true"],
        &["-w", "0x1p16384", "f", "true"],
        &["-w", "0x1p-16446", "f", "true"],
        &["-w", "0x1p-16445", "-n", "f", "true"],
        &["-w", "-1", "99"],
        &["-w", "nan", "f", "true"],
        &["-w", "-nan", "f", "true"],
        &["-w", "NAN(123)", "f", "true"],
        &["-w", "nan(a_1)", "f", "true"],
        &["-w", "nan(a-1)", "f", "true"],
        &["-w", "nan", "99"],
        &["-w", "-1", "-n", "f", "true"],
        &["-w", " \t2", "f", "true"],
        &["-w", "0x10", "-n", "f", "true"],
        &["-w", "0X1.8P1", "-n", "f", "true"],
        &["--time", "3", "f", "true"],
        &["x"],
        &["3x"],
        &["99"],
        &["--", "-1"],
        &[""],
        &["", "true"],
        &["-oF", "f", "true"],
        &["f", "-c"],
        &["f", "-c", "a", "b"],
        &["f", "--command"],
        &["--command", "f"],
        &["--"],
        &["-s"],
        &["/nonexistent-dir/f", "true"],
        &["/proc/f", "true"],
        &["f", "nosuchcommand-xyz"],
        &["f", "./"],
        &["f", "sh", "-c", "exit 7"],
        &["f", "sh", "-c", "kill -TERM $$"],
        &["f", "sh", "-c", "kill -KILL $$"],
        &["f", "-c", "echo \"$0\" hi; exit 3"],
        &["f", "echo", "a b", "", "-n"],
        &["-nE", "5", "-sxeu", "f", "true"],
        &["--", "-f", "true"],
        &["-", "true"],
        &[".", "true"],
        &["-n", "-w", "0", "--nonblock", "--timeout=0", "f", "true"],
        &["-w", "1e-7", "f", "true"],
        &["-o", "f", "true"],
        &["-F", "f", "echo", "in place"],
        &["-F", "f", "nosuchcommand-xyz"],
        &["-u", "f", "true"],
        &["-h"],
        &["--help=x"],
        // Lock files named like this command's diagnostics: locked and
        // run as flock(1) locks and runs them.
        &["holders", "echo", "hi"],
        &["holders", "/bin/false"],
        &["holders", "true"],
        &["-n", "holders", "-c", "echo \"$0\""],
        &["holders"],
        &["locks", "echo", "hi"],
        &["locks", "/bin/false"],
        &["-s", "locks", "true"],
        &["locks"],
        &["--", "--holders", "echo", "hi"],
        &["f", "--holders", "x"],
        &["f", "--locks", "x"],
        &["f", "--json"],
    ];
    for args in cases {
        let run = |program: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = output(
                Command::new(program)
                    .arg0("/usr/bin/flock")
                    .args(*args)
                    .current_dir(dir.path())
                    .env("SHELL", "/bin/sh"),
            );
            let status = out.status.code().map_or_else(
                || format!("signal {:?}", out.status.signal()),
                |c| c.to_string(),
            );
            let mut files: Vec<_> = std::fs::read_dir(dir.path())
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            files.sort();
            (status, stdout(&out), stderr(&out), files)
        };
        let theirs = run("flock");
        let mine = run(BIN);
        if args == &["-h"] {
            // Same exit status; the help text lists this tool's extra options.
            assert_eq!(mine.0, theirs.0, "-h status");
            assert!(mine.1.contains(" -w, --timeout <secs>"), "{}", mine.1);
            continue;
        }
        assert_eq!(
            mine, theirs,
            "flock {args:?}: (status, stdout, stderr, files left)"
        );
    }
}

/// A lock file named `holders` or `locks` is locked as flock(1) locks it,
/// with contention seen by both tools the same way.
#[test]
fn lock_files_named_holders_or_locks_are_locked_as_by_flock1() {
    if !have("flock") {
        support::skip(
            "lock_files_named_holders_or_locks_are_locked_as_by_flock1",
            "flock(1) not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["holders", "locks"] {
        let path = dir.path().join(name);
        let starts: [fn(&[&str], &Path) -> Holder; 2] = [ours_holding, flock1_holding];
        for start in starts {
            let holder = start(&[], &path);
            for program in ["flock", BIN] {
                let out = output(
                    Command::new(program)
                        .args(["-n", name, "echo", "ran"])
                        .current_dir(dir.path()),
                );
                assert_eq!(
                    (code(&out), stdout(&out).as_str()),
                    (1, ""),
                    "{program} -n {name} beside a holder of ./{name}"
                );
            }
            assert!(holder.finish().status.success());
        }
        support::wait_free(&path);
        for program in ["flock", BIN] {
            let out = output(
                Command::new(program)
                    .args(["-n", name, "echo", "ran"])
                    .current_dir(dir.path()),
            );
            assert_eq!(
                (code(&out), stdout(&out).as_str()),
                (0, "ran\n"),
                "{program}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Modes and waiting: this command, util-linux flock(1) and Python's
// fcntl.flock, by path and by descriptor.

#[test]
fn nonblock_conflict_exits_with_the_conflict_code() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    for (args, want) in [
        (&["-n"][..], 1),
        (&["--nb"], 1),
        (&["--nonblock"], 1),
        (&["-n", "-E", "42"], 42),
        (&["-nE0"], 0),
        (&["--conflict-exit-code=7", "-n"], 7),
        (&["-w", "0"], 1),
        (&["-s", "-n"], 1),
    ] {
        let out = output(fg().args(args).arg(&path).args(["echo", "ran"]));
        assert_eq!(code(&out), want, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}: the command must not run");
    }
    assert!(holder.finish().status.success());
    let out = output(fg().arg("-n").arg(&path).args(["echo", "ran"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "ran\n"));
}

/// A program that takes `flock(2)` locks: this command or flock(1), each
/// on a path or on a descriptor of a shell, or Python's `fcntl.flock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Ours,
    OursFd,
    Flock1,
    Flock1Fd,
    Python,
}

impl Tool {
    /// Every tool installed here; a missing one is reported as skipped.
    fn available(test: &str) -> Vec<Tool> {
        let all = [
            Tool::Ours,
            Tool::OursFd,
            Tool::Flock1,
            Tool::Flock1Fd,
            Tool::Python,
        ];
        let (flock1, python3) = (have("flock"), have("python3"));
        if !flock1 {
            support::skip(test, "flock(1) not installed");
        }
        if !python3 {
            support::skip(test, "python3 not installed");
        }
        all.into_iter()
            .filter(|tool| match tool {
                Tool::Flock1 | Tool::Flock1Fd => flock1,
                Tool::Python => python3,
                Tool::Ours | Tool::OursFd => true,
            })
            .collect()
    }

    /// Takes the lock on `path` (shared or exclusive; with `nonblock`, or
    /// gives up at once), then prints `locked` and, with `hold`, keeps the
    /// lock until its stdin closes.
    fn command(self, path: &Path, shared: bool, nonblock: bool, hold: bool) -> Command {
        let then = if hold {
            "echo locked; read x || :"
        } else {
            "echo locked"
        };
        let mut opts: Vec<&str> = Vec::new();
        opts.extend(shared.then_some("-s"));
        opts.extend(nonblock.then_some("-n"));
        let opts = opts.join(" ");
        match self {
            Tool::Ours | Tool::Flock1 => {
                let program = if self == Tool::Ours { BIN } else { "flock" };
                let mut cmd = Command::new(program);
                cmd.args(opts.split_whitespace())
                    .arg(path)
                    .args(["sh", "-c", then]);
                cmd
            }
            Tool::OursFd | Tool::Flock1Fd => {
                let program = if self == Tool::OursFd {
                    "\"$FG\""
                } else {
                    "flock"
                };
                let script = format!(r#"( {program} {opts} 9 || exit $?; {then} ) 9>>"$1""#);
                bash(&script, path)
            }
            // Holds until its stdin closes either way.
            Tool::Python => python(path, if shared { "sh" } else { "ex" }, nonblock),
        }
    }

    /// The status it exits with when the lock is held elsewhere.
    fn conflict_code(self) -> i32 {
        if self == Tool::Python {
            3
        } else {
            1
        }
    }

    /// Whether the process it starts is the one that blocks in `flock(2)`
    /// (in the descriptor forms a shell's child does).
    fn blocks_itself(self) -> bool {
        matches!(self, Tool::Ours | Tool::Flock1 | Tool::Python)
    }
}

/// Every holder, shared or exclusive, against every taker trying once:
/// only two shared locks coexist, whichever program took them and whether
/// by path or by descriptor.
#[test]
fn every_holder_and_taker_conflict_unless_both_share() {
    let tools = Tool::available("every_holder_and_taker_conflict_unless_both_share");
    let (_dir, path) = support::lock_path();
    for holder in &tools {
        for held_shared in [false, true] {
            let held = Holder::start(&mut holder.command(&path, held_shared, false, true));
            for taker in &tools {
                for shared in [false, true] {
                    let out = output(&mut taker.command(&path, shared, true, false));
                    let what = format!(
                        "{holder:?} holds {}, {taker:?} asks {}: {}",
                        if held_shared { "shared" } else { "exclusive" },
                        if shared { "shared" } else { "exclusive" },
                        stderr(&out)
                    );
                    let (want, printed) = match held_shared && shared {
                        true => (0, "locked\n"),
                        false => (
                            taker.conflict_code(),
                            if *taker == Tool::Python { "busy\n" } else { "" },
                        ),
                    };
                    assert_eq!(
                        (code(&out), stdout(&out).as_str()),
                        (want, printed),
                        "{what}"
                    );
                }
            }
            assert!(held.finish().status.success(), "{holder:?}");
            support::wait_free(&path);
        }
    }
    // The spellings of the modes.
    let reader = ours_holding(&["-s"], &path);
    for (opts, want) in [
        (&["-s", "-n"][..], 0),
        (&["--shared", "-n"], 0),
        (&["-x", "-n"], 1),
        (&["-e", "-n"], 1),
        (&["--exclusive", "-n"], 1),
        (&["--ex", "-n"], 1),
        (&["-n"], 1),
    ] {
        let out = output(fg().args(opts).arg(&path).arg("true"));
        assert_eq!(code(&out), want, "{opts:?} beside a shared lock");
    }
    assert!(reader.finish().status.success());
}

/// Every waiter, blocked in `flock(2)`, gets the lock when every holder
/// releases it, and only then.
#[test]
fn every_waiter_gets_the_lock_when_every_holder_releases_it() {
    let tools = Tool::available("every_waiter_gets_the_lock_when_every_holder_releases_it");
    let (_dir, path) = support::lock_path();
    for holder in &tools {
        for waiter in &tools {
            let held = Holder::start(&mut holder.command(&path, false, false, true));
            let mut waiting = Holder::spawn(&mut waiter.command(&path, false, false, false));
            wait_blocked(&path, waiter.blocks_itself().then(|| waiting.pid()));
            assert!(waiting.running(), "{waiter:?} must wait for {holder:?}");
            assert!(held.finish().status.success(), "{holder:?}");
            waiting.expect_line("locked");
            let out = waiting.finish();
            assert_eq!(
                code(&out),
                0,
                "{waiter:?} after {holder:?}: {}",
                stderr(&out)
            );
            support::wait_free(&path);
        }
    }
}

#[test]
fn a_directory_is_locked_like_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = ours_holding(&[], dir.path());
    let out = output(fg().arg("-n").arg(dir.path()).arg("true"));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(holder.finish().status.success());
    let out = output(fg().arg("-n").arg(dir.path()).arg("true"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn the_lock_file_is_created_and_a_symlink_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.lock");
    assert_eq!(code(&output(fg().arg(&path).arg("true"))), 0);
    assert!(path.is_file(), "lock file not created");
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let holder = ours_holding(&[], &link);
    assert!(!support::is_free(&path), "the link's target must be locked");
    assert!(holder.finish().status.success());
}

// ---------------------------------------------------------------------------
// The descriptor form.

#[test]
fn fd_form_locks_the_callers_descriptor_which_outlives_flockguard() {
    let (_dir, path) = support::lock_path();
    let mut shell = Holder::start(&mut bash(
        r#"( "$FG" -n 9 || exit 1; echo locked; read x || : ) 9>"$1""#,
        &path,
    ));
    // flockguard has exited; the subshell's descriptor keeps the lock.
    assert!(!support::is_free(&path), "lock lost when flockguard exited");
    let out = output(&mut bash(
        r#"( "$FG" -n 9 || exit 1; echo ran ) 9>"$1""#,
        &path,
    ));
    assert_eq!((code(&out), stdout(&out).as_str()), (1, ""));
    let out = output(&mut bash(
        r#"( "$FG" -n -E 9 9 || exit $?; echo ran ) 9>"$1""#,
        &path,
    ));
    assert_eq!(code(&out), 9, "conflict code in fd form");
    assert!(shell.running());
    assert!(shell.finish().status.success());
    support::wait_free(&path);
}

#[test]
fn fd_form_shared_and_unlock() {
    let (_dir, path) = support::lock_path();
    // Lock, check from another open file description, unlock, check again.
    let script = r#"
        exec 9>"$1"
        "$FG" 9 || exit 10
        "$FG" -n "$1" true && exit 11
        "$FG" -u 9 || exit 12
        "$FG" -n "$1" true || exit 13
        "$FG" -s 9 || exit 14
        "$FG" -s -n "$1" true || exit 15
        "$FG" -x -n "$1" true && exit 16
        "$FG" --unlock 9 || exit 17
        "$FG" -x -n "$1" true || exit 18
        echo done
    "#;
    let out = output(&mut bash(script, &path));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "done\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fd_form_read_only_descriptor_and_directory() {
    let (dir, path) = support::lock_path();
    std::fs::write(&path, b"").expect("create");
    let script = r#"
        ( "$FG" -n 9 || exit 10; "$FG" -n "$1" true && exit 11; exit 0 ) 9<"$1" || exit $?
        ( "$FG" -n 8 || exit 12; "$FG" -n "$2" true && exit 13; exit 0 ) 8<"$2" || exit $?
        echo done
    "#;
    let out = output(bash(script, &path).arg(dir.path()));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "done\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fd_form_closed_descriptor_is_ex_dataerr() {
    let out = output(&mut bash(r#"exec 7>&-; "$FG" 7"#, Path::new("unused")));
    assert_eq!(code(&out), 65);
    assert_eq!(stderr(&out), "flockguard: 7: Bad file descriptor\n");
    let out = output(fg().args(["--", "-1"]));
    assert_eq!(code(&out), 65);
    assert_eq!(stderr(&out), "flockguard: -1: Bad file descriptor\n");
}

/// The descriptor form borrows the caller's descriptor only to duplicate
/// it: the caller's descriptor stays open and usable (here it is stdout,
/// which flockguard itself writes to after locking), and the lock, taken
/// on the caller's open file description, outlives flockguard.
#[test]
fn fd_form_leaves_the_callers_descriptor_open_and_locked() {
    let (_dir, path) = support::lock_path();
    let script = r#"
        ( "$FG" --verbose 1 || exit 10
          "$FG" -n "$1" true; echo "other description: $?"
          "$FG" -n 1 && echo "same description: $?"
        ) >"$1"
    "#;
    let out = output(&mut bash(script, &path));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).expect("read the lock file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("flockguard: getting lock took "),
        "{text}"
    );
    assert_eq!(lines[1..], ["other description: 1", "same description: 0"]);
    support::wait_free(&path);
}

// ---------------------------------------------------------------------------
// Running the command.

#[test]
fn the_command_inherits_the_lock_descriptor_unless_close_is_given() {
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"").expect("create");
    let path = path.canonicalize().expect("canonical");
    let list = "echo $$; echo locked; read x || :";
    for (opts, want) in [
        (&[][..], 1),
        (&["-o"][..], 0),
        (&["--close"][..], 0),
        (&["-s", "-o"][..], 0),
    ] {
        let mut child = Holder::spawn(fg().args(opts).arg(&path).args(["sh", "-c", list]));
        let mut pid = String::new();
        child.stdout.read_line(&mut pid).expect("pid line");
        let pid = pid.trim().to_owned();
        child.expect_line("locked");
        assert_eq!(
            fds_on(&pid, &path),
            want,
            "{opts:?}: lock descriptors in the command"
        );
        // Either way the lock is held while the command runs.
        assert!(!support::is_free(&path), "{opts:?}");
        assert!(child.finish().status.success());
    }
}

#[test]
fn without_close_a_background_process_keeps_the_lock() {
    let (_dir, path) = support::lock_path();
    let fifo_dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo_dir.path().join("release");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    // The command leaves a background reader of the FIFO behind and exits.
    let script = r#"(read x < "$0") >/dev/null 2>&1 & echo started"#;
    let bg = |opts: &[&str]| {
        output(
            fg().args(opts)
                .arg(&path)
                .args(["sh", "-c", script])
                .arg(&fifo)
                .stdout(Stdio::piped()),
        )
    };
    let out = bg(&[]);
    assert_eq!(stdout(&out), "started\n");
    assert!(
        !support::is_free(&path),
        "the background process inherited the lock"
    );
    std::fs::write(&fifo, b"go\n").expect("release the background process");
    support::wait_free(&path);

    let out = bg(&["-o"]);
    assert_eq!(stdout(&out), "started\n");
    assert!(
        support::is_free(&path),
        "-o: the background process must not hold the lock"
    );
    std::fs::write(&fifo, b"go\n").expect("release the background process");
}

#[test]
fn no_fork_replaces_flockguard_and_keeps_the_lock() {
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"").expect("create");
    let path = path.canonicalize().expect("canonical");
    for opts in [&["-F"][..], &["--no-fork", "-s"]] {
        let mut child = Holder::spawn(fg().args(opts).arg(&path).args([
            "sh",
            "-c",
            "echo $$; echo locked; read x || :",
        ]));
        let mut pid = String::new();
        child.stdout.read_line(&mut pid).expect("pid line");
        child.expect_line("locked");
        assert_eq!(pid.trim(), child.pid().to_string(), "{opts:?}: no fork");
        assert_eq!(
            fds_on(pid.trim(), &path),
            1,
            "{opts:?}: the lock descriptor survives exec"
        );
        let out = output(fg().arg("-n").arg(&path).arg("true"));
        assert_eq!(code(&out), 1, "{opts:?}: lock held by the exec'd command");
        assert!(child.finish().status.success());
    }
}

#[test]
fn dash_c_runs_through_shell_or_bin_sh() {
    let (_dir, path) = support::lock_path();
    let out = output(
        fg().arg(&path)
            .args(["-c", "hello world"])
            .env("SHELL", "/bin/echo"),
    );
    assert_eq!(stdout(&out), "-c hello world\n", "$SHELL is used");
    let out = output(
        fg().arg(&path)
            .args(["-c", "echo \"$0\"; exit 4"])
            .env_remove("SHELL"),
    );
    assert_eq!((code(&out), stdout(&out).as_str()), (4, "/bin/sh\n"));
    let out = output(
        fg().arg(&path)
            .args(["--command", "echo ok"])
            .env("SHELL", ""),
    );
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "ok\n"));
}

/// The command with SIGINT at its default action: a shell started in the
/// background of a non-interactive shell inherits it ignored, and a shell
/// cannot undo that, so `kill -INT $$` would do nothing.
fn fg_default_sigint() -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = fg();
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

#[test]
fn exit_status_is_the_commands_or_128_plus_signal() {
    let (_dir, path) = support::lock_path();
    let fg = fg_default_sigint;
    for (script, want) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
        ("kill -INT $$", 128 + 2),
    ] {
        let out = output(fg().arg(&path).args(["sh", "-c", script]));
        assert_eq!(code(&out), want, "{script}");
        let out = output(fg().arg("-F").arg(&path).args(["sh", "-c", script]));
        let got = out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s));
        assert_eq!(got, Some(want), "-F {script}: the command's own status");
    }
}

#[test]
fn arguments_reach_the_command_verbatim() {
    use std::os::unix::ffi::OsStrExt;
    let (_dir, path) = support::lock_path();
    let odd = OsStr::from_bytes(b"caf\xe9");
    let out = output(
        fg().arg(&path)
            .args(["printf", "[%s]"])
            .args(["a b", "", "-n", "--", "*", "$HOME"])
            .arg(odd),
    );
    assert_eq!(out.stdout, b"[a b][][-n][--][*][$HOME][caf\xe9]");
}

#[test]
fn the_command_starts_with_default_sigpipe() {
    let (_dir, path) = support::lock_path();
    for opts in [&[][..], &["-F"]] {
        let out = output(
            fg().args(opts)
                .arg(&path)
                .args(["grep", "^SigIgn", "/proc/self/status"]),
        );
        let mask = stdout(&out);
        let hex = mask.split_whitespace().nth(1).expect("SigIgn value");
        let ignored = u64::from_str_radix(hex, 16).expect("hex");
        assert_eq!(
            ignored & (1 << (13 - 1)),
            0,
            "{opts:?}: SIGPIPE ignored in the command"
        );
    }
}

#[test]
fn verbose_reports_the_wait_and_the_command() {
    let (_dir, path) = support::lock_path();
    let out = output(fg().arg("--verbose").arg(&path).arg("true"));
    let text = stdout(&out);
    let mut lines = text.lines();
    let took = lines.next().expect("first line");
    let secs = took
        .strip_prefix("flockguard: getting lock took ")
        .and_then(|s| s.strip_suffix(" seconds"))
        .unwrap_or_else(|| panic!("{took:?}"));
    let (whole, frac) = secs.split_once('.').expect("decimal point");
    assert!(whole.parse::<u64>().is_ok() && frac.len() == 6 && frac.parse::<u32>().is_ok());
    assert_eq!(lines.next(), Some("flockguard: executing true"));

    let holder = ours_holding(&[], &path);
    let out = output(fg().args(["--verbose", "-n"]).arg(&path).arg("true"));
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("flockguard: failed to get lock\n"),
        "{}",
        stderr(&out)
    );
    assert!(holder.finish().status.success());
}

#[test]
fn help_and_version() {
    for flag in ["-h", "--help", "--he"] {
        let out = output(fg().arg(flag));
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("--allow-remote-fs"), "{flag}");
        assert!(
            stdout(&out).contains(" flockguard --holders <file> [--json]"),
            "{flag}"
        );
    }
    for flag in ["-V", "--version", "--vers"] {
        let out = output(fg().arg(flag));
        assert_eq!(code(&out), 0);
        assert_eq!(
            stdout(&out),
            format!("flockguard {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

// ---------------------------------------------------------------------------
// Filesystems.

/// A mount that is unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn creating_on_a_read_only_filesystem_is_ex_cantcreat() {
    if !support::is_root() {
        support::skip(
            "creating_on_a_read_only_filesystem_is_ex_cantcreat",
            "needs root to mount",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("mount");
    assert!(ok.success(), "mount -o ro tmpfs failed");
    let _mount = Mount(dir.path().to_owned());
    let path = dir.path().join("x.lock");
    let out = output(fg().arg(&path).arg("true"));
    assert_eq!(code(&out), 73, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "flockguard: cannot open lock file {}: Read-only file system\n",
            path.display()
        )
    );
}

#[test]
fn remote_filesystems_are_refused_unless_allowed() {
    if !support::is_root() || !have("bindfs") || !Path::new("/dev/fuse").exists() {
        support::skip(
            "remote_filesystems_are_refused_unless_allowed",
            "needs root, bindfs and /dev/fuse for a FUSE mount",
        );
        return;
    }
    let src = tempfile::tempdir().expect("tempdir");
    let mnt = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("bindfs")
        .arg(src.path())
        .arg(mnt.path())
        .status()
        .expect("bindfs");
    assert!(ok.success(), "bindfs mount failed");
    let _mount = Mount(mnt.path().to_owned());
    let path = mnt.path().join("x.lock");
    let out = output(fg().arg(&path).args(["echo", "ran"]));
    assert_eq!(code(&out), 78, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(err.contains("on FUSE"), "{err}");
    assert!(err.contains("--allow-remote-fs"), "{err}");
    assert!(!path.exists(), "the refused lock file was left behind");

    let out = output(
        fg().arg("--allow-remote-fs")
            .arg(&path)
            .args(["echo", "ran"]),
    );
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "ran\n"),
        "{}",
        stderr(&out)
    );

    // The descriptor form applies the same policy.
    let out = output(&mut bash(r#"( "$FG" 9 ) 9>"$1""#, &path));
    assert_eq!(code(&out), 78, "{}", stderr(&out));
    let out = output(&mut bash(r#"( "$FG" --allow-remote-fs 9 ) 9>"$1""#, &path));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

// ---------------------------------------------------------------------------
// Timed waits and holder diagnostics.

/// Whether `line` is the stderr line naming `pid` as holder of `name` (the
/// lock file's path, or the descriptor's number) in `mode`.
fn held_by(line: &str, name: impl std::fmt::Display, mode: &str, pid: u32) -> bool {
    line.starts_with(&format!("flockguard: {name}: pid {pid} ("))
        && line.ends_with(&format!(") holds {mode}"))
}

/// `-n` beside a holder of each tool names it, one line on stderr: PID,
/// command line and mode, and exits with the conflict code.
#[test]
fn nonblock_conflict_names_the_holder_of_every_tool() {
    let tools = Tool::available("nonblock_conflict_names_the_holder_of_every_tool");
    let (_dir, path) = support::lock_path();
    let p = path.display();
    for tool in tools.iter().filter(|tool| tool.blocks_itself()) {
        for shared in [false, true] {
            let held = Holder::start(&mut tool.command(&path, shared, false, true));
            let out = output(fg().args(["-n", "-E", "5"]).arg(&path).arg("true"));
            let (opt, mode) = if shared {
                ("-s ", "shared")
            } else {
                ("", "exclusive")
            };
            let err = stderr(&out);
            let line = format!("flockguard: {p}: pid {} (", held.pid());
            assert_eq!(code(&out), 5, "{tool:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{tool:?}: {err}");
            assert!(err.starts_with(&line), "{tool:?}: {err}");
            assert!(
                err.ends_with(&format!(") holds {mode}\n")),
                "{tool:?}: {err}"
            );
            // Python's command line is its interpreter's path and its whole
            // script, cut at 256 characters.
            match tool {
                Tool::Ours => {
                    let cmdline = format!("{BIN} {opt}{p} sh -c echo locked; read x || :");
                    assert_eq!(err, format!("{line}{cmdline}) holds {mode}\n"));
                }
                Tool::Flock1 => {
                    let cmdline = format!("flock {opt}{p} sh -c echo locked; read x || :");
                    assert_eq!(err, format!("{line}{cmdline}) holds {mode}\n"));
                }
                _ => assert!(err.contains("python3 -c \\nimport fcntl"), "{err}"),
            }
            assert!(held.finish().status.success(), "{tool:?}");
            support::wait_free(&path);
        }
    }
}

#[test]
fn wait_times_out_with_the_conflict_code_and_names_the_holder() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    for (args, want) in [
        (&["-w", "0.05"][..], 1),
        (&["--wait=0.01", "-E", "75"], 75),
        (&["--timeout", "0x1p-6", "-s"], 1),
    ] {
        let out = output(fg().args(args).arg(&path).args(["echo", "ran"]));
        assert_eq!(code(&out), want, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}: the command must not run");
        let err = stderr(&out);
        let holder_line = err.lines().nth(1).unwrap_or_default();
        assert!(
            held_by(holder_line, path.display(), "exclusive", holder.pid()),
            "{args:?}: {err}"
        );
    }
    let out = output(
        fg().args(["--verbose", "-w", "0.01"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("flockguard: timeout while waiting to get lock\n"),
        "{}",
        stderr(&out)
    );
    // The descriptor form times out the same way.
    let out = output(&mut bash(r#"( "$FG" -w 0.01 9 ) 9>"$1""#, &path));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(
            "flockguard: timed out after 0.01 seconds waiting for an exclusive lock on "
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out)
            .lines()
            .any(|line| held_by(line, 9, "exclusive", holder.pid())),
        "{}",
        stderr(&out)
    );
    assert!(holder.finish().status.success());
}

#[test]
fn wait_takes_the_lock_when_the_holder_releases() {
    let tools = Tool::available("wait_takes_the_lock_when_the_holder_releases");
    let (_dir, path) = support::lock_path();
    for tool in tools.iter().filter(|tool| tool.blocks_itself()) {
        let holder = Holder::start(&mut tool.command(&path, false, false, true));
        let mut waiter = Holder::spawn(
            fg().args(["--verbose", "-w", "600"])
                .arg(&path)
                .args(["echo", "got"]),
        );
        let line = waiter.expect_err_line("flockguard: waiting for exclusive lock on ");
        assert_eq!(
            line,
            format!(
                "flockguard: waiting for exclusive lock on {}",
                path.display()
            )
        );
        let line = waiter.expect_err_line("flockguard: ");
        assert!(
            held_by(&line, path.display(), "exclusive", holder.pid()),
            "{line}"
        );
        assert!(waiter.running(), "{tool:?}: the waiter must still wait");
        assert!(holder.finish().status.success());
        let out = waiter.finish();
        assert_eq!(code(&out), 0, "{tool:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.starts_with("flockguard: getting lock took "), "{text}");
        assert!(
            text.ends_with("flockguard: executing echo\ngot\n"),
            "{text}"
        );
    }
}

#[test]
fn verbose_blocking_wait_names_the_holder() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&["-s"], &path);
    let mut waiter = Holder::spawn(fg().arg("--verbose").arg(&path).arg("true"));
    waiter.expect_err_line("flockguard: waiting for exclusive lock on ");
    let line = waiter.expect_err_line("flockguard: ");
    assert!(
        held_by(&line, path.display(), "shared", holder.pid()),
        "{line}"
    );
    // Without -w the wait happens in the kernel.
    wait_blocked(&path, Some(waiter.pid()));
    assert!(holder.finish().status.success());
    assert_eq!(code(&waiter.finish()), 0);
}

#[test]
fn holders_lists_holders_and_kernel_waiters() {
    let (_dir, path) = support::lock_path();
    let out = output(fg().arg("--holders").arg(&path));
    assert_eq!(code(&out), 66, "a missing file");
    assert!(
        stderr(&out).starts_with("flockguard: cannot list the holders of "),
        "{}",
        stderr(&out)
    );

    std::fs::write(&path, b"").expect("create");
    let out = output(fg().arg("--holders").arg(&path));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, ""));
    let out = output(fg().args(["--json", "--holders"]).arg(&path));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "[]\n"));

    let holder = ours_holding(&[], &path);
    let waiter = Holder::spawn(fg().arg("-s").arg(&path).arg("true"));
    wait_blocked(&path, Some(waiter.pid()));
    let out = output(fg().arg("--holders").arg(&path));
    assert_eq!(code(&out), 0);
    let want = format!(
        "pid {} ({BIN} {p} sh -c echo locked; read x || :) holds exclusive\n\
         pid {} ({BIN} -s {p} true) waits for shared\n",
        holder.pid(),
        waiter.pid(),
        p = path.display()
    );
    assert_eq!(stdout(&out), want);
    assert!(holder.finish().status.success());
    assert!(waiter.finish().status.success());
}

#[test]
fn holders_json_escapes_command_lines() {
    if !have("python3") {
        support::skip(
            "holders_json_escapes_command_lines",
            "python3 not installed to parse the JSON",
        );
        return;
    }
    let (_dir, path) = support::lock_path();
    let weird = "q\"uote \\back\ttab\nnew\u{1}ctl é";
    let holder = Holder::start(
        fg().arg(&path)
            .args(["sh", "-c", "echo locked; read x || :"])
            .arg(weird),
    );
    let out = output(fg().args(["--json", "--holders"]).arg(&path));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let expected_cmdline = format!(
        "{BIN} {} sh -c echo locked; read x || : {weird}",
        path.display()
    );
    // Parse with a real JSON parser and print the fields back.
    let check = r#"
import json, sys
d = json.loads(sys.argv[1])
assert isinstance(d, list) and len(d) == 1, d
h = d[0]
assert set(h) == {"pid", "kind", "range", "mode", "waiting", "status", "cmdline", "sharers"}, h
assert h["kind"] == "flock" and h["range"] is None, h
assert h["pid"] == int(sys.argv[2]) and h["mode"] == "exclusive"
assert h["waiting"] is False and h["status"] == "confirmed" and h["sharers"] == []
assert h["cmdline"] == sys.argv[3], (h["cmdline"], sys.argv[3])
print("ok")
"#;
    let parsed = output(
        Command::new("python3")
            .args(["-c", check])
            .arg(stdout(&out))
            .arg(holder.pid().to_string())
            .arg(&expected_cmdline),
    );
    assert_eq!(
        stdout(&parsed),
        "ok\n",
        "{}\n{}",
        stdout(&out),
        stderr(&parsed)
    );
    assert!(holder.finish().status.success());
}

#[test]
fn fd_form_wait_takes_the_lock_when_the_holder_releases() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    let mut shell = Holder::spawn(&mut bash(
        r#"( "$FG" --verbose -w 600 9 && echo got ) 9>"$1""#,
        &path,
    ));
    shell.expect_err_line("flockguard: waiting for exclusive lock on ");
    assert!(shell.running());
    assert!(holder.finish().status.success());
    let out = shell.finish();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).ends_with("seconds\ngot\n"), "{}", stdout(&out));
}

// ---------------------------------------------------------------------------
// Messages: what flockguard adds to flock(1)'s output.

/// A `-w` value that comes to less than a microsecond (as flock(1)
/// computes it) is `-n`: `failed to get lock`, not a timeout.
#[test]
fn a_wait_under_a_microsecond_is_nonblocking_as_for_flock1() {
    use std::os::unix::process::CommandExt;
    if !have("flock") {
        support::skip(
            "a_wait_under_a_microsecond_is_nonblocking_as_for_flock1",
            "flock(1) not installed",
        );
        return;
    }
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    for wait in ["0.000001", "1e-6", "0.0000019", "0.000002", "0.7"] {
        let run = |program: &str| {
            let mut cmd = Command::new(program);
            cmd.arg0("flock")
                .args(["--verbose", "-w", wait])
                .arg(&path)
                .arg("true");
            let out = output(&mut cmd);
            (code(&out), stderr(&out))
        };
        // flock(1)'s one line is among this command's lines, and so is
        // neither of the other.
        let ((ours, our_lines), (theirs, their_line)) = (run(BIN), run("flock"));
        assert_eq!(ours, theirs, "-w {wait}");
        for line in [
            "flock: failed to get lock\n",
            "flock: timeout while waiting to get lock\n",
        ] {
            let said = |text: &str| text.lines().any(|l| format!("{l}\n") == line);
            assert_eq!(
                said(&our_lines),
                said(&their_line),
                "-w {wait}: {our_lines}"
            );
        }
    }
    assert!(holder.finish().status.success());
}

#[test]
fn timeout_says_it_timed_out_instead_of_the_nonblock_line() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    let nonblock = output(fg().arg("-n").arg(&path).arg("true"));
    let timed = output(fg().args(["-w", "0.05"]).arg(&path).arg("true"));
    let shared = output(fg().args(["-s", "-w", "1e-2"]).arg(&path).arg("true"));
    assert_eq!((code(&nonblock), code(&timed), code(&shared)), (1, 1, 1));
    let timed_err = stderr(&timed);
    let mut lines = timed_err.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "flockguard: timed out after 0.05 seconds waiting for an exclusive lock on {}",
                path.display()
            )
            .as_str()
        ),
        "{timed_err}"
    );
    // The holder line follows, as after -n.
    assert_eq!(
        lines.collect::<Vec<_>>(),
        stderr(&nonblock).lines().collect::<Vec<_>>()
    );
    assert!(
        stderr(&shared).starts_with(&format!(
            "flockguard: timed out after 0.01 seconds waiting for a shared lock on {}\n",
            path.display()
        )),
        "{}",
        stderr(&shared)
    );
    assert!(
        !stderr(&nonblock).contains("timed out"),
        "{}",
        stderr(&nonblock)
    );
    assert!(holder.finish().status.success());
}

#[test]
fn verbose_timeout_prints_the_holder_line_once() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    let out = output(
        fg().args(["--verbose", "-w", "0.05"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    let held = |line: &str| held_by(line, path.display(), "exclusive", holder.pid());
    assert_eq!(err.lines().filter(|line| held(line)).count(), 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "flockguard: waiting for exclusive lock on {}",
            path.display()
        )
    );
    assert!(held(lines[1]), "{err}");
    assert_eq!(lines[2], "flockguard: timeout while waiting to get lock");
    assert!(holder.finish().status.success());
}

#[test]
fn waiter_lines_name_the_mode_waited_for() {
    let (_dir, path) = support::lock_path();
    let holder = ours_holding(&[], &path);
    let writer = Holder::spawn(fg().arg(&path).arg("true"));
    wait_blocked(&path, Some(writer.pid()));
    let reader = Holder::spawn(fg().arg("-s").arg(&path).arg("true"));
    wait_blocked(&path, Some(reader.pid()));
    let out = output(fg().arg("-n").arg(&path).arg("true"));
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    let p = path.display();
    let want_writer = format!(
        "flockguard: {p}: pid {} ({BIN} {p} true) waits for exclusive\n",
        writer.pid()
    );
    let want_reader = format!(
        "flockguard: {p}: pid {} ({BIN} -s {p} true) waits for shared\n",
        reader.pid()
    );
    assert!(err.contains(&want_writer), "{err}");
    assert!(err.contains(&want_reader), "{err}");
    assert!(holder.finish().status.success());
    assert!(writer.finish().status.success());
    assert!(reader.finish().status.success());
}

#[test]
fn help_points_to_the_documentation() {
    for args in [&["--help"][..], &["-h"], &["--he"]] {
        let out = output(fg().args(args));
        assert_eq!(code(&out), 0, "{args:?}");
        let text = stdout(&out);
        assert!(text.contains("docs/cli.md"), "{args:?}: {text}");
        assert!(
            text.contains("https://docs.rs/flockguard"),
            "{args:?}: {text}"
        );
    }
    let help = stdout(&output(fg().arg("--help")));
    assert!(
        help.contains(" flockguard --holders <file> [--json]"),
        "{help}"
    );
    assert!(
        help.contains(" flockguard --locks <directory> [--json]"),
        "{help}"
    );
}

#[test]
fn holders_names_the_caller_holding_through_an_inherited_descriptor() {
    if !have("flock") {
        support::skip(
            "holders_names_the_caller_holding_through_an_inherited_descriptor",
            "flock(1) not installed",
        );
        return;
    }
    let (_dir, path) = support::lock_path();
    // flock(1) takes the lock on the shell's descriptor and exits; the
    // shell then becomes `flockguard --holders`, which holds the lock itself.
    let out = output(&mut bash(
        r#"exec 9>"$1"; flock 9 || exit 9; echo "$$"; exec "$FG" --holders "$1""#,
        &path,
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let me = lines.next().expect("pid line");
    let listed = lines.next().unwrap_or_default();
    // The command names itself as the holder in so many words.
    assert!(
        listed.ends_with(&format!("now held by pid {me} (this process)")),
        "{text}"
    );
}

#[test]
fn control_characters_in_names_and_command_lines_are_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("new\nline\u{1b}[31m");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("x.lock");
    let holder = Holder::start(fg().arg(&path).args([
        "sh",
        "-c",
        "echo locked; read x || :",
        "\u{1b}]0;title\u{7}",
    ]));
    let escaped_path = format!("{}/new\\nline\\x1b[31m/x.lock", dir.path().display());
    for args in [&["-n"][..], &["-w", "0.01"], &["--verbose", "-w", "0.01"]] {
        let out = output(fg().args(args).arg(&path).arg("true"));
        assert_eq!(code(&out), 1, "{args:?}");
        let err = stderr(&out);
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{7}'),
            "{args:?}: {err:?}"
        );
        assert!(
            err.lines().all(|l| l.starts_with("flockguard: ")),
            "{args:?}: a name split a line: {err:?}"
        );
        // The command line is read within the command's diagnostics budget,
        // which a loaded machine can exhaust; `--holders` below has none.
        assert!(err.contains(&escaped_path), "{args:?}: {err:?}");
    }
    let out = output(fg().arg("--holders").arg(&path));
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out).lines().count(), 1, "{:?}", stdout(&out));
    assert!(!stdout(&out).contains('\u{1b}'), "{:?}", stdout(&out));
    assert!(
        stdout(&out).contains("\\x1b]0;title\\x07)"),
        "{:?}",
        stdout(&out)
    );
    let out = output(fg().arg("--locks").arg(dir.path()));
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out).lines().count(), 1, "{:?}", stdout(&out));
    assert!(stdout(&out).starts_with(&format!("{escaped_path}: pid {} (", holder.pid())));
    assert!(!stdout(&out).contains('\u{1b}'), "{:?}", stdout(&out));
    assert!(holder.finish().status.success());
}

// ---------------------------------------------------------------------------
// `flockguard --locks DIR`.

#[test]
fn locks_lists_locked_files_under_a_directory_and_omits_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path();
    let out = output(fg().arg("--locks").arg(top));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, ""),
        "{}",
        stderr(&out)
    );
    let out = output(fg().args(["--json", "--locks"]).arg(top));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "[]\n"));

    std::fs::create_dir_all(top.join("a/b")).expect("mkdir");
    let deep = top.join("a/b/deep.lock");
    let idle = top.join("a/idle.lock");
    std::fs::write(&idle, b"").expect("idle file");
    let writer = ours_holding(&[], &deep);
    let waiter = Holder::spawn(fg().arg("-s").arg(&deep).arg("true"));
    wait_blocked(&deep, Some(waiter.pid()));
    let reader = ours_holding(&["-s"], &top.join("a"));
    let out = output(fg().arg("--locks").arg(top));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let p = deep.display();
    let want = format!(
        "{a}: pid {r} ({BIN} -s {a} sh -c echo locked; read x || :) holds shared\n\
         {p}: pid {w} ({BIN} {p} sh -c echo locked; read x || :) holds exclusive; \
         pid {q} ({BIN} -s {p} true) waits for shared\n",
        a = top.join("a").display(),
        r = reader.pid(),
        w = writer.pid(),
        q = waiter.pid(),
    );
    assert_eq!(stdout(&out), want);
    assert!(writer.finish().status.success());
    assert!(waiter.finish().status.success());
    assert!(reader.finish().status.success());
    support::wait_free(&deep);
    let out = output(fg().arg("--locks").arg(top));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, ""));
}

#[test]
fn locks_does_not_follow_symbolic_links() {
    let inside = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere.lock");
    std::os::unix::fs::symlink(&target, inside.path().join("file-link")).expect("symlink");
    std::os::unix::fs::symlink(outside.path(), inside.path().join("dir-link")).expect("symlink");
    let holder = ours_holding(&[], &target);
    let out = output(fg().arg("--locks").arg(inside.path()));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, ""),
        "{}",
        stderr(&out)
    );
    let out = output(fg().arg("--locks").arg(outside.path()));
    assert!(stdout(&out).starts_with(&format!("{}: pid {}", target.display(), holder.pid())));
    assert!(holder.finish().status.success());
}

#[test]
fn locks_refuses_a_missing_directory_or_a_file() {
    let (dir, path) = support::lock_path();
    let out = output(fg().arg("--locks").arg(dir.path().join("missing")));
    assert_eq!(code(&out), 66);
    assert_eq!(
        stderr(&out),
        format!(
            "flockguard: cannot read directory {}: No such file or directory\n",
            dir.path().join("missing").display()
        )
    );
    std::fs::write(&path, b"").expect("create");
    let out = output(fg().arg("--locks").arg(&path));
    assert_eq!(code(&out), 66);
    let out = output(fg().arg("--locks"));
    assert_eq!(code(&out), 64);
}

#[test]
fn locks_json_is_valid_for_any_file_name_and_command_line() {
    use std::os::unix::ffi::OsStrExt;
    if !have("python3") {
        support::skip(
            "locks_json_is_valid_for_any_file_name_and_command_line",
            "python3 not installed to parse the JSON",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let names: [&[u8]; 4] = [
        b"with space.lock",
        b"new\nline \"quoted\" back\\slash.lock",
        b"caf\xe9 \xff\xfe.lock",
        b"ctl\x01\x1b[0m\x7f.lock",
    ];
    let weird_arg = "arg \"q\" \\ \n\t\u{1}\u{1b} é";
    let holders: Vec<(PathBuf, Holder)> = names
        .iter()
        .map(|name| {
            let path = dir.path().join(OsStr::from_bytes(name));
            let holder = Holder::start(
                fg().arg(&path)
                    .args(["sh", "-c", "echo locked; read x || :"])
                    .arg(weird_arg),
            );
            (path, holder)
        })
        .collect();
    let out = output(fg().args(["--json", "--locks"]).arg(dir.path()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A real parser checks the document; the expected paths go in as hex
    // bytes so that nothing about them is lost on the way.
    let check = r#"
import json, sys
doc = json.loads(sys.stdin.buffer.read())
want = {bytes.fromhex(h): int(p) for h, p in zip(sys.argv[1::2], sys.argv[2::2])}
assert isinstance(doc, list) and len(doc) == len(want), doc
got = {}
for item in doc:
    assert set(item) == {"path", "path_bytes", "holders"}, item
    raw = bytes(item["path_bytes"]) if item["path_bytes"] is not None else item["path"].encode()
    if item["path_bytes"] is None:
        raw.decode("utf-8")
    else:
        assert item["path"] == raw.decode("utf-8", "replace"), item
    [h] = item["holders"]
    assert h["mode"] == "exclusive" and h["waiting"] is False, h
    assert h["cmdline"].endswith(" " + "arg \"q\" \\ \n\t\u0001\u001b \u00e9"), h["cmdline"]
    got[raw] = h["pid"]
assert got == want, (got, want)
print("ok")
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", check]);
    for (path, holder) in &holders {
        let hex: String = path
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        cmd.arg(hex).arg(holder.pid().to_string());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &out.stdout)
        .expect("feed JSON");
    let parsed = child.wait_with_output().expect("python3");
    assert_eq!(
        stdout(&parsed),
        "ok\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&parsed)
    );
    for (_, holder) in holders {
        assert!(holder.finish().status.success());
    }
}

// ---------------------------------------------------------------------------
// Opening read-only, as flock(1) does: no side effects on the lock file.

#[test]
fn a_script_can_lock_itself_with_the_man_page_idiom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("self-locking.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         [ \"${FLOCKER}\" != \"$0\" ] && exec env FLOCKER=\"$0\" \"$FG\" -en \"$0\" \"$0\" \"$@\" || :\n\
         \"$FG\" -n \"$0\" true 2>/dev/null && { echo 'not locked'; exit 9; }\n\
         echo \"locked: $*\"\n",
    )
    .expect("write script");
    let mut perms = std::fs::metadata(&script).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    let out = output(Command::new(&script).args(["a", "b c"]).env("FG", BIN));
    assert_eq!(
        (code(&out), stdout(&out).as_str(), stderr(&out).as_str()),
        (0, "locked: a b c\n", "")
    );
    // A second copy started while the first runs gives up at once (-n).
    let holder = ours_holding(&[], &script);
    let out = output(Command::new(&script).env("FG", BIN));
    assert_eq!((code(&out), stdout(&out).as_str()), (1, ""));
    assert!(holder.finish().status.success());
}

#[test]
fn a_read_lease_does_not_keep_the_lock_from_being_taken() {
    if !have("python3") || !have("timeout") {
        support::skip(
            "a_read_lease_does_not_keep_the_lock_from_being_taken",
            "python3 and timeout(1) needed",
        );
        return;
    }
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"").expect("create");
    // SIGIO, the lease-break signal, ends the lease holder by default.
    let lease = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
except OSError as e:
    print("nolease", e, flush=True)
    sys.exit(0)
print("locked", flush=True)
sys.stdin.readline()
print("lease", fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK, flush=True)
"#;
    let mut holder = Holder::spawn(Command::new("python3").args(["-c", lease]).arg(&path));
    let mut first = String::new();
    holder.stdout.read_line(&mut first).expect("lease line");
    if first.starts_with("nolease") {
        support::skip(
            "a_read_lease_does_not_keep_the_lock_from_being_taken",
            first.trim(),
        );
        return;
    }
    assert_eq!(first, "locked\n");
    for opts in [&["-n"][..], &["-s", "-n"], &["-w", "5"]] {
        let started = Instant::now();
        let out = output(
            Command::new("timeout")
                .arg("20")
                .arg(BIN)
                .args(opts)
                .arg(&path)
                .args(["echo", "ran"]),
        );
        assert_eq!(
            (code(&out), stdout(&out).as_str()),
            (0, "ran\n"),
            "{opts:?}: {}",
            stderr(&out)
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{opts:?}: waited for the lease"
        );
        assert!(holder.running(), "{opts:?}: the lease was broken");
    }
    std::io::Write::write_all(holder.stdin.as_mut().expect("stdin"), b"\n").expect("write");
    let out = holder.finish();
    assert_eq!(stdout(&out), "lease True\n", "{}", stderr(&out));
}

#[test]
fn a_held_lock_does_not_block_a_read_only_remount() {
    if !support::is_root() {
        support::skip(
            "a_held_lock_does_not_block_a_read_only_remount",
            "needs root to mount",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs failed");
    let _mount = Mount(dir.path().to_owned());
    // One lock file created by the command, one that existed before.
    let created = dir.path().join("created.lock");
    let existing = dir.path().join("existing.lock");
    std::fs::write(&existing, b"").expect("create");
    let first = ours_holding(&[], &created);
    let second = ours_holding(&["-s"], &existing);
    let out = output(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(dir.path()),
    );
    assert_eq!(code(&out), 0, "remount ro while locked: {}", stderr(&out));
    assert!(!support::is_free(&created), "the lock must still be held");
    assert!(!support::is_free(&existing), "the lock must still be held");
    assert!(first.finish().status.success());
    assert!(second.finish().status.success());
}

#[test]
fn releasing_the_lock_raises_close_nowrite_not_close_write() {
    use rustix::fs::inotify;
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, b"").expect("create");
    let watcher = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
        .expect("inotify_init");
    inotify::add_watch(
        &watcher,
        &path,
        inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::CLOSE_NOWRITE,
    )
    .expect("inotify_add_watch");
    for args in [&[][..], &["-s"], &["-n"], &["-w", "1"], &["-F"]] {
        let out = output(fg().args(args).arg(&path).arg("true"));
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        let (mut write, mut nowrite) = (0, 0);
        let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&watcher, &mut buf);
        loop {
            match reader.next() {
                Ok(event) => {
                    if event.events().contains(inotify::ReadFlags::CLOSE_WRITE) {
                        write += 1;
                    }
                    if event.events().contains(inotify::ReadFlags::CLOSE_NOWRITE) {
                        nowrite += 1;
                    }
                }
                Err(err) if err == rustix::io::Errno::AGAIN => break,
                Err(err) => panic!("read inotify: {err}"),
            }
        }
        assert_eq!(write, 0, "{args:?}: a release looked like a write");
        assert!(nowrite >= 1, "{args:?}: no close seen");
    }
}

#[test]
fn locks_enters_mount_points_below_the_directory() {
    if !support::is_root() {
        support::skip(
            "locks_enters_mount_points_below_the_directory",
            "needs root to mount",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("mnt");
    std::fs::create_dir(&sub).expect("mkdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs failed");
    let _mount = Mount(sub.clone());
    let path = sub.join("on-tmpfs.lock");
    let holder = ours_holding(&["-s"], &path);
    let out = output(fg().arg("--locks").arg(dir.path()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with(&format!("{}: pid {} (", path.display(), holder.pid())),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).ends_with(") holds shared\n"),
        "{}",
        stdout(&out)
    );
    assert!(holder.finish().status.success());
}

/// python3 taking `fcntl.lockf` (a POSIX record lock) on `len` bytes from
/// `start` without waiting: exits 0 if it got it, 3 if it is held.
fn python_lockf_try(path: &Path, exclusive: bool, start: u64, len: u64) -> i32 {
    let script = "import fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  op = (fcntl.LOCK_EX if sys.argv[2] == 'w' else fcntl.LOCK_SH) | fcntl.LOCK_NB\n\
                  try:\n    fcntl.lockf(fd, op, int(sys.argv[4]), int(sys.argv[3]))\n\
                  except OSError:\n    sys.exit(3)\n";
    let out = output(
        Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .arg(if exclusive { "w" } else { "r" })
            .arg(start.to_string())
            .arg(len.to_string()),
    );
    code(&out)
}

#[test]
fn fcntl_takes_an_ofd_lock_that_lockf_programs_see() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ofd.lock");
    // Whole file: python's lockf is refused, flock(2) is not concerned.
    let holder = ours_holding(&["--fcntl"], &path);
    assert_eq!(python_lockf_try(&path, false, 0, 0), 3);
    let out = output(fg().args(["-n"]).arg(&path).arg("true"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Another --fcntl taker conflicts, with the conflict exit code.
    let out = output(
        fg().args(["--fcntl", "-s", "-n", "-E", "7"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(holder.finish().status.success());
    assert_eq!(python_lockf_try(&path, true, 0, 0), 0);
    // A shared --fcntl lock leaves readers in and keeps writers out.
    let holder = ours_holding(&["--fcntl", "-s"], &path);
    assert_eq!(python_lockf_try(&path, false, 0, 0), 0);
    assert_eq!(python_lockf_try(&path, true, 0, 0), 3);
    assert!(holder.finish().status.success());
}

#[test]
fn start_and_length_lock_a_byte_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("range.lock");
    let holder = ours_holding(&["--start", "100", "--length", "10"], &path);
    assert_eq!(python_lockf_try(&path, true, 105, 1), 3);
    assert_eq!(python_lockf_try(&path, true, 0, 100), 0);
    assert_eq!(python_lockf_try(&path, true, 110, 0), 0);
    let out = output(
        fg().args(["-n", "--start", "109", "--length", "1"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = output(fg().args(["-n", "--start", "110"]).arg(&path).arg("true"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // --holders names the range.
    let out = output(fg().arg("--holders").arg(&path));
    assert!(
        stdout(&out).contains("holds exclusive OFD lock on bytes 100..110"),
        "{}",
        stdout(&out)
    );
    assert!(holder.finish().status.success());
    assert_eq!(python_lockf_try(&path, true, 105, 1), 0);
}

#[test]
fn start_and_length_are_checked_as_util_linux_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.lock");
    let out = output(fg().args(["--start", "x"]).arg(&path).arg("true"));
    assert_eq!(code(&out), 64);
    assert_eq!(
        stderr(&out),
        "flockguard: invalid as start offset: 'x': Invalid argument\n"
    );
    let out = output(fg().args(["--length", "1Q"]).arg(&path).arg("true"));
    assert_eq!(code(&out), 64);
    assert_eq!(
        stderr(&out),
        "flockguard: invalid as length of lock range: '1Q': Invalid argument\n"
    );
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------
// --fcntl: open file description locks, which fcntl(2) and lockf(3) see.

const PY_LOCKF: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a+")
op = fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX
if len(sys.argv) > 5:
    op |= fcntl.LOCK_NB
try:
    fcntl.lockf(f, op, int(sys.argv[4]), int(sys.argv[3]))
except OSError:
    print("busy", flush=True)
    sys.exit(3)
print("locked", flush=True)
sys.stdin.read()
"#;

/// Python's `fcntl.lockf` (a POSIX record lock) on `len` bytes of `path`
/// from `start` (`len` 0: to the end), held until its stdin closes; with
/// `nonblock`, it prints `busy` and exits 3 on a conflict.
fn lockf(path: &Path, mode: &str, start: u64, len: u64, nonblock: bool) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PY_LOCKF]).arg(path).arg(mode);
    cmd.args([start.to_string(), len.to_string()]);
    cmd.args(nonblock.then_some("nb"));
    cmd
}

/// Waits until /proc/locks lists a blocked OFD lock request on `path`.
fn wait_blocked_ofd(path: &Path) {
    let id = format!(":{} ", std::fs::metadata(path).expect("stat").ino());
    support::wait_until("a blocked OFD waiter", || {
        let locks = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        locks
            .lines()
            .any(|l| l.contains("-> OFDLCK") && l.contains(&id))
    });
}

/// `--fcntl` takes `fcntl(F_OFD_SETLK)` locks: they conflict with another
/// program's `lockf(3)` locks in both directions, with the exit codes of
/// `-n`, `-E` and `-w`, and never with `flock(2)` locks.
#[test]
fn fcntl_locks_conflict_with_lockf_and_not_with_flock() {
    if !have("python3") {
        return support::skip(
            "fcntl_locks_conflict_with_lockf_and_not_with_flock",
            "python3 not installed",
        );
    }
    let (_dir, path) = support::lock_path();
    let held = Holder::start(&mut lockf(&path, "ex", 5, 10, false));
    for (args, want, ran) in [
        (&["--fcntl", "-n"][..], 1, false),
        (&["--fcntl", "-n", "-E", "9"], 9, false),
        (&["--fcntl", "-s", "--nonblocking"], 1, false),
        (&["--fcntl", "-w", "0.05"], 1, false),
        (&["--fcntl", "-w", "0.05", "-E", "0"], 0, false),
        (&["--fcntl", "-nE", "7"], 7, false),
        (&["-n"], 0, true),
    ] {
        let out = output(fg().args(args).arg(&path).args(["echo", "ran"]));
        let err = stderr(&out);
        assert_eq!(code(&out), want, "{args:?}: {err}");
        assert_eq!(stdout(&out) == "ran\n", ran, "{args:?}: {err}");
        if !ran {
            let pid = format!(": pid {} (", held.pid());
            assert!(err.contains(&pid), "{args:?} must name the holder: {err}");
            assert!(err.contains(") holds exclusive POSIX lock on bytes 5..15\n"));
        }
    }
    // A waiter takes the lock when the lockf(3) lock goes.
    let mut waiter = Holder::spawn(fg().arg("--fcntl").arg(&path).args(["echo", "locked"]));
    wait_blocked_ofd(&path);
    assert!(waiter.running(), "--fcntl must wait for the lockf(3) lock");
    assert!(held.finish().status.success());
    waiter.expect_line("locked");
    assert_eq!(code(&waiter.finish()), 0);
    // The other direction: lockf(3) beside the command's OFD locks.
    for (opts, lockf_sh, lockf_ex) in [(&["--fcntl"][..], 3, 3), (&["--fcntl", "-s"], 0, 3)] {
        let held = ours_holding(opts, &path);
        for (mode, want) in [("sh", lockf_sh), ("ex", lockf_ex)] {
            for (start, len) in [(0, 0), (1000, 1)] {
                let out = output(&mut lockf(&path, mode, start, len, true));
                assert_eq!(
                    code(&out),
                    want,
                    "{opts:?} held, lockf {mode} {start}+{len}"
                );
            }
        }
        let out = output(&mut python(&path, "ex", true));
        assert_eq!(code(&out), 0, "{opts:?} held: flock(2) must not conflict");
        assert!(held.finish().status.success());
    }
}

/// An exclusive `--fcntl` lock needs a descriptor open for writing: a
/// directory or a read-only descriptor is exit 65, as for flock(1)
/// (whose `fcntl(2)` fails with `EBADF`); a shared lock needs none.
#[test]
fn exclusive_fcntl_lock_needs_write_access() {
    let (dir, path) = support::lock_path();
    let out = output(fg().arg("--fcntl").arg(dir.path()).arg("true"));
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("open for writing"),
        "{}",
        stderr(&out)
    );
    let out = output(fg().args(["--fcntl", "-s"]).arg(dir.path()).arg("true"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(&path, "").expect("create");
    for (script, want) in [
        (r#""$FG" --fcntl 9 9<"$1""#, 65),
        (r#""$FG" --fcntl -s 9 9<"$1""#, 0),
        (r#""$FG" --fcntl 9 9>>"$1""#, 0),
        (r#""$FG" --fcntl -u 9 9<"$1""#, 0),
    ] {
        let out = output(&mut bash(script, &path));
        assert_eq!(code(&out), want, "{script}: {}", stderr(&out));
    }
    // The descriptor form's lock is the caller's, released by -u.
    let script = r#"exec 9>>"$1"; "$FG" --fcntl 9; "$FG" -n --fcntl "$1" true; echo $?;
        "$FG" --fcntl -u 9; "$FG" -n --fcntl "$1" true; echo $?"#;
    let out = output(&mut bash(script, &path));
    assert_eq!(stdout(&out), "1\n0\n", "{}", stderr(&out));
}

/// `--holders` and `--locks` list POSIX (`lockf(3)`) and OFD holders with
/// their kind and bytes; a file that only `lockf(3)` holds is never free.
#[test]
fn holders_and_locks_show_lockf_and_ofd_holders() {
    if !have("python3") {
        return support::skip(
            "holders_and_locks_show_lockf_and_ofd_holders",
            "python3 not installed",
        );
    }
    let (dir, path) = support::lock_path();
    let held = Holder::start(&mut lockf(&path, "ex", 5, 10, false));
    let line = format!("pid {} (", held.pid());
    let out = output(fg().arg("--holders").arg(&path));
    let text = stdout(&out);
    assert_eq!((code(&out), text.lines().count()), (0, 1), "{text}");
    assert!(text.starts_with(&line), "{text}");
    assert!(
        text.ends_with(") holds exclusive POSIX lock on bytes 5..15\n"),
        "{text}"
    );
    let out = output(fg().arg("--locks").arg(dir.path()));
    assert_eq!(stdout(&out), format!("{}: {text}", path.display()));
    let out = output(fg().args(["--json", "--holders"]).arg(&path));
    let json = stdout(&out);
    let want = format!("{{\"pid\":{},\"kind\":\"POSIX\",\"range\":{{\"start\":5,\"len\":10}},\"mode\":\"exclusive\"", held.pid());
    assert!(json.contains(&want), "{json}");
    assert!(held.finish().status.success());
    let ours = ours_holding(&["--fcntl", "-s"], &path);
    let out = output(fg().arg("--holders").arg(&path));
    let text = stdout(&out);
    assert!(text.contains(&format!("pid {} (", ours.pid())), "{text}");
    assert!(text.contains(") holds shared OFD lock\n"), "{text}");
    assert!(ours.finish().status.success());
    let out = output(fg().arg("--holders").arg(&path));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, ""));
}

/// A `--length` beyond 2^63 is a negative `off_t` to util-linux, which
/// `fcntl(2)` counts back from the start: `--start 10 --length 2^64-1`
/// locks byte 9 alone.
#[test]
fn a_length_past_2_63_counts_back_from_the_start() {
    if !have("python3") {
        return support::skip(
            "a_length_past_2_63_counts_back_from_the_start",
            "python3 not installed",
        );
    }
    let (_dir, path) = support::lock_path();
    let held = ours_holding(
        &["--start", "10", "--length", "18446744073709551615"],
        &path,
    );
    for (start, len, want) in [(9, 1, 3), (0, 9, 0), (10, 0, 0), (0, 0, 3)] {
        let out = output(&mut lockf(&path, "ex", start, len, true));
        assert_eq!(code(&out), want, "lockf {start}+{len}: {}", stderr(&out));
    }
    assert!(held.finish().status.success());
    // Before byte 0, or past 2^63 - 1: exit 65, as fcntl(2)'s EINVAL and
    // EOVERFLOW are for flock(1).
    for args in [
        &["--start", "1", "--length", "18446744073709551614"][..],
        &["--start", "9223372036854775807", "--length", "2"],
        &["--start", "9223372036854775808"],
    ] {
        let out = output(fg().args(args).arg(&path).arg("true"));
        assert_eq!(code(&out), 65, "{args:?}: {}", stderr(&out));
    }
}

/// A conflict names only the holders whose locks can be in the way: a
/// `lockf(3)` lock does not keep a flock(2) lock out on a local
/// filesystem, and one on other bytes does not keep an `--fcntl` range out.
#[test]
fn a_conflict_names_only_holders_that_can_be_in_the_way() {
    if !have("python3") {
        return support::skip(
            "a_conflict_names_only_holders_that_can_be_in_the_way",
            "python3 not installed",
        );
    }
    let (_dir, path) = support::lock_path();
    let posix = Holder::start(&mut lockf(&path, "ex", 40, 10, false));
    let flocked =
        Holder::start(
            fg().arg("-s")
                .arg(&path)
                .args(["sh", "-c", "echo locked; read x || :"]),
        );
    let out = output(fg().arg("-n").arg(&path).arg("true"));
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains(&format!(": pid {} (", flocked.pid())), "{err}");
    assert!(!err.contains(&format!(": pid {} (", posix.pid())), "{err}");
    let near = Holder::start(&mut lockf(&path, "ex", 5, 10, false));
    let args = ["--fcntl", "--start", "0", "--length", "10", "-n"];
    let out = output(fg().args(args).arg(&path).arg("true"));
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains(&format!(": pid {} (", near.pid())), "{err}");
    assert!(!err.contains(&format!(": pid {} (", posix.pid())), "{err}");
    for holder in [near, posix, flocked] {
        assert!(holder.finish().status.success());
    }
}
