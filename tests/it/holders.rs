//! Holder diagnostics against real processes and real mounts: shared and
//! exclusive holders, blocked waiters, forked holders, overlay and btrfs
//! (where `st_dev` is not the device `/proc/locks` prints), churn, many
//! descriptors, odd mount points and command lines, and processes whose
//! state is easy to misread. Answers are checked against what the test
//! itself set up and against the holder's own `/proc/PID/fdinfo`, never
//! against another reader of `/proc/locks`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flockguard::{Exclusive, FlockMode, Holder, LockFile, PidStatus, Shared};

use crate::support;
use crate::support::rig;
use crate::support::Child;

const LINE: Duration = Duration::from_secs(30);

pub const CHILDREN: &[support::Role] = &[
    ("holders::hold", |a| hold(&a[0], &a[1])),
    ("holders::fork", |a| {
        fork_hold(&a[0], &a[1], FlockMode::Exclusive)
    }),
    ("holders::fork-shared", |a| {
        fork_hold(&a[0], &a[1], FlockMode::Shared)
    }),
    ("holders::fds", |a| hold_descriptors(a[0].parse().unwrap())),
    ("holders::print", |a| print_holders(&a[0])),
    ("holders::emfile", |a| print_holders_at_emfile(&a[0])),
    ("holders::zombie", |a| zombie_leader(&a[0])),
    ("holders::inherit", |a| inherit_then_ask(&a[0])),
];

/// Child: opens `path`, takes `mode` (`exclusive` or `shared`) and holds it
/// until stdin closes.
fn hold(mode: &str, path: &str) {
    let mode = if mode == "exclusive" {
        FlockMode::Exclusive
    } else {
        FlockMode::Shared
    };
    let file = LockFile::open(path).unwrap();
    support::tell("opened");
    let guard = file.lock_any(mode, flockguard::Wait::forever()).unwrap();
    support::tell("locked");
    support::wait_for_parent(|_| {});
    drop(guard);
}

/// Child: prints the holders of `path` with one descriptor left free:
/// enough to read /proc/locks and open one directory, not to read a file
/// inside it.
fn print_holders_at_emfile(path: &str) {
    let lowest = std::fs::File::open("/dev/null").unwrap();
    let free = std::os::fd::AsRawFd::as_raw_fd(&lowest) as u64;
    drop(lowest);
    set_nofile(free + 1);
    print_holders(path);
}

/// Child: takes an exclusive lock, forks, closes its own descriptor and
/// either exits (`exit`) or stays until stdin closes (`stay`). The forked
/// process keeps the lock until stdin closes.
fn fork_hold(path: &str, then: &str, mode: FlockMode) {
    let guard = LockFile::open(path)
        .unwrap()
        .lock_any(mode, flockguard::Wait::forever())
        .unwrap();
    // SAFETY: the forked process only calls the async-signal-safe read(2)
    // and _exit(2) before it ends.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a local buffer of the given length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // SAFETY: _exit ends the process without running anything.
                unsafe { libc::_exit(0) };
            }
        }
    }
    // Close this process's copy without the LOCK_UN that drop would send:
    // the fork keeps the lock.
    drop(guard.into_locked_fd());
    support::tell(&format!("forked {pid}"));
    if then == "stay" {
        support::wait_for_parent(|_| {});
    }
}

/// Child: keeps `count` descriptors open (duplicates of one) until stdin
/// closes, raising its descriptor limit as far as needed and allowed.
fn hold_descriptors(count: usize) {
    raise_nofile(count as u64 + 64);
    let first = std::fs::File::open("/dev/null").unwrap();
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        all.push(first.try_clone().unwrap());
    }
    support::tell("ready");
    support::wait_for_parent(|_| {});
    drop(all);
}

/// Child: prints one `holder PID STATUS sharers=P,Q text=DISPLAY` line for
/// each holder of `path`, then `done`.
fn print_holders(path: &str) {
    for h in flockguard::holders(path).unwrap() {
        let sharers: Vec<String> = h.sharers.iter().map(|p| p.pid.to_string()).collect();
        support::tell(&format!(
            "holder {} {:?} sharers={} text={h}",
            h.pid,
            h.status,
            sharers.join(",")
        ));
    }
    support::tell("done");
}

/// Reads `holder` lines up to `done`.
fn holder_lines(child: &mut Child) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = child.expect_line("", LINE);
        if line == "done" {
            return lines;
        }
        if line.starts_with("holder ") {
            lines.push(line);
        }
    }
}

