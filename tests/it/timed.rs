//! Timed acquisition across real processes: wake-ups on close, exit and
//! `LOCK_UN`, deadlines, cancellation, the about-to-wait notice, and no
//! descriptor or thread left behind on any path.
// Thread scopes here return the crate's LockError<LockFile>, which hands the file

use std::path::Path;
use std::sync::{mpsc, Barrier};
use std::time::Duration;

use flockguard::{
    flock_timeout, CancelToken, Error, Exclusive, FlockMode, Holder, LockError, LockFile,
    LockOptions, PidStatus, Shared, Wait,
};

use crate::support;
use crate::support::Child;

const LONG: Duration = Duration::from_secs(60);
const LINE: Duration = Duration::from_secs(30);

pub const CHILDREN: &[support::Role] = &[
    ("timed::hold", |a| hold(&a[0], &a[1])),
    ("timed::fdcheck", |a| fdcheck(Path::new(&a[0]))),
    ("timed::nofd", |a| nofd(Path::new(&a[0]))),
    ("timed::crowd", |a| {
        crowd(Path::new(&a[0]), a[1].parse().unwrap())
    }),
];

fn parse_mode(mode: &str) -> FlockMode {
    match mode {
        "exclusive" => FlockMode::Exclusive,
        "shared" => FlockMode::Shared,
        other => panic!("bad mode {other}"),
    }
}

/// Child: holds the lock until told to `unlock` (LOCK_UN, descriptor kept)
/// or `close`, or until stdin closes.
fn hold(mode: &str, path: &str) {
    let mut guard = Some(
        LockFile::open(path)
            .unwrap()
            .lock_any(parse_mode(mode), Wait::forever())
            .unwrap(),
    );
    let mut kept = None;
    support::tell("locked");
    support::wait_for_parent(|line| match line {
        "unlock" => {
            kept = Some(guard.take().expect("locked").unlock().expect("unlock"));
            support::tell("unlocked");
        }
        "close" => {
            guard = None;
            kept = None;
            support::tell("closed");
        }
        _ => {}
    });
    drop((guard, kept));
}

fn holder(mode: &str, path: &Path) -> Child {
    let mut child = Child::spawn(&["timed::hold", mode, path.to_str().unwrap()]);
    child.expect_line("locked", LINE);
    child
}

fn pids(holders: &[Holder]) -> Vec<u32> {
    holders.iter().map(|h| h.pid).collect()
}

#[test]
fn a_free_lock_is_taken_without_the_wait_notice() {
    let (_dir, path) = support::lock_path();
    let mut noticed = false;
    let guard = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(|_| noticed = true))
        .unwrap();
    assert!(!noticed);
    assert!(!support::is_free(&path));
    drop(guard);
}

#[test]
fn zero_timeout_is_a_single_try_that_ends_at_once_without_holders() {
    let (_dir, path) = support::lock_path();
    let child = holder("exclusive", &path);
    let mut noticed = false;
    let err = LockFile::open(&path)
        .unwrap()
        .lock_with::<Shared>(Wait::timeout(Duration::ZERO).on_wait(|_| noticed = true))
        .unwrap_err();
    assert!(!noticed, "a single try never waits");
    assert!(err.is_timeout());
    // Too short a wait to read /proc/locks by its deadline.
    assert_eq!(pids(err.error.holders()), []);
    assert!(child.release().success());
}

#[test]
fn timeout_names_holder_and_context_and_gives_the_file_back() {
    let (_dir, path) = support::lock_path();
    let mut child = holder("exclusive", &path);
    let timeout = Duration::from_millis(150);
    let err = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(
            Wait::timeout(timeout)
                .context("cache entry abc123")
                // Verifying the holder takes more than the default 5 ms on
                // a slow machine (an emulated guest); this test is about
                // what a verified holder looks like.
                .diagnostics(Duration::from_secs(10)),
        )
        .unwrap_err();
    let Error::Timeout {
        path: ref err_path,
        mode,
        waited,
        ref holders,
        ref context,
    } = err.error
    else {
        panic!("expected a timeout, got {:?}", err.error);
    };
    assert_eq!(err_path, &path);
    assert_eq!(mode, FlockMode::Exclusive);
    assert!(
        waited >= timeout,
        "returned before the deadline: {waited:?}"
    );
    assert_eq!(context.as_deref(), Some("cache entry abc123"));
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].status, PidStatus::Confirmed);
    let msg = err.to_string();
    assert!(msg.starts_with("timed out after "), "{msg}");
    assert!(
        msg.contains(&format!("exclusive lock on `{}`", path.display())),
        "{msg}"
    );
    assert!(msg.contains("(cache entry abc123)"), "{msg}");
    assert!(
        msg.contains(&format!("pid {} (", child.pid())) && msg.ends_with("holds exclusive"),
        "{msg}"
    );

    // The file comes back, and waits again on the same descriptor.
    let file = err.into_inner();
    let guard = file
        .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(|_| child.send("close")))
        .unwrap();
    drop(guard);
    assert!(child.release().success());
}

