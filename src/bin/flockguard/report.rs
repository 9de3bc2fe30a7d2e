//! `--holders FILE` and `--locks DIR`: who holds or waits for `flock(2)`
//! locks, as lines or as JSON.

use std::collections::HashSet;
use std::fs::Metadata;
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flockguard::{Error, Holder, PidStatus};

use crate::{describe, escape, print, EX_NOINPUT, EX_OSERR};

/// `--holders FILE`: one line (or JSON object) per holder, then waiters.
pub(crate) fn holders(path: &Path, json: bool) -> i32 {
    match flockguard::holders(path) {
        Ok(list) if json => output(list.iter().map(holder_json).collect(), true),
        Ok(list) => output(list.iter().map(Holder::to_string).collect(), false),
        Err(err) => {
            // A file that cannot be read (not /proc): 66.
            let input = matches!(&err, Error::Holders { file, .. } if file == path);
            let code = [EX_OSERR, EX_NOINPUT][usize::from(input)];
            fail!(code, "{}", escape(&describe(&err)))
        }
    }
}

/// `--locks DIR`: every file or directory under `DIR` (not following
/// symbolic links) that a process holds or waits for a lock on, of any
/// kind `holders` lists, in byte order.
pub(crate) fn locks(dir: &Path, json: bool) -> i32 {
    let inodes = match locked_inodes() {
        Ok(inodes) => inodes,
        Err(err) => return fail!(EX_OSERR, "cannot read /proc/locks: {}", describe(&err)),
    };
    let shown = escape(&dir.to_string_lossy());
    let top = match std::fs::metadata(dir).map_err(|e| describe(&e)) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return fail!(EX_NOINPUT, "{shown}: Not a directory"),
        Err(e) => return fail!(EX_NOINPUT, "cannot read directory {shown}: {e}"),
    };
    let mut found = Vec::new();
    walk(dir, &top, &inodes, &mut found);
    found.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    let items = found.iter().map(|(path, holders)| {
        let text = path.to_string_lossy();
        if !json {
            let holders: Vec<_> = holders.iter().map(Holder::to_string).collect();
            return format!("{}: {}", escape(&text), holders.join("; "));
        }
        let bytes = match path.to_str() {
            Some(_) => "null".to_owned(),
            None => format!("{:?}", path.as_os_str().as_bytes()),
        };
        let holders: Vec<_> = holders.iter().map(holder_json).collect();
        let (path, holders) = (string(&text), holders.join(","));
        format!("{{\"path\":{path},\"path_bytes\":{bytes},\"holders\":[{holders}]}}")
    });
    output(items.collect(), json)
}

/// Adds `path` to `found` if the kernel lists a holder or waiter of it,
/// then does the same below it.
fn walk(path: &Path, meta: &Metadata, inodes: &HashSet<u64>, found: &mut Found) {
    let listed = inodes.contains(&meta.ino());
    match listed.then(|| flockguard::holders(path)) {
        Some(Ok(holders)) if !holders.is_empty() => found.push((path.to_owned(), holders)),
        // A file removed since it was listed (NotFound): nothing to report.
        Some(Err(e)) if e.kind() != ErrorKind::NotFound => warn!("{}", escape(&describe(&e))),
        _ => {}
    }
    if !meta.is_dir() {
        return;
    }
    let entries = std::fs::read_dir(path).map_err(|err| {
        let shown = escape(&path.to_string_lossy());
        warn!("cannot read directory {shown}: {}", describe(&err));
    });
    // `DirEntry::metadata` does not follow symbolic links.
    for entry in entries.into_iter().flatten().flatten() {
        if let Some(meta) = entry.metadata().ok().filter(|m| !m.is_symlink()) {
            walk(&entry.path(), &meta, inodes, found);
        }
    }
}

type Found = Vec<(PathBuf, Vec<Holder>)>;

/// The inodes `/proc/locks` lists a lock or waiter for, on any
/// device: a cheap filter before the exact check of each file. Read twice,
/// since a read racing with lock changes can miss a line.
fn locked_inodes() -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for _ in 0..2 {
        for line in std::fs::read_to_string("/proc/locks")?.lines() {
            // `ID: [->] KIND ADVISORY WRITE PID MAJ:MIN:INODE START END`
            let fields: Vec<_> = line.split_whitespace().filter(|f| *f != "->").collect();
            let id = fields.get(5).and_then(|id| id.rsplit(':').next());
            inodes.extend(id.and_then(|i| i.parse::<u64>().ok()));
        }
    }
    Ok(inodes)
}

/// The items one a line, as a JSON array if `json`.
fn output(items: Vec<String>, json: bool) -> i32 {
    print(&match (json, items.is_empty()) {
        (true, true) => "[]\n".to_owned(),
        (true, false) => format!("[\n  {}\n]\n", items.join(",\n  ")),
        (false, _) => items.iter().map(|item| format!("{item}\n")).collect(),
    })
}

fn holder_json(h: &Holder) -> String {
    let optional = |s: Option<&str>| s.map_or_else(|| "null".to_owned(), string);
    let sharer = |p: &flockguard::LockProcess| {
        let (pid, cmdline) = (p.pid, optional(p.cmdline.as_deref()));
        format!("{{\"pid\":{pid},\"cmdline\":{cmdline}}}")
    };
    let sharers: Vec<_> = h.sharers.iter().map(sharer).collect();
    let status = match h.status {
        PidStatus::Confirmed => "confirmed",
        PidStatus::Unverified => "unverified",
        PidStatus::NotHolding => "not-holding",
        PidStatus::Exited => "exited",
        _ => "unknown",
    };
    let (pid, kind, mode, waiting, sharers) = (h.pid, h.kind, h.mode, h.waiting, sharers.join(","));
    let range = h.range.map_or("null".into(), |r| {
        let len = r.len().map_or("null".into(), |len| len.to_string());
        format!("{{\"start\":{},\"len\":{len}}}", r.start())
    });
    let cmdline = optional(h.cmdline.as_deref());
    format!(
        "{{\"pid\":{pid},\"kind\":\"{kind}\",\"range\":{range},\"mode\":\"{mode}\",\
         \"waiting\":{waiting},\"status\":\"{status}\",\"cmdline\":{cmdline},\"sharers\":[{sharers}]}}"
    )
}

/// `s` as a JSON string (RFC 8259: `"`, `\` and control characters
/// escaped).
fn string(s: &str) -> String {
    let escaped = s.chars().map(|c| match c {
        '"' | '\\' => format!("\\{c}"),
        c if u32::from(c) < 0x20 => format!("\\u{:04x}", u32::from(c)),
        c => c.to_string(),
    });
    format!("\"{}\"", escaped.collect::<String>())
}