/// Child: forks; the forked process takes an exclusive lock on `path`
/// and ends its main thread with a raw `exit` (as `pthread_exit` does,
/// leaving a zombie leader) while a second thread keeps the process, and
/// the lock, alive until stdin closes.
fn zombie_leader(path: &str) {
    // SAFETY: the forked process is single-threaded until it spawns its
    // own thread, and uses only what it creates itself.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let guard = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
        std::thread::spawn(move || {
            support::tell(&format!("leader {}", std::process::id()));
            support::wait_for_parent(|_| {});
            drop(guard);
            // SAFETY: ends the process without running anything.
            unsafe { libc::_exit(0) };
        });
        // SAFETY: SYS_exit ends only this thread, without unwinding.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!();
    }
    support::wait_for_parent(|_| {});
}

/// Child: takes an exclusive lock on `path`, forks and exits; the forked
/// process keeps the descriptor, waits for a `go` line, then prints
/// [`print_holders`]'s lines and `me PID`, and stays until stdin closes.
fn inherit_then_ask(path: &str) {
    let guard = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
    // SAFETY: the forked process only reads stdin, reads /proc and
    // prints before it ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        support::tell(&format!("me {}", std::process::id()));
        print_holders(path);
        support::wait_for_parent(|_| {});
        drop(guard);
        // SAFETY: ends the process without running anything.
        unsafe { libc::_exit(0) };
    }
    // This process's copy, closed without LOCK_UN; the fork keeps the lock.
    drop(guard.into_locked_fd());
    support::tell(&format!("forked {pid}"));
}

/// The `flock` mode of the lock that `/proc/PID/fdinfo` shows `pid` holding
/// on `path` through one of its descriptors, read directly.
fn fdinfo_mode(pid: u32, path: &Path) -> Option<FlockMode> {
    let needle = format!(":{} ", std::fs::metadata(path).unwrap().ino());
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("lock:") && l.contains(" FLOCK ") && l.contains(&needle))
                .map(|l| {
                    if l.contains(" WRITE ") {
                        FlockMode::Exclusive
                    } else {
                        FlockMode::Shared
                    }
                })
                .collect::<Vec<_>>()
        })
        .next()
}

