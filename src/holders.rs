//! Holder diagnostics: who holds or waits for a `flock(2)`, OFD or POSIX
//! lock, read from
//! `/proc/locks`, `/proc/self/mountinfo` and `/proc/PID/fdinfo` (through
//! the reads in `sys`).
//!
//! `/proc/locks` names a file by its superblock's device and its inode
//! number. The device is found exactly: the mount id from `statx(2)`
//! (`STATX_MNT_ID`) selects the line of `/proc/self/mountinfo` whose
//! `MAJ:MIN` is that superblock's device. `stat(2)`'s `st_dev` is not used
//! for this, since it differs on btrfs subvolumes.
//!
//! # Reading `/proc/locks` exactly
//! The kernel serves `/proc/locks` one page of whole records per `read(2)`,
//! each page under its lock-list lock, and finds the next page by walking
//! the list again to the record's *position*. A page is therefore exact,
//! but locks taken or dropped before that position between two reads shift
//! the list: the records at the page boundary are shown twice or skipped.
//! So:
//! - a text served in one read is one snapshot and is used as it is;
//! - otherwise an entry that a page shows again from the page before (the
//!   same entry with the same line before or after it) is counted once,
//!   and the file is read a second
//!   time with its page boundaries moved by half a page (by starting that
//!   pass from a byte offset), so that every position lies well inside a
//!   page in one of the passes and a record skipped at a boundary of one
//!   is seen by the other;
//! - when the two passes disagree on the count of any entry, a third pass,
//!   with the boundaries moved by a quarter page, decides: each entry gets
//!   the median of the three counts.
//!
//! - last, the count is checked against the process: a PID found holding
//!   the lock through one descriptor holds one record of it (an open file
//!   description holds at most one `flock` lock), and one found holding it
//!   holds at least one, even if the passes missed it; an entry some pass
//!   saw whose process could not be checked (in time) is listed at least
//!   once, unverified.
//!
//! At most three passes: `3 × (pages + 1)` reads and two seeks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::holder::{Holder, HolderKind, LockProcess, PidStatus};
use crate::kind::ByteRange;
use crate::mode::FlockMode;
use crate::sys::{self, MountedId};

/// Longest command line kept in a [`Holder`], in characters.
const CMDLINE_MAX_CHARS: usize = 256;
/// Bytes of `/proc/PID/cmdline` read at most.
const CMDLINE_READ_MAX: u64 = 4096;

/// Lists the processes that hold or wait for a lock on the file at `path`
/// (following symbolic links): `flock(2)`, OFD and POSIX record locks
/// ([`HolderKind`](crate::HolderKind)), holders, then waiters, each in the
/// order of `/proc/locks`.
///
/// Reads `/proc/locks` (several times when it is longer than a page, so
/// that a holder that keeps its lock is listed exactly once however other
/// processes lock and unlock meanwhile) and, for the entries on this file,
/// `/proc/PID/stat`, `/proc/PID/fdinfo` and `/proc/PID/cmdline`. When the
/// process that took the lock no longer holds it, every readable process's
/// descriptors are read once to find the ones that do. The answer is a
/// snapshot: locks may change after it is taken. An OFD lock, which the
/// kernel ties to no process, is named by reading every readable process's
/// descriptors. Leases are not listed.
///
/// # Errors
/// [`Error::Holders`] if the file cannot be examined (it does not exist,
/// or permission is denied) or `/proc/locks` or `/proc/self/mountinfo`
/// cannot be read.
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
/// println!("{}", list[0]); // pid 4242 (this process) holds exclusive
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

/// The holders of the file identified by `id`, found exactly however long
/// it takes; `path` is for errors.
pub(crate) fn holders_of(id: MountedId, path: &Path) -> Result<Vec<Holder>, Error> {
    collect(id, path, &Budget::new(None))
}

/// As [`holders_of`], best effort within `budget`, counted from the end of
/// the first page of `/proc/locks` (which can take milliseconds when
/// cold). The first pass over `/proc/locks`, and when it took several
/// reads the second, shifted one, are always read to their end, so that no
/// entry on a later page or at a page boundary is missed; every later step
/// (the third pass, verifying each entry, the search for sharers) only
/// starts before the budget is spent. Entries not verified in time are
/// [`PidStatus::Unverified`]; a search for sharers cut short leaves
/// [`Holder::sharers_complete`] false.
pub(crate) fn holders_within(
    id: MountedId,
    path: &Path,
    budget: Duration,
) -> Result<Vec<Holder>, Error> {
    collect(id, path, &Budget::new(Some(budget)))
}

/// The time diagnostics may take: `allowance` counted from the end of the
/// first page of `/proc/locks` (see [`Budget::start`]); `None` for no limit.
struct Budget {
    allowance: Option<Duration>,
    deadline: std::cell::Cell<Option<Instant>>,
}

impl Budget {
    fn new(allowance: Option<Duration>) -> Budget {
        Budget {
            allowance,
            deadline: std::cell::Cell::new(None),
        }
    }

    /// Starts the clock (once).
    fn start(&self) {
        if self.deadline.get().is_none() {
            self.deadline
                .set(self.allowance.and_then(|a| Instant::now().checked_add(a)));
        }
    }

    fn spent(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }
}

fn collect(id: MountedId, path: &Path, budget: &Budget) -> Result<Vec<Holder>, Error> {
    let failed = |file: &str| {
        let file = PathBuf::from(file);
        move |source| Error::Holders {
            path: path.into(),
            file,
            source,
        }
    };
    let dev = match id.mnt_id {
        // A mount id missing from mountinfo means the file's mount is not
        // visible in this mount namespace; st_dev is then the best guess.
        Some(mnt_id) => {
            let info = sys::proc_self_mountinfo().map_err(failed("/proc/self/mountinfo"))?;
            mount_dev(&info, mnt_id).unwrap_or(id.dev)
        }
        None => id.dev,
    };
    let target = Target { dev, ino: id.ino };
    let mut entries = read_entries(target, budget).map_err(failed("/proc/locks"))?;
    // The kernel prints each waiter after the lock blocking it, which may
    // come before other holders; list every holder first.
    entries.sort_by_key(|(e, _)| e.waiting);
    let mut holders: Vec<Holder> = Vec::new();
    for (entry, n) in entries {
        let (holder, held) = describe(entry, target, budget);
        if entry.kind == HolderKind::Ofd && !entry.waiting && !budget.spent() {
            holders.extend(name_ofd_holders(holder, n, entry, target, budget));
            continue;
        }
        let n = times_listed(n, holder.status, held, entry.waiting);
        holders.extend(std::iter::repeat(holder).take(n));
    }
    find_sharers(&mut holders, target, budget);
    Ok(holders)
}

