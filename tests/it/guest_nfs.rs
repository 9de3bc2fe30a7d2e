//! flockguard and `flock(2)` on a real NFS mount.
//!
//! `.ci/guest` boots a guest whose init exports a tmpfs with the kernel NFS
//! server and mounts it over loopback: twice with NFSv4.2 (the second with
//! `nosharecache`, so a second superblock and a second set of opens) and
//! once with NFSv3. It names the mounts in the environment variables below.
//! Without them every test prints `SKIPPED` and returns; in the guest
//! (`FLOCKGUARD_GUEST_KERNEL` set) a missing mount is a failure.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flockguard::{
    block_flock, flock_timeout, holders, try_flock, Error, Exclusive, FlockMode, LockFile,
    LockOptions, RemoteFs, Shared,
};

use crate::support;

/// Two NFSv4 mounts of one export, separated by `:`.
const NFS4: &str = "FLOCKGUARD_GUEST_NFS4";
/// An NFSv3 mount of the same export.
const NFS3: &str = "FLOCKGUARD_GUEST_NFS3";
/// The exported directory, on the server's side.
const EXPORT: &str = "FLOCKGUARD_GUEST_NFS_EXPORT";
/// Set by the guest init; see `tests/it/fs_verdict.rs`.
const GUEST_KERNEL: &str = "FLOCKGUARD_GUEST_KERNEL";

/// The mounts of one export, and the export itself.
struct Nfs {
    v4a: PathBuf,
    v4b: PathBuf,
    v3: PathBuf,
    export: PathBuf,
}

impl Nfs {
    /// The NFS mounts the guest made, or `None` after printing why not.
    fn get(test: &str) -> Option<Nfs> {
        let var = |name| std::env::var_os(name).map(PathBuf::from);
        match (var(NFS4), var(NFS3), var(EXPORT)) {
            (Some(v4), Some(v3), Some(export)) => {
                let v4 = v4.to_str().unwrap().to_owned();
                let (a, b) = v4.split_once(':').expect("two NFSv4 mounts");
                Some(Nfs {
                    v4a: a.into(),
                    v4b: b.into(),
                    v3,
                    export,
                })
            }
            _ => {
                assert!(
                    std::env::var_os(GUEST_KERNEL).is_none(),
                    "{test}: the guest has no NFS mounts ({NFS4}, {NFS3}, {EXPORT})"
                );
                support::skip(test, &format!("no NFS mount given ({NFS4} is not set)"));
                None
            }
        }
    }

    /// The same file `name` as seen through each mount: v4a, v4b, v3, and
    /// on the server.
    fn paths(&self, name: &str) -> [PathBuf; 4] {
        [&self.v4a, &self.v4b, &self.v3, &self.export].map(|d| d.join(name))
    }
}