fn set_nofile(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to at least `want` (and the hard one, as
/// root); returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            let wanted = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn holder(mode: &str, path: &Path) -> Child {
    let mut child = Child::spawn(&["holders::hold", mode, path.to_str().unwrap()]);
    child.expect_line("locked", LINE);
    child
}

/// Polls `holders()` until `done` accepts the list (at most 30 s).
fn holders_until(path: &Path, done: impl Fn(&[Holder]) -> bool) -> Vec<Holder> {
    for _ in 0..3000 {
        let list = flockguard::holders(path).unwrap();
        if done(&list) {
            return list;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "holders of {} never reached the expected state",
        path.display()
    );
}

/// `(pid, mode, waiting)` sorted, for comparing holder sets.
fn summary(list: &[Holder]) -> Vec<(u32, FlockMode, bool)> {
    let mut v: Vec<_> = list.iter().map(|h| (h.pid, h.mode, h.waiting)).collect();
    v.sort_by_key(|&(pid, mode, waiting)| (pid, mode == FlockMode::Exclusive, waiting));
    v
}

#[test]
fn an_exclusive_holder_is_listed_with_its_command_line() {
    let (_dir, path) = support::lock_path();
    let child = holder("exclusive", &path);
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let h = &list[0];
    assert_eq!(h.pid, child.pid());
    assert_eq!(h.mode, FlockMode::Exclusive);
    assert!(!h.waiting);
    assert_eq!(h.status, PidStatus::Confirmed);
    assert!(h.sharers.is_empty());
    let cmd = h.cmdline.as_deref().unwrap();
    assert!(cmd.contains("__child_entry --exact"), "{cmd}");
    assert_eq!(
        h.to_string(),
        format!("pid {} ({cmd}) holds exclusive", child.pid())
    );
    assert!(child.release().success());
    assert!(flockguard::holders(&path).unwrap().is_empty());
}

#[test]
fn shared_holders_and_blocked_waiters_are_listed() {
    let (_dir, path) = support::lock_path();
    let a = holder("shared", &path);
    let b = holder("shared", &path);
    let mut w = Child::spawn(&["holders::hold", "exclusive", path.to_str().unwrap()]);
    w.expect_line("opened", LINE);
    let list = holders_until(&path, |l| l.iter().any(|h| h.waiting));
    let mut expected = vec![
        (a.pid(), FlockMode::Shared, false),
        (b.pid(), FlockMode::Shared, false),
        (w.pid(), FlockMode::Exclusive, true),
    ];
    expected.sort_by_key(|&(pid, _, _)| pid);
    assert_eq!(summary(&list), expected);
    assert!(list.iter().all(|h| h.status == PidStatus::Confirmed));
    // Holders come before the waiters they block, as in /proc/locks.
    assert!(list.last().unwrap().waiting);
    let waiter = list.iter().find(|h| h.waiting).unwrap();
    assert!(
        waiter.to_string().ends_with("waits for exclusive"),
        "{waiter}"
    );

    for h in list.iter().filter(|h| !h.waiting) {
        assert_eq!(fdinfo_mode(h.pid, &path), Some(FlockMode::Shared), "{h}");
    }

    // The lock file's own descriptor view gives the same answer.
    let file = LockFile::open(&path).unwrap();
    assert_eq!(summary(&file.holders().unwrap()), expected);
    drop(file);

    assert!(a.release().success());
    assert!(b.release().success());
    w.expect_line("locked", LINE);
    assert!(w.release().success());
}

#[test]
fn another_descriptor_of_this_process_is_listed_with_this_pid() {
    let (_dir, path) = support::lock_path();
    let guard = LockFile::open(&path).unwrap().lock::<Shared>().unwrap();
    let file = LockFile::open(&path).unwrap();
    let list = file.holders().unwrap();
    assert_eq!(
        summary(&list),
        [(std::process::id(), FlockMode::Shared, false)]
    );
    assert_eq!(list[0].status, PidStatus::Confirmed);
    drop(guard);
    // A fork by a concurrent test may hold a copy of the descriptor until
    // it execs; the entry goes when that copy does.
    holders_until(&path, <[Holder]>::is_empty);
}

#[test]
fn a_free_file_has_no_holders_and_a_missing_one_is_an_error() {
    let (dir, path) = support::lock_path();
    flockguard::materialize(&path).unwrap();
    assert!(flockguard::holders(&path).unwrap().is_empty());
    let missing = dir.path().join("missing.lock");
    let err = flockguard::holders(&missing).unwrap_err();
    assert!(matches!(err, flockguard::Error::Holders { .. }), "{err:?}");
    assert_eq!(err.path(), missing);
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().starts_with("cannot list the holders of `"),
        "{err}"
    );
    assert!(!missing.exists(), "holders() created the file");
}

#[test]
fn a_forked_holder_whose_taker_exited_is_reported_through_the_fork() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["holders::fork", path.to_str().unwrap(), "exit"]);
    let line = child.expect_line("forked ", LINE);
    let forked: u32 = line["forked ".len()..].parse().unwrap();
    let taker = child.pid();
    assert!(child.child.wait().unwrap().success());

    let list = flockguard::holders(&path).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let h = &list[0];
    assert_eq!(h.pid, taker, "/proc/locks names the process that took it");
    assert_eq!(h.status, PidStatus::Exited);
    assert_eq!(h.cmdline, None);
    assert_eq!(
        h.sharers.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [forked]
    );
    let text = h.to_string();
    assert!(
        text.starts_with(&format!(
            "pid {taker} (exited) took exclusive; now held by pid {forked} ("
        )),
        "{text}"
    );
    assert!(child.release().success());
    support::wait_free(&path);
}

#[test]
fn a_forked_holder_whose_taker_closed_its_copy_is_not_blamed_on_the_taker() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["holders::fork", path.to_str().unwrap(), "stay"]);
    let line = child.expect_line("forked ", LINE);
    let forked: u32 = line["forked ".len()..].parse().unwrap();

    let list = flockguard::holders(&path).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].pid, child.pid());
    assert_eq!(list[0].status, PidStatus::NotHolding);
    assert!(list[0].cmdline.is_some());
    assert_eq!(
        list[0].sharers.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [forked]
    );
    assert!(list[0].to_string().contains("no longer has it open"));
    assert!(child.release().success());
    support::wait_free(&path);
}

/// A mount that is lazily unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(test: &str, cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            support::skip(
                test,
                &format!(
                    "{cmd:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            false
        }
        Err(err) => {
            support::skip(test, &format!("cannot run {cmd:?}: {err}"));
            false
        }
    }
}