#[test]
fn waiter_wakes_when_the_holder_closes() {
    let (_dir, path) = support::lock_path();
    let mut child = holder("exclusive", &path);
    let mut seen = Vec::new();
    let guard = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(|holders| {
            seen = pids(holders);
            child.send("close");
        }))
        .unwrap();
    assert_eq!(seen, [child.pid()], "the notice names the holder");
    assert!(!support::is_shareable(&path));
    drop(guard);
    assert!(child.release().success());
}

#[test]
fn waiter_wakes_when_the_holder_is_killed() {
    let (_dir, path) = support::lock_path();
    let child = holder("shared", &path);
    let mut child = Some(child);
    let guard = flockguard::LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(|_| {
            child.take().unwrap().kill();
        }))
        .unwrap();
    assert!(child.is_none());
    drop(guard);
}

#[test]
fn waiter_notices_an_unlock_without_close() {
    let (_dir, path) = support::lock_path();
    let mut child = holder("exclusive", &path);
    let guard = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(|_| child.send("unlock")))
        .unwrap();
    child.expect_line("unlocked", LINE);
    // The child still has the file open; the lock is ours.
    let now = flockguard::holders(&path).unwrap();
    assert_eq!(pids(&now), [std::process::id()]);
    drop(guard);
    assert!(child.release().success());
}

#[test]
fn shared_waiters_all_get_in_when_the_writer_leaves() {
    let (_dir, path) = support::lock_path();
    let mut child = holder("exclusive", &path);
    let barrier = Barrier::new(3);
    let (a, b) = std::thread::scope(|s| {
        let (path, barrier) = (&path, &barrier);
        let wait = move || {
            LockFile::open(path)
                .unwrap()
                .lock_with::<Shared>(Wait::timeout(LONG).on_wait(|_| {
                    barrier.wait();
                }))
                .unwrap()
        };
        let a = s.spawn(wait);
        let b = s.spawn(wait);
        barrier.wait();
        child.send("close");
        (a.join().unwrap(), b.join().unwrap())
    });
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .all(|h| h.mode == FlockMode::Shared && !h.waiting));
    drop((a, b));
    assert!(child.release().success());
}