/// Opens `path` allowing NFS, without locking.
fn open_allowed(path: &Path) -> LockFile {
    LockOptions::new()
        .remote_fs(RemoteFs::Allow)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Whether a fresh open of `path` can take a lock of mode `M` right now.
fn can_lock<M: flockguard::Mode>(path: &Path) -> bool {
    match open_allowed(path).try_lock::<M>() {
        Ok(guard) => {
            drop(guard.unlock().unwrap());
            true
        }
        Err(err) if err.is_would_block() => false,
        Err(err) => panic!("{}: {err:?}", path.display()),
    }
}

/// `flock(2)` without the crate, for the raw kernel behaviour.
fn raw_flock(fd: RawFd, op: libc::c_int) -> Result<(), i32> {
    // SAFETY: flock(2) on a descriptor this test owns; no memory is shared.
    let rc = unsafe { libc::flock(fd, op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// A whole-file write lock with `fcntl(cmd)` (`F_SETLK` or `F_OFD_SETLK`).
fn fcntl_write_lock(file: &File, cmd: libc::c_int) -> Result<(), i32> {
    // SAFETY: an all-zero flock struct is valid; the kernel reads it only.
    let rc = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        libc::fcntl(file.as_raw_fd(), cmd, &fl)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

/// One line of `/proc/locks`: kind (`FLOCK`, `POSIX`, `DELEG`, `OFDLCK`),
/// `READ`/`WRITE`, pid, `MAJ:MIN:INODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockLine {
    kind: String,
    access: String,
    pid: u32,
    file: String,
}

/// The held (not waiting) `/proc/locks` lines for the inode behind `path`,
/// as its own superblock's device names it.
fn lock_lines(path: &Path) -> Vec<LockLine> {
    let meta = std::fs::metadata(path).unwrap();
    let dev = meta.dev();
    let file = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[5] == file).then(|| LockLine {
                kind: f[1].into(),
                access: f[3].into(),
                pid: f[4].parse().unwrap(),
                file: f[5].into(),
            })
        })
        .collect()
}

fn kinds(lines: &[LockLine]) -> Vec<(&str, &str)> {
    let mut v: Vec<_> = lines
        .iter()
        .map(|l| (l.kind.as_str(), l.access.as_str()))
        .collect();
    v.sort();
    v
}

/// Prints a measured fact so the guest log keeps it.
fn record(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NFS-RECORD {what}");
}

#[test]
fn try_flock_on_nfs_is_refused_naming_nfs_and_leaves_no_file() {
    const TEST: &str = "try_flock_on_nfs_is_refused_naming_nfs_and_leaves_no_file";
    let Some(nfs) = Nfs::get(TEST) else { return };
    for (version, dir) in [("v4", &nfs.v4a), ("v3", &nfs.v3)] {
        let name = format!("refused-{version}.lock");
        let path = dir.join(&name);
        let err = try_flock::<Exclusive>(&path).unwrap_err();
        assert!(
            matches!(err, Error::RemoteFs { fs, .. } if fs.magic == 0x6969),
            "{version}: {err:?}"
        );
        assert!(err.to_string().contains("NFS"), "{version}: {err}");
        assert!(!path.exists(), "{version}: refused lock file left behind");
        assert!(
            !nfs.export.join(&name).exists(),
            "{version}: refused lock file left on the server"
        );
        // Every way in is refused the same way.
        let err = block_flock::<Shared>(&path).unwrap_err();
        assert!(matches!(err, Error::RemoteFs { .. }), "{version}: {err:?}");
        let err = flock_timeout::<Exclusive>(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::RemoteFs { .. }), "{version}: {err:?}");
        let err = LockOptions::new().open(&path).unwrap_err();
        assert!(matches!(err, Error::RemoteFs { .. }), "{version}: {err:?}");
        assert!(!path.exists(), "{version}: refused lock file left behind");
    }
}

#[test]
fn an_existing_lock_file_on_nfs_is_refused_and_kept() {
    const TEST: &str = "an_existing_lock_file_on_nfs_is_refused_and_kept";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, _, v3, server] = nfs.paths("existing.lock");
    std::fs::write(&server, b"pid 1\n").unwrap();
    for path in [&v4a, &v3] {
        let err = try_flock::<Exclusive>(path).unwrap_err();
        assert!(matches!(err, Error::RemoteFs { .. }), "{err:?}");
        assert_eq!(std::fs::read(path).unwrap(), b"pid 1\n");
    }
    assert_eq!(std::fs::read(&server).unwrap(), b"pid 1\n");
}

#[test]
fn remote_fs_allow_locks_on_nfs() {
    const TEST: &str = "remote_fs_allow_locks_on_nfs";
    let Some(nfs) = Nfs::get(TEST) else { return };
    for (version, dir) in [("v4", &nfs.v4a), ("v3", &nfs.v3)] {
        let path = dir.join(format!("allowed-{version}.lock"));
        let guard = open_allowed(&path).try_lock::<Exclusive>().unwrap();
        assert!(
            !can_lock::<Shared>(&path),
            "{version}: a second open locked"
        );
        let shared = guard.downgrade().unwrap();
        assert!(can_lock::<Shared>(&path), "{version}: shared refused");
        assert!(
            !can_lock::<Exclusive>(&path),
            "{version}: exclusive granted"
        );
        drop(shared);
        assert!(can_lock::<Exclusive>(&path), "{version}: not released");
        // The holder is found through the client's own record of the lock.
        let guard = open_allowed(&path).try_lock::<Exclusive>().unwrap();
        let list = holders(&path).unwrap();
        assert_eq!(list.len(), 1, "{version}: {list:?}");
        assert_eq!(list[0].pid, std::process::id());
        assert_eq!(list[0].mode, FlockMode::Exclusive);
        drop(guard);
    }
    // That record belongs to one mount's inode: through another mount of
    // the same export the holder is not listed, though the lock excludes.
    let [v4a, v4b, v3, _] = nfs.paths("holders.lock");
    let guard = open_allowed(&v4a).try_lock::<Exclusive>().unwrap();
    for other in [&v4b, &v3] {
        assert!(!can_lock::<Shared>(other), "{}", other.display());
        let list = holders(other).unwrap();
        record(&format!(
            "held through {}: holders through {}: {list:?}",
            v4a.display(),
            other.display()
        ));
        assert!(list.is_empty(), "{}: {list:?}", other.display());
    }
    drop(guard);
}