/// The `MAJ:MIN` that /proc/self/mountinfo gives for the mount `path` is on.
fn mountinfo_dev(path: &Path) -> (u32, u32) {
    use std::os::unix::ffi::OsStrExt;
    // The mount point with the longest matching prefix: good enough for a
    // test that controls its mounts. Bytes: other mount points need not be
    // UTF-8.
    let path = path.canonicalize().unwrap();
    let info = std::fs::read("/proc/self/mountinfo").unwrap();
    info.split(|&b| b == b'\n')
        .filter_map(|l| {
            let f: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
            let mp = Path::new(std::ffi::OsStr::from_bytes(f.get(4)?));
            let dev = std::str::from_utf8(f[2]).ok()?;
            let (maj, min) = dev.split_once(':')?;
            if !path.starts_with(mp) {
                return None;
            }
            Some((mp.as_os_str().len(), (maj.parse().ok()?, min.parse().ok()?)))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, dev)| dev)
        .unwrap()
}

fn dev_of(path: &Path) -> (u32, u32) {
    let dev = std::fs::metadata(path).unwrap().dev();
    (libc::major(dev), libc::minor(dev))
}

/// Whether any of 16 reads of `/proc/locks` shows a lock on `dev:ino`. One
/// read can skip a record at a page boundary while other tests take and drop
/// locks; a stable record is missed only if every read skips it, and no read
/// shows a record that does not exist.
fn proc_locks_mentions(dev: (u32, u32), ino: u64) -> bool {
    let needle = format!(" {:02x}:{:02x}:{ino} ", dev.0, dev.1);
    (0..16).any(|_| {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .contains(&needle)
    })
}

#[test]
fn holders_on_an_overlay_mount() {
    const TEST: &str = "holders_on_an_overlay_mount";
    if !support::is_root() {
        return support::skip(TEST, "mounting overlayfs needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    std::fs::write(lower.join("app.lock"), b"").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if !run(
        TEST,
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged),
    ) {
        return;
    }
    let _mounted = Mounted(merged.clone());
    let path = merged.join("app.lock");
    let child = holder("exclusive", &path);
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(summary(&list), [(child.pid(), FlockMode::Exclusive, false)]);
    assert_eq!(list[0].status, PidStatus::Confirmed);
    assert_eq!(
        fdinfo_mode(child.pid(), &path),
        Some(FlockMode::Exclusive),
        "the holder's own fdinfo"
    );
    // The file was copied up when opened for writing; the lock is on the
    // overlay inode, so the upper file shows no holder.
    assert!(flockguard::holders(upper.join("app.lock"))
        .unwrap()
        .is_empty());
    assert!(child.release().success());
}

#[test]
fn holders_on_a_btrfs_subvolume_where_st_dev_differs() {
    const TEST: &str = "holders_on_a_btrfs_subvolume_where_st_dev_differs";
    if !support::is_root() {
        return support::skip(TEST, "mounting a loop file needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("btrfs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    if !run(
        TEST,
        Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&image),
    ) {
        return;
    }
    if !run(
        TEST,
        Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop"])
            .arg(&image)
            .arg(&mnt),
    ) {
        return;
    }
    let _mounted = Mounted(mnt.clone());
    let sub = mnt.join("sub");
    if !run(
        TEST,
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&sub),
    ) {
        return;
    }
    let path = sub.join("app.lock");
    let child = holder("shared", &path);

    // The premise: inside a subvolume st_dev is not the superblock device
    // that /proc/locks prints.
    let ino = std::fs::metadata(&path).unwrap().ino();
    let st_dev = dev_of(&path);
    let sb_dev = mountinfo_dev(&path);
    assert_ne!(st_dev, sb_dev, "st_dev equals the mount's device");
    assert!(proc_locks_mentions(sb_dev, ino));
    assert!(!proc_locks_mentions(st_dev, ino));

    let list = flockguard::holders(&path).unwrap();
    assert_eq!(summary(&list), [(child.pid(), FlockMode::Shared, false)]);
    assert_eq!(list[0].status, PidStatus::Confirmed);
    let file = LockFile::open(&path).unwrap();
    assert_eq!(summary(&file.holders().unwrap()), summary(&list));
    assert_eq!(fdinfo_mode(child.pid(), &path), Some(FlockMode::Shared));
    drop(file);
    assert!(child.release().success());
}