#[test]
fn cancel_from_another_thread_ends_an_unbounded_wait() {
    let (_dir, path) = support::lock_path();
    let child = holder("exclusive", &path);
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel();
    let err = std::thread::scope(|s| {
        let canceller = token.clone();
        s.spawn(move || {
            rx.recv().unwrap();
            canceller.cancel();
        });
        LockFile::open(&path).unwrap().lock_with::<Exclusive>(
            Wait::forever()
                .cancel(token.clone())
                .on_wait(move |_| tx.send(()).unwrap()),
        )
    })
    .unwrap_err();
    assert!(err.error.is_cancelled(), "{err}");
    assert!(!err.is_timeout());
    assert!(token.is_cancelled());
    let msg = err.to_string();
    assert!(msg.ends_with("cancelled"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(std::io::Error::from(err).kind(), std::io::ErrorKind::Other);
    assert!(child.release().success());
}

#[test]
fn a_cancelled_token_returns_before_locking() {
    let (_dir, path) = support::lock_path();
    let token = CancelToken::new();
    token.cancel();
    let err = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(Wait::timeout(LONG).cancel(token.clone()))
        .unwrap_err();
    assert!(err.error.is_cancelled());
    assert!(support::is_free(&path), "a cancelled call took the lock");
}

#[test]
fn an_unbounded_wait_without_token_blocks_in_the_kernel() {
    let (_dir, path) = support::lock_path();
    let mut child = holder("exclusive", &path);
    let me = std::process::id();
    let (tx, rx) = mpsc::channel::<()>();
    let guard = std::thread::scope(|s| {
        let (path, child) = (&path, &mut child);
        let watcher = s.spawn(move || {
            rx.recv().unwrap();
            // The kernel lists a process blocked in flock(2) as a waiter.
            let waiting = (0..30_000).any(|_| {
                let list = flockguard::holders(path).unwrap();
                if list.iter().any(|h| h.pid == me && h.waiting) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
                false
            });
            child.send("close");
            waiting
        });
        let guard = LockFile::open(path)
            .unwrap()
            .lock_with::<Exclusive>(Wait::forever().on_wait(move |_| tx.send(()).unwrap()))
            .unwrap();
        assert!(
            watcher.join().unwrap(),
            "no blocked waiter seen in /proc/locks"
        );
        guard
    });
    drop(guard);
    assert!(child.release().success());
}

#[test]
fn flock_timeout_opens_and_reports_typed_errors() {
    let (dir, path) = support::lock_path();
    let guard = flock_timeout::<Exclusive>(&path, LONG).unwrap();
    let err = flock_timeout::<Shared>(&path, Duration::from_millis(60)).unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(err.path(), path);
    assert_eq!(pids(err.holders()), [std::process::id()]);
    // A caller that blocks itself is told so; " (unverified)" follows when
    // the default 5 ms of diagnostics ran out (a loaded machine).
    assert!(
        err.to_string().contains(&format!(
            "; pid {} (this process) holds exclusive",
            std::process::id()
        )),
        "{err}"
    );
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::TimedOut
    );
    drop(guard);
    let err = flock_timeout::<Exclusive>(dir.path(), LONG).unwrap_err();
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
}

#[test]
fn timeout_error_splits_and_converts() {
    let (_dir, path) = support::lock_path();
    let held = flock_timeout::<Exclusive>(&path, LONG).unwrap();
    let err: LockError<LockFile> = LockFile::open(&path)
        .unwrap()
        .lock_timeout::<Shared>(Duration::ZERO)
        .unwrap_err();
    assert_eq!(err.to_string(), err.error.to_string());
    let (error, file) = err.into_parts();
    assert!(error.is_timeout());
    drop(held);
    // A concurrent test's fork may hold a copy of `held` for a moment, so
    // wait rather than try once.
    drop(file.lock_timeout::<Shared>(LONG).unwrap());
}

#[test]
fn wait_builder_debug_and_auto_traits() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CancelToken>();
    assert_send_sync::<LockError<LockFile>>();
    assert_send_sync::<Holder>();
    assert_send_sync::<Error>();
    fn assert_send<T: Send + 'static>(value: T) -> T {
        value
    }
    // A Wait with an owned token and a 'static notice moves to another
    // thread, as a blocking-pool closure needs.
    let (_dir, path) = support::lock_path();
    let moved = assert_send(Wait::forever().cancel(CancelToken::new()).on_wait(|_| {}));
    std::thread::spawn(move || {
        drop(
            LockFile::open(&path)
                .unwrap()
                .lock_with::<Exclusive>(moved)
                .unwrap(),
        );
    })
    .join()
    .unwrap();
    let token = CancelToken::new();
    let wait = Wait::timeout(Duration::from_secs(1))
        .context("x")
        .cancel(token.clone())
        .on_wait(|_| {});
    let dbg = format!("{wait:?}");
    assert!(
        dbg.contains("on_wait: true") && dbg.contains("\"x\""),
        "{dbg}"
    );
    assert_eq!(format!("{token:?}"), "CancelToken { cancelled: false }");
}

#[test]
fn create_dirs_creates_missing_parents_and_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/app.lock");
    let err = LockOptions::new().open(&path).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("create_dirs(true)"), "{err}");
    assert!(
        !dir.path().join("a").exists(),
        "refused open left a directory"
    );
    let file = LockOptions::new().create_dirs(true).open(&path).unwrap();
    assert!(path.is_file());
    let guard = file.lock_timeout::<Exclusive>(LONG).unwrap();
    drop(guard);
    // Existing parents are fine too.
    drop(LockOptions::new().create_dirs(true).open(&path).unwrap());
}

#[test]
fn no_descriptor_or_thread_is_left_on_any_path() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["timed::fdcheck", path.to_str().unwrap()]);
    child.expect_line("ok", LONG);
    assert!(child.release().success());
}