/// How many times to list an entry that the passes over `/proc/locks`
/// counted `n` times (0 when only some passes saw it), given what was found
/// about its process: `status`, and `held`, the number of its descriptors
/// found holding the lock.
fn times_listed(n: usize, status: PidStatus, held: Option<usize>, waiting: bool) -> usize {
    match held {
        // A process with one descriptor holding the lock holds one record
        // of it (a description holds one flock lock), however many the
        // passes counted; one found holding it holds at least one.
        Some(fds) if status == PidStatus::Confirmed && !waiting => n.clamp(1, fds),
        // Seen by a pass and not checked against its process (the budget
        // ran out, or its state or descriptors could not be read): it may
        // still hold the lock, so it is listed, unverified, at least once.
        _ if status == PidStatus::Unverified => n.max(1),
        _ => n,
    }
}

// ---- /proc/locks, exactly -----------------------------------------------

/// The entries on one file in what one walk of the kernel's lock list
/// produced: one `read(2)`, or the part of the first page a later pass did
/// not read again.
#[derive(Debug, Default)]
struct Walk<'a> {
    /// Lines in the walk.
    lines: usize,
    /// The entries on the target, in order.
    hits: Vec<Hit<'a>>,
}

/// An entry on the target in a [`Walk`], with the lines around it.
#[derive(Debug)]
struct Hit<'a> {
    line: usize,
    entry: LockEntry,
    /// The lines before and after it, without their position numbers.
    before: Option<&'a [u8]>,
    after: Option<&'a [u8]>,
}

impl<'a> Walk<'a> {
    fn of(lines: &[&'a [u8]], target: Target, needle: &[u8]) -> Walk<'a> {
        let hits = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| contains(line, needle))
            .filter_map(|(i, line)| match parse_locks_line(line)? {
                LockLine::Lock(entry) if entry.dev == target.dev && entry.ino == target.ino => {
                    Some(Hit {
                        line: i,
                        entry,
                        before: i.checked_sub(1).map(|p| without_position(lines[p])),
                        after: lines.get(i + 1).map(|l| without_position(l)),
                    })
                }
                _ => None,
            })
            .collect();
        Walk {
            lines: lines.len(),
            hits,
        }
    }
}

/// A `/proc/locks` line without its `ID:` prefix, which is the line's
/// position in the list and changes when the list does.
fn without_position(line: &[u8]) -> &[u8] {
    line.iter()
        .position(|&b| b == b':')
        .map_or(line, |i| trim_start(&line[i + 1..]))
}

/// Whether `next`, in the walk after the one that showed `prev`, is the
/// same record shown again because the list moved between the two reads:
/// the same entry with the same line before or after it (a lock taken or
/// dropped beside it changes at most one of the two), or the last line of
/// one walk shown again as the first of the next.
fn is_repeat(prev: &Hit<'_>, prev_lines: usize, next: &Hit<'_>) -> bool {
    prev.entry == next.entry
        && ((prev.before.is_some() && prev.before == next.before)
            || (prev.after.is_some() && prev.after == next.after)
            || (prev.line + 1 == prev_lines && next.line == 0))
}

/// Reads `/proc/locks` from byte `offset` to its end: the bytes of each
/// `read(2)`. With `whole` set the pass is read to its end whatever the
/// budget (the first two passes: an entry they did not read would be
/// missing from the answer); otherwise `None` when the budget ran out
/// before its end.
fn read_pass(offset: u64, budget: &Budget, whole: bool) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    if !whole && budget.spent() {
        return Ok(None);
    }
    let mut file = sys::proc_locks_open()?;
    if offset > 0 {
        sys::proc_locks_seek(&mut file, offset)?;
    }
    let mut chunks = Vec::new();
    loop {
        if !whole && budget.spent() {
            return Ok(None);
        }
        let chunk = sys::proc_locks_read(&mut file)?;
        budget.start();
        if chunk.is_empty() {
            return Ok(Some(chunks));
        }
        chunks.push(chunk);
    }
}

fn split_lines(chunk: &[u8]) -> Vec<&[u8]> {
    let chunk = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    if chunk.is_empty() {
        return Vec::new();
    }
    chunk.split(|&b| b == b'\n').collect()
}

/// Whether a `/proc/locks` line is a waiter (`ID: -> …`), which the kernel
/// prints after the lock it waits for, as part of the same record.
fn is_waiter_line(line: &[u8]) -> bool {
    line.contains(&b':') && without_position(line).starts_with(b"->")
}

/// The `FLOCK` entries on `target`, each record counted once; see the
/// module documentation.
fn read_entries(target: Target, budget: &Budget) -> std::io::Result<Vec<(LockEntry, usize)>> {
    let needle = dev_ino_needle(target);
    let Some(chunks) = read_pass(0, budget, true)? else {
        return Ok(Vec::new());
    };
    let first: Vec<&[u8]> = chunks.first().map_or_else(Vec::new, |c| split_lines(c));
    let walks: Vec<Walk<'_>> = chunks
        .iter()
        .map(|c| Walk::of(&split_lines(c), target, &needle))
        .collect();
    let a = count_once(&walks);
    if walks.len() < 2 {
        return Ok(tally(&a, &[]));
    }
    // Read whatever the budget: it sees the records that a page boundary
    // of the first pass skipped.
    let Some(b) = shifted_pass(&first, 2, target, &needle, budget, true)? else {
        return Ok(tally(&a, &[]));
    };
    if same_counts(&a, &b) {
        return Ok(tally(&a, &[]));
    }
    let Some(c) = shifted_pass(&first, 4, target, &needle, budget, false)? else {
        return Ok(tally(&a, &[&b]));
    };
    Ok(tally(&a, &[&b, &c]))
}

