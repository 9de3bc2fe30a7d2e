//! Holder diagnostics: who holds or waits for a `flock(2)` lock, read from
//! `/proc/locks`, `/proc/self/mountinfo` and `/proc/PID/fdinfo`.
//!
//! `/proc/locks` names a file by its superblock's device and its inode
//! number. The device is found exactly: the mount id from `statx(2)`
//! (`STATX_MNT_ID`) selects the line of `/proc/self/mountinfo` whose
//! `MAJ:MIN` is that superblock's device. `stat(2)`'s `st_dev` is not used
//! for this, since it differs on btrfs subvolumes.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::mode::FlockMode;
use crate::sys::{self, MountedId};

/// Longest command line kept in a [`Holder`], in characters.
const CMDLINE_MAX_CHARS: usize = 256;
/// Bytes of `/proc/PID/cmdline` read at most.
const CMDLINE_READ_MAX: u64 = 4096;

/// A process that holds, or waits for, a `flock(2)` lock on a file.
///
/// The PID is the one `/proc/locks` prints: the process that *took* the
/// lock (or is blocked asking for it). After `fork(2)` the lock belongs to
/// every process sharing the open file description, and the one that took
/// it may have closed its copy or exited; [`status`](Self::status) says
/// what was verified, and [`sharers`](Self::sharers) names the processes
/// found holding it instead.
///
/// Locks taken in another PID namespace than the one `/proc` is mounted
/// for are not listed by the kernel and so never appear.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The process that took the lock, or that waits for it.
    pub pid: u32,
    /// The mode held or requested.
    pub mode: FlockMode,
    /// `true` for a process blocked in `flock(2)` waiting for this lock.
    /// Waiters that poll with `LOCK_NB` (such as
    /// [`lock_timeout`](crate::LockFile::lock_timeout)) are not visible.
    pub waiting: bool,
    /// The command line of [`pid`](Self::pid): arguments joined by spaces,
    /// invalid UTF-8 replaced, cut to 256 characters (ending in `…`).
    /// `None` if it could not be read or is empty (a kernel thread, a
    /// zombie, an exited process).
    pub cmdline: Option<String>,
    /// How far [`pid`](Self::pid) was verified as a holder.
    pub status: PidStatus,
    /// Processes found holding the lock through a descriptor they share with
    /// [`pid`](Self::pid) (inherited through `fork(2)` or passed over a
    /// socket). Searched for only when `status` is [`PidStatus::Exited`] or
    /// [`PidStatus::NotHolding`]; empty otherwise, and empty when no
    /// readable process has it.
    pub sharers: Vec<LockProcess>,
}

/// What was verified about a [`Holder`]'s PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PidStatus {
    /// `/proc/PID/fdinfo` shows the lock on one of the process's
    /// descriptors. For a waiter: the process exists (it is blocked in
    /// `flock(2)`, which the kernel shows no descriptor for).
    Confirmed,
    /// The process exists but its descriptors could not be read (it belongs
    /// to another user): it took the lock and may still hold it, or may have
    /// handed the descriptor on and closed its own.
    Unverified,
    /// The process exists, but none of its descriptors holds the lock: it
    /// took the lock and then closed its copy after a `fork(2)`, or it exited
    /// and the PID now belongs to an unrelated process.
    NotHolding,
    /// No such process (or only a zombie): the lock lives on in a process
    /// that inherited the descriptor; see [`Holder::sharers`].
    Exited,
}

/// A process found holding a lock through a shared descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockProcess {
    /// The process id.
    pub pid: u32,
    /// Its command line, as in [`Holder::cmdline`].
    pub cmdline: Option<String>,
}

