//! Which filesystems `flock(2)` does not reliably serialize on.

use std::io;
#[cfg(target_has_atomic = "64")]
use std::sync::atomic::AtomicU32;
#[cfg(target_has_atomic = "64")]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(target_has_atomic = "64")]
use std::sync::Mutex;

/// A filesystem on which `flock(2)` does not reliably serialize processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnreliableFs {
    /// Short name used in messages, such as `"NFS"` or `"FUSE"`.
    pub name: &'static str,
    /// The `statfs(2)` `f_type` magic number.
    pub magic: u64,
    /// Why `flock(2)` is unreliable there, as a lower-case clause.
    pub reason: &'static str,
}

const NETWORK: &str =
    "locks are emulated or kept by a remote server and may not be seen by other clients";
const CLUSTER: &str =
    "locks are coordinated by a cluster lock manager and may hang or be lost when a node fails";

/// The deny-list, with magics from `include/uapi/linux/magic.h` and the
/// filesystems' own sources.
pub(crate) const UNRELIABLE: &[UnreliableFs] = &[
    UnreliableFs { name: "NFS", magic: NFS_MAGIC, reason: "the Linux NFS client emulates flock with whole-file POSIX locks held by the server's lock manager, which can hang and conflicts with fcntl locks" },
    UnreliableFs { name: "SMB", magic: 0x517B, reason: NETWORK },
    UnreliableFs { name: "CIFS", magic: 0xFF53_4D42, reason: NETWORK },
    UnreliableFs { name: "SMB2", magic: 0xFE53_4D42, reason: NETWORK },
    UnreliableFs { name: "CephFS", magic: 0x00C3_6400, reason: NETWORK },
    UnreliableFs { name: "kAFS", magic: 0x6B41_4653, reason: NETWORK },
    UnreliableFs { name: "OpenAFS", magic: 0x5346_414F, reason: NETWORK },
    UnreliableFs { name: "FUSE", magic: 0x6573_5546, reason: "the userspace server decides what a lock means, and servers without a flock handler lock only locally" },
    UnreliableFs { name: "9p", magic: 0x0102_1997, reason: NETWORK },
    UnreliableFs { name: "Coda", magic: 0x7375_7245, reason: NETWORK },
    UnreliableFs { name: "NCP", magic: 0x564C, reason: NETWORK },
    UnreliableFs { name: "Lustre", magic: 0x0BD0_0BD0, reason: CLUSTER },
    UnreliableFs { name: "GPFS", magic: 0x4750_4653, reason: CLUSTER },
    UnreliableFs { name: "OCFS2", magic: 0x7461_636F, reason: CLUSTER },
    UnreliableFs { name: "GFS2", magic: 0x0116_1970, reason: CLUSTER },
    UnreliableFs { name: "OrangeFS", magic: 0x2003_0528, reason: NETWORK },
    UnreliableFs { name: "BeeGFS", magic: 0x1983_0326, reason: NETWORK },
    UnreliableFs { name: "vboxsf", magic: 0x786F_4256, reason: "the VirtualBox shared-folder driver does not pass locks to the host" },
];

/// The magic of NFS.
pub(crate) const NFS_MAGIC: u64 = 0x6969;

/// NFS whose client keeps `fcntl(2)` locks to itself: refused for OFD locks.
pub(crate) static NFS_LOCAL_RECORD_LOCKS: UnreliableFs = UnreliableFs {
    name: "NFS",
    magic: NFS_MAGIC,
    reason: "the mount's local_lock option (posix or all) keeps fcntl and OFD locks on this client, where other clients never see them; the server arbitrates OFD locks only with local_lock=none (the default) or local_lock=flock",
};

/// NFS whose mount options could not be read: refused for OFD locks.
pub(crate) static NFS_UNKNOWN_LOCAL_LOCK: UnreliableFs = UnreliableFs {
    name: "NFS",
    magic: NFS_MAGIC,
    reason: "its local_lock option could not be read from /proc/self/mountinfo, so it is unknown whether the server arbitrates OFD locks (it does with local_lock=none)",
};