/// Each distinct entry of the passes, in the order first seen, with its
/// count: the first pass's, or with three passes the median. An entry only
/// some passes saw may get 0; [`collect`] keeps it unless its process is
/// found gone or not holding the lock (see [`times_listed`]).
fn tally(a: &[LockEntry], others: &[&[LockEntry]]) -> Vec<(LockEntry, usize)> {
    let mut out: Vec<(LockEntry, usize)> = Vec::new();
    for e in a.iter().chain(others.iter().flat_map(|o| o.iter())) {
        if out.iter().any(|(k, _)| k == e) {
            continue;
        }
        let n = if let [b, c] = others {
            let mut n = [count(a, e), count(b, e), count(c, e)];
            n.sort_unstable();
            n[1]
        } else {
            count(a, e)
        };
        out.push((*e, n));
    }
    out
}

/// A second pass whose page boundaries are moved by `1/part` of the first
/// page: the lines of the first pass's first page before the record at
/// that offset, then the file read from there (whatever the budget with
/// `whole` set; see [`read_pass`]).
fn shifted_pass(
    first: &[&[u8]],
    part: usize,
    target: Target,
    needle: &[u8],
    budget: &Budget,
    whole: bool,
) -> std::io::Result<Option<Vec<LockEntry>>> {
    let total: usize = first.iter().map(|l| l.len() + 1).sum();
    // The first record starting at or after the offset; its lines stay
    // with the prefix, and the pass drops what it reads of them again.
    let mut offset = 0;
    let mut split = None;
    for (i, line) in first.iter().enumerate() {
        if offset >= total / part && !is_waiter_line(line) {
            split = Some(i);
            break;
        }
        offset += line.len() + 1;
    }
    let Some(split) = split else {
        return Ok(None);
    };
    let record_end = first[split + 1..]
        .iter()
        .position(|l| !is_waiter_line(l))
        .map_or(first.len(), |n| split + 1 + n);
    let Some(chunks) = read_pass(offset as u64, budget, whole)? else {
        return Ok(None);
    };
    let mut walks = vec![Walk::of(&first[..record_end], target, needle)];
    for (k, chunk) in chunks.iter().enumerate() {
        let mut lines = split_lines(chunk);
        if k == 0 {
            // The line the pass starts in, and the rest of its record.
            let skip = lines
                .iter()
                .skip(1)
                .position(|l| !is_waiter_line(l))
                .map_or(lines.len(), |n| n + 1);
            lines.drain(..skip.min(lines.len()));
        }
        walks.push(Walk::of(&lines, target, needle));
    }
    Ok(Some(count_once(&walks)))
}

/// The entries of consecutive walks in order, a record that one walk
/// shows again from the one before kept once (see [`is_repeat`]).
fn count_once(walks: &[Walk<'_>]) -> Vec<LockEntry> {
    let mut out = Vec::new();
    for (k, walk) in walks.iter().enumerate() {
        let mut unmatched: Vec<&Hit<'_>> = k
            .checked_sub(1)
            .map_or_else(Vec::new, |p| walks[p].hits.iter().collect());
        let prev_lines = k.checked_sub(1).map_or(0, |p| walks[p].lines);
        for hit in &walk.hits {
            if let Some(i) = unmatched
                .iter()
                .position(|prev| is_repeat(prev, prev_lines, hit))
            {
                unmatched.remove(i);
                continue;
            }
            out.push(hit.entry);
        }
    }
    out
}

fn count(list: &[LockEntry], entry: &LockEntry) -> usize {
    list.iter().filter(|e| *e == entry).count()
}

fn same_counts(a: &[LockEntry], b: &[LockEntry]) -> bool {
    a.len() == b.len() && a.iter().all(|e| count(a, e) == count(b, e))
}

// ---- the processes behind the entries -----------------------------------

/// A file as `/proc/locks` names it: superblock device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) dev: (u32, u32),
    pub(crate) ino: u64,
}

/// Whether a process exists, as `/proc` (the namespace `/proc/locks`
/// speaks for) sees it; `kill(2)` would answer for the caller's PID
/// namespace instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    /// Running; with the id of a live thread when the main thread has
    /// exited (its descriptors are visible only through the others).
    Alive(Option<u32>),
    /// No such process, or a zombie without live threads.
    Gone,
    /// Its state could not be read.
    Unknown,
}

fn is_dead(state: u8) -> bool {
    matches!(state, b'Z' | b'X' | b'x')
}

fn liveness(pid: u32) -> Liveness {
    let stat = match sys::proc_stat(pid, None) {
        Ok(stat) => stat,
        Err(e) if sys::is_gone(&e) => return Liveness::Gone,
        Err(_) => return Liveness::Unknown,
    };
    match proc_stat_state(&stat) {
        None => return Liveness::Unknown,
        Some(state) if !is_dead(state) => return Liveness::Alive(None),
        Some(_) => {}
    }
    // A zombie main thread (it called pthread_exit) with threads still
    // running is a live process.
    let tasks = match sys::proc_tasks(pid) {
        Ok(tasks) => tasks,
        Err(e) if sys::is_gone(&e) => return Liveness::Gone,
        Err(_) => return Liveness::Unknown,
    };
    let mut unknown = false;
    for tid in tasks.into_iter().filter(|&t| t != pid) {
        match sys::proc_stat(pid, Some(tid)) {
            Ok(stat) if proc_stat_state(&stat).is_some_and(|s| !is_dead(s)) => {
                return Liveness::Alive(Some(tid));
            }
            Ok(_) => {}
            Err(e) if sys::is_gone(&e) => {}
            Err(_) => unknown = true,
        }
    }
    if unknown {
        Liveness::Unknown
    } else {
        Liveness::Gone
    }
}