impl fmt::Display for LockProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(cmd) = &self.cmdline {
            write!(f, " ({cmd})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Holder {
    /// `pid 4242 (cargo build --release) holds exclusive`,
    /// `pid 77 waits for shared`, or, when the PID no longer holds it,
    /// `pid 4242 (exited) took exclusive; now held by pid 4250 (sleep 100)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let me = LockProcess {
            pid: self.pid,
            cmdline: self.cmdline.clone(),
        };
        if self.waiting {
            return write!(f, "{me} waits for {}", self.mode);
        }
        match self.status {
            PidStatus::Confirmed | PidStatus::Unverified => {
                write!(f, "{me} holds {}", self.mode)
            }
            PidStatus::NotHolding | PidStatus::Exited => {
                if self.status == PidStatus::Exited {
                    write!(f, "pid {} (exited) took {}", self.pid, self.mode)?;
                } else {
                    write!(f, "{me} took {} but no longer has it open", self.mode)?;
                }
                if self.sharers.is_empty() {
                    f.write_str("; the process holding it now is not visible")
                } else {
                    f.write_str("; now held by ")?;
                    for (i, p) in self.sharers.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{p}")?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Lists the processes that hold or wait for a `flock(2)` lock on the file
/// at `path` (following symbolic links): holders, then waiters, each in
/// the order of `/proc/locks`.
///
/// Reads `/proc/locks` once and, only for the entries on this file,
/// `/proc/PID/fdinfo` and `/proc/PID/cmdline`. The answer is a snapshot:
/// locks may change while or after it is taken, and the kernel hands out
/// `/proc/locks` a page (about 80 locks) at a time, so on a machine with
/// more locks than that, an entry can be missed or listed twice while other
/// processes lock and unlock. `fcntl(2)` (POSIX and OFD) locks and leases
/// are not listed.
///
/// # Errors
/// [`Error::Holders`] if the file cannot be examined (it does not exist,
/// or permission is denied) or `/proc` cannot be read.
///
/// # Examples
/// ```
/// use flockguard::{holders, try_flock, Exclusive};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let guard = try_flock::<Exclusive>(&path)?;
/// let list = holders(&path)?;
/// assert_eq!(list.len(), 1);
/// assert_eq!(list[0].pid, std::process::id());
/// println!("{}", list[0]); // pid 4242 (myprog) holds exclusive
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
///
/// # References
/// - [proc_locks(5)](https://man7.org/linux/man-pages/man5/proc_locks.5.html)
/// - [proc_pid_fdinfo(5)](https://man7.org/linux/man-pages/man5/proc_pid_fdinfo.5.html)
/// - [statx(2)](https://man7.org/linux/man-pages/man2/statx.2.html)
#[doc(alias = "lslocks")]
pub fn holders(path: impl AsRef<Path>) -> Result<Vec<Holder>, Error> {
    let path = path.as_ref();
    let id = sys::statx_path(path).map_err(|source| Error::Holders {
        path: path.into(),
        file: path.into(),
        source,
    })?;
    holders_of(id, path)
}

/// The holders of the file identified by `id`; `path` is for errors.
pub(crate) fn holders_of(id: MountedId, path: &Path) -> Result<Vec<Holder>, Error> {
    let read = |file: &str| {
        fs::read_to_string(file).map_err(|source| Error::Holders {
            path: path.into(),
            file: file.into(),
            source,
        })
    };
    let dev = match id.mnt_id {
        // A mount id missing from mountinfo means the file's mount is not
        // visible in this mount namespace; st_dev is then the best guess.
        Some(mnt_id) => mount_dev(&read("/proc/self/mountinfo")?, mnt_id).unwrap_or(id.dev),
        None => id.dev,
    };
    let target = Target { dev, ino: id.ino };
    // The kernel produces /proc/locks one page per read(2) and resumes by
    // position, so locks taken or released between two reads can make a
    // line repeat or vanish. A file read in one call is a consistent
    // snapshot; a longer one is read again, until two reads agree, when it
    // shows the signs of that race: no entry for a lock someone holds, or
    // an entry twice.
    let read_locks = || {
        read_proc_locks().map_err(|source| Error::Holders {
            path: path.into(),
            file: "/proc/locks".into(),
            source,
        })
    };
    let (text, calls) = read_locks()?;
    let mut entries = flock_entries(&text, target);
    if calls > 1 && (entries.is_empty() || has_repeats(&entries)) {
        for _ in 0..LOCKS_READ_ATTEMPTS {
            let again = flock_entries(&read_locks()?.0, target);
            if again == entries {
                break;
            }
            entries = again;
        }
    }
    // The kernel prints each waiter after the lock blocking it, which may
    // come before other holders; list every holder first.
    entries.sort_by_key(|e| e.waiting);
    Ok(entries.into_iter().map(|e| describe(e, target)).collect())
}

/// Buffer for one read of `/proc/locks`: more than the page the kernel
/// returns per call.
const LOCKS_READ_CHUNK: usize = 64 * 1024;

/// Whether an entry appears twice, which a concurrent change between two
/// page reads of `/proc/locks` can cause.
fn has_repeats(entries: &[LockEntry]) -> bool {
    entries
        .iter()
        .enumerate()
        .any(|(i, e)| entries[i + 1..].contains(e))
}

/// Reads `/proc/locks`; returns the text and how many `read(2)` calls
/// returned data.
fn read_proc_locks() -> std::io::Result<(String, usize)> {
    let mut file = fs::File::open("/proc/locks")?;
    let mut chunk = vec![0; LOCKS_READ_CHUNK];
    let mut buf = Vec::new();
    let mut calls = 0;
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                calls += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((String::from_utf8_lossy(&buf).into_owned(), calls))
}
/// Rereads of `/proc/locks` allowed while locks on the file keep changing.
const LOCKS_READ_ATTEMPTS: usize = 8;

/// A file as `/proc/locks` names it: superblock device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) dev: (u32, u32),
    pub(crate) ino: u64,
}

/// Builds a [`Holder`] from a `/proc/locks` entry, checking the PID.
fn describe(entry: LockEntry, target: Target) -> Holder {
    let pid = entry.pid;
    let alive = sys::pid_exists(pid).unwrap_or(false) && !is_zombie(pid);
    let status = if !alive {
        PidStatus::Exited
    } else if entry.waiting {
        PidStatus::Confirmed
    } else {
        match process_holds(pid, entry.mode, target) {
            Some(true) => PidStatus::Confirmed,
            Some(false) => PidStatus::NotHolding,
            None => PidStatus::Unverified,
        }
    };
    let sharers = if matches!(status, PidStatus::Exited | PidStatus::NotHolding) {
        find_sharers(pid, entry.mode, target)
    } else {
        Vec::new()
    };
    Holder {
        pid,
        mode: entry.mode,
        waiting: entry.waiting,
        cmdline: if alive { cmdline(pid) } else { None },
        status,
        sharers,
    }
}

/// Whether `/proc/PID/fdinfo` shows a `flock` lock in `mode` on `target`;
/// `None` when the descriptors cannot be listed.
fn process_holds(pid: u32, mode: FlockMode, target: Target) -> Option<bool> {
    let dir = fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut buf = String::new();
    for entry in dir.flatten() {
        buf.clear();
        let Ok(mut file) = fs::File::open(entry.path()) else {
            continue;
        };
        if file.read_to_string(&mut buf).is_err() {
            continue;
        }
        if fdinfo_locks(&buf).any(|e| e.dev == target.dev && e.ino == target.ino && e.mode == mode)
        {
            return Some(true);
        }
    }
    Some(false)
}

/// Every other readable process whose descriptors hold the lock.
fn find_sharers(pid: u32, mode: FlockMode, target: Target) -> Vec<LockProcess> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = sys::getpid();
    let mut found: Vec<LockProcess> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != pid && p != me)
        .filter(|&p| process_holds(p, mode, target) == Some(true))
        .map(|p| LockProcess {
            pid: p,
            cmdline: cmdline(p),
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| proc_stat_state(&s))
        .is_some_and(|state| state == 'Z' || state == 'X')
}

fn cmdline(pid: u32) -> Option<String> {
    let mut raw = Vec::new();
    fs::File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(CMDLINE_READ_MAX).read_to_end(&mut raw))
        .ok()?;
    cmdline_text(&raw)
}

// ---- pure parsers -------------------------------------------------------

/// One `FLOCK` entry of `/proc/locks` or of an fdinfo `lock:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LockEntry {
    pub(crate) waiting: bool,
    pub(crate) mode: FlockMode,
    pub(crate) pid: u32,
    pub(crate) dev: (u32, u32),
    pub(crate) ino: u64,
}