/// Whether the NFS mount `mount_id` (the `statx(2)` `STATX_MNT_ID`) leaves
/// record locks (`fcntl(2)`, OFD) to the server, from the text of
/// `/proc/self/mountinfo`: its `local_lock` option is `none` or `flock`,
/// or absent (kernels before it existed); `None` when the mount is not
/// listed.
pub(crate) fn nfs_server_locks(mountinfo: &[u8], mount_id: u64) -> Option<bool> {
    let line = mountinfo.split(|&b| b == b'\n').find(|line| {
        line.split(|&b| b == b' ')
            .next()
            .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u64>().ok())
            == Some(mount_id)
    })?;
    // MOUNT-ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER-OPTS
    let super_opts = line
        .split(|&b| b == b' ')
        .skip_while(|f| *f != b"-")
        .nth(3)?;
    let local = super_opts
        .split(|&b| b == b',')
        .find_map(|opt| opt.strip_prefix(b"local_lock="));
    Some(matches!(local, None | Some(b"none") | Some(b"flock")))
}

/// Classifies a filesystem by its `statfs(2)` `f_type` magic.
///
/// Returns the deny-list entry when `flock(2)` does not reliably serialize
/// processes on that filesystem (network, cluster and userspace filesystems),
/// and `None` for local filesystems such as ext4, xfs, btrfs, tmpfs and
/// overlay.
///
/// # Examples
/// ```
/// assert_eq!(flockguard::classify(0x6969).map(|fs| fs.name), Some("NFS"));
/// assert!(flockguard::classify(0xEF53).is_none()); // ext4
/// ```
///
/// # References
/// - [statfs(2)](https://man7.org/linux/man-pages/man2/statfs.2.html)
pub fn classify(magic: u64) -> Option<&'static UnreliableFs> {
    UNRELIABLE.iter().find(|fs| fs.magic == magic)
}

/// How many mounts [`magic_of_mount`] remembers; later ones are looked up
/// every time.
#[cfg(target_has_atomic = "64")]
const MOUNT_CACHE_LEN: usize = 32;

/// One remembered mount: its unique id and its filesystem magic.
#[cfg(target_has_atomic = "64")]
struct MountSlot {
    mount: AtomicU64,
    magic: AtomicU64,
}

// Only the initializer of MOUNT_MAGIC's slots (`[const { .. }; N]` needs Rust 1.79).
#[cfg(target_has_atomic = "64")]
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: MountSlot = MountSlot {
    mount: AtomicU64::new(0),
    magic: AtomicU64::new(0),
};

/// Filesystem magics by unique mount id. A mount keeps its superblock, and
/// so its magic, for life, and its unique id is never reused, so an entry
/// never goes stale. Slots are filled in order and written once, before
/// the count of filled slots is raised with release ordering, so a reader
/// sees whole entries; no lock is taken on the acquire path.
#[cfg(target_has_atomic = "64")]
static MOUNT_MAGIC: [MountSlot; MOUNT_CACHE_LEN] = [EMPTY_SLOT; MOUNT_CACHE_LEN];

/// Slots filled so far, at most [`MOUNT_CACHE_LEN`].
#[cfg(target_has_atomic = "64")]
static MOUNTS_FILLED: AtomicUsize = AtomicUsize::new(0);

/// The filesystem magic of the mount with unique id `mount`: remembered, or
/// found with `lookup` and remembered.
#[cfg(target_has_atomic = "64")]
#[inline]
pub(crate) fn magic_of_mount(
    mount: u64,
    lookup: impl FnOnce() -> io::Result<u64>,
) -> io::Result<u64> {
    match remembered(mount) {
        Some(magic) => Ok(magic),
        None => lookup().map(|magic| remember(mount, magic)),
    }
}

#[cfg(target_has_atomic = "64")]
#[inline]
fn remembered(mount: u64) -> Option<u64> {
    if mount == 0 {
        return None;
    }
    let filled = MOUNTS_FILLED.load(Ordering::Acquire);
    MOUNT_MAGIC[..filled]
        .iter()
        .find(|slot| slot.mount.load(Ordering::Relaxed) == mount)
        .map(|slot| slot.magic.load(Ordering::Relaxed))
}

