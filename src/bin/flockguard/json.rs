//! The JSON output of `flockguard holders --json`, written by hand.

use std::fmt::Write;

use flockguard::{FlockMode, Holder, LockProcess, PidStatus};

/// `s` as a JSON string literal, quotes included (RFC 8259: `"`, `\` and
/// control characters escaped; everything else as UTF-8).
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn optional(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), string)
}

fn mode(mode: FlockMode) -> &'static str {
    match mode {
        FlockMode::Exclusive => "exclusive",
        FlockMode::Shared => "shared",
    }
}

fn status(status: PidStatus) -> &'static str {
    match status {
        PidStatus::Confirmed => "confirmed",
        PidStatus::Unverified => "unverified",
        PidStatus::NotHolding => "not-holding",
        PidStatus::Exited => "exited",
        _ => "unknown",
    }
}

fn process(p: &LockProcess) -> String {
    format!(
        "{{\"pid\":{},\"cmdline\":{}}}",
        p.pid,
        optional(p.cmdline.as_deref())
    )
}

/// One holder as a JSON object.
pub(crate) fn holder(h: &Holder) -> String {
    let sharers: Vec<String> = h.sharers.iter().map(process).collect();
    format!(
        "{{\"pid\":{},\"mode\":\"{}\",\"waiting\":{},\"status\":\"{}\",\"cmdline\":{},\"sharers\":[{}]}}",
        h.pid,
        mode(h.mode),
        h.waiting,
        status(h.status),
        optional(h.cmdline.as_deref()),
        sharers.join(",")
    )
}

/// The holders as a JSON array, one object per line.
pub(crate) fn holders(list: &[Holder]) -> String {
    if list.is_empty() {
        return "[]\n".to_owned();
    }
    let items: Vec<String> = list.iter().map(|h| format!("  {}", holder(h))).collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(string(r"C:\dir"), r#""C:\\dir""#);
        assert_eq!(string("a\nb\tc\rd"), r#""a\nb\tc\rd""#);
        assert_eq!(string("\u{8}\u{c}"), r#""\b\f""#);
        assert_eq!(string("\u{0}\u{1}\u{1f}"), r#""\u0000\u0001\u001f""#);
        // DEL, non-ASCII and the JSON-safe line separators pass through.
        assert_eq!(string("\u{7f}é\u{2028}…"), "\"\u{7f}é\u{2028}…\"");
        assert_eq!(string("/"), r#""/""#);
    }

    #[test]
    fn optional_strings_are_null_or_escaped() {
        assert_eq!(optional(None), "null");
        assert_eq!(optional(Some("x\"y")), r#""x\"y""#);
    }

    #[test]
    fn empty_list_is_an_empty_array() {
        assert_eq!(holders(&[]), "[]\n");
    }
}