/// Threads that take and drop `flock` locks on files of their own, so that
/// `/proc/locks` changes between the pages of every read, while this
/// process keeps `filler` other locks so that it is several pages long.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
    filler: Vec<flockguard::LockGuard<Shared>>,
    dir: tempfile::TempDir,
}

impl Churn {
    fn start(filler: usize, threads: usize) -> Churn {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let filler = (0..filler)
            .map(|i| {
                LockFile::open(dir.path().join(format!("filler{i}")))
                    .unwrap()
                    .lock::<Shared>()
                    .unwrap()
            })
            .collect();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let files: Vec<std::fs::File> = (0..8)
                    .map(|i| {
                        std::fs::File::create(dir.path().join(format!("churn{t}-{i}"))).unwrap()
                    })
                    .collect();
                std::thread::spawn(move || {
                    use std::os::fd::AsRawFd;
                    let mut cycles = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // A varying number held at once moves the lines
                        // after them by more than one.
                        let n = 1 + (cycles % files.len() as u64) as usize;
                        for f in &files[..n] {
                            // SAFETY: flock on a descriptor this closure owns.
                            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                        }
                        // Leaves the CPUs to the readers now and then.
                        if cycles % 16 == 0 {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        for f in &files[..n] {
                            // SAFETY: as above.
                            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
                        }
                        cycles += 1;
                    }
                    cycles
                })
            })
            .collect();
        Churn {
            stop,
            threads,
            filler,
            dir,
        }
    }

    /// Takes one more long-held lock, moving the lines after it.
    fn grow(&mut self) {
        let name = format!("filler{}", self.filler.len());
        let file = LockFile::open(self.dir.path().join(name)).unwrap();
        self.filler.push(file.lock::<Shared>().unwrap());
    }

    /// Stops the threads; returns how many lock-and-release cycles they ran.
    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

/// Calls `holders()` `calls` times; counts the calls where one of
/// `expected` (pid, mode) is listed more than once, where one is missing,
/// and where anything else is listed.
/// Every 25 calls `churn` takes one more long-held lock, so the lines of
/// `path` cross page boundaries during the run.
fn count_wrong(
    churn: &mut Churn,
    path: &Path,
    expected: &[(u32, FlockMode)],
    calls: usize,
) -> (usize, usize, usize) {
    let (mut duplicated, mut missed, mut other) = (0, 0, 0);
    for call in 0..calls {
        if call % 25 == 0 {
            churn.grow();
        }
        let list = flockguard::holders(path).unwrap();
        let mut dup = false;
        let mut miss = false;
        for &(pid, mode) in expected {
            match list
                .iter()
                .filter(|h| h.pid == pid && h.mode == mode)
                .count()
            {
                0 => miss = true,
                1 => {}
                _ => dup = true,
            }
        }
        let extra = list
            .iter()
            .any(|h| h.waiting || !expected.contains(&(h.pid, h.mode)));
        duplicated += usize::from(dup);
        missed += usize::from(miss);
        other += usize::from(extra);
    }
    (duplicated, missed, other)
}

fn proc_locks_pages() -> usize {
    std::fs::read("/proc/locks").unwrap().len().div_ceil(4096)
}

/// A stable holder is listed exactly once while `/proc/locks` is longer
/// than a page and other threads lock and unlock: the kernel serves the
/// file a page per read(2), so lines shift between pages.
#[test]
fn a_stable_holder_is_listed_once_under_churn() {
    const CALLS: usize = 3000;
    let (_dir, path) = support::lock_path();
    let (_dir2, path2) = support::lock_path();
    let one = holder("exclusive", &path);
    let readers = [holder("shared", &path2), holder("shared", &path2)];
    let mut churn = Churn::start(300, 4);
    let pages = proc_locks_pages();
    assert!(pages > 2, "/proc/locks is only {pages} pages");
    let start = std::time::Instant::now();
    let exclusive = count_wrong(
        &mut churn,
        &path,
        &[(one.pid(), FlockMode::Exclusive)],
        CALLS,
    );
    let shared = count_wrong(
        &mut churn,
        &path2,
        &[
            (readers[0].pid(), FlockMode::Shared),
            (readers[1].pid(), FlockMode::Shared),
        ],
        CALLS,
    );
    let took = start.elapsed();
    let cycles = churn.finish();
    eprintln!(
        "churn: {pages} pages, {cycles} lock cycles, {:?} per call; wrong answers in {CALLS} calls \
         (duplicated, missed, other): one exclusive holder {exclusive:?}, two readers {shared:?}",
        took / (2 * CALLS as u32)
    );
    assert!(cycles > 0);
    assert_eq!(exclusive, (0, 0, 0), "one exclusive holder");
    assert_eq!(shared, (0, 0, 0), "two readers");
    assert!(one.release().success());
    for r in readers {
        assert!(r.release().success());
    }
}