/// What a line of `/proc/locks` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockLine {
    /// A `flock(2)` lock or waiter.
    Flock(LockEntry),
    /// A well-formed line of another kind (POSIX, OFDLCK, LEASE, …).
    Other,
}

/// Parses one line of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242
/// fe:00:1234 0 EOF`, or with `->` after the id for a waiter); `None` for
/// a malformed line.
pub(crate) fn parse_locks_line(line: &str) -> Option<LockLine> {
    let (id, rest) = line.split_once(':')?;
    id.trim().parse::<u64>().ok()?;
    let mut fields = rest.split_ascii_whitespace().peekable();
    let waiting = fields.next_if_eq(&"->").is_some();
    let kind = fields.next()?;
    if kind != "FLOCK" {
        return Some(LockLine::Other);
    }
    let _advisory = fields.next()?;
    let mode = match fields.next()? {
        "WRITE" => FlockMode::Exclusive,
        "READ" => FlockMode::Shared,
        _ => return None,
    };
    let pid = fields.next()?.parse::<i64>().ok()?;
    let (dev, ino) = parse_dev_ino(fields.next()?)?;
    // A negative or zero PID is not a process this namespace can name.
    let pid = u32::try_from(pid).ok().filter(|&p| p > 0)?;
    Some(LockLine::Flock(LockEntry {
        waiting,
        mode,
        pid,
        dev,
        ino,
    }))
}