#[test]
fn flock_on_nfs_excludes_across_opens_mounts_and_versions() {
    const TEST: &str = "flock_on_nfs_excludes_across_opens_mounts_and_versions";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, v4b, v3, server] = nfs.paths("across.lock");
    let clients = [&v4a, &v4b, &v3];
    // Created on the server, as a lock file left from an earlier run is.
    std::fs::write(&server, b"").unwrap();
    for holder in clients {
        let guard = open_allowed(holder).try_lock::<Exclusive>().unwrap();
        record(&format!(
            "exclusive via {}: server inode {:?}",
            holder.display(),
            lock_lines(&server)
        ));
        for other in clients {
            let t0 = Instant::now();
            assert!(
                !can_lock::<Shared>(other),
                "{} granted while {} holds it",
                other.display(),
                holder.display()
            );
            record(&format!(
                "exclusive via {} refuses shared via {} (answer in {:?})",
                holder.display(),
                other.display(),
                t0.elapsed()
            ));
        }
        drop(guard);
        for other in clients {
            assert!(can_lock::<Exclusive>(other), "{}", other.display());
        }
    }
    // Shared locks through every client coexist and keep exclusive out.
    let shared: Vec<_> = clients
        .iter()
        .map(|p| open_allowed(p).try_lock::<Shared>().unwrap())
        .collect();
    for other in clients {
        assert!(!can_lock::<Exclusive>(other), "{}", other.display());
    }
    drop(shared);
    assert!(can_lock::<Exclusive>(&v3));
}

#[test]
fn server_side_flock_and_nfs_client_flock_do_not_exclude_each_other() {
    const TEST: &str = "server_side_flock_and_nfs_client_flock_do_not_exclude_each_other";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, _, v3, server] = nfs.paths("server-side.lock");
    for client in [&v4a, &v3] {
        // A client's lock reaches the server as a POSIX lock: a local
        // fcntl lock there conflicts, a local flock does not.
        let guard = open_allowed(client).try_lock::<Exclusive>().unwrap();
        let local = try_flock::<Exclusive>(&server).expect("server-side flock");
        assert_eq!(
            fcntl_write_lock(&rw(&server), libc::F_SETLK),
            Err(libc::EAGAIN),
            "server-side fcntl lock granted beside {}",
            client.display()
        );
        drop(local);
        drop(guard);
        // And the other way round.
        let local = try_flock::<Exclusive>(&server).unwrap();
        assert!(can_lock::<Exclusive>(client), "{}", client.display());
        drop(local);
    }
    record("a flock(2) lock on the exported file, on the server, excludes no NFS client, and no NFS client's lock excludes it");
}

#[test]
fn flock_conflicts_with_fcntl_and_ofd_locks_on_nfs_but_not_locally() {
    const TEST: &str = "flock_conflicts_with_fcntl_and_ofd_locks_on_nfs_but_not_locally";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, _, v3, server] = nfs.paths("fcntl.lock");
    for client in [&v4a, &v3] {
        let guard = open_allowed(client).try_lock::<Exclusive>().unwrap();
        for cmd in [libc::F_SETLK, libc::F_OFD_SETLK] {
            assert_eq!(
                fcntl_write_lock(&rw(client), cmd),
                Err(libc::EAGAIN),
                "{}: fcntl({cmd}) granted beside flock",
                client.display()
            );
        }
        drop(guard);
        // A POSIX lock taken first keeps flock out too.
        let posix = rw(client);
        fcntl_write_lock(&posix, libc::F_SETLK).unwrap();
        assert!(!can_lock::<Shared>(client), "{}", client.display());
        drop(posix);
        assert!(can_lock::<Exclusive>(client), "{}", client.display());
    }
    // On the server's local filesystem the two kinds are independent.
    let guard = try_flock::<Exclusive>(&server).unwrap();
    fcntl_write_lock(&rw(&server), libc::F_OFD_SETLK).unwrap();
    drop(guard);
}

