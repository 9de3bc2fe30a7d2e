//! Holder data: who holds or waits for a `flock(2)` lock, as
//! [`holders`](crate::holders()) and [`Error::Timeout`](crate::Error::Timeout)
//! report it.

use std::fmt;

use crate::kind::ByteRange;
use crate::mode::FlockMode;
use crate::sys;

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
    /// The process that took the lock, or that waits for it. For an
    /// [`HolderKind::Ofd`] lock, which the kernel does not tie to a
    /// process, the first process found holding it through a descriptor;
    /// `0` when none was found (another user's process, a blocked waiter,
    /// or the time for diagnostics ran out).
    pub pid: u32,
    /// The kind of lock.
    pub kind: HolderKind,
    /// The bytes held or asked for; `None` for the whole file (every
    /// `flock(2)` lock, and record locks from byte 0 to the end).
    pub range: Option<ByteRange>,
    /// The mode held or requested.
    pub mode: FlockMode,
    /// `true` for a process blocked in `flock(2)` waiting for this lock.
    /// Waiters that poll with `LOCK_NB` (such as
    /// [`lock_timeout`](crate::LockFile::lock_timeout)) are not visible.
    pub waiting: bool,
    /// The command line of [`pid`](Self::pid): arguments joined by spaces,
    /// invalid UTF-8 replaced, cut to 256 characters (ending in `…`), as
    /// the process set it (control characters included; `Display`
    /// escapes them). `None` if it could not be read or is empty (a kernel
    /// thread, a zombie, an exited process).
    pub cmdline: Option<String>,
    /// How far [`pid`](Self::pid) was verified as a holder.
    pub status: PidStatus,
    /// Processes found holding the lock through a descriptor they share with
    /// [`pid`](Self::pid) (inherited through `fork(2)` or passed over a
    /// socket), the calling process included. Searched for only when
    /// `status` is [`PidStatus::Exited`] or [`PidStatus::NotHolding`];
    /// empty otherwise, and empty when no readable process has it.
    pub sharers: Vec<LockProcess>,
    /// `false` when the search for [`sharers`](Self::sharers) was cut short
    /// by the time allowed for diagnostics (in [`Error::Timeout`] and wait
    /// notices), so a sharer may be missing; `true` otherwise.
    ///
    /// [`Error::Timeout`]: crate::Error::Timeout
    pub sharers_complete: bool,
}

/// Which kind of lock a [`Holder`] holds or waits for, as `/proc/locks`
/// names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HolderKind {
    /// A `flock(2)` lock (`FLOCK`): whole file, owned by an open file
    /// description.
    Flock,
    /// An open file description record lock (`OFDLCK`, `F_OFD_SETLK`), as
    /// [`LockKind::Ofd`](crate::LockKind) takes.
    Ofd,
    /// A process-owned POSIX record lock (`POSIX`: `fcntl(F_SETLK)`,
    /// `lockf(3)`).
    Posix,
}

impl HolderKind {
    /// The name used in messages: `"flock"`, `"OFD"` or `"POSIX"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HolderKind::Flock => "flock",
            HolderKind::Ofd => "OFD",
            HolderKind::Posix => "POSIX",
        }
    }
}

impl fmt::Display for HolderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was verified about a [`Holder`]'s PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PidStatus {
    /// `/proc/PID/fdinfo` shows the lock on one of the process's
    /// descriptors. For a waiter: the process exists (it is blocked in
    /// `flock(2)`, which the kernel shows no descriptor for).
    Confirmed,
    /// The process may exist and hold the lock, but it was not verified:
    /// its descriptors or state could not be read (another user's process,
    /// no descriptor left in the caller), or the time allowed for
    /// diagnostics ran out first.
    Unverified,
    /// The process exists, but none of its descriptors holds the lock: it
    /// took the lock and then closed its copy after a `fork(2)`, or it exited
    /// and the PID now belongs to an unrelated process.
    NotHolding,
    /// No such process (or only a zombie without live threads): the lock
    /// lives on in a process that inherited the descriptor; see
    /// [`Holder::sharers`].
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

