//! The open check on real local filesystems, and which kernel path it takes.
//!
//! Before Linux 6.8, `statx(2)` reports no unique mount id, so every open
//! checks the filesystem with `fstatfs(2)` instead of the per-mount memory.
//! `.ci/guest` runs these tests on Linux 6.1 with `FLOCKGUARD_GUEST_KERNEL`
//! set to the release it booted; there a test that cannot set up its
//! filesystem fails instead of skipping.
//!
//! A test that mounts runs in a process of its own
//! ([`support::rerun_alone`]): a child forked from a process holds copies of
//! all its descriptors, and so their locks, until it executes, so mount
//! helpers and other tests' children would disturb each other.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use flockguard::{classify, holders, try_flock, Exclusive, FlockMode, LockOptions, Shared};

use crate::support;

/// Set by the guest init to the kernel release it expects, such as `6.1`.
const GUEST_KERNEL: &str = "FLOCKGUARD_GUEST_KERNEL";

/// `STATX_MNT_ID_UNIQUE` from `include/uapi/linux/stat.h` (Linux 6.8).
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

pub const CHILDREN: &[support::Role] = &[("fs_verdict::lock-times", |a| lock_times(&a[0], &a[1]))];

/// In a child: opens and locks `path` `times` times, for strace to count.
fn lock_times(path: &str, times: &str) {
    for _ in 0..times.parse::<u32>().unwrap() {
        drop(try_flock::<Exclusive>(path).unwrap());
    }
}

fn in_guest() -> bool {
    std::env::var_os(GUEST_KERNEL).is_some()
}

/// Skips on a developer machine; fails in the guest, which provides
/// everything these tests need.
fn cannot(test: &str, why: &str) {
    assert!(!in_guest(), "{test}: {why}");
    support::skip(test, why);
}

/// `(major, minor)` of the running kernel, from its release string.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// A mount made by one test, lazily unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!("cannot run {cmd:?}: {err}")),
    }
}

fn mount(args: &[&str], target: &Path) -> Result<Mounted, String> {
    run(Command::new("mount").args(args).arg(target))?;
    Ok(Mounted(target.into()))
}

/// An image file of `mib` MiB formatted with `mkfs`, loop-mounted at `mnt`.
fn loop_mount(mkfs: &[&str], fstype: &str, dir: &Path, mib: u64) -> Result<Mounted, String> {
    let image = dir.join(format!("{fstype}.img"));
    let mnt = dir.join(fstype);
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image))?;
    mount(&["-t", fstype, "-o", "loop", image.to_str().unwrap()], &mnt)
}

fn magic_of(path: &Path) -> u64 {
    let st = rustix::fs::statfs(path).unwrap();
    #[allow(clippy::unnecessary_cast)] // the word is i32 on 32-bit targets
    let magic = st.f_type as u64 & 0xFFFF_FFFF;
    magic
}

/// The checks every local filesystem must pass: the verdict accepts it,
/// a new and an existing lock file lock, a second open contends, and the
/// holder is found.
fn assert_lockable(fs: &str, dir: &Path, expected_magic: u64) {
    assert_eq!(magic_of(dir), expected_magic, "{fs}: statfs magic");
    assert!(classify(expected_magic).is_none(), "{fs} is refused");
    let path = dir.join("verdict.lock");
    assert!(!path.exists());
    for round in ["new file", "existing file"] {
        let guard =
            try_flock::<Exclusive>(&path).unwrap_or_else(|e| panic!("{fs}, {round}: {e} ({e:?})"));
        let err = try_flock::<Shared>(&path).unwrap_err();
        assert!(err.is_would_block(), "{fs}, {round}: {err:?}");
        let list = holders(&path).unwrap();
        assert_eq!(list.len(), 1, "{fs}, {round}: {list:?}");
        assert_eq!(list[0].pid, std::process::id(), "{fs}, {round}");
        assert_eq!(list[0].mode, FlockMode::Exclusive, "{fs}, {round}");
        assert!(!list[0].waiting, "{fs}, {round}");
        drop(guard);
        support::assert_free(&path);
        assert!(path.exists(), "{fs}: the lock file is gone");
    }
    // Adopting a descriptor checks the same way.
    let file = std::fs::File::open(&path).unwrap();
    let guard = LockOptions::new()
        .adopt(file)
        .unwrap()
        .try_lock::<Shared>()
        .unwrap();
    assert!(try_flock::<Shared>(&path).is_ok(), "{fs}: shared refused");
    drop(guard);
}