/// Parses `MAJ:MIN:INODE` (hex, hex, decimal).
fn parse_dev_ino(field: &str) -> Option<((u32, u32), u64)> {
    let mut parts = field.split(':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let ino = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(((major, minor), ino))
}

/// The `FLOCK` entries of `/proc/locks` text that are on `target`, in order.
///
/// Searches the text for the device-and-inode field first, so the cost on a
/// long file is one substring scan, not a parse of every line.
pub(crate) fn flock_entries(text: &str, target: Target) -> Vec<LockEntry> {
    let needle = format!(" {:02x}:{:02x}:{} ", target.dev.0, target.dev.1, target.ino);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let at = from + at;
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        if let Some(LockLine::Flock(entry)) = parse_locks_line(&text[start..end]) {
            if entry.dev == target.dev && entry.ino == target.ino {
                out.push(entry);
            }
        }
        from = end;
    }
    out
}

/// The `FLOCK` entries of the `lock:` lines of a `/proc/PID/fdinfo/FD` file.
pub(crate) fn fdinfo_locks(text: &str) -> impl Iterator<Item = LockEntry> + '_ {
    text.lines().filter_map(|line| {
        match parse_locks_line(line.strip_prefix("lock:")?.trim_start())? {
            LockLine::Flock(entry) => Some(entry),
            LockLine::Other => None,
        }
    })
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(dead_code)] // mount_point and fstype are read only by the parser tests
pub(crate) struct MountEntry {
    pub(crate) mount_id: u64,
    pub(crate) dev: (u32, u32),
    /// The mount point, with the kernel's octal escapes (`\040`) decoded.
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: String,
}