/// A command line made safe for a terminal: control characters (C0, DEL,
/// C1) and the bidirectional-text controls are written as escapes.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x80 && c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c if c.is_control() || is_bidi_control(c) => {
                    write!(f, "\\u{{{:x}}}", c as u32)?;
                }
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Characters that reorder the text around them on a terminal.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `pid 4250 (sleep 100)`, or `pid 4250 (this process)` when `pid` is the
/// process formatting it, whose command line its reader knows.
fn write_process(f: &mut fmt::Formatter<'_>, pid: u32, cmdline: Option<&str>) -> fmt::Result {
    write!(f, "pid {pid}")?;
    if pid == sys::current_pid() {
        f.write_str(" (this process)")?;
    } else if let Some(cmd) = cmdline {
        write!(f, " ({})", Escaped(cmd))?;
    }
    Ok(())
}

impl Holder {
    /// Whether [`pid`](Self::pid) is the calling process: it holds (or
    /// waits for) the lock through another open file description of its
    /// own, or through a descriptor it inherited.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{holders, try_flock, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = try_flock::<Exclusive>(&path)?;
    /// let list = holders(&path)?;
    /// assert!(list[0].is_calling_process());
    /// assert_eq!(list[0].to_string(), format!("pid {} (this process) holds exclusive", std::process::id()));
    /// # drop(guard);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn is_calling_process(&self) -> bool {
        self.pid == sys::current_pid()
    }
}

impl LockProcess {
    /// Whether [`pid`](Self::pid) is the calling process.
    pub fn is_calling_process(&self) -> bool {
        self.pid == sys::current_pid()
    }
}

impl fmt::Display for LockProcess {
    /// `pid 4250 (sleep 100)`, or `pid 4250 (this process)` for the calling
    /// process; control characters in the command line are escapes (`\x1b`,
    /// `\n`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_process(f, self.pid, self.cmdline.as_deref())
    }
}

impl fmt::Display for Holder {
    /// `pid 4242 (cargo build --release) holds exclusive`,
    /// `pid 77 waits for shared`, `pid 4242 holds exclusive (unverified)`,
    /// `pid 11082 (this process) holds exclusive` when the holder is the
    /// process formatting the line (in place of its command line),
    /// or, when the PID no longer holds it,
    /// `pid 4242 (exited) took exclusive; now held by pid 4250 (sleep 100)`.
    /// Control characters in command lines are escapes (`\x1b`, `\n`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = Moded(self);
        if self.waiting {
            self.write_who(f)?;
            return write!(f, " waits for {mode}");
        }
        match self.status {
            PidStatus::Confirmed => {
                self.write_who(f)?;
                write!(f, " holds {mode}")
            }
            PidStatus::Unverified => {
                self.write_who(f)?;
                write!(f, " holds {mode} (unverified)")
            }
            PidStatus::NotHolding | PidStatus::Exited => {
                if self.status == PidStatus::Exited {
                    write!(f, "pid {} (exited) took {mode}", self.pid)?;
                } else {
                    write_process(f, self.pid, self.cmdline.as_deref())?;
                    write!(f, " took {mode} but no longer has it open")?;
                }
                if self.sharers.is_empty() {
                    if self.sharers_complete {
                        f.write_str("; the process holding it now is not visible")
                    } else {
                        f.write_str("; the process holding it now was not found in time")
                    }
                } else {
                    f.write_str("; now held by ")?;
                    for (i, p) in self.sharers.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{p}")?;
                    }
                    if !self.sharers_complete {
                        f.write_str(" (search cut short)")?;
                    }
                    Ok(())
                }
            }
        }
    }
}

impl Holder {
    /// `pid 4242 (cmd)`, or for an OFD lock whose process was not found,
    /// `a process not found`.
    fn write_who(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pid == 0 {
            return f.write_str("a process not found");
        }
        write_process(f, self.pid, self.cmdline.as_deref())
    }
}

/// A holder's mode with its kind and bytes when it is not a `flock(2)`
/// lock: `exclusive`, `shared POSIX lock`, `exclusive OFD lock on bytes 0..10`.
struct Moded<'a>(&'a Holder);

