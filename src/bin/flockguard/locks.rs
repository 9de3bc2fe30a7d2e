//! `flockguard locks [--json] DIR`: every file under `DIR` that a process
//! holds or waits for a `flock(2)` lock on.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flockguard::Holder;

use crate::args::LocksOpts;
use crate::text::escape;
use crate::{describe, json, print_stdout, strerror, EX_NOINPUT, EX_OSERR};

/// A locked file and who holds or waits for its lock.
struct Locked {
    path: PathBuf,
    holders: Vec<Holder>,
}

pub(crate) fn run(prog: &str, opts: &LocksOpts) -> i32 {
    let dir = Path::new(&opts.dir);
    let locked_inodes = match locked_inodes() {
        Ok(set) => set,
        Err(err) => {
            warn(
                prog,
                &format!("cannot read /proc/locks: {}", strerror(&err)),
            );
            return EX_OSERR;
        }
    };
    let top = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => {
            warn(
                prog,
                &format!("{}: Not a directory", escape(&dir.to_string_lossy())),
            );
            return EX_NOINPUT;
        }
        Err(err) => {
            warn(
                prog,
                &format!(
                    "cannot read directory {}: {}",
                    escape(&dir.to_string_lossy()),
                    strerror(&err)
                ),
            );
            return EX_NOINPUT;
        }
    };
    let mut found = Vec::new();
    if locked_inodes.contains(&top.ino()) {
        examine(prog, dir.to_path_buf(), &mut found);
    }
    // Depth first, each directory's entries in byte order of their names.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) => {
                warn(
                    prog,
                    &format!(
                        "cannot read directory {}: {}",
                        escape(&current.to_string_lossy()),
                        strerror(&err)
                    ),
                );
                continue;
            }
        };
        let mut children: Vec<(PathBuf, std::fs::Metadata)> = entries
            .flatten()
            // `DirEntry::metadata` does not follow symbolic links.
            .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
            .filter(|(_, meta)| !meta.file_type().is_symlink())
            .collect();
        children.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
        let mut subdirs = Vec::new();
        for (path, meta) in children {
            if locked_inodes.contains(&meta.ino()) {
                examine(prog, path.clone(), &mut found);
            }
            if meta.is_dir() {
                subdirs.push(path);
            }
        }
        // Reversed onto the stack, so the first name is visited first.
        pending.extend(subdirs.into_iter().rev());
    }
    found.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let text = if opts.json {
        to_json(&found)
    } else {
        found.iter().map(to_line).collect()
    };
    print_stdout(&text)
}

/// Adds `path` to `found` if the kernel lists a holder or waiter for it.
fn examine(prog: &str, path: PathBuf, found: &mut Vec<Locked>) {
    match flockguard::holders(&path) {
        Ok(holders) if holders.is_empty() => {}
        Ok(holders) => found.push(Locked { path, holders }),
        // Removed since it was listed: nothing to report.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => warn(prog, &describe(&err)),
    }
}

fn warn(prog: &str, message: &str) {
    let _ = writeln!(io::stderr(), "{prog}: {}", escape(message));
}

/// Inode numbers that `/proc/locks` lists a `flock(2)` lock or waiter for,
/// on any device: a cheap filter before the exact per-file check. Read
/// twice and joined, since a read racing with lock changes can miss a line.
fn locked_inodes() -> io::Result<HashSet<u64>> {
    let mut set = HashSet::new();
    for _ in 0..2 {
        let text = std::fs::read("/proc/locks")?;
        for line in text.split(|&b| b == b'\n') {
            let mut fields = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty())
                .skip(1)
                .skip_while(|f| *f == b"->");
            // `FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`
            if fields.next() != Some(b"FLOCK".as_slice()) {
                continue;
            }
            let ino: Option<u64> = fields
                .nth(3)
                .and_then(|id| id.rsplit(|&b| b == b':').next())
                .and_then(|i| std::str::from_utf8(i).ok()?.parse().ok());
            set.extend(ino);
        }
    }
    Ok(set)
}

/// `PATH: pid 1 (cmd) holds exclusive; pid 2 (cmd) waits for shared`.
fn to_line(locked: &Locked) -> String {
    let entries: Vec<String> = locked
        .holders
        .iter()
        .map(|h| escape(&h.to_string()).into_owned())
        .collect();
    format!(
        "{}: {}\n",
        escape(&locked.path.to_string_lossy()),
        entries.join("; ")
    )
}

/// The list as a JSON array, one object per line.
fn to_json(found: &[Locked]) -> String {
    if found.is_empty() {
        return "[]\n".to_owned();
    }
    let items: Vec<String> = found
        .iter()
        .map(|l| {
            let holders: Vec<String> = l.holders.iter().map(json::holder).collect();
            format!(
                "  {{\"path\":{},\"path_bytes\":{},\"holders\":[{}]}}",
                json::string(&l.path.to_string_lossy()),
                path_bytes(l.path.as_os_str()),
                holders.join(",")
            )
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// `null` for a UTF-8 path; otherwise its bytes as an array of numbers.
fn path_bytes(path: &OsStr) -> String {
    if path.to_str().is_some() {
        return "null".to_owned();
    }
    let bytes: Vec<String> = path.as_bytes().iter().map(u8::to_string).collect();
    format!("[{}]", bytes.join(","))
}

#[cfg(test)]
mod tests {
    use super::path_bytes;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn path_bytes_only_for_non_utf8_paths() {
        assert_eq!(path_bytes(OsStr::new("/tmp/a b\n\"c")), "null");
        assert_eq!(path_bytes(OsStr::from_bytes(b"/x\xff")), "[47,120,255]");
    }
}
