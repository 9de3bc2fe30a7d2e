//! Behaviour across real processes: holding in another process, a killed
//! holder, `FD_CLOEXEC` across `exec`, `EINTR` during a blocking wait, and a
//! guard inherited through `fork(2)`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::Duration;

use flockguard::{
    block_flock, try_flock, Error, Exclusive, FlockMode, LockFile, LockGuard, LockOptions, Shared,
};

use crate::support;
use crate::support::{block_flock_mode, try_flock_mode};
use crate::support::{held_through, wait_until, Child};

const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Held while spawning a child and while dropping a guard whose release a
/// test then checks. Between fork and exec a spawned child shares every open
/// file description of this process, `FD_CLOEXEC` or not, so a guard
/// dropped in that window stays locked until the child calls exec.
static SPAWN: Mutex<()> = Mutex::new(());

fn spawn(args: &[&str]) -> Child {
    let _quiet = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    Child::spawn(args)
}

/// Drops `value` while no child is between fork and exec.
fn drop_quietly<T>(value: T) {
    let _quiet = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    drop(value);
}

fn mode_arg(mode: &str) -> FlockMode {
    match mode {
        "ex" => FlockMode::Exclusive,
        "sh" => FlockMode::Shared,
        other => panic!("unknown mode {other}"),
    }
}

pub const CHILDREN: &[support::Role] = &[
    ("process::hold", |a| child_holds(&a[0], &a[1])),
    ("process::try", |a| child_tries(&a[0], &a[1])),
    ("process::idle", |_| child_idles()),
    ("process::fork", |a| fork_scenarios(Path::new(&a[0]))),
];

/// Child: takes the lock (waiting if needed) and holds it until released.
fn child_holds(path: &str, mode: &str) {
    let guard = block_flock_mode(path, mode_arg(mode)).expect("child lock");
    support::tell("locked");
    support::wait_for_parent(|_| {});
    drop(guard);
}

/// Child: one non-blocking attempt; reports the outcome.
fn child_tries(path: &str, mode: &str) {
    match try_flock_mode(path, mode_arg(mode)) {
        Ok(_) => support::tell("result: ok"),
        Err(e) if e.is_would_block() => support::tell("result: would-block"),
        Err(e) => support::tell(&format!("result: error {e:?}")),
    }
}

/// Child: does nothing until released; a process that went through exec.
fn child_idles() {
    support::tell("ready");
    support::wait_for_parent(|_| {});
}

/// Kills a child that has not finished within two minutes: a guard against
/// a hang, not a timing assertion.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(pid: u32) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            for _ in 0..1200 {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("watchdog: killing child {pid}");
            let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn child_try(path: &Path, mode: &str) -> String {
    let mut child = spawn(&["process::try", path.to_str().unwrap(), mode]);
    let _watchdog = Watchdog::new(child.pid());
    let line = child.expect_line("result: ", LINE_TIMEOUT);
    assert!(child.release().success());
    line.trim_start_matches("result: ").to_owned()
}

fn child_hold(path: &Path, mode: &str) -> Child {
    let mut child = spawn(&["process::hold", path.to_str().unwrap(), mode]);
    child.expect_line("locked", LINE_TIMEOUT);
    child
}