impl fmt::Display for Moded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.0;
        write!(f, "{}", h.mode)?;
        if h.kind != HolderKind::Flock {
            write!(f, " {} lock", h.kind)?;
        }
        if let Some(range) = h.range {
            write!(f, " on {range}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder {
            pid: 4242,
            kind: HolderKind::Flock,
            range: None,
            mode: FlockMode::Exclusive,
            waiting: false,
            cmdline: Some("cargo build --release".into()),
            status: PidStatus::Confirmed,
            sharers: Vec::new(),
            sharers_complete: true,
        }
    }

    #[test]
    fn holder_display_names_pid_command_and_mode() {
        let mut h = holder();
        assert_eq!(
            h.to_string(),
            "pid 4242 (cargo build --release) holds exclusive"
        );
        h.status = PidStatus::Unverified;
        assert_eq!(
            h.to_string(),
            "pid 4242 (cargo build --release) holds exclusive (unverified)"
        );
        h.status = PidStatus::Confirmed;
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
        h.sharers_complete = false;
        assert_eq!(
            h.to_string(),
            "pid 4242 (exited) took shared; the process holding it now was not found in time"
        );
        h.sharers_complete = true;
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
    fn record_lock_holders_name_their_kind_and_bytes() {
        let mut h = holder();
        h.kind = HolderKind::Posix;
        h.cmdline = Some("python3".into());
        assert_eq!(
            h.to_string(),
            "pid 4242 (python3) holds exclusive POSIX lock"
        );
        h.range = Some(ByteRange::new(100, 10));
        assert_eq!(
            h.to_string(),
            "pid 4242 (python3) holds exclusive POSIX lock on bytes 100..110"
        );
        h.kind = HolderKind::Ofd;
        h.range = Some(ByteRange::from_start(7));
        h.pid = 0;
        h.status = PidStatus::Unverified;
        assert_eq!(
            h.to_string(),
            "a process not found holds exclusive OFD lock on bytes 7.. (unverified)"
        );
        h.waiting = true;
        h.mode = FlockMode::Shared;
        assert_eq!(
            h.to_string(),
            "a process not found waits for shared OFD lock on bytes 7.."
        );
    }

    #[test]
    fn a_holder_that_is_the_calling_process_says_so() {
        let me = std::process::id();
        let mut h = holder();
        h.pid = me;
        assert!(h.is_calling_process());
        assert_eq!(
            h.to_string(),
            format!("pid {me} (this process) holds exclusive")
        );
        h.status = PidStatus::Unverified;
        assert_eq!(
            h.to_string(),
            format!("pid {me} (this process) holds exclusive (unverified)")
        );
        h.status = PidStatus::Confirmed;
        h.waiting = true;
        assert_eq!(
            h.to_string(),
            format!("pid {me} (this process) waits for exclusive")
        );
        h.waiting = false;
        h.status = PidStatus::NotHolding;
        h.sharers = vec![LockProcess {
            pid: 4250,
            cmdline: Some("sleep 100".into()),
        }];
        assert_eq!(
            h.to_string(),
            format!("pid {me} (this process) took exclusive but no longer has it open; now held by pid 4250 (sleep 100)")
        );
        let mut other = holder();
        other.status = PidStatus::Exited;
        other.sharers = vec![LockProcess {
            pid: me,
            cmdline: Some("ignored".into()),
        }];
        assert!(!other.is_calling_process());
        assert!(other.sharers[0].is_calling_process());
        assert_eq!(
            other.to_string(),
            format!("pid 4242 (exited) took exclusive; now held by pid {me} (this process)")
        );
        // Another process keeps its command line.
        assert_eq!(
            holder().to_string(),
            "pid 4242 (cargo build --release) holds exclusive"
        );
    }

    #[test]
    fn control_characters_in_command_lines_are_escaped() {
        let mut h = holder();
        h.cmdline = Some("evil \u{1b}[2J\nfake line\r\t\u{7f}\u{9b}\u{202e}x\\ é".into());
        let text = h.to_string();
        assert_eq!(
            text,
            "pid 4242 (evil \\x1b[2J\\nfake line\\r\\t\\x7f\\u{9b}\\u{202e}x\\\\ é) holds exclusive"
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
        let p = LockProcess {
            pid: 1,
            cmdline: Some("a\u{1b}b".into()),
        };
        assert_eq!(p.to_string(), "pid 1 (a\\x1bb)");
        h.status = PidStatus::Exited;
        h.sharers = vec![p];
        assert!(!h.to_string().contains('\u{1b}'));
    }
}