/// Parses one line of `/proc/self/mountinfo`; `None` if malformed.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let _parent: u64 = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let _root = fields.next()?;
    let mount_point = unescape_octal(fields.next()?);
    // Optional fields run up to a lone "-"; the filesystem type follows.
    let fstype = fields.by_ref().skip_while(|f| *f != "-").nth(1)?;
    Some(MountEntry {
        mount_id,
        dev,
        mount_point: PathBuf::from(mount_point),
        fstype: fstype.to_owned(),
    })
}

/// The device (`MAJ:MIN`, decimal in mountinfo) of the mount `mount_id`.
pub(crate) fn mount_dev(mountinfo: &str, mount_id: u64) -> Option<(u32, u32)> {
    let prefix = format!("{mount_id} ");
    mountinfo
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .find_map(parse_mountinfo_line)
        .filter(|m| m.mount_id == mount_id)
        .map(|m| m.dev)
}

/// Decodes the `\ooo` escapes the kernel writes for space, tab, newline and
/// backslash in mountinfo paths.
pub(crate) fn unescape_octal(field: &str) -> std::ffi::OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

/// The state letter (third field) of `/proc/PID/stat`, after the command
/// name in parentheses, which may itself contain spaces and parentheses.
pub(crate) fn proc_stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// `/proc/PID/cmdline` bytes as text: NULs between arguments become spaces,
/// invalid UTF-8 is replaced, the result is cut to 256 characters; `None`
/// when empty.
pub(crate) fn cmdline_text(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let text: String = String::from_utf8_lossy(raw).replace('\0', " ");
    if text.chars().count() <= CMDLINE_MAX_CHARS {
        return Some(text);
    }
    let mut cut: String = text.chars().take(CMDLINE_MAX_CHARS - 1).collect();
    cut.push('…');
    Some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "\
1: POSIX  ADVISORY  WRITE 812 fe:00:1234 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF
2: -> FLOCK  ADVISORY  READ 4250 fe:00:1234 0 EOF
2:  -> FLOCK  ADVISORY  WRITE 4251 fe:00:1234 0 EOF
3: OFDLCK ADVISORY  READ  -1 fe:00:1234 0 EOF
4: FLOCK  ADVISORY  READ 77 fe:00:12345 0 EOF
5: FLOCK  ADVISORY  READ 78 fe:01:1234 0 EOF
6: LEASE  ACTIVE    READ 99 fe:00:1234 0 EOF
7: FLOCK  ADVISORY  READ 79 103:0a:1234 0 EOF
8: FLOCK  ADVISORY  WRITE 80 <none>:0 0 EOF
garbage fe:00:1234 here
9: FLOCK  ADVISORY  WRITE notapid fe:00:1234 0 EOF
10: FLOCK  ADVISORY  READ 4243 fe:00:1234 0 EOF";

    const TARGET: Target = Target {
        dev: (0xfe, 0),
        ino: 1234,
    };

    fn entry(pid: u32, mode: FlockMode, waiting: bool) -> LockEntry {
        LockEntry {
            waiting,
            mode,
            pid,
            dev: (0xfe, 0),
            ino: 1234,
        }
    }

    #[test]
    fn flock_entries_keep_holders_and_waiters_of_the_target_only() {
        assert_eq!(
            flock_entries(LOCKS, TARGET),
            vec![
                entry(4242, FlockMode::Exclusive, false),
                entry(4250, FlockMode::Shared, true),
                entry(4251, FlockMode::Exclusive, true),
                entry(4243, FlockMode::Shared, false),
            ]
        );
    }

    #[test]
    fn flock_entries_match_multi_digit_hex_devices() {
        let target = Target {
            dev: (0x103, 0x0a),
            ino: 1234,
        };
        let found = flock_entries(LOCKS, target);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, 79);
    }

    #[test]
    fn flock_entries_on_empty_or_unterminated_text() {
        assert!(flock_entries("", TARGET).is_empty());
        let one = "1: FLOCK  ADVISORY  WRITE 5 fe:00:1234 0 EOF";
        assert_eq!(flock_entries(one, TARGET).len(), 1);
        let trailing = "1: FLOCK  ADVISORY  WRITE 5 fe:00:1234 0 EOF\n";
        assert_eq!(flock_entries(trailing, TARGET).len(), 1);
    }

    #[test]
    fn other_lock_kinds_are_recognised_and_skipped() {
        for line in [
            "1: POSIX  ADVISORY  WRITE 812 fe:00:1234 0 EOF",
            "3: OFDLCK ADVISORY  READ  -1 fe:00:1234 0 EOF",
            "6: LEASE  ACTIVE    READ 99 fe:00:1234 0 EOF",
            "7: DELEG  ACTIVE    READ 99 fe:00:1234 0 EOF",
            "2: -> POSIX  ADVISORY  WRITE 813 fe:00:1234 0 100",
        ] {
            assert_eq!(parse_locks_line(line), Some(LockLine::Other), "{line}");
        }
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for line in [
            "",
            "garbage fe:00:1234 here",
            "x: FLOCK  ADVISORY  WRITE 1 fe:00:1234 0 EOF",
            "1: FLOCK  ADVISORY  WRITE notapid fe:00:1234 0 EOF",
            "1: FLOCK  ADVISORY  UNLCK 5 fe:00:1234 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 5 fe:00 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 5 zz:00:1234 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 5 fe:00:1234:9 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 5 <none>:0 0 EOF",
            "1: FLOCK  ADVISORY  WRITE -1 fe:00:1234 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 0 fe:00:1234 0 EOF",
            "1: FLOCK  ADVISORY",
            "1:",
        ] {
            assert_eq!(parse_locks_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn fdinfo_lock_lines_are_parsed() {
        let fdinfo = "pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1234\n\
                      lock:\t1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n";
        let locks: Vec<_> = fdinfo_locks(fdinfo).collect();
        assert_eq!(locks, vec![entry(4242, FlockMode::Exclusive, false)]);
        let posix = "pos:\t0\nlock:\t1: POSIX  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n";
        assert_eq!(fdinfo_locks(posix).count(), 0);
        assert_eq!(fdinfo_locks("pos:\t0\nflags:\t0\n").count(), 0);
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:45 /sub /mnt/with\\040space\\011tab rw,relatime shared:5 master:2 - btrfs /dev/loop0 rw,subvol=/sub
41 27 0:46 / /mnt/back\\134slash rw - overlay overlay rw,lowerdir=/a\\054b
42 27 0:47 / /mnt/no-sep rw shared:7 overlay
bad line
43 27 x:1 / /mnt/bad rw - tmpfs tmpfs rw";

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes_and_optional_fields() {
        let m = parse_mountinfo_line(MOUNTINFO.lines().nth(2).unwrap()).unwrap();
        assert_eq!(m.mount_id, 40);
        assert_eq!(m.dev, (0, 45));
        assert_eq!(m.mount_point, Path::new("/mnt/with space\ttab"));
        assert_eq!(m.fstype, "btrfs");
        let m = parse_mountinfo_line(MOUNTINFO.lines().nth(3).unwrap()).unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/back\\slash"));
        assert_eq!(m.fstype, "overlay");
        // No "-" separator, or a bad device: malformed.
        assert_eq!(
            parse_mountinfo_line(MOUNTINFO.lines().nth(4).unwrap()),
            None
        );
        assert_eq!(parse_mountinfo_line("bad line"), None);
        assert_eq!(
            parse_mountinfo_line(MOUNTINFO.lines().nth(6).unwrap()),
            None
        );
    }

    #[test]
    fn mount_dev_matches_the_mount_id_exactly() {
        assert_eq!(mount_dev(MOUNTINFO, 27), Some((254, 0)));
        assert_eq!(mount_dev(MOUNTINFO, 40), Some((0, 45)));
        assert_eq!(mount_dev(MOUNTINFO, 2), None); // not a prefix match on "22" or "27"
        assert_eq!(mount_dev(MOUNTINFO, 4), None);
        assert_eq!(mount_dev(MOUNTINFO, 43), None);
    }

    #[test]
    fn octal_escapes_decode_and_stray_backslashes_stay() {
        assert_eq!(unescape_octal("a\\040b"), "a b");
        assert_eq!(unescape_octal("a\\012b"), "a\nb");
        assert_eq!(unescape_octal("tail\\04"), "tail\\04");
        assert_eq!(unescape_octal("x\\9yz"), "x\\9yz");
        assert_eq!(unescape_octal("\\777"), "\\777"); // above one byte
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(unescape_octal("\\377").as_bytes(), [0xff]);
    }

    #[test]
    fn cmdline_is_joined_lossy_and_bounded() {
        assert_eq!(
            cmdline_text(b"cargo\0build\0--release\0").as_deref(),
            Some("cargo build --release")
        );
        assert_eq!(cmdline_text(b"").as_deref(), None);
        assert_eq!(cmdline_text(b"\0").as_deref(), None);
        assert_eq!(cmdline_text(b"a\xffb").as_deref(), Some("a\u{fffd}b"));
        // A process that rewrote its argv may have no NUL at all.
        assert_eq!(cmdline_text(b"sshd: user").as_deref(), Some("sshd: user"));
        let long = cmdline_text(&[b'x'; 5000]).unwrap();
        assert_eq!(long.chars().count(), CMDLINE_MAX_CHARS);
        assert!(long.ends_with('…'));
        let wide = cmdline_text("é".repeat(300).as_bytes()).unwrap();
        assert_eq!(wide.chars().count(), CMDLINE_MAX_CHARS);
    }

    #[test]
    fn stat_state_is_read_after_the_command_name() {
        assert_eq!(proc_stat_state("42 (sleep) S 1 42"), Some('S'));
        assert_eq!(proc_stat_state("42 (a) Z) Z 1 42"), Some('Z'));
        assert_eq!(proc_stat_state("42 (x y) R 1"), Some('R'));
        assert_eq!(proc_stat_state("garbage"), None);
    }

    #[test]
    fn holder_display_names_pid_command_and_mode() {
        let mut h = Holder {
            pid: 4242,
            mode: FlockMode::Exclusive,
            waiting: false,
            cmdline: Some("cargo build --release".into()),
            status: PidStatus::Confirmed,
            sharers: Vec::new(),
        };
        assert_eq!(
            h.to_string(),
            "pid 4242 (cargo build --release) holds exclusive"
        );
        h.waiting = true;
        h.mode = FlockMode::Shared;
        assert_eq!(
            h.to_string(),
            "pid 4242 (cargo build --release) waits for shared"
        );
        h.waiting = false;
        h.status = PidStatus::Exited;
        h.cmdline = None;
        assert_eq!(
            h.to_string(),
            "pid 4242 (exited) took shared; the process holding it now is not visible"
        );
        h.sharers = vec![
            LockProcess {
                pid: 4250,
                cmdline: Some("sleep 100".into()),
            },
            LockProcess {
                pid: 4251,
                cmdline: None,
            },
        ];
        assert_eq!(
            h.to_string(),
            "pid 4242 (exited) took shared; now held by pid 4250 (sleep 100), pid 4251"
        );
        h.status = PidStatus::NotHolding;
        h.cmdline = Some("make".into());
        assert_eq!(
            h.to_string(),
            "pid 4242 (make) took shared but no longer has it open; now held by pid 4250 (sleep 100), pid 4251"
        );
    }

    #[test]
    fn repeated_entries_are_detected() {
        let entry = |pid| LockEntry {
            waiting: false,
            mode: FlockMode::Shared,
            pid,
            dev: (0, 42),
            ino: 7,
        };
        assert!(!has_repeats(&[]));
        assert!(!has_repeats(&[entry(1), entry(2)]));
        assert!(has_repeats(&[entry(1), entry(2), entry(1)]));
    }
}