#[test]
fn another_process_holding_exclusive_excludes_both_modes() {
    let (_dir, path) = support::lock_path();
    let child = child_hold(&path, "ex");
    let holder = support::ProcLock {
        waiter: false,
        write: true,
        pid: child.pid(),
    };
    support::wait_for_locks(&path, "the child as the holder", |locks| {
        locks == [holder.clone()]
    });

    let err = try_flock::<Shared>(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WouldBlock {
                mode: FlockMode::Shared,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
    assert!(child.release().success());
    support::assert_free(&path);
}

#[test]
fn another_process_holding_shared_admits_only_readers() {
    let (_dir, path) = support::lock_path();
    let child = child_hold(&path, "sh");
    let reader = try_flock::<Shared>(&path).unwrap();
    assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
    let err = reader.try_upgrade().unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert!(child.release().success());
    support::assert_free(&path);
}

#[test]
fn other_processes_see_this_process_lock() {
    let (_dir, path) = support::lock_path();
    let writer = try_flock::<Exclusive>(&path).unwrap();
    assert_eq!(child_try(&path, "ex"), "would-block");
    assert_eq!(child_try(&path, "sh"), "would-block");
    let reader = writer.downgrade().unwrap();
    assert_eq!(child_try(&path, "sh"), "ok");
    assert_eq!(child_try(&path, "ex"), "would-block");
    drop_quietly(reader);
    support::assert_free(&path);
    assert_eq!(child_try(&path, "ex"), "ok");
}

#[test]
fn killing_the_holder_wakes_a_blocked_waiter() {
    let (_dir, path) = support::lock_path();
    let child = child_hold(&path, "ex");
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || {
            let guard = block_flock::<Exclusive>(&path);
            tx.send(()).unwrap();
            guard
        })
    };
    wait_until("the waiter blocks", || support::has_waiter(&path));
    assert!(
        rx.try_recv().is_err(),
        "the waiter got the lock beside the holder"
    );

    let status = child.kill();
    assert!(!status.success());
    let guard: LockGuard<Exclusive> = waiter.join().unwrap().unwrap();
    assert_eq!(held_through(&guard), Some(FlockMode::Exclusive));
    let me = std::process::id();
    support::wait_for_locks(
        &path,
        "this process as the only holder",
        |locks| matches!(locks, [l] if l.write && !l.waiter && l.pid == me),
    );
}

/// The targets of the descriptors of process `pid`.
fn fd_targets(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read child fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

#[test]
fn an_executed_child_does_not_inherit_the_lock() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let target = std::fs::canonicalize(&path).unwrap();

    let mut child = spawn(&["process::idle"]);
    child.expect_line("ready", LINE_TIMEOUT);
    let fds = fd_targets(child.pid());
    assert!(!fds.is_empty(), "no descriptors listed for the child");
    assert!(
        !fds.contains(&target),
        "child inherited the lock file: {fds:?}"
    );

    drop_quietly(guard);
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "child exited early"
    );
    support::assert_free(&path);
    assert!(child.release().success());
}

#[test]
fn an_inheritable_duplicate_in_a_child_does_not_outlive_the_guards_drop() {
    // A descriptor without FD_CLOEXEC survives exec and keeps the open file
    // description alive; the guard's drop releases the lock all the same.
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let target = std::fs::canonicalize(&path).unwrap();
    let dup = rustix::io::dup(&guard).unwrap();
    assert!(!support::is_cloexec(&dup));

    let mut child = spawn(&["process::idle"]);
    child.expect_line("ready", LINE_TIMEOUT);
    assert!(fd_targets(child.pid()).contains(&target));
    drop(guard);
    assert!(fd_targets(child.pid()).contains(&target));
    assert!(
        support::is_free(&path),
        "the child's inherited copy kept the lock after the guard's drop"
    );
    drop(dup);
    assert!(child.release().success());
    // Children of parallel tests spawned meanwhile may hold it a moment longer.
    wait_until("every child holding the duplicate exits", || {
        support::is_free(&path)
    });
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Installs a SIGUSR1 handler without `SA_RESTART`, so a blocking `flock(2)`
/// interrupted by it fails with `EINTR` instead of being restarted.
/// The handler is process-wide, so a test that installs it runs in a process
/// of its own ([`support::rerun_alone`]).
fn install_sigusr1_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler only touches an atomic; sa_flags has no
        // SA_RESTART on purpose.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
    });
}

/// Signals the thread `thread` with SIGUSR1 and waits for the handler to run.
fn interrupt(thread: libc::pthread_t) {
    let before = SIGNALS.load(Ordering::SeqCst);
    // SAFETY: the thread is alive (it is blocked waiting for a lock this
    // test holds).
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
    wait_until("the signal handler runs", || {
        SIGNALS.load(Ordering::SeqCst) > before
    });
}