/// Taken by writers of [`MOUNT_MAGIC`].
#[cfg(target_has_atomic = "64")]
static WRITER: Mutex<()> = Mutex::new(());

/// The process that waits for [`WRITER`]'s lock (see
/// [`lock_unless_forked`](crate::wait::lock_unless_forked)).
#[cfg(target_has_atomic = "64")]
static WRITER_OWNER: AtomicU32 = AtomicU32::new(0);

/// Stores `magic` for `mount` in the next free slot, if one is left.
/// Writers take a lock, so a mount is stored once; readers take none. A
/// forked child whose parent held the lock at the fork stores nothing (it
/// looks the magic up again next time) rather than wait for it forever.
#[cfg(target_has_atomic = "64")]
#[cold]
#[inline(never)]
fn remember(mount: u64, magic: u64) -> u64 {
    if mount == 0 {
        return magic;
    }
    let pid = crate::sys::current_pid();
    let Some(_writer) = crate::wait::lock_unless_forked(&WRITER, &WRITER_OWNER, pid) else {
        return magic;
    };
    let filled = MOUNTS_FILLED.load(Ordering::Relaxed);
    if remembered(mount).is_none() {
        if let Some(slot) = MOUNT_MAGIC.get(filled) {
            slot.magic.store(magic, Ordering::Relaxed);
            slot.mount.store(mount, Ordering::Relaxed);
            MOUNTS_FILLED.store(filled + 1, Ordering::Release);
        }
    }
    magic
}