/// The timeout error names the holders within a budget: a lock whose
/// taker exited lives on in a forked child, which only a scan of every
/// process's descriptors finds, and other processes hold thousands.
#[test]
fn a_timed_wait_ends_soon_after_its_deadline_whatever_the_machine_holds() {
    const PROCESSES: usize = 40;
    let per_process = (raise_nofile(3064).saturating_sub(64) as usize).min(3000);
    let (_dir, path) = support::lock_path();
    let mut crowd: Vec<Child> = (0..PROCESSES)
        .map(|_| Child::spawn(&["holders::fds", &per_process.to_string()]))
        .collect();
    for c in &mut crowd {
        c.expect_line("ready", LINE);
    }
    let mut child = Child::spawn(&["holders::fork", path.to_str().unwrap(), "exit"]);
    let line = child.expect_line("forked ", LINE);
    let forked: u32 = line["forked ".len()..].parse().unwrap();
    let taker = child.pid();
    assert!(child.child.wait().unwrap().success());

    // Long enough to read the holders before the deadline (20 ms ahead).
    let timeout = Duration::from_millis(40);
    let start = std::time::Instant::now();
    let err = flockguard::flock_timeout::<Exclusive>(&path, timeout).unwrap_err();
    let bounded = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.holders().len(), 1, "{err}");
    assert_eq!(err.holders()[0].pid, taker);
    // A shorter wait names none rather than end late.
    let err = flockguard::flock_timeout::<Exclusive>(&path, Duration::from_millis(5)).unwrap_err();
    assert!(err.is_timeout() && err.holders().is_empty(), "{err}");

    let start = std::time::Instant::now();
    let full = flockguard::holders(&path).unwrap();
    let unbounded = start.elapsed();
    eprintln!(
        "deadline: {PROCESSES} processes x {per_process} descriptors, taker exited: \
         flock_timeout({timeout:?}) returned after {bounded:?}; holders() took {unbounded:?}"
    );
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].status, PidStatus::Exited);
    assert_eq!(
        full[0].sharers.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [forked]
    );
    // Generous: catches a return seconds late, not milliseconds.
    assert!(bounded < Duration::from_millis(500), "{bounded:?}");
    for c in crowd {
        assert!(c.release().success());
    }
    assert!(child.release().success());
    support::wait_free(&path);
}

/// A mount point whose name is not UTF-8, anywhere on the machine, does not
/// stop `holders()` from reading `/proc/self/mountinfo`.
#[test]
fn holders_work_beside_a_mount_point_that_is_not_utf8() {
    const TEST: &str = "holders_work_beside_a_mount_point_that_is_not_utf8";
    use std::os::unix::ffi::OsStrExt;
    if let Some(why) = rig::cannot_mount() {
        return support::skip(TEST, &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"mnt-\xff\xfe new\nline"));
    std::fs::create_dir(&odd).unwrap();
    if !run(
        TEST,
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&odd),
    ) {
        return;
    }
    let _mounted = Mounted(odd.clone());
    let (_dir, path) = support::lock_path();
    let child = holder("exclusive", &path);
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(summary(&list), [(child.pid(), FlockMode::Exclusive, false)]);
    assert_eq!(list[0].status, PidStatus::Confirmed);
    // And on the odd mount itself, found through its own mountinfo line.
    let inside = odd.join("app.lock");
    let guard = LockFile::open(&inside).unwrap().lock::<Shared>().unwrap();
    let list = flockguard::holders(&inside).unwrap();
    assert_eq!(
        summary(&list),
        [(std::process::id(), FlockMode::Shared, false)]
    );
    assert_eq!(list[0].status, PidStatus::Confirmed);
    drop(guard);
    assert!(child.release().success());
}