#[test]
fn control_the_signal_interrupts_a_raw_flock() {
    if support::rerun_alone() {
        return;
    }
    install_sigusr1_handler();
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Exclusive>(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let blocked = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
    });
    let thread = rx.recv().unwrap();
    wait_until("the raw flock blocks", || support::has_waiter(&path));
    interrupt(thread);
    assert_eq!(blocked.join().unwrap(), Err(rustix::io::Errno::INTR));
    drop(held);
}

#[test]
fn block_flock_retries_eintr() {
    if support::rerun_alone() {
        return;
    }
    install_sigusr1_handler();
    let (_dir, path) = support::lock_path();
    let held = try_flock::<Shared>(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let blocked = {
        let path = path.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            block_flock::<Exclusive>(&path)
        })
    };
    let thread = rx.recv().unwrap();
    for round in 0..25 {
        wait_until("the lock request blocks", || support::has_waiter(&path));
        interrupt(thread);
        assert!(
            !blocked.is_finished(),
            "block_flock returned after signal {round}"
        );
    }
    wait_until("the lock request blocks", || support::has_waiter(&path));
    drop(held);
    let guard = blocked.join().unwrap().expect("block_flock after signals");
    assert_eq!(held_through(&guard), Some(FlockMode::Exclusive));
}

#[test]
fn upgrade_retries_eintr() {
    if support::rerun_alone() {
        return;
    }
    install_sigusr1_handler();
    let (_dir, path) = support::lock_path();
    let other = try_flock::<Shared>(&path).unwrap();
    let reader = try_flock::<Shared>(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let blocked = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        reader.upgrade()
    });
    let thread = rx.recv().unwrap();
    for round in 0..10 {
        wait_until("the upgrade blocks", || support::has_waiter(&path));
        interrupt(thread);
        assert!(
            !blocked.is_finished(),
            "upgrade returned after signal {round}"
        );
    }
    wait_until("the upgrade blocks", || support::has_waiter(&path));
    drop(other);
    let writer = blocked.join().unwrap().expect("upgrade after signals");
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));
}

#[test]
fn a_forked_child_cannot_change_or_release_the_parent_lock() {
    let (_dir, path) = support::lock_path();
    let mut child = spawn(&["process::fork", path.to_str().unwrap()]);
    let _watchdog = Watchdog::new(child.pid());
    let line = child.expect_line("result: ", LINE_TIMEOUT);
    assert_eq!(line, "result: ok");
    // The forking process still holds its shared lock after every forked
    // child has exited.
    let pid = child.pid();
    support::wait_for_locks(
        &path,
        "one shared lock of the forking process",
        |locks| matches!(locks, [l] if !l.write && !l.waiter && l.pid == pid),
    );
    support::assert_shareable(&path);
    assert!(!support::is_free(&path));
    assert!(child.release().success());
    support::assert_free(&path);
}

/// Runs `$body` (a block evaluating to an exit code) in a forked child and
/// returns the code. Inline rather than a function taking a closure, so a
/// guard moved into the body moves only in the child. The forking process
/// is a re-executed test binary, so a misbehaving fork cannot harm the test
/// harness; the child never returns into the harness.
macro_rules! in_fork {
    ($body:block) => {{
        // SAFETY: the child only runs the body (allocation is fork-safe in
        // glibc) and then _exit(2)s without unwinding into the parent's stack.
        let pid = unsafe { libc::fork() };
        in_fork!(@run pid, $body)
    }};
    (raw, $body:block) => {{
        // SAFETY: as above; the forking process is single-threaded here, so
        // skipping glibc's fork handlers leaves no lock held in the child.
        #[cfg(target_arch = "x86_64")]
        let pid = unsafe { libc::syscall(libc::SYS_fork) } as libc::pid_t;
        // SAFETY: as above; clone(SIGCHLD) is fork without glibc.
        #[cfg(not(target_arch = "x86_64"))]
        let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) }
            as libc::pid_t;
        in_fork!(@run pid, $body)
    }};
    (@run $pid:ident, $body:block) => {{
        let pid = $pid;
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let body = std::panic::AssertUnwindSafe(|| -> i32 { $body });
            let code = std::panic::catch_unwind(body).unwrap_or(101);
            // SAFETY: ends the forked child without running destructors or
            // atexit handlers that belong to the parent.
            unsafe { libc::_exit(code) };
        }
        wait_forked(pid)
    }};
}