/// Child: runs each path of the timed calls and checks the descriptor and
/// thread counts after each.
fn fdcheck(path: &Path) {
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let hold = || LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
    // The first wait that sleeps sets up the process's shared inotify
    // instance and its wake-up eventfd; they stay for every later wait. A
    // wait of a few ms can end before it sleeps on a slow machine (an
    // emulated guest): its first attempt, or the holder read 20 ms before
    // the deadline, outlasts it. This one sleeps for 80 ms first.
    let cold_fds = support::open_fds();
    let held = hold();
    let err = flock_timeout::<Exclusive>(path, Duration::from_millis(100)).unwrap_err();
    drop((held, err));
    let base_fds = support::open_fds();
    assert_eq!(
        base_fds,
        cold_fds + 2,
        "one inotify instance and one eventfd"
    );
    let base_threads = threads();
    let check = |what: &str| {
        assert_eq!(support::open_fds(), base_fds, "{what}: descriptor leaked");
    };

    drop(flock_timeout::<Exclusive>(path, LONG).unwrap());
    check("success");

    let held = hold();
    assert!(flock_timeout::<Exclusive>(path, Duration::ZERO)
        .unwrap_err()
        .is_timeout());
    drop(held);
    check("zero timeout");

    let held = hold();
    let err = flock_timeout::<Exclusive>(path, Duration::from_millis(30)).unwrap_err();
    assert!(err.is_timeout());
    drop((held, err));
    check("timeout");
    assert_eq!(threads(), base_threads, "timeout: thread left running");

    // A file that waited keeps no descriptor besides its own.
    let held = hold();
    let file = LockFile::open(path).unwrap();
    let short = Duration::from_millis(10);
    let file = file
        .lock_timeout::<Exclusive>(short)
        .unwrap_err()
        .into_inner();
    let after_one = support::open_fds();
    assert_eq!(
        after_one,
        base_fds + 2,
        "the holder's and the waiter's lock files only"
    );
    let file = file
        .lock_timeout::<Exclusive>(short)
        .unwrap_err()
        .into_inner();
    let file = file
        .lock_timeout::<Exclusive>(short)
        .unwrap_err()
        .into_inner();
    assert_eq!(
        support::open_fds(),
        after_one,
        "repeated waits grow descriptors"
    );
    drop(held);
    let guard = file.lock_timeout::<Exclusive>(short).unwrap();
    drop(guard);
    check("repeated waits");

    let held = hold();
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel();
    let err = std::thread::scope(|s| {
        let canceller = token.clone();
        s.spawn(move || {
            rx.recv().unwrap();
            canceller.cancel();
        });
        LockFile::open(path).unwrap().lock_with::<Exclusive>(
            Wait::timeout(LONG)
                .cancel(token.clone())
                .on_wait(move |_| tx.send(()).unwrap()),
        )
    })
    .unwrap_err();
    assert!(err.error.is_cancelled());
    drop((held, err, token));
    check("cancel");

    let held = hold();
    let (tx, rx) = mpsc::channel();
    let guard = std::thread::scope(|s| {
        s.spawn(move || {
            rx.recv().unwrap();
            drop(held);
        });
        LockFile::open(path)
            .unwrap()
            .lock_with::<Exclusive>(Wait::timeout(LONG).on_wait(move |_| tx.send(()).unwrap()))
            .unwrap()
    });
    drop(guard);
    check("success after waiting");

    let dir = path.parent().unwrap();
    assert!(flock_timeout::<Exclusive>(dir, LONG).is_err());
    check("open error");
    assert!(flockguard::holders(dir.join("missing")).is_err());
    check("holders error");

    support::tell("ok");
}

#[test]
fn waits_by_back_off_when_no_descriptor_is_left_for_inotify() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["timed::nofd", path.to_str().unwrap()]);
    child.expect_line("ok", LONG);
    assert!(child.release().success());
}

/// Child: exhausts RLIMIT_NOFILE so that neither inotify nor eventfd nor
/// /proc can be opened, then waits for a lock released by another thread.
fn nofd(path: &Path) {
    let holder = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
    let waiter = LockFile::open(path).unwrap();
    let token = CancelToken::new();
    let lowest_free = (0..)
        .find(|fd| !Path::new(&format!("/proc/self/fd/{fd}")).exists())
        .unwrap();
    set_nofile(lowest_free);
    // SAFETY: inotify_init1 has no memory-safety preconditions.
    let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert_eq!(inotify, -1, "the limit did not take");
    let (tx, rx) = mpsc::channel();
    let (guard, seen) = std::thread::scope(|s| {
        s.spawn(move || {
            rx.recv().unwrap();
            drop(holder);
        });
        let mut seen = None;
        let guard = waiter
            .lock_with::<Exclusive>(Wait::timeout(LONG).cancel(token.clone()).on_wait(|h| {
                seen = Some(h.len());
                tx.send(()).unwrap();
            }))
            .unwrap();
        (guard, seen)
    });
    assert_eq!(seen, Some(0), "no holders readable without descriptors");
    drop(guard);
    set_nofile(1024);
    support::tell("ok");
}

fn set_nofile(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn five_hundred_timed_waiters_each_get_the_lock_in_turn() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["timed::crowd", path.to_str().unwrap(), "500"]);
    child.expect_line("ok", Duration::from_secs(120));
    assert!(child.release().success());
}