/// Builds a [`Holder`] from a `/proc/locks` entry, checking the PID; with
/// the number of the PID's descriptors found holding the lock.
fn describe(entry: LockEntry, target: Target, budget: &Budget) -> (Holder, Option<usize>) {
    let mut holder = Holder {
        pid: entry.pid,
        kind: entry.kind,
        range: (entry.range != ByteRange::WHOLE).then_some(entry.range),
        mode: entry.mode,
        waiting: entry.waiting,
        cmdline: None,
        status: PidStatus::Unverified,
        sharers: Vec::new(),
        sharers_complete: true,
    };
    if budget.spent() {
        return (holder, None);
    }
    if entry.kind == HolderKind::Ofd {
        // Named by the caller (see name_ofd_holders); a blocked waiter has
        // no descriptor that shows its request.
        return (holder, None);
    }
    let live = liveness(entry.pid);
    if live != Liveness::Gone {
        holder.cmdline = cmdline(entry.pid);
    }
    let mut held = None;
    holder.status = match live {
        Liveness::Gone => PidStatus::Exited,
        Liveness::Unknown => PidStatus::Unverified,
        Liveness::Alive(_) if entry.waiting => PidStatus::Confirmed,
        Liveness::Alive(task) => {
            held = holds(entry.pid, task, entry, target, budget);
            match held {
                Some(0) => PidStatus::NotHolding,
                Some(_) => PidStatus::Confirmed,
                None => PidStatus::Unverified,
            }
        }
    };
    (holder, held)
}

/// How many descriptors of process `pid` hold the lock of `entry` (same
/// mode, taken by the same PID); `None` when its descriptors could not all
/// be read or the budget ran out before one was found.
fn holds(
    pid: u32,
    task: Option<u32>,
    entry: LockEntry,
    target: Target,
    budget: &Budget,
) -> Option<usize> {
    let dir = sys::proc_fdinfo_dir(pid, task).ok()?;
    let mut buf = Vec::new();
    let mut unreadable = false;
    let mut found = 0;
    for &fd in &dir.fds {
        if budget.spent() {
            break;
        }
        match sys::proc_fdinfo(&dir, fd, &mut buf) {
            Ok(()) => {
                if fdinfo_locks(&buf).any(|e| is_lock_of(&e, &entry, target)) {
                    found += 1;
                }
            }
            // Closed since the listing.
            Err(e) if sys::is_gone(&e) => {}
            Err(_) => unreadable = true,
        }
    }
    if found > 0 {
        // Descriptors not read in time only could have added to the count.
        return Some(if budget.spent() { usize::MAX } else { found });
    }
    (!unreadable && !budget.spent()).then_some(0)
}

/// Whether an fdinfo `lock:` entry is the lock `entry` stands for.
fn is_lock_of(lock: &LockEntry, entry: &LockEntry, target: Target) -> bool {
    lock.dev == target.dev
        && lock.ino == target.ino
        && lock.kind == entry.kind
        && lock.mode == entry.mode
        && lock.range == entry.range
        && lock.pid == entry.pid
}

/// The `n` holders of identical OFD entries, which `/proc/locks` ties to
/// no process: every readable process's descriptors are read for matching
/// `lock:` lines, one per open file description. The k-th descriptor found
/// names the k-th holder (confirmed); descriptors beyond `n` (a description
/// shared after `fork(2)`) become the last holder's sharers; holders left
/// without one keep PID 0, unverified.
fn name_ofd_holders(
    template: Holder,
    n: usize,
    entry: LockEntry,
    target: Target,
    budget: &Budget,
) -> Vec<Holder> {
    let mut found = Vec::new();
    let mut complete = true;
    let mut buf = Vec::new();
    'processes: for pid in sys::proc_pids().unwrap_or_default() {
        let Some(dir) = descriptors_of(pid) else {
            continue;
        };
        for &fd in &dir.fds {
            if budget.spent() {
                complete = false;
                break 'processes;
            }
            if sys::proc_fdinfo(&dir, fd, &mut buf).is_ok()
                && fdinfo_locks(&buf).any(|lock| is_lock_of(&lock, &entry, target))
            {
                found.push(pid);
            }
        }
    }
    // An entry only some passes saw is listed once when a descriptor holds
    // it, or when the search stopped before reading them all.
    let n = if n == 0 && (!found.is_empty() || !complete) {
        1
    } else {
        n
    };
    let mut holders = vec![template; n];
    for (k, holder) in holders.iter_mut().enumerate() {
        holder.sharers_complete = complete;
        let Some(&pid) = found.get(k) else {
            continue;
        };
        holder.pid = pid;
        holder.status = PidStatus::Confirmed;
        holder.cmdline = cmdline(pid);
    }
    if let Some(last) = holders.last_mut() {
        last.sharers = found
            .iter()
            .skip(n)
            .filter(|&&pid| pid != last.pid)
            .map(|&pid| LockProcess {
                pid,
                cmdline: if budget.spent() { None } else { cmdline(pid) },
            })
            .collect();
    }
    holders
}

/// Fills [`Holder::sharers`] of every holder whose PID no longer holds its
/// lock, reading each readable process's descriptors once.
fn find_sharers(holders: &mut [Holder], target: Target, budget: &Budget) {
    let wanted: Vec<usize> = (0..holders.len())
        .filter(|&i| {
            let h = &holders[i];
            !h.waiting && matches!(h.status, PidStatus::Exited | PidStatus::NotHolding)
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let entries: Vec<LockEntry> = wanted
        .iter()
        .map(|&i| LockEntry {
            waiting: false,
            kind: holders[i].kind,
            mode: holders[i].mode,
            range: holders[i].range.unwrap_or(ByteRange::WHOLE),
            pid: holders[i].pid,
            dev: target.dev,
            ino: target.ino,
        })
        .collect();
    let mut found: Vec<Vec<u32>> = vec![Vec::new(); wanted.len()];
    let mut complete = true;
    let mut buf = Vec::new();
    'processes: for pid in sys::proc_pids().unwrap_or_default() {
        let Some(dir) = descriptors_of(pid) else {
            continue;
        };
        for &fd in &dir.fds {
            if budget.spent() {
                complete = false;
                break 'processes;
            }
            if sys::proc_fdinfo(&dir, fd, &mut buf).is_err() {
                continue;
            }
            for lock in fdinfo_locks(&buf) {
                for (w, entry) in entries.iter().enumerate() {
                    if entry.pid != pid
                        && is_lock_of(&lock, entry, target)
                        && !found[w].contains(&pid)
                    {
                        found[w].push(pid);
                    }
                }
            }
        }
    }
    for (w, &i) in wanted.iter().enumerate() {
        found[w].sort_unstable();
        holders[i].sharers = found[w]
            .iter()
            .map(|&pid| LockProcess {
                pid,
                cmdline: if budget.spent() { None } else { cmdline(pid) },
            })
            .collect();
        holders[i].sharers_complete = complete;
    }
}

/// The descriptors of a process, through a live thread when its main
/// thread has exited; `None` when they cannot be listed.
fn descriptors_of(pid: u32) -> Option<sys::FdinfoDir> {
    let dir = sys::proc_fdinfo_dir(pid, None).ok()?;
    if !dir.fds.is_empty() {
        return Some(dir);
    }
    match liveness(pid) {
        Liveness::Alive(Some(tid)) => sys::proc_fdinfo_dir(pid, Some(tid)).ok(),
        _ => None,
    }
}

fn cmdline(pid: u32) -> Option<String> {
    cmdline_text(&sys::proc_cmdline(pid, CMDLINE_READ_MAX).ok()?)
}

// ---- pure parsers -------------------------------------------------------

/// One `FLOCK`, `POSIX` or `OFDLCK` entry of `/proc/locks` or of an
/// fdinfo `lock:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LockEntry {
    pub(crate) waiting: bool,
    pub(crate) kind: HolderKind,
    pub(crate) mode: FlockMode,
    /// 0 for an OFD lock, which the kernel prints with PID -1.
    pub(crate) pid: u32,
    /// `ByteRange::WHOLE` for a flock lock.
    pub(crate) range: ByteRange,
    pub(crate) dev: (u32, u32),
    pub(crate) ino: u64,
}

