//! Holder diagnostics against real processes and real mounts: shared and
//! exclusive holders, blocked waiters, forked holders, overlay and btrfs
//! (where `st_dev` is not the device `/proc/locks` prints), and `lslocks`.

#[macro_use]
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flockguard::{Exclusive, FlockMode, Holder, LockFile, PidStatus, Shared};
use support::Child;

const LINE: Duration = Duration::from_secs(30);

fn dispatch(args: &[String]) {
    match args[0].as_str() {
        "hold" => {
            let mode = if args[1] == "exclusive" {
                FlockMode::Exclusive
            } else {
                FlockMode::Shared
            };
            let file = LockFile::open(&args[2]).unwrap();
            support::tell("opened");
            let guard = file.lock_any(mode, flockguard::Wait::forever()).unwrap();
            support::tell("locked");
            support::wait_for_parent(|_| {});
            drop(guard);
        }
        "fork" => fork_hold(&args[1], &args[2]),
        other => panic!("unknown child command {other}"),
    }
}

child_entry!(dispatch);

/// Child: takes an exclusive lock, forks, closes its own descriptor and
/// either exits (`exit`) or stays until stdin closes (`stay`). The forked
/// process keeps the lock until stdin closes.
fn fork_hold(path: &str, then: &str) {
    let guard = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
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
    // Close this process's copy without LOCK_UN (which drop would send):
    // the fork keeps the lock.
    // SAFETY: the descriptor is the guard's, which is forgotten right after.
    assert_eq!(
        unsafe { libc::close(std::os::fd::AsRawFd::as_raw_fd(&guard)) },
        0
    );
    std::mem::forget(guard);
    support::tell(&format!("forked {pid}"));
    if then == "stay" {
        support::wait_for_parent(|_| {});
    }
}

fn holder(mode: &str, path: &Path) -> Child {
    let mut child = Child::spawn(&["hold", mode, path.to_str().unwrap()]);
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

/// The `FLOCK` rows `lslocks` prints for `path`, as [`summary`] does;
/// `None` (after printing why) if `lslocks` cannot be run.
fn lslocks(test: &str, path: &Path) -> Option<Vec<(u32, FlockMode, bool)>> {
    let out = match Command::new("lslocks")
        .args(["--raw", "--noheadings", "-o", "PID,TYPE,MODE,PATH"])
        .output()
    {
        Ok(out) if out.status.success() => out,
        other => {
            support::skip(test, &format!("lslocks (util-linux) not usable: {other:?}"));
            return None;
        }
    };
    let path = path.canonicalize().unwrap();
    let mut rows: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 || f[1] != "FLOCK" || Path::new(f[3]) != path {
                return None;
            }
            let waiting = f[2].ends_with('*');
            let mode = match f[2].trim_end_matches('*') {
                "WRITE" => FlockMode::Exclusive,
                "READ" => FlockMode::Shared,
                other => panic!("lslocks mode {other}"),
            };
            Some((f[0].parse().unwrap(), mode, waiting))
        })
        .collect();
    rows.sort_by_key(|&(pid, mode, waiting)| (pid, mode == FlockMode::Exclusive, waiting));
    Some(rows)
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
fn shared_holders_and_blocked_waiters_match_lslocks() {
    let (_dir, path) = support::lock_path();
    let a = holder("shared", &path);
    let b = holder("shared", &path);
    let mut w = Child::spawn(&["hold", "exclusive", path.to_str().unwrap()]);
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

    if let Some(rows) = lslocks("shared_holders_and_blocked_waiters_match_lslocks", &path) {
        assert_eq!(rows, expected, "lslocks disagrees");
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
    let mut child = Child::spawn(&["fork", path.to_str().unwrap(), "exit"]);
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
    let mut child = Child::spawn(&["fork", path.to_str().unwrap(), "stay"]);
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
    // The mount point with the longest matching prefix: good enough for a
    // test that controls its mounts.
    let path = path.canonicalize().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = Path::new(f[4]);
            let (maj, min) = f[2].split_once(':')?;
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

fn proc_locks_mentions(dev: (u32, u32), ino: u64) -> bool {
    let needle = format!(" {:02x}:{:02x}:{ino} ", dev.0, dev.1);
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .contains(&needle)
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
    if let Some(rows) = lslocks(TEST, &path) {
        assert_eq!(rows, summary(&list), "lslocks disagrees");
    }
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
    match lslocks(TEST, &path) {
        Some(rows) if rows == summary(&list) => {}
        Some(rows) => eprintln!("note: lslocks lists {rows:?} for the btrfs subvolume file"),
        None => {}
    }
    drop(file);
    assert!(child.release().success());
}