fn wait_forked(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: pid is a child of this process.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "forked child died: {status:#x}");
    libc::WEXITSTATUS(status)
}

/// From the current process, through a fresh open: can `mode` be taken?
fn fresh_can_take(path: &Path, mode: FlockMode) -> bool {
    match try_flock_mode(path, mode) {
        Ok(_) => true,
        Err(e) if e.is_would_block() => false,
        Err(e) => panic!("{e:?}"),
    }
}

fn not_owner(err: &Error, owner: u32) -> bool {
    matches!(err, Error::NotOwner { owner: o, current, .. }
        if *o == owner && *current == std::process::id())
}

/// The scenarios run in a re-executed child: each forks a grandchild that
/// inherits a guard or a lock file and tries to change the lock.
fn fork_scenarios(path: &Path) {
    let me = std::process::id();
    let writer = try_flock::<Exclusive>(path).expect("lock");

    // unlock() in the forked child is refused and releases nothing.
    let code = in_fork!({
        let err = writer.unlock().unwrap_err();
        if !not_owner(&err.error, me) {
            return 2;
        }
        if fresh_can_take(path, FlockMode::Shared) {
            return 3; // the parent's lock was released
        }
        0
    });
    assert_eq!(code, 0, "unlock in a forked child");
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));
    assert!(!fresh_can_take(path, FlockMode::Shared));

    // Dropping the guard in the forked child closes only its descriptor.
    let code = in_fork!({
        drop(writer);
        i32::from(fresh_can_take(path, FlockMode::Shared))
    });
    assert_eq!(code, 0, "drop in a forked child released the lock");
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));

    // downgrade() in the forked child is refused; the lock stays exclusive.
    let code = in_fork!({
        let err = writer.downgrade().unwrap_err();
        if !not_owner(&err.error, me) {
            return 2;
        }
        i32::from(fresh_can_take(path, FlockMode::Shared)) * 3
    });
    assert_eq!(code, 0, "downgrade in a forked child");
    assert_eq!(held_through(&writer), Some(FlockMode::Exclusive));

    let reader = writer.downgrade().expect("downgrade");

    // upgrade() in the forked child is refused; the lock stays shared.
    let code = in_fork!({
        let err = reader.upgrade().unwrap_err();
        if !not_owner(&err.error, me) {
            return 2;
        }
        if !fresh_can_take(path, FlockMode::Shared) || fresh_can_take(path, FlockMode::Exclusive) {
            return 3;
        }
        0
    });
    assert_eq!(code, 0, "upgrade in a forked child");
    assert_eq!(held_through(&reader), Some(FlockMode::Shared));

    // try_upgrade() in the forked child is refused, and the lock file it
    // hands back cannot be used to change the lock either.
    let code = in_fork!({
        let err = reader.try_upgrade().unwrap_err();
        if !not_owner(&err.error, me) {
            return 2;
        }
        let err = err.into_inner().try_lock::<Exclusive>().unwrap_err();
        if !not_owner(&err.error, me) {
            return 3;
        }
        let err = err.into_inner().lock::<Exclusive>().unwrap_err();
        if !not_owner(&err.error, me) {
            return 4;
        }
        if !fresh_can_take(path, FlockMode::Shared) || fresh_can_take(path, FlockMode::Exclusive) {
            return 5;
        }
        0
    });
    assert_eq!(code, 0, "try_upgrade in a forked child");
    assert_eq!(held_through(&reader), Some(FlockMode::Shared));

    // An unlocked lock file inherited by a forked child cannot be locked
    // there: the lock would belong to the parent's open file description.
    let spare = LockFile::open(path).expect("open");
    let code = in_fork!({
        let err = spare.try_lock::<Shared>().unwrap_err();
        i32::from(!not_owner(&err.error, me))
    });
    assert_eq!(code, 0, "try_lock in a forked child");
    assert_eq!(held_through(&spare), None);

    // A raw fork(2) system call runs no pthread_atfork handler; the child
    // is refused all the same, and its own timed waits work.
    let other = path.with_extension("other");
    let code = in_fork!(raw, {
        let err = spare.try_lock::<Exclusive>().unwrap_err();
        if !not_owner(&err.error, me) {
            return 2;
        }
        let err = err
            .into_inner()
            .lock_timeout::<Shared>(LINE_TIMEOUT)
            .unwrap_err();
        if !not_owner(&err.error, me) {
            return 3;
        }
        let held = try_flock::<Exclusive>(&other).unwrap();
        let waiter = LockFile::open(&other).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
        });
        if waiter.lock_timeout::<Exclusive>(LINE_TIMEOUT).is_err() {
            return 4;
        }
        releaser.join().unwrap();
        0
    });
    assert_eq!(code, 0, "a child of a raw fork system call");
    assert_eq!(held_through(&spare), None);
    assert_eq!(held_through(&reader), Some(FlockMode::Shared));

    support::tell("result: ok");
    support::wait_for_parent(|_| {});
    drop((reader, spare));
}