#[test]
fn the_guest_runs_the_kernel_it_booted() {
    const TEST: &str = "the_guest_runs_the_kernel_it_booted";
    let Some(expected) = std::env::var_os(GUEST_KERNEL) else {
        return support::skip(TEST, &format!("{GUEST_KERNEL} is not set"));
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let expected = expected.to_str().unwrap();
    assert!(
        release.starts_with(&format!("{expected}.")),
        "kernel {release:?}, expected {expected}"
    );
}

#[test]
fn statx_reports_a_unique_mount_id_exactly_from_linux_6_8() {
    let (dir, path) = support::lock_path();
    std::fs::write(&path, b"").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let st = rustix::fs::statx(
        file.as_fd(),
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::TYPE
            | rustix::fs::StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE),
    )
    .unwrap();
    let unique = st.stx_mask & STATX_MNT_ID_UNIQUE != 0;
    let version = kernel_version();
    assert_eq!(
        unique,
        version >= (6, 8),
        "Linux {version:?}: STATX_MNT_ID_UNIQUE reported: {unique}"
    );
    // Whichever path the check takes, the lock works.
    drop(try_flock::<Exclusive>(&path).unwrap());
    drop(dir);
}

#[test]
fn tmpfs_is_lockable() {
    const TEST: &str = "tmpfs_is_lockable";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return cannot(TEST, "mounting needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let _m = match mount(&["-t", "tmpfs", "tmpfs"], dir.path()) {
        Ok(m) => m,
        Err(why) => return cannot(TEST, &why),
    };
    assert_lockable("tmpfs", dir.path(), 0x0102_1994);
}

#[test]
fn ext4_on_a_loop_device_is_lockable() {
    const TEST: &str = "ext4_on_a_loop_device_is_lockable";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return cannot(TEST, "mounting a loop device needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let m = match loop_mount(&["mkfs.ext4", "-q", "-F"], "ext4", dir.path(), 32) {
        Ok(m) => m,
        Err(why) => return cannot(TEST, &why),
    };
    assert_lockable("ext4", &m.0, 0xEF53);
}

#[test]
fn btrfs_on_a_loop_device_is_lockable() {
    const TEST: &str = "btrfs_on_a_loop_device_is_lockable";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return cannot(TEST, "mounting a loop device needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let m = match loop_mount(&["mkfs.btrfs", "-q", "-f"], "btrfs", dir.path(), 128) {
        Ok(m) => m,
        Err(why) => return cannot(TEST, &why),
    };
    assert_lockable("btrfs", &m.0, 0x9123_683E);
}

#[test]
fn overlay_is_lockable_and_locks_the_overlay_inode() {
    const TEST: &str = "overlay_is_lockable_and_locks_the_overlay_inode";
    if support::rerun_alone() {
        return;
    }
    if !support::is_root() {
        return cannot(TEST, "mounting overlayfs needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let _m = match mount(&["-t", "overlay", "overlay", "-o", &opts], &merged) {
        Ok(m) => m,
        Err(why) => return cannot(TEST, &why),
    };
    assert_lockable("overlay", &merged, 0x794C_7630);
    // The file lives in the upper layer, whose inode is not the one locked.
    let upper_file = upper.join("verdict.lock");
    assert!(upper_file.exists());
    let guard = try_flock::<Exclusive>(merged.join("verdict.lock")).unwrap();
    assert!(holders(&upper_file).unwrap().is_empty());
    drop(guard);
}

#[test]
fn each_open_checks_the_filesystem_unless_the_kernel_names_the_mount_uniquely() {
    const TEST: &str = "each_open_checks_the_filesystem_unless_the_kernel_names_the_mount_uniquely";
    const OPENS: usize = 3;
    let (dir, path) = support::lock_path();
    let log = dir.path().join("strace.log");
    let child = support::child_command(
        "fs_verdict::lock-times",
        &[path.to_str().unwrap(), &OPENS.to_string()],
    );
    let out = match support::run_under(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fstatfs,statfs", "-o"])
            .arg(&log),
        &child,
    )
    .output()
    {
        Ok(out) => out,
        Err(err) => return cannot(TEST, &format!("cannot run strace: {err}")),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("ptrace") {
            return cannot(TEST, stderr.trim());
        }
        panic!("child failed: {out:?}");
    }
    let trace = std::fs::read_to_string(&log).unwrap();
    let calls = trace.lines().filter(|l| l.contains("fstatfs(")).count();
    let expected = if kernel_version() >= (6, 8) { 1 } else { OPENS };
    assert_eq!(
        calls,
        expected,
        "Linux {:?}, {OPENS} opens on one mount:\n{trace}",
        kernel_version()
    );
}