/// What a line of `/proc/locks` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockLine {
    /// A `flock(2)`, POSIX or OFD lock or waiter.
    Lock(LockEntry),
    /// A well-formed line of another kind (LEASE, DELEG, …).
    Other,
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[n..]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let n = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &bytes[..bytes.len() - n]
}

fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn hex(field: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Parses one line of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242
/// fe:00:1234 0 EOF`, or with `->` after the id for a waiter); `None` for
/// a malformed line.
pub(crate) fn parse_locks_line(line: &[u8]) -> Option<LockLine> {
    let colon = line.iter().position(|&b| b == b':')?;
    number::<u64>(trim(&line[..colon]))?;
    let mut fields = line[colon + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
        .peekable();
    let waiting = fields.next_if(|f| *f == b"->").is_some();
    let kind = match fields.next()? {
        b"FLOCK" => HolderKind::Flock,
        b"POSIX" => HolderKind::Posix,
        b"OFDLCK" => HolderKind::Ofd,
        _ => return Some(LockLine::Other),
    };
    let _advisory = fields.next()?;
    let mode = match fields.next()? {
        b"WRITE" => FlockMode::Exclusive,
        b"READ" => FlockMode::Shared,
        _ => return None,
    };
    let pid = number::<i64>(fields.next()?)?;
    let (dev, ino) = parse_dev_ino(fields.next()?)?;
    let pid = match kind {
        // The kernel ties an OFD lock to no process and prints -1.
        HolderKind::Ofd if pid == -1 => 0,
        // A negative or zero PID is not a process this namespace can name.
        _ => u32::try_from(pid).ok().filter(|&p| p > 0)?,
    };
    let range = match kind {
        HolderKind::Flock => ByteRange::WHOLE,
        _ => {
            // START END, END inclusive or "EOF".
            let start = number::<u64>(fields.next()?)?;
            match fields.next()? {
                b"EOF" => ByteRange::from_start(start),
                end => {
                    let end = number::<u64>(end)?;
                    ByteRange::new(start, end.checked_sub(start)?.checked_add(1)?)
                }
            }
        }
    };
    Some(LockLine::Lock(LockEntry {
        waiting,
        kind,
        mode,
        pid,
        range,
        dev,
        ino,
    }))
}

/// Parses `MAJ:MIN:INODE` (hex, hex, decimal).
fn parse_dev_ino(field: &[u8]) -> Option<((u32, u32), u64)> {
    let mut parts = field.split(|&b| b == b':');
    let major = hex(parts.next()?)?;
    let minor = hex(parts.next()?)?;
    let ino = number(parts.next()?)?;
    parts.next().is_none().then_some(((major, minor), ino))
}

/// The device-and-inode field of `target` as `/proc/locks` prints it,
/// with the spaces around it.
fn dev_ino_needle(target: Target) -> Vec<u8> {
    format!(" {:02x}:{:02x}:{} ", target.dev.0, target.dev.1, target.ino).into_bytes()
}

/// The `FLOCK` entries of `/proc/locks` text that are on `target`, in order.
///
/// Looks for the device-and-inode field in each line first, so the cost on
/// a long file is one scan, not a parse of every line.
#[cfg(test)]
pub(crate) fn flock_entries(text: &[u8], target: Target) -> Vec<LockEntry> {
    let walk = Walk::of(&split_lines(text), target, &dev_ino_needle(target));
    walk.hits.into_iter().map(|h| h.entry).collect()
}

/// The `FLOCK` entries of the `lock:` lines of a `/proc/PID/fdinfo/FD` file.
pub(crate) fn fdinfo_locks(text: &[u8]) -> impl Iterator<Item = LockEntry> + '_ {
    split_lines(text).into_iter().filter_map(|line| {
        match parse_locks_line(trim_start(line.strip_prefix(b"lock:")?))? {
            LockLine::Lock(entry) => Some(entry),
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
    /// The mount point, with the kernel's octal escapes (`\040`) decoded;
    /// any bytes.
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: Vec<u8>,
}

/// Parses one line of `/proc/self/mountinfo` (bytes: mount points need not
/// be UTF-8); `None` if malformed.
pub(crate) fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let mut fields = line.split(|&b| b == b' ');
    let mount_id = number(fields.next()?)?;
    let _parent: u64 = number(fields.next()?)?;
    let dev = fields.next()?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let dev = (number(&dev[..colon])?, number(&dev[colon + 1..])?);
    let _root = fields.next()?;
    let mount_point = unescape_octal(fields.next()?);
    // Optional fields run up to a lone "-"; the filesystem type follows.
    let fstype = fields.by_ref().skip_while(|f| *f != b"-").nth(1)?;
    Some(MountEntry {
        mount_id,
        dev,
        mount_point: PathBuf::from(mount_point),
        fstype: fstype.to_vec(),
    })
}

/// The device (`MAJ:MIN`, decimal in mountinfo) of the mount `mount_id`.
pub(crate) fn mount_dev(mountinfo: &[u8], mount_id: u64) -> Option<(u32, u32)> {
    let prefix = format!("{mount_id} ");
    mountinfo
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(prefix.as_bytes()))
        .find_map(parse_mountinfo_line)
        .filter(|m| m.mount_id == mount_id)
        .map(|m| m.dev)
}

/// Decodes the `\ooo` escapes the kernel writes for space, tab, newline and
/// backslash in mountinfo paths.
pub(crate) fn unescape_octal(field: &[u8]) -> OsString {
    let bytes = field;
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
pub(crate) fn proc_stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    trim_start(&stat[close + 1..]).first().copied()
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
            kind: HolderKind::Flock,
            mode,
            pid,
            range: ByteRange::WHOLE,
            dev: (0xfe, 0),
            ino: 1234,
        }
    }

    #[test]
    fn lock_entries_keep_holders_and_waiters_of_the_target_only() {
        let posix = LockEntry {
            kind: HolderKind::Posix,
            ..entry(812, FlockMode::Exclusive, false)
        };
        let ofd = LockEntry {
            kind: HolderKind::Ofd,
            ..entry(0, FlockMode::Shared, false)
        };
        let found = flock_entries(LOCKS.as_bytes(), TARGET);
        assert_eq!(found[0], posix);
        assert_eq!(found[4], ofd);
        assert_eq!(
            found
                .into_iter()
                .filter(|e| e.kind == HolderKind::Flock)
                .collect::<Vec<_>>(),
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
        let found = flock_entries(LOCKS.as_bytes(), target);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, 79);
    }

    #[test]
    fn flock_entries_on_empty_or_unterminated_text() {
        assert!(flock_entries(b"", TARGET).is_empty());
        let one = "1: FLOCK  ADVISORY  WRITE 5 fe:00:1234 0 EOF";
        assert_eq!(flock_entries(one.as_bytes(), TARGET).len(), 1);
        let trailing = "1: FLOCK  ADVISORY  WRITE 5 fe:00:1234 0 EOF\n";
        assert_eq!(flock_entries(trailing.as_bytes(), TARGET).len(), 1);
    }

    #[test]
    fn posix_and_ofd_lines_carry_their_kind_and_bytes() {
        let parse = |line: &str| match parse_locks_line(line.as_bytes()) {
            Some(LockLine::Lock(e)) => e,
            other => panic!("{line}: {other:?}"),
        };
        let e = parse("1: POSIX  ADVISORY  WRITE 812 fe:00:1234 0 EOF");
        assert_eq!(
            (e.kind, e.pid, e.range),
            (HolderKind::Posix, 812, ByteRange::WHOLE)
        );
        let e = parse("3: OFDLCK ADVISORY  READ  -1 fe:00:1234 100 199");
        assert_eq!(
            (e.kind, e.mode, e.pid, e.range),
            (
                HolderKind::Ofd,
                FlockMode::Shared,
                0,
                ByteRange::new(100, 100)
            )
        );
        let e = parse("2: -> POSIX  ADVISORY  WRITE 813 fe:00:1234 10 EOF");
        assert!(e.waiting);
        assert_eq!(e.range, ByteRange::from_start(10));
        let e = parse("4: POSIX  MANDATORY WRITE 9 fe:00:1234 5 5");
        assert_eq!(e.range, ByteRange::new(5, 1));
        for bad in [
            "1: POSIX  ADVISORY  WRITE -1 fe:00:1234 0 EOF",
            "1: OFDLCK ADVISORY  WRITE 7 fe:00:1234 0",
            "1: OFDLCK ADVISORY  WRITE -1 fe:00:1234 9 3",
            "1: POSIX  ADVISORY  WRITE 7 fe:00:1234 x EOF",
        ] {
            assert_eq!(parse_locks_line(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn other_lock_kinds_are_recognised_and_skipped() {
        for line in [
            "6: LEASE  ACTIVE    READ 99 fe:00:1234 0 EOF",
            "7: DELEG  ACTIVE    READ 99 fe:00:1234 0 EOF",
        ] {
            assert_eq!(
                parse_locks_line(line.as_bytes()),
                Some(LockLine::Other),
                "{line}"
            );
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
            assert_eq!(parse_locks_line(line.as_bytes()), None, "{line:?}");
        }
    }

    #[test]
    fn fdinfo_lock_lines_are_parsed() {
        let fdinfo = "pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1234\n\
                      lock:\t1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n";
        let locks: Vec<_> = fdinfo_locks(fdinfo.as_bytes()).collect();
        assert_eq!(locks, vec![entry(4242, FlockMode::Exclusive, false)]);
        let ofd = "pos:\t0\nlock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:1234 0 EOF\n";
        let locks: Vec<_> = fdinfo_locks(ofd.as_bytes()).collect();
        assert_eq!(locks.len(), 1);
        assert_eq!((locks[0].kind, locks[0].pid), (HolderKind::Ofd, 0));
        assert_eq!(fdinfo_locks(b"pos:\t0\nflags:\t0\n").count(), 0);
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
        let m = parse_mountinfo_line(MOUNTINFO.lines().nth(2).unwrap().as_bytes()).unwrap();
        assert_eq!(m.mount_id, 40);
        assert_eq!(m.dev, (0, 45));
        assert_eq!(m.mount_point, Path::new("/mnt/with space\ttab"));
        assert_eq!(m.fstype, b"btrfs");
        let m = parse_mountinfo_line(MOUNTINFO.lines().nth(3).unwrap().as_bytes()).unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/back\\slash"));
        assert_eq!(m.fstype, b"overlay");
        // No "-" separator, or a bad device: malformed.
        assert_eq!(
            parse_mountinfo_line(MOUNTINFO.lines().nth(4).unwrap().as_bytes()),
            None
        );
        assert_eq!(parse_mountinfo_line(b"bad line"), None);
        assert_eq!(
            parse_mountinfo_line(MOUNTINFO.lines().nth(6).unwrap().as_bytes()),
            None
        );
    }

    #[test]
    fn mount_dev_matches_the_mount_id_exactly() {
        assert_eq!(mount_dev(MOUNTINFO.as_bytes(), 27), Some((254, 0)));
        assert_eq!(mount_dev(MOUNTINFO.as_bytes(), 40), Some((0, 45)));
        assert_eq!(mount_dev(MOUNTINFO.as_bytes(), 2), None); // not a prefix match on "22" or "27"
        assert_eq!(mount_dev(MOUNTINFO.as_bytes(), 4), None);
        assert_eq!(mount_dev(MOUNTINFO.as_bytes(), 43), None);
    }

    #[test]
    fn octal_escapes_decode_and_stray_backslashes_stay() {
        assert_eq!(unescape_octal(b"a\\040b"), "a b");
        assert_eq!(unescape_octal(b"a\\012b"), "a\nb");
        assert_eq!(unescape_octal(b"tail\\04"), "tail\\04");
        assert_eq!(unescape_octal(b"x\\9yz"), "x\\9yz");
        assert_eq!(unescape_octal(b"\\777"), "\\777"); // above one byte
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(unescape_octal(b"\\377").as_bytes(), [0xff]);
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
        assert_eq!(proc_stat_state(b"42 (sleep) S 1 42"), Some(b'S'));
        assert_eq!(proc_stat_state(b"42 (a) Z) Z 1 42"), Some(b'Z'));
        assert_eq!(proc_stat_state(b"42 (x y) R 1"), Some(b'R'));
        assert_eq!(proc_stat_state(b"garbage"), None);
    }

    /// `n` lines of unrelated locks, numbered from `from`.
    fn filler(from: usize, n: usize) -> Vec<String> {
        (from..from + n)
            .map(|i| format!("{i}: FLOCK  ADVISORY  WRITE 900 fe:00:{} 0 EOF", 50_000 + i))
            .collect()
    }

    fn walk<'a>(lines: &'a [String]) -> Walk<'a> {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        Walk::of(&lines, TARGET, &dev_ino_needle(TARGET))
    }

    const MINE: &str = "FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF";

    #[test]
    fn a_record_shown_again_after_the_list_moved_is_counted_once() {
        // Page 1 ends with the holder; two locks taken before it push it,
        // and the line before it, into page 2 as well.
        let mut one = filler(1, 70);
        one.push(format!("71: {MINE}"));
        let mut two = vec![one[69].replacen("70:", "72:", 1), format!("73: {MINE}")];
        two.extend(filler(74, 10));
        let walks = [walk(&one), walk(&two)];
        assert_eq!(
            count_once(&walks),
            [entry(4242, FlockMode::Exclusive, false)]
        );
    }

    #[test]
    fn the_last_line_of_a_page_shown_first_on_the_next_is_counted_once() {
        let mut one = filler(1, 5);
        one.push(format!("6: {MINE}"));
        let mut two = vec![format!("7: {MINE}")];
        two.extend(filler(8, 3).into_iter().map(|l| l.replace("90", "91")));
        assert_eq!(count_once(&[walk(&one), walk(&two)]).len(), 1);
    }

    #[test]
    fn two_locks_of_one_process_on_either_side_of_a_page_boundary_both_count() {
        // Same PID, mode and file (two open file descriptions), different
        // neighbours: two records.
        let mut one = filler(1, 70);
        one.push(format!("71: {MINE}"));
        one.extend(filler(72, 2));
        let mut two = filler(200, 2);
        two.push(format!("76: {MINE}"));
        two.extend(filler(300, 2));
        assert_eq!(count_once(&[walk(&one), walk(&two)]).len(), 2);
        // Within one page (one walk) nothing is merged.
        let mut same = filler(1, 3);
        same.push(format!("4: {MINE}"));
        same.push(format!("5: {MINE}"));
        assert_eq!(count_once(&[walk(&same)]).len(), 2);
    }

    #[test]
    fn passes_that_disagree_are_decided_by_the_median() {
        let x = entry(1, FlockMode::Shared, false);
        let y = entry(2, FlockMode::Shared, false);
        assert_eq!(tally(&[x, x, y], &[&[x, y], &[x, y]]), [(x, 1), (y, 1)]);
        assert_eq!(tally(&[x], &[&[x, y], &[y, x]]), [(x, 1), (y, 1)]);
        assert_eq!(tally(&[x, y], &[&[x], &[]]), [(x, 1), (y, 0)]);
        assert_eq!(tally(&[x, x], &[]), [(x, 2)]);
        assert_eq!(tally(&[x], &[&[y]]), [(x, 1), (y, 0)]);
        assert!(same_counts(&[x, y], &[y, x]));
        assert!(!same_counts(&[x, x], &[x, y]));
    }

    /// A POSIX holder that a page boundary of the first pass skipped (a
    /// lock before it was dropped between two reads) and that the shifted
    /// pass saw: the first and second passes disagree, the budget ran out
    /// before the third pass and before its process was checked.
    #[test]
    fn an_entry_only_some_passes_saw_is_listed_when_not_verified() {
        let posix = LockEntry {
            kind: HolderKind::Posix,
            ..entry(812, FlockMode::Exclusive, false)
        };
        let line = "POSIX  ADVISORY  WRITE 812 fe:00:1234 0 EOF";
        // First pass: page 1 ends at line 70, then the list lost a line
        // before the holder, so page 2 starts after it.
        let one = filler(1, 70);
        let two = filler(71, 10);
        let a = count_once(&[walk(&one), walk(&two)]);
        // Shifted pass: the holder lies inside a page.
        let mut shifted = filler(35, 36);
        shifted.push(format!("71: {line}"));
        shifted.extend(filler(72, 9));
        let b = count_once(&[walk(&shifted)]);
        assert_ne!(a, b);
        let tallied = tally(&a, &[&b]);
        assert_eq!(tallied, [(posix, 0)]);
        let (_, n) = tallied[0];
        // Not checked (budget spent, or its descriptors unreadable): listed
        // once, unverified, never dropped.
        assert_eq!(times_listed(n, PidStatus::Unverified, None, false), 1);
        // Three passes where only one saw it: the median is 0 as well.
        let tallied = tally(&a, &[&b, &a]);
        assert_eq!(tallied, [(posix, 0)]);
        assert_eq!(times_listed(0, PidStatus::Unverified, None, false), 1);
        // Found holding it: at least once; found not holding it, or gone:
        // the lock was released between the passes.
        assert_eq!(times_listed(0, PidStatus::Confirmed, Some(1), false), 1);
        assert_eq!(times_listed(0, PidStatus::NotHolding, Some(0), false), 0);
        assert_eq!(times_listed(0, PidStatus::Exited, None, false), 0);
        // Counted by the passes: as counted, or per descriptor found.
        assert_eq!(times_listed(2, PidStatus::Unverified, None, false), 2);
        assert_eq!(times_listed(2, PidStatus::Confirmed, Some(1), false), 1);
    }

    /// An OFD entry that the passes counted 0 times (only some saw it) is
    /// still named when a descriptor holds it.
    #[cfg(feature = "ofd")]
    #[test]
    fn an_ofd_entry_only_some_passes_saw_is_named_when_a_descriptor_holds_it() {
        use crate::{Exclusive, LockKind, LockOptions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ofd.lock");
        let guard = LockOptions::new()
            .kind(LockKind::Ofd)
            .open(&path)
            .unwrap()
            .lock::<Exclusive>()
            .unwrap();
        let id = sys::statx_path(&path).unwrap();
        let info = sys::proc_self_mountinfo().unwrap();
        let dev = id
            .mnt_id
            .and_then(|m| mount_dev(&info, m))
            .unwrap_or(id.dev);
        let target = Target { dev, ino: id.ino };
        let ofd = LockEntry {
            kind: HolderKind::Ofd,
            pid: 0,
            dev,
            ino: id.ino,
            ..entry(0, FlockMode::Exclusive, false)
        };
        let budget = Budget::new(None);
        let (template, _) = describe(ofd, target, &budget);
        let named = name_ofd_holders(template, 0, ofd, target, &budget);
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!(named[0].pid, std::process::id());
        assert_eq!(named[0].status, PidStatus::Confirmed);
        drop(guard);
        let (template, _) = describe(ofd, target, &budget);
        assert!(name_ofd_holders(template, 0, ofd, target, &budget).is_empty());
    }

    /// Pins the calling thread to the first CPU it may run on: the kernel
    /// adds a lock at the head of the list of the CPU that takes it and
    /// prints the lists in CPU order, so locks taken later on that CPU come
    /// before earlier ones.
    fn pin_to_first_cpu() {
        use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
        let allowed = sched_getaffinity(None).unwrap();
        let first = (0..CpuSet::MAX_CPU).find(|&i| allowed.is_set(i)).unwrap();
        let mut set = CpuSet::new();
        set.set(first);
        sched_setaffinity(None, &set).unwrap();
    }

    /// A holder several pages into `/proc/locks`, with locks before it
    /// taken and dropped all the time, is listed by every call however
    /// little time the diagnostics have: a record that a page boundary of
    /// the first pass skips lies inside a page of the second, which is
    /// read whatever the budget.
    #[test]
    fn a_holder_skipped_at_a_page_boundary_is_listed_with_no_budget() {
        use rustix::fs::{flock, FlockOperation};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const CALLS: usize = 2000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.lock");
        let held = std::fs::File::create(&path).unwrap();
        let stop = AtomicBool::new(false);
        let cycles = AtomicU64::new(0);
        let me = std::process::id();
        let missed = std::thread::scope(|s| {
            let after = s
                .spawn(|| {
                    pin_to_first_cpu();
                    flock(&held, FlockOperation::LockExclusive).unwrap();
                    (0..300)
                        .map(|i| {
                            let f =
                                std::fs::File::create(dir.path().join(format!("a{i}"))).unwrap();
                            flock(&f, FlockOperation::LockShared).unwrap();
                            f
                        })
                        .collect::<Vec<_>>()
                })
                .join()
                .unwrap();
            for t in 0..2 {
                let (dir, stop, cycles) = (&dir, &stop, &cycles);
                s.spawn(move || {
                    pin_to_first_cpu();
                    let files: Vec<_> = (0..12)
                        .map(|i| {
                            std::fs::File::create(dir.path().join(format!("c{t}-{i}"))).unwrap()
                        })
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        for f in &files {
                            flock(f, FlockOperation::LockExclusive).unwrap();
                        }
                        std::thread::yield_now();
                        for f in &files {
                            flock(f, FlockOperation::Unlock).unwrap();
                        }
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let id = sys::statx_path(&path).unwrap();
            let mut missed = 0;
            for _ in 0..CALLS {
                let list = holders_within(id, &path, Duration::ZERO).unwrap();
                if !list.iter().any(|h| h.pid == me && !h.waiting) {
                    missed += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            drop(after);
            missed
        });
        let cycles = cycles.into_inner();
        eprintln!("{missed} of {CALLS} calls missed the holder; {cycles} churn cycles");
        assert!(cycles > 0);
        assert_eq!(missed, 0, "{missed} of {CALLS} calls missed the holder");
    }

    #[test]
    fn waiter_lines_and_positions_are_recognised() {
        assert!(is_waiter_line(
            b"2: -> FLOCK  ADVISORY  READ 4250 fe:00:1234 0 EOF"
        ));
        assert!(is_waiter_line(
            b"2:  -> FLOCK  ADVISORY  READ 4250 fe:00:1234 0 EOF"
        ));
        assert!(!is_waiter_line(
            b"2: FLOCK  ADVISORY  READ 4250 fe:00:1234 0 EOF"
        ));
        assert!(!is_waiter_line(b"no colon"));
        assert_eq!(
            without_position(b"12: FLOCK  ADVISORY  READ 1 fe:00:1 0 EOF"),
            b"FLOCK  ADVISORY  READ 1 fe:00:1 0 EOF"
        );
    }

    #[test]
    fn mountinfo_with_a_mount_point_that_is_not_utf8_still_parses() {
        use std::os::unix::ffi::OsStrExt;
        let mut info = MOUNTINFO.as_bytes().to_vec();
        info.extend_from_slice(b"\n50 27 0:60 / /mnt/\xff\xfe\\012x rw - tmpfs tmpfs rw\n");
        assert_eq!(mount_dev(&info, 40), Some((0, 45)));
        assert_eq!(mount_dev(&info, 50), Some((0, 60)));
        let line = info
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"50 "))
            .unwrap();
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/mnt/\xff\xfe\nx");
    }
}