/// A holder whose descriptors the caller cannot read for want of a free
/// descriptor is unverified, not "no longer has it open".
#[test]
fn a_holder_is_unverified_when_the_caller_has_no_descriptor_left() {
    let (_dir, path) = support::lock_path();
    let held = holder("exclusive", &path);
    let mut asker = Child::spawn(&["holders::emfile", path.to_str().unwrap()]);
    let lines = holder_lines(&mut asker);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let prefix = format!("holder {} Unverified sharers= text=", held.pid());
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    assert!(
        lines[0].ends_with("holds exclusive (unverified)"),
        "{lines:?}"
    );
    assert!(asker.release().success());
    assert!(held.release().success());
}

/// A holder owned by another user, whose descriptors are not readable, is
/// unverified.
#[test]
fn another_users_holder_is_unverified() {
    const TEST: &str = "another_users_holder_is_unverified";
    if let Some(why) = rig::cannot_switch_user() {
        return support::skip(TEST, &why);
    }
    let dir = rig::shared_dir(0o777);
    let path = dir.path().join("app.lock");
    let held = holder("exclusive", &path);
    let mut asker = Child::spawn_with(
        &["holders::print", path.to_str().unwrap()],
        rig::as_user(rig::NOBODY),
    );
    let lines = holder_lines(&mut asker);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let prefix = format!(
        "holder {} Unverified sharers= text=pid {} (",
        held.pid(),
        held.pid()
    );
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    assert!(asker.release().success());
    assert!(held.release().success());
}

/// A caller in a PID namespace that has no `/proc` of its own cannot see
/// the holder with `kill(2)`, but the holder is alive and confirmed.
#[test]
fn a_holder_outside_the_callers_pid_namespace_is_not_exited() {
    const TEST: &str = "a_holder_outside_the_callers_pid_namespace_is_not_exited";
    if !support::is_root() {
        return support::skip(TEST, "unshare(CLONE_NEWPID) needs root");
    }
    let (_dir, path) = support::lock_path();
    let held = holder("exclusive", &path);
    let child = support::child_command("holders::print", &[path.to_str().unwrap()]);
    let out = support::run_under(
        Command::new("unshare").args(["--pid", "--fork", "--kill-child"]),
        &child,
    )
    .stdin(std::process::Stdio::null())
    .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        other => return support::skip(TEST, &format!("unshare --pid --fork failed: {other:?}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("holder ")).collect();
    assert_eq!(
        lines,
        [format!(
            "holder {} Confirmed sharers= text=pid {} ({}) holds exclusive",
            held.pid(),
            held.pid(),
            flockguard::holders(&path).unwrap()[0]
                .cmdline
                .as_deref()
                .unwrap()
        )],
        "{text}"
    );
    assert!(held.release().success());
}

/// A process whose main thread has exited while another thread runs is a
/// zombie leader, not an exited holder; its descriptors are read through
/// the live thread.
#[test]
fn a_holder_whose_main_thread_exited_is_alive() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["holders::zombie", path.to_str().unwrap()]);
    let line = child.expect_line("leader ", LINE);
    let leader: u32 = line["leader ".len()..].parse().unwrap();
    // The premise: the leader is a zombie with a live thread.
    let stat = || std::fs::read_to_string(format!("/proc/{leader}/stat")).unwrap();
    support::wait_until("the main thread has exited", || {
        stat()
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
    });
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(summary(&list), [(leader, FlockMode::Exclusive, false)]);
    assert_eq!(list[0].status, PidStatus::Confirmed, "{}", list[0]);
    assert!(child.release().success());
    support::wait_free(&path);
}

/// A caller that holds the lock itself, through a descriptor inherited
/// from the parent that took it and exited, is named as the holder.
#[test]
fn the_caller_holding_the_lock_through_an_inherited_descriptor_is_named() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["holders::inherit", path.to_str().unwrap()]);
    let line = child.expect_line("forked ", LINE);
    let forked: u32 = line["forked ".len()..].parse().unwrap();
    let taker = child.pid();
    assert!(child.child.wait().unwrap().success());
    child.send("go");
    assert_eq!(child.expect_line("me ", LINE), format!("me {forked}"));
    let lines = holder_lines(&mut child);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The asking process is the sharer, and its line says so.
    assert_eq!(
        lines[0],
        format!(
            "holder {taker} Exited sharers={forked} text=pid {taker} (exited) took exclusive; now held by pid {forked} (this process)"
        )
    );
    assert!(child.release().success());
    support::wait_free(&path);
}