/// Drops while another thread forks and execs: a close alone leaves the lock
/// with the child until it execs; drop's `LOCK_UN` releases it at once.
#[test]
fn drop_releases_at_once_while_another_thread_spawns_children() {
    const DROPS: u32 = 400_000;
    let (_dir, path) = support::lock_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::process::Command::new("true")
                    .status()
                    .expect("spawn true");
                assert!(status.success());
                spawned += 1;
            }
            spawned
        })
    };
    let mut probe = Some(LockFile::open(&path).unwrap());
    let mut late = 0u32;
    for _ in 0..DROPS {
        drop(
            LockFile::open(&path)
                .unwrap()
                .try_lock::<Exclusive>()
                .unwrap(),
        );
        match probe.take().unwrap().try_lock::<Exclusive>() {
            Ok(guard) => probe = Some(guard.unlock().unwrap()),
            Err(err) => {
                assert!(err.is_would_block(), "{err}");
                late += 1;
                probe = Some(err.into_inner());
                // Let the child exec so the next round starts clean.
                support::assert_free(&path);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spawned = spawner.join().unwrap();
    eprintln!("{DROPS} drops beside {spawned} spawned children: {late} released late");
    assert!(spawned > 0, "the spawner never forked");
    assert_eq!(late, 0, "{late} of {DROPS} drops left the lock held");
}

/// A worker forked without exec keeps copies of the parent's descriptors
/// for its whole life; the parent's drop must release the lock anyway.
#[test]
fn a_forked_worker_keeps_nothing_after_the_parents_drop() {
    let (_dir, path) = support::lock_path();
    let guard = try_flock::<Exclusive>(&path).unwrap();
    let (mut read_end, write_end) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: the child only blocks in read(2) on the pipe and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(write_end);
        let mut byte = [0u8];
        let _ = std::io::Read::read(&mut read_end, &mut byte);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(read_end);
    drop(guard);
    let free = fresh_can_take(&path, FlockMode::Exclusive);
    drop(write_end); // the worker exits
    assert_eq!(wait_forked(pid), 0);
    assert!(free, "the forked worker kept the dropped lock");
}

/// A guard over an adopted duplicate releases on drop, although the
/// caller's own descriptor of the same open file description stays open.
#[test]
fn a_guard_over_an_adopted_dup_releases_on_drop() {
    let (_dir, path) = support::lock_path();
    let callers = std::fs::File::create(&path).unwrap();
    let dup = callers.try_clone().unwrap();
    let guard = LockOptions::new()
        .adopt(dup)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert!(!fresh_can_take(&path, FlockMode::Shared));
    drop(guard);
    assert!(
        fresh_can_take(&path, FlockMode::Exclusive),
        "the caller's descriptor kept the lock after the guard's drop"
    );
    drop(callers);
}