/// Child: `n` threads wait with a deadline for a lock this thread holds,
/// each holding it briefly in turn; checks that all get it, and that the
/// waits add no descriptor besides each waiter's own lock file.
fn crowd(path: &Path, n: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let deadline = Duration::from_secs(30);
    let base = support::open_fds();
    let held = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
    let waiting = AtomicUsize::new(0);
    let inside = AtomicUsize::new(0);
    let taken = AtomicUsize::new(0);
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, || {
                        let file = LockFile::open(path).unwrap();
                        waiting.fetch_add(1, Ordering::SeqCst);
                        let guard = file.lock_timeout::<Exclusive>(deadline).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        taken.fetch_add(1, Ordering::SeqCst);
                        drop(guard);
                    })
                    .unwrap()
            })
            .collect();
        while waiting.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        // One lock file per waiter, the holder's, and the shared inotify
        // instance and eventfd.
        let during = support::open_fds();
        assert!(during <= base + n + 1 + 2, "{base} → {during} descriptors");
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
    });
    assert_eq!(taken.into_inner(), n);
    // Event-driven handoffs take well under a millisecond each; a crowd
    // polling on the back-off would take tens of milliseconds per handoff.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "{n} handoffs took {took:?}");
    eprintln!("{n} waiters acquired in turn in {took:?}");
    assert!(support::open_fds() <= base + 2);
    support::tell("ok");
}

/// Runs `wait` on `path` while another thread keeps replacing the file:
/// each new file is created and locked before it is renamed over the path,
/// and the one it replaced is let go only then, so the file the path names
/// is always held and every file the waiter takes is one already replaced.
/// Returns the outcome of `wait` and how many files were renamed in.
fn wait_during_replacements<T: Send>(
    path: &Path,
    wait: impl FnOnce(LockFile) -> Result<T, LockError<LockFile>> + Send,
) -> (Result<T, LockError<LockFile>>, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = path.parent().unwrap();
    let first = dir.join("replacement.first");
    let mut held = flockguard::try_flock::<Exclusive>(&first).unwrap();
    std::fs::rename(&first, path).unwrap();
    let done = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let replacer = s.spawn(|| {
            let mut renamed = 0u64;
            while !done.load(Ordering::Relaxed) {
                let next = dir.join(format!("replacement.{renamed}"));
                let guard = flockguard::try_flock::<Exclusive>(&next).unwrap();
                std::fs::rename(&next, path).unwrap();
                held = guard;
                renamed += 1;
            }
            drop(held);
            renamed
        });
        let file = {
            let mut o = LockOptions::new();
            o.verify_path(true);
            o.open(path).unwrap()
        };
        s.spawn(move || {
            let _ = tx.send(wait(file));
        });
        // A wait that ignores its deadline spins here until the bound.
        let outcome = rx.recv_timeout(LIVENESS);
        done.store(true, Ordering::Relaxed);
        let renamed = replacer.join().unwrap();
        let outcome = outcome.unwrap_or_else(|_| {
            panic!("a 200 ms wait still runs after {LIVENESS:?} ({renamed} replacements)")
        });
        (outcome, renamed)
    })
}

/// How long a 200 ms wait may take on a loaded machine before it counts as
/// not ending.
const LIVENESS: Duration = Duration::from_secs(10);

fn assert_timed_out<T>(outcome: Result<T, LockError<LockFile>>, renamed: u64, path: &Path) {
    let Err(err) = outcome else {
        panic!("took the lock on a path whose file is always held by another");
    };
    let Error::Timeout { path: ref p, .. } = err.error else {
        panic!("expected a timeout, got {:?}", err.error);
    };
    assert_eq!(p, path);
    assert!(renamed > 0, "the path was never replaced");
    // The waiter holds nothing: whatever the path names now is free.
    drop(flockguard::try_flock::<Exclusive>(path).unwrap());
}

#[test]
fn a_verified_timed_wait_ends_at_its_deadline_while_the_path_keeps_being_replaced() {
    let (_dir, path) = support::lock_path();
    let (outcome, renamed) = wait_during_replacements(&path, |file| {
        file.lock_timeout::<Exclusive>(Duration::from_millis(200))
    });
    assert_timed_out(outcome, renamed, &path);
}

#[cfg(feature = "tokio")]
#[test]
fn a_verified_async_wait_ends_at_its_deadline_while_the_path_keeps_being_replaced() {
    let (_dir, path) = support::lock_path();
    let (outcome, renamed) = wait_during_replacements(&path, |file| {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(flockguard::tokio::lock_timeout::<Exclusive>(
                file,
                Duration::from_millis(200),
            ))
    });
    assert_timed_out(outcome, renamed, &path);
}
