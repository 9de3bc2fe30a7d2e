//! Faults: a holder killed mid-hold, signal storms during a blocking wait,
//! fork and exec while holding.

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use flockguard::{
    block_flock, flock_timeout, try_flock, Error, Exclusive, LockFile, LockOptions, Shared,
};

use crate::support;
use crate::support::rig;
use crate::support::Child;

const WAIT: Duration = Duration::from_secs(30);

// -------------------------------------------------------------- child side

/// In a child: holds an exclusive lock until the parent lets go (or kills it).
fn child_hold(path: &str) {
    let guard = try_flock::<Exclusive>(path).expect("child lock");
    support::tell("LOCKED");
    support::wait_for_parent(|_| {});
    drop(guard);
}

/// In a child: prints `FD <target>` for each open descriptor, then `END`.
fn child_list_fds() {
    for target in rig::fd_targets() {
        support::tell(&format!("FD {}", target.display()));
    }
    support::tell("END");
}

/// In a child: takes the lock, forks, and in the grandchild applies `op`
/// (`unlock`, `downgrade`, `unlink`, `drop`) to the inherited guard; the
/// grandchild prints `GRANDCHILD <result>`. Then holds until released.
fn child_fork(path: &str, op: &str) {
    let guard = try_flock::<Exclusive>(path).expect("child lock");
    // SAFETY: the grandchild only drops or converts the guard, prints a
    // line and calls _exit; no lock of the parent is needed for that.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outcome = match op {
            "unlock" => describe(guard.unlock().map(drop).map_err(Into::into)),
            "downgrade" => describe(guard.downgrade().map(drop).map_err(Into::into)),
            "unlink" => describe(guard.unlink_and_unlock().map_err(Into::into)),
            "drop" => {
                drop(guard);
                "dropped".to_owned()
            }
            other => panic!("unknown op {other}"),
        };
        support::tell(&format!("GRANDCHILD {outcome}"));
        // SAFETY: ends the forked process without running the parent's
        // atexit handlers or destructors a second time.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the grandchild created above.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    support::tell("REAPED");
    support::wait_for_parent(|_| {});
    drop(guard);
}

fn describe(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err @ Error::NotOwner { .. }) => format!("NotOwner {err}"),
        Err(err) => format!("other {err:?}"),
    }
}

pub const CHILDREN: &[support::Role] = &[
    ("faults::hold", |a| child_hold(&a[0])),
    ("faults::list-fds", |_| child_list_fds()),
    ("faults::fork", |a| child_fork(&a[0], &a[1])),
];

// ------------------------------------------------------------- SIGKILL

#[test]
fn holder_killed_mid_hold_releases_blocked_waiter() {
    let (_dir, path) = support::lock_path();
    let mut holder = Child::spawn(&["faults::hold", path.to_str().unwrap()]);
    holder.expect_line("LOCKED", WAIT);

    let (tx, rx) = mpsc::channel();
    let waiter_path = path.clone();
    let waiter = std::thread::spawn(move || {
        let guard = block_flock::<Exclusive>(&waiter_path);
        tx.send(guard.map(drop)).unwrap();
        // Keep the thread (not the guard) alive until the parent checked.
    });
    // A timed waiter beside it: it polls with LOCK_NB, so it shows in
    // /proc/locks only while it holds the lock.
    let (timed_tx, timed_rx) = mpsc::channel();
    let timed_path = path.clone();
    let timed = std::thread::spawn(move || {
        let guard = flock_timeout::<Exclusive>(&timed_path, Duration::from_secs(600));
        timed_tx.send(guard.map(drop)).unwrap();
    });
    rig::wait_until("waiter blocked in flock", WAIT, || {
        rig::blocked_waiters(&path) == 1
    });
    assert!(
        rx.try_recv().is_err(),
        "waiter returned while the holder lived"
    );
    assert!(
        timed_rx.try_recv().is_err(),
        "timed waiter returned while the holder lived"
    );

    let status = holder.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    rx.recv_timeout(WAIT)
        .expect("waiter still blocked after the holder was killed")
        .expect("waiter got an error");
    timed_rx
        .recv_timeout(WAIT)
        .expect("timed waiter still waiting after the holder was killed")
        .expect("timed waiter got an error");
    waiter.join().unwrap();
    timed.join().unwrap();
    support::wait_free(&path);
}