/// Control characters in another process's command line reach neither the
/// holder's text nor the timeout message raw.
#[test]
fn control_characters_in_a_holders_command_line_are_escaped() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn_with(
        &["holders::hold", "exclusive", path.to_str().unwrap()],
        |cmd| {
            cmd.arg("\u{1b}]0;pwned\u{7}\u{1b}[2J\nfake: line");
        },
    );
    child.expect_line("locked", LINE);
    let list = flockguard::holders(&path).unwrap();
    assert_eq!(list.len(), 1);
    let raw = list[0].cmdline.as_deref().unwrap();
    assert!(raw.contains("\u{1b}[2J\nfake: line"), "{raw:?}");
    let text = list[0].to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(
        text.contains("\\x1b]0;pwned\\x07\\x1b[2J\\nfake: line"),
        "{text}"
    );
    let err = flockguard::flock_timeout::<Exclusive>(&path, Duration::ZERO).unwrap_err();
    let message = err.to_string();
    // The timeout's diagnostics are bounded: under load the command line
    // may not have been read in time.
    if err.holders().iter().any(|h| h.cmdline.is_some()) {
        assert!(message.contains("\\x1b[2J"), "{message}");
    }
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(child.release().success());
}

/// Two shared locks whose takers exited, each living on in a forked
/// process: one scan of every process's descriptors finds both.
#[test]
fn two_forked_readers_whose_takers_exited_are_each_found() {
    let (_dir, path) = support::lock_path();
    let mut expected = Vec::new();
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut child = Child::spawn(&["holders::fork-shared", path.to_str().unwrap(), "exit"]);
        let line = child.expect_line("forked ", LINE);
        let forked: u32 = line["forked ".len()..].parse().unwrap();
        expected.push((child.pid(), forked));
        assert!(child.child.wait().unwrap().success());
        children.push(child);
    }
    let list = flockguard::holders(&path).unwrap();
    let mut got: Vec<(u32, Vec<u32>)> = list
        .iter()
        .map(|h| {
            assert_eq!(h.status, PidStatus::Exited, "{h}");
            assert!(h.sharers_complete);
            (h.pid, h.sharers.iter().map(|p| p.pid).collect())
        })
        .collect();
    got.sort();
    expected.sort();
    let expected: Vec<(u32, Vec<u32>)> = expected.into_iter().map(|(t, f)| (t, vec![f])).collect();
    assert_eq!(got, expected);
    for child in children {
        assert!(child.release().success());
    }
    support::wait_free(&path);
}

/// A holder whose line lies beyond the first page of `/proc/locks` is named
/// by a timeout error even when the diagnostics budget is spent at once:
/// the whole of `/proc/locks` is read before the budget applies.
#[test]
fn a_holder_beyond_the_first_page_is_named_with_no_diagnostics_budget() {
    const AFTER: usize = 300;
    let (_dir, path) = support::lock_path();
    let others = tempfile::tempdir().unwrap();
    let (held, taken) = std::thread::scope(|s| {
        s.spawn(|| {
            // The kernel adds a lock at the head of the list of the CPU that
            // takes it and prints the lists in CPU order: locks taken later
            // on the same CPU come first.
            use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
            let allowed = sched_getaffinity(None).unwrap();
            let first = (0..CpuSet::MAX_CPU).find(|&i| allowed.is_set(i)).unwrap();
            let mut set = CpuSet::new();
            set.set(first);
            sched_setaffinity(None, &set).unwrap();
            let held = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
            let taken: Vec<_> = (0..AFTER)
                .map(|i| {
                    LockFile::open(others.path().join(format!("after{i}")))
                        .unwrap()
                        .lock::<Shared>()
                        .unwrap()
                })
                .collect();
            (held, taken)
        })
        .join()
        .unwrap()
    });
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let line = text
        .lines()
        .position(|l| l.contains(&format!(":{ino} ")))
        .expect("the held lock in /proc/locks");
    let first_page = text[..4096.min(text.len())].lines().count();
    assert!(
        line > first_page,
        "line {line} of /proc/locks, first page {first_page} lines"
    );

    let wait = flockguard::Wait::timeout(Duration::from_millis(40)).diagnostics(Duration::ZERO);
    let err = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(wait)
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let list = err.error.holders();
    assert_eq!(list.len(), 1, "{err}");
    assert_eq!(list[0].pid, std::process::id());
    assert_eq!(list[0].mode, FlockMode::Exclusive);
    drop(taken);
    drop(held);
}