/// Without 64-bit atomics nothing is remembered: every open looks the
/// magic up.
#[cfg(not(target_has_atomic = "64"))]
pub(crate) fn magic_of_mount(
    _mount: u64,
    lookup: impl FnOnce() -> io::Result<u64>,
) -> io::Result<u64> {
    lookup()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nfs_record_locks_go_to_the_server_unless_local_lock_keeps_them() {
        let info = b"22 27 0:21 / /proc rw,relatime - proc proc rw
90 27 0:50 / /mnt/a rw,relatime shared:40 - nfs4 srv:/export rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.0.0.1
91 27 0:51 / /mnt/b rw,relatime - nfs srv:/export rw,vers=3,local_lock=posix,addr=10.0.0.1
92 27 0:52 / /mnt/c rw - nfs srv:/export rw,vers=3,nolock,local_lock=all,addr=10.0.0.1
93 27 0:53 / /mnt/d rw - nfs srv:/export rw,vers=3,local_lock=flock
94 27 0:54 / /mnt/e rw - nfs srv:/export rw,vers=3
";
        assert_eq!(super::nfs_server_locks(info, 90), Some(true));
        assert_eq!(super::nfs_server_locks(info, 91), Some(false));
        assert_eq!(super::nfs_server_locks(info, 92), Some(false));
        assert_eq!(super::nfs_server_locks(info, 93), Some(true));
        assert_eq!(super::nfs_server_locks(info, 94), Some(true));
        assert_eq!(super::nfs_server_locks(info, 9), None);
        assert_eq!(super::nfs_server_locks(b"garbage", 90), None);
    }

    use super::*;

    #[test]
    fn every_deny_list_entry_is_found_by_its_magic() {
        let expected: &[(u64, &str)] = &[
            (0x6969, "NFS"),
            (0x517B, "SMB"),
            (0xFF534D42, "CIFS"),
            (0xFE534D42, "SMB2"),
            (0x00C36400, "CephFS"),
            (0x6B414653, "kAFS"),
            (0x5346414F, "OpenAFS"),
            (0x65735546, "FUSE"),
            (0x01021997, "9p"),
            (0x73757245, "Coda"),
            (0x564C, "NCP"),
            (0x0BD00BD0, "Lustre"),
            (0x47504653, "GPFS"),
            (0x7461636F, "OCFS2"),
            (0x01161970, "GFS2"),
            (0x20030528, "OrangeFS"),
            (0x19830326, "BeeGFS"),
            (0x786F4256, "vboxsf"),
        ];
        assert_eq!(expected.len(), UNRELIABLE.len());
        for &(magic, name) in expected {
            let fs = classify(magic).unwrap_or_else(|| panic!("{name} ({magic:#x}) not refused"));
            assert_eq!(fs.name, name);
            assert_eq!(fs.magic, magic);
            assert!(!fs.reason.is_empty());
        }
    }

    #[test]
    fn local_filesystems_are_allowed() {
        for (magic, name) in [
            (0xEF53_u64, "ext2/3/4"),
            (0x5846_5342, "xfs"),
            (0x9123_683E, "btrfs"),
            (0x0102_1994, "tmpfs"),
            (0x794C_7630, "overlay"),
            (0x2FC1_2FC1, "zfs"),
            (0xF2F5_2010, "f2fs"),
        ] {
            assert!(classify(magic).is_none(), "{name} refused");
        }
    }

    #[test]
    fn magics_are_unique() {
        for (i, a) in UNRELIABLE.iter().enumerate() {
            for b in &UNRELIABLE[i + 1..] {
                assert_ne!(a.magic, b.magic, "{} and {}", a.name, b.name);
            }
        }
    }

    #[cfg(target_has_atomic = "64")]
    #[test]
    fn mount_magic_is_looked_up_once_and_errors_are_not_kept() {
        // Ids far above any real mount's, so other tests' entries do not interfere.
        let (ok_id, err_id) = (u64::MAX - 1, u64::MAX - 2);
        let mut calls = 0;
        let mut lookup = |magic: io::Result<u64>| {
            calls += 1;
            magic
        };
        assert_eq!(
            magic_of_mount(ok_id, || lookup(Ok(0x6969))).unwrap(),
            0x6969
        );
        assert_eq!(
            magic_of_mount(ok_id, || lookup(Ok(0xEF53))).unwrap(),
            0x6969
        );
        assert!(magic_of_mount(err_id, || lookup(Err(io::ErrorKind::Other.into()))).is_err());
        assert_eq!(
            magic_of_mount(err_id, || lookup(Ok(0xEF53))).unwrap(),
            0xEF53
        );
        assert_eq!(calls, 3);
    }

    #[cfg(target_has_atomic = "64")]
    #[test]
    fn a_child_forked_while_the_mount_cache_is_written_neither_hangs_nor_stores() {
        let id = u64::MAX - 3;
        // As if another thread were storing a magic at the fork.
        let pid = crate::sys::current_pid();
        let writer = crate::wait::lock_unless_forked(&WRITER, &WRITER_OWNER, pid).unwrap();
        // SAFETY: the child looks a magic up with the crate and leaves with
        // _exit; it takes no lock that this test's other threads hold (the
        // cache's is exactly what it must not take).
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut calls = 0;
            let mut lookup = || {
                calls += 1;
                Ok(0x6969)
            };
            let first = magic_of_mount(id, &mut lookup).ok();
            let second = magic_of_mount(id, &mut lookup).ok();
            let ok = first == Some(0x6969) && second == Some(0x6969) && calls == 2;
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if ok { 0 } else { 1 })
            };
        }
        drop(writer);
        assert_eq!(
            crate::wait::tests::reap(pid),
            Some(0),
            "the child hung or failed"
        );
    }

    #[cfg(target_has_atomic = "64")]
    #[test]
    fn racing_threads_each_get_their_mounts_magic() {
        // Every id raced by several threads.
        let ids: Vec<u64> = (0..6).map(|i| u64::MAX - 1000 - i).collect();
        let magic = |id: u64| id ^ 0x5A5A;
        std::thread::scope(|scope| {
            for t in 0..6 {
                let ids = &ids;
                scope.spawn(move || {
                    for round in 0..50 {
                        for (i, &id) in ids.iter().enumerate() {
                            if (i + t + round) % 3 == 0 {
                                let got = magic_of_mount(id, || Ok(magic(id))).unwrap();
                                assert_eq!(got, magic(id), "mount {id:#x}");
                            }
                        }
                    }
                });
            }
        });
        // Id 0 (no unique id) is never remembered.
        let mut calls = 0;
        for _ in 0..3 {
            magic_of_mount(0, || {
                calls += 1;
                Ok(1)
            })
            .unwrap();
        }
        assert_eq!(calls, 3);
    }
}