#[test]
fn holder_killed_mid_hold_lets_try_lock_succeed() {
    let (_dir, path) = support::lock_path();
    let mut holder = Child::spawn(&["faults::hold", path.to_str().unwrap()]);
    holder.expect_line("LOCKED", WAIT);
    let file = LockFile::open(&path).unwrap();
    let file = file.try_lock::<Shared>().unwrap_err().into_inner();
    holder.kill();
    // The kernel releases the lock when the killed process's descriptors
    // close, which happens before wait() reaps it.
    drop(file.try_lock::<Shared>().expect("lock free after SIGKILL"));
}

// ----------------------------------------------------------- signal storm

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Installs a SIGUSR1 handler without `SA_RESTART`, so a blocking
/// `flock(2)` interrupted by it fails with `EINTR`.
/// The handler is process-wide, so a test that installs it runs in a process
/// of its own ([`support::rerun_alone`]).
fn install_eintr_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler only touches an
        // atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_signal as *const () as libc::sighandler_t;
            action.sa_flags = 0; // no SA_RESTART
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
    });
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn signal_thread(tid: libc::pid_t) {
    // SAFETY: sends SIGUSR1, which has a handler, to a thread of this process.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    assert_eq!(rc, 0, "tgkill");
}

/// Sends `count` signals to `tid`, each after the previous one was handled
/// and the thread is blocked in `flock(2)` on `path` again; fails as soon
/// as the wait ends (reported on `done`).
fn storm(tid: libc::pid_t, path: &Path, count: usize, done: &mpsc::Receiver<Result<(), Error>>) {
    for i in 0..count {
        rig::wait_until("thread blocked in flock", WAIT, || {
            if let Ok(result) = done.try_recv() {
                panic!("wait ended after {i} signals: {result:?}");
            }
            rig::blocked_waiters(path) == 1
        });
        let before = HANDLED.load(Ordering::SeqCst);
        signal_thread(tid);
        rig::wait_until("signal handled", WAIT, || {
            HANDLED.load(Ordering::SeqCst) > before
        });
    }
}

/// The control: a raw `flock(2)` under the same handler does fail with
/// `EINTR`, so the library's retry is what keeps the wait going.
#[test]
fn signal_interrupts_raw_flock_with_eintr() {
    if support::rerun_alone() {
        return;
    }
    install_eintr_handler();
    let (_dir, path) = support::lock_path();
    let _held = try_flock::<Exclusive>(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let fd = file.as_raw_fd();
    let raw = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        // SAFETY: fd stays open until this thread is joined.
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
        (rc, std::io::Error::last_os_error().raw_os_error())
    });
    let tid = rx.recv().unwrap();
    rig::wait_until("raw flock blocked", WAIT, || {
        rig::blocked_waiters(&path) == 1
    });
    signal_thread(tid);
    assert_eq!(raw.join().unwrap(), (-1, Some(libc::EINTR)));
}

#[test]
fn signal_storm_does_not_interrupt_blocking_lock() {
    if support::rerun_alone() {
        return;
    }
    install_eintr_handler();
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter_path = path.clone();
    let waiter = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        done_tx
            .send(block_flock::<Shared>(&waiter_path).map(drop))
            .unwrap();
    });
    let tid = tid_rx.recv().unwrap();
    let before = HANDLED.load(Ordering::SeqCst);
    storm(tid, &path, 200, &done_rx);
    assert!(HANDLED.load(Ordering::SeqCst) - before >= 200);
    assert!(
        done_rx.try_recv().is_err(),
        "wait ended while the lock was held"
    );
    drop(held);
    done_rx
        .recv_timeout(WAIT)
        .expect("waiter still blocked after release")
        .expect("spurious error from block_flock");
    waiter.join().unwrap();
}