#[test]
fn proc_locks_shows_a_client_flock_line_and_a_server_posix_line() {
    const TEST: &str = "proc_locks_shows_a_client_flock_line_and_a_server_posix_line";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, _, v3, server] = nfs.paths("proc-locks.lock");
    let me = std::process::id();
    for (version, client) in [("v4", &v4a), ("v3", &v3)] {
        let guard = open_allowed(client).try_lock::<Exclusive>().unwrap();
        let on_client = lock_lines(client);
        let on_server = lock_lines(&server);
        record(&format!("{version} exclusive: client inode {on_client:?}"));
        record(&format!("{version} exclusive: server inode {on_server:?}"));
        assert_eq!(kinds(&on_client), [("FLOCK", "WRITE")], "{version}");
        assert_eq!(on_client[0].pid, me, "{version}");
        let posix: Vec<_> = on_server.iter().filter(|l| l.kind == "POSIX").collect();
        assert_eq!(posix.len(), 1, "{version}: {on_server:?}");
        assert_eq!(posix[0].access, "WRITE", "{version}");
        assert_ne!(
            posix[0].pid, me,
            "{version}: the server's lock names the client"
        );
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", posix[0].pid));
        record(&format!(
            "{version}: the server's POSIX lock is owned by pid {} ({:?})",
            posix[0].pid,
            comm.as_deref().map(str::trim)
        ));
        assert!(
            on_server.iter().all(|l| l.kind != "FLOCK"),
            "{version}: {on_server:?}"
        );
        let shared = guard.downgrade().unwrap();
        let on_server = lock_lines(&server);
        record(&format!("{version} shared: server inode {on_server:?}"));
        assert!(
            on_server
                .iter()
                .any(|l| l.kind == "POSIX" && l.access == "READ"),
            "{version}: {on_server:?}"
        );
        drop(shared);
        let t0 = Instant::now();
        while !lock_lines(&server).iter().all(|l| l.kind != "POSIX") {
            assert!(t0.elapsed() < Duration::from_secs(30), "{version}: kept");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(lock_lines(client).is_empty(), "{version}");
    }
}

#[test]
fn a_failed_nonblocking_upgrade_keeps_the_shared_lock_on_nfs() {
    const TEST: &str = "a_failed_nonblocking_upgrade_keeps_the_shared_lock_on_nfs";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let local = tempfile::tempdir().unwrap();
    // Locally the shared lock is lost (flock_lock_inode drops it before
    // looking for conflicts); on NFS the server refuses first and the
    // client keeps what it had.
    for (dir, kept) in [
        (&nfs.v4a, true),
        (&nfs.v3, true),
        (&local.path().into(), false),
    ] {
        let path = dir.join("upgrade.lock");
        let (a, b) = (rw_create(&path), rw(&path));
        raw_flock(a.as_raw_fd(), libc::LOCK_SH).unwrap();
        raw_flock(b.as_raw_fd(), libc::LOCK_SH).unwrap();
        assert_eq!(
            raw_flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            Err(libc::EWOULDBLOCK)
        );
        drop(b);
        assert_eq!(
            !can_lock::<Exclusive>(&path),
            kept,
            "{}: shared lock kept after the failed upgrade",
            path.display()
        );
        drop(a);
        assert!(can_lock::<Exclusive>(&path));
    }
    record("a failed LOCK_EX|LOCK_NB upgrade keeps the shared lock on NFSv4 and NFSv3, and loses it on tmpfs");

    // Through the crate under RemoteFs::Allow, the file that a failed
    // try_upgrade hands back holds no lock on NFS either: the crate sends
    // LOCK_UN, so "the shared lock was released" is true everywhere.
    for dir in [&nfs.v4a, &nfs.v3] {
        let path = dir.join("try-upgrade.lock");
        let a = open_allowed(&path).try_lock::<Shared>().unwrap();
        let b = open_allowed(&path).try_lock::<Shared>().unwrap();
        let handed_back = a
            .try_upgrade()
            .expect_err("upgrade granted beside another shared holder");
        assert!(handed_back.is_would_block());
        drop(b);
        assert!(
            can_lock::<Exclusive>(&path),
            "{}: the file try_upgrade handed back still holds the shared lock",
            path.display()
        );
        drop(handed_back);
    }
}

