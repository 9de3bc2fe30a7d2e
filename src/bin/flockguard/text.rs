//! Making names and command lines safe to print on a terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with control characters escaped: `\n`, `\r`, `\t`, `\e`, `\xNN`
/// for the other C0 controls and DEL, `\u{NN}` for the C1 controls. Other
/// characters, backslashes included, are kept, so text that is already
/// escaped stays as it is.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("plain /path é"), "plain /path é");
        assert_eq!(escape("a\nb\rc\td"), r"a\nb\rc\td");
        assert_eq!(escape("\u{1b}[31mred"), r"\e[31mred");
        assert_eq!(escape("\u{0}\u{7}\u{7f}"), r"\x00\x07\x7f");
        assert_eq!(escape("\u{85}\u{9b}"), r"\u{85}\u{9b}");
        // Backslashes stay, so escaping twice changes nothing.
        assert_eq!(escape(r"C:\dir\n"), r"C:\dir\n");
        assert_eq!(escape(&escape("x\ny")), r"x\ny");
    }
}