#[test]
fn signal_storm_does_not_interrupt_blocking_upgrade() {
    if support::rerun_alone() {
        return;
    }
    install_eintr_handler();
    let (_dir, path) = support::lock_path();
    let other = try_flock::<Shared>(&path).unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter_path = path.clone();
    let waiter = std::thread::spawn(move || {
        let mine = try_flock::<Shared>(&waiter_path).unwrap();
        tid_tx.send(gettid()).unwrap();
        done_tx
            .send(mine.upgrade().map(drop).map_err(Into::into))
            .unwrap();
    });
    let tid = tid_rx.recv().unwrap();
    storm(tid, &path, 100, &done_rx);
    assert!(
        done_rx.try_recv().is_err(),
        "upgrade ended while shared was held"
    );
    drop(other);
    done_rx
        .recv_timeout(WAIT)
        .expect("upgrade still blocked after release")
        .expect("spurious error from upgrade");
    waiter.join().unwrap();
}

// ------------------------------------------------------------ fork / exec

/// Forks a child holding the lock; the grandchild applies `op`; returns the
/// grandchild's report after checking the child's lock survived it.
fn fork_case(op: &str) -> String {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["faults::fork", path.to_str().unwrap(), op]);
    let report = child.expect_line("GRANDCHILD", WAIT);
    child.expect_line("REAPED", WAIT);
    assert!(
        !support::is_shareable(&path),
        "grandchild's {op} released the parent's lock"
    );
    assert!(path.exists(), "grandchild's {op} removed the lock file");
    assert!(child.release().success());
    support::wait_free(&path);
    eprintln!("CASE fork, grandchild {op}: {report}");
    report
}

#[test]
fn forked_child_drop_keeps_parent_lock() {
    assert_eq!(fork_case("drop"), "GRANDCHILD dropped");
}

#[test]
fn forked_child_unlock_is_refused() {
    let report = fork_case("unlock");
    assert!(report.starts_with("GRANDCHILD NotOwner "), "{report}");
    assert!(report.contains("refusing to change a lock shared through fork"));
}

#[test]
fn forked_child_downgrade_is_refused() {
    let report = fork_case("downgrade");
    assert!(report.starts_with("GRANDCHILD NotOwner "), "{report}");
}

#[test]
fn forked_child_unlink_and_unlock_is_refused() {
    let report = fork_case("unlink");
    assert!(report.starts_with("GRANDCHILD NotOwner "), "{report}");
}

/// The lock-file targets an exec'd child of this process has open.
fn inherited(path: &Path) -> Vec<String> {
    let mut child = Child::spawn(&["faults::list-fds"]);
    let mut found = Vec::new();
    loop {
        let line = child.expect_line("", WAIT);
        if line == "END" {
            break;
        }
        if let Some(target) = line.strip_prefix("FD ") {
            if Path::new(target) == path {
                found.push(target.to_owned());
            }
        }
    }
    assert!(child.release().success());
    found
}

#[test]
fn exec_child_never_inherits_a_lock_descriptor() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    assert_eq!(inherited(&path), Vec::<String>::new());
    drop(guard);
    support::wait_free(&path);

    // Control: a descriptor opened without O_CLOEXEC is inherited...
    let other = path.with_extension("adopted");
    std::fs::write(&other, "").unwrap();
    let c_path = std::ffi::CString::new(other.to_str().unwrap()).unwrap();
    // SAFETY: opens a file; the descriptor is owned by `file` below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    assert_eq!(
        inherited(&other).len(),
        1,
        "control: inheritance not observed"
    );
    // ...and adopting it sets FD_CLOEXEC.
    let guard = LockOptions::new()
        .adopt(file)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    assert_eq!(inherited(&other), Vec::<String>::new());
    drop(guard);
}