fn rw_create(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

// ---- OFD locks: arbitrated by the server -------------------------------------

/// Opens `path` for OFD locks on `range`, with the default remote policy.
#[cfg(feature = "ofd")]
fn open_ofd(path: &Path, range: flockguard::ByteRange) -> LockFile {
    LockOptions::new()
        .kind(flockguard::LockKind::Ofd)
        .range(range)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for OFD locks: {e}", path.display()))
}

#[cfg(feature = "ofd")]
fn can_lock_ofd(path: &Path, range: flockguard::ByteRange, mode: FlockMode) -> bool {
    match open_ofd(path, range).lock_any(mode, flockguard::Wait::none()) {
        Ok(guard) => {
            drop(guard);
            true
        }
        Err(err) if err.is_would_block() => false,
        Err(err) => panic!("{}: {err:?}", path.display()),
    }
}

#[cfg(feature = "ofd")]
#[test]
fn ofd_locks_on_nfs_are_accepted_when_the_server_arbitrates_them() {
    const TEST: &str = "ofd_locks_on_nfs_are_accepted_when_the_server_arbitrates_them";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, _, v3, _] = nfs.paths("accepted.lock");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for (mount, path) in [(&nfs.v4a, &v4a), (&nfs.v3, &v3)] {
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mount.to_str().unwrap()))
            .expect("the mount in mountinfo");
        record(&format!("mount {}: {line}", mount.display()));
        assert!(
            !line.contains("local_lock=posix") && !line.contains("local_lock=all"),
            "{line}"
        );
        // Accepted under the default RemoteFs::Reject; flock stays refused.
        let guard = open_ofd(path, flockguard::ByteRange::WHOLE)
            .try_lock::<Exclusive>()
            .unwrap();
        drop(guard);
        let err = LockOptions::new().open(path).unwrap_err();
        assert!(err.is_remote_fs(), "{err:?}");
    }
}

#[cfg(feature = "ofd")]
#[test]
fn ofd_locks_exclude_across_nfs_mounts_and_versions_whole_and_ranges() {
    use flockguard::ByteRange;
    const TEST: &str = "ofd_locks_exclude_across_nfs_mounts_and_versions_whole_and_ranges";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, v4b, v3, server] = nfs.paths("ofd.lock");
    std::fs::write(&server, b"").unwrap();
    let clients = [&v4a, &v4b, &v3];
    for holder in clients {
        // The whole file.
        let guard = open_ofd(holder, ByteRange::WHOLE)
            .try_lock::<Exclusive>()
            .unwrap();
        for other in clients.iter().filter(|o| **o != holder) {
            assert!(
                !can_lock_ofd(other, ByteRange::WHOLE, FlockMode::Shared),
                "{} granted while {} holds it",
                other.display(),
                holder.display()
            );
        }
        record(&format!(
            "OFD exclusive via {}: server sees {:?}",
            holder.display(),
            kinds(&lock_lines(&server))
        ));
        drop(guard);
        // Ranges: bytes 0..10 held; 5..15 refused elsewhere, 10..20 free.
        let guard = open_ofd(holder, ByteRange::new(0, 10))
            .try_lock::<Exclusive>()
            .unwrap();
        for other in clients.iter().filter(|o| **o != holder) {
            assert!(
                !can_lock_ofd(other, ByteRange::new(5, 10), FlockMode::Shared),
                "{}",
                other.display()
            );
            assert!(
                can_lock_ofd(other, ByteRange::new(10, 10), FlockMode::Exclusive),
                "{}",
                other.display()
            );
        }
        drop(guard);
        for other in clients {
            assert!(can_lock_ofd(other, ByteRange::WHOLE, FlockMode::Exclusive));
        }
    }
}

#[cfg(feature = "ofd")]
#[test]
fn a_timed_ofd_waiter_on_one_nfs_mount_sees_a_release_on_another() {
    use flockguard::ByteRange;
    const TEST: &str = "a_timed_ofd_waiter_on_one_nfs_mount_sees_a_release_on_another";
    let Some(nfs) = Nfs::get(TEST) else { return };
    let [v4a, v4b, v3, server] = nfs.paths("ofd-wait.lock");
    std::fs::write(&server, b"").unwrap();
    // A first lock through each mount, outside the measurement: right after
    // the server starts, a mount's first lock request waits out the grace
    // period (see docs/semantics.md).
    for path in [&v4a, &v4b, &v3] {
        drop(
            open_ofd(path, ByteRange::WHOLE)
                .lock::<Exclusive>()
                .unwrap(),
        );
    }
    for (holder, waiter) in [(&v4a, &v4b), (&v4b, &v3), (&v3, &v4a)] {
        let guard = open_ofd(holder, ByteRange::WHOLE)
            .try_lock::<Exclusive>()
            .unwrap();
        let file = open_ofd(waiter, ByteRange::WHOLE);
        let wait = std::thread::spawn(move || {
            let got = file.lock_timeout::<Exclusive>(Duration::from_secs(60));
            (got.map(drop).is_ok(), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        drop(guard);
        let (ok, at) = wait.join().unwrap();
        assert!(ok, "{} never got the lock", waiter.display());
        record(&format!(
            "OFD release via {} seen by a timed waiter via {} after {:?}",
            holder.display(),
            waiter.display(),
            at.duration_since(released)
        ));
    }
}
