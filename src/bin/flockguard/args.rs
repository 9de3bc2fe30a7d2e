//! Command-line parsing with the rules of util-linux flock(1): glibc
//! `getopt_long` with option processing stopping at the first operand, long
//! options abbreviable to any unambiguous prefix, and the same messages.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// What to lock or unlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Exclusive,
    Shared,
    Unlock,
}

/// The value of `-w`, classified the way flock(1) uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Rounds to zero microseconds: the same as `-n`.
    Zero,
    /// A positive wait.
    Limit(Duration),
    /// Negative, infinite, not a number, or too large for a timer: parses,
    /// but the timer cannot be armed (flock(1) exits with EX_OSERR).
    Unusable,
}

/// The command run under the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `FILE PROGRAM [ARGS...]`.
    Argv(Vec<OsString>),
    /// `FILE -c STRING`: run through `$SHELL -c`.
    Shell(OsString),
}

/// What the lock is taken on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `FD`: a descriptor inherited from the caller.
    Fd(i32),
    /// `FILE|DIR COMMAND...`.
    File { path: OsString, command: Command },
}

/// The options of a lock invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Opts {
    pub(crate) op: Op,
    pub(crate) nonblock: bool,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) conflict_exit_code: u8,
    pub(crate) close: bool,
    pub(crate) no_fork: bool,
    pub(crate) verbose: bool,
    pub(crate) allow_remote_fs: bool,
    pub(crate) target: Target,
}

/// The options of `holders`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HoldersOpts {
    pub(crate) json: bool,
    pub(crate) path: OsString,
}

/// A successful parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Run(Opts),
    Holders(HoldersOpts),
    Help,
    HoldersHelp,
    Version,
}

/// A usage error: the message (without the program name) and whether the
/// "Try '... --help'" line follows. Exit status EX_USAGE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UsageError {
    pub(crate) message: Option<String>,
    pub(crate) try_help: bool,
}

impl UsageError {
    fn getopt(message: String) -> Self {
        UsageError {
            message: Some(message),
            try_help: true,
        }
    }

    fn plain(message: String) -> Self {
        UsageError {
            message: Some(message),
            try_help: false,
        }
    }
}

/// A long option: name, whether it takes an argument, and its short twin
/// (or a private code for options without one).
struct LongOpt {
    name: &'static str,
    has_arg: bool,
    code: char,
}

const VERBOSE: char = '\u{100}';
const ALLOW_REMOTE_FS: char = '\u{101}';

/// flock(1)'s table, in its order (the order of ambiguity messages), then
/// this tool's own options.
const LONG_OPTS: &[LongOpt] = &[
    LongOpt {
        name: "shared",
        has_arg: false,
        code: 's',
    },
    LongOpt {
        name: "exclusive",
        has_arg: false,
        code: 'x',
    },
    LongOpt {
        name: "unlock",
        has_arg: false,
        code: 'u',
    },
    LongOpt {
        name: "nonblocking",
        has_arg: false,
        code: 'n',
    },
    LongOpt {
        name: "nb",
        has_arg: false,
        code: 'n',
    },
    LongOpt {
        name: "timeout",
        has_arg: true,
        code: 'w',
    },
    LongOpt {
        name: "wait",
        has_arg: true,
        code: 'w',
    },
    LongOpt {
        name: "conflict-exit-code",
        has_arg: true,
        code: 'E',
    },
    LongOpt {
        name: "close",
        has_arg: false,
        code: 'o',
    },
    LongOpt {
        name: "no-fork",
        has_arg: false,
        code: 'F',
    },
    LongOpt {
        name: "verbose",
        has_arg: false,
        code: VERBOSE,
    },
    LongOpt {
        name: "help",
        has_arg: false,
        code: 'h',
    },
    LongOpt {
        name: "version",
        has_arg: false,
        code: 'V',
    },
    LongOpt {
        name: "allow-remote-fs",
        has_arg: false,
        code: ALLOW_REMOTE_FS,
    },
];

/// Short options without an argument; `w` and `E` take one.
const SHORT_FLAGS: &[u8] = b"sexnoFuhV?";
const SHORT_WITH_ARG: &[u8] = b"wE";

/// Parses the whole command line, `argv[0]` included.
pub(crate) fn parse(argv: &[OsString]) -> Result<Parsed, UsageError> {
    if argv.get(1).is_some_and(|a| a == "holders") {
        return parse_holders(&argv[2..]);
    }
    if argv.len() < 2 {
        return Err(UsageError::getopt("not enough arguments".into()));
    }

    let mut op = Op::Exclusive;
    let mut nonblock = false;
    let mut timeout = None;
    let mut conflict_exit_code = 1;
    let mut close = false;
    let mut no_fork = false;
    let mut verbose = false;
    let mut allow_remote_fs = false;

    let mut getopt = Getopt::new(argv);
    while let Some(item) = getopt.next_opt()? {
        let (code, arg) = item;
        match code {
            's' => op = Op::Shared,
            'x' | 'e' => op = Op::Exclusive,
            'u' => op = Op::Unlock,
            'o' => close = true,
            'F' => no_fork = true,
            'n' => nonblock = true,
            'w' => timeout = Some(parse_timeout(arg.as_deref().unwrap_or_default())?),
            'E' => {
                let arg = arg.unwrap_or_default();
                let code = parse_i32(&arg, "invalid exit code")?;
                conflict_exit_code = u8::try_from(code).map_err(|_| {
                    UsageError::plain("exit code out of range (expected 0 to 255)".into())
                })?;
            }
            VERBOSE => verbose = true,
            ALLOW_REMOTE_FS => allow_remote_fs = true,
            'V' => return Ok(Parsed::Version),
            'h' => return Ok(Parsed::Help),
            // `-?`: in the option string, so getopt prints nothing.
            _ => {
                return Err(UsageError {
                    message: None,
                    try_help: true,
                })
            }
        }
    }

    if no_fork && close {
        return Err(UsageError::plain(
            "the --no-fork and --close options are incompatible".into(),
        ));
    }

    let operands = &argv[getopt.index..];
    let target = match operands {
        [] => {
            return Err(UsageError::plain(
                "requires file descriptor, file or directory".into(),
            ))
        }
        [fd] => Target::Fd(parse_i32(fd, "bad file descriptor")?),
        [path, flag, rest @ ..] if flag == "-c" || flag == "--command" => match rest {
            [command] => Target::File {
                path: path.clone(),
                command: Command::Shell(command.clone()),
            },
            _ => {
                return Err(UsageError::plain(format!(
                    "{} requires exactly one command argument",
                    flag.to_string_lossy()
                )))
            }
        },
        [path, command @ ..] => Target::File {
            path: path.clone(),
            command: Command::Argv(command.to_vec()),
        },
    };

    Ok(Parsed::Run(Opts {
        op,
        nonblock,
        timeout,
        conflict_exit_code,
        close,
        no_fork,
        verbose,
        allow_remote_fs,
        target,
    }))
}

/// `holders [--json] [--] FILE`.
fn parse_holders(args: &[OsString]) -> Result<Parsed, UsageError> {
    let mut json = false;
    let mut path = None;
    let mut options_done = false;
    for arg in args {
        let bytes = arg.as_bytes();
        if !options_done && bytes.starts_with(b"-") && bytes.len() > 1 {
            match bytes {
                b"--" => options_done = true,
                b"--json" => json = true,
                b"-h" | b"--help" => return Ok(Parsed::HoldersHelp),
                _ => {
                    return Err(UsageError::getopt(format!(
                        "holders: unrecognized option '{}'",
                        arg.to_string_lossy()
                    )))
                }
            }
        } else if path.is_none() {
            path = Some(arg.clone());
        } else {
            return Err(UsageError::getopt("holders: takes one file".into()));
        }
    }
    match path {
        Some(path) => Ok(Parsed::Holders(HoldersOpts { json, path })),
        None => Err(UsageError::getopt("holders: requires a file".into())),
    }
}

/// A `getopt_long` over `argv` with the option string `+sexnoFuw:E:hV?`.
struct Getopt<'a> {
    argv: &'a [OsString],
    /// The next argument to look at (getopt's `optind`).
    index: usize,
    /// The rest of a cluster of short options being read.
    cluster: &'a [u8],
}

impl<'a> Getopt<'a> {
    fn new(argv: &'a [OsString]) -> Self {
        Getopt {
            argv,
            index: 1,
            cluster: &[],
        }
    }

    /// The next option and its argument; `None` at the first operand or
    /// after `--`.
    fn next_opt(&mut self) -> Result<Option<(char, Option<OsString>)>, UsageError> {
        if self.cluster.is_empty() {
            let Some(arg) = self.argv.get(self.index) else {
                return Ok(None);
            };
            let bytes = arg.as_bytes();
            if bytes == b"--" {
                self.index += 1;
                return Ok(None);
            }
            if let Some(long) = bytes.strip_prefix(b"--") {
                self.index += 1;
                return self.long(long).map(Some);
            }
            if bytes.len() < 2 || bytes[0] != b'-' {
                return Ok(None);
            }
            self.cluster = &bytes[1..];
            self.index += 1;
        }
        let c = self.cluster[0];
        self.cluster = &self.cluster[1..];
        if SHORT_FLAGS.contains(&c) {
            return Ok(Some((char::from(c), None)));
        }
        if SHORT_WITH_ARG.contains(&c) {
            let arg = if !self.cluster.is_empty() {
                let rest = OsStr::from_bytes(self.cluster).to_owned();
                self.cluster = &[];
                rest
            } else if let Some(next) = self.argv.get(self.index) {
                self.index += 1;
                next.clone()
            } else {
                return Err(UsageError::getopt(format!(
                    "option requires an argument -- '{}'",
                    char::from(c)
                )));
            };
            return Ok(Some((char::from(c), Some(arg))));
        }
        self.cluster = &[];
        Err(UsageError::getopt(format!(
            "invalid option -- '{}'",
            String::from_utf8_lossy(&[c])
        )))
    }

    /// A long option (without its leading `--`), matched exactly or by an
    /// unambiguous prefix as glibc does.
    fn long(&mut self, text: &[u8]) -> Result<(char, Option<OsString>), UsageError> {
        let (name, value) = match text.iter().position(|&b| b == b'=') {
            Some(eq) => (&text[..eq], Some(&text[eq + 1..])),
            None => (text, None),
        };
        let shown = String::from_utf8_lossy(text);
        let found = match LONG_OPTS.iter().find(|o| o.name.as_bytes() == name) {
            Some(exact) => exact,
            None => {
                let mut matches = LONG_OPTS
                    .iter()
                    .filter(|o| o.name.as_bytes().starts_with(name));
                let Some(first) = matches.next() else {
                    return Err(UsageError::getopt(format!(
                        "unrecognized option '--{shown}'"
                    )));
                };
                // Prefixes of two names for the same option are not ambiguous.
                let others: Vec<&LongOpt> = matches
                    .filter(|o| o.code != first.code || o.has_arg != first.has_arg)
                    .collect();
                if !others.is_empty() {
                    let mut message = format!("option '--{shown}' is ambiguous; possibilities:");
                    for o in std::iter::once(first).chain(others) {
                        message.push_str(&format!(" '--{}'", o.name));
                    }
                    return Err(UsageError::getopt(message));
                }
                first
            }
        };
        match (found.has_arg, value) {
            (true, Some(value)) => Ok((found.code, Some(OsStr::from_bytes(value).to_owned()))),
            (true, None) => match self.argv.get(self.index) {
                Some(next) => {
                    self.index += 1;
                    Ok((found.code, Some(next.clone())))
                }
                None => Err(UsageError::getopt(format!(
                    "option '--{}' requires an argument",
                    found.name
                ))),
            },
            (false, Some(_)) => Err(UsageError::getopt(format!(
                "option '--{}' doesn't allow an argument",
                found.name
            ))),
            (false, None) => Ok((found.code, None)),
        }
    }
}

/// C `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A base-10 `int32_t` as util-linux `strtos32_or_err` reads it: leading
/// white space and a sign allowed, nothing after the digits.
fn parse_i32(arg: &OsStr, what: &str) -> Result<i32, UsageError> {
    let invalid = || UsageError::plain(format!("{what}: '{}'", arg.to_string_lossy()));
    let range = || {
        UsageError::plain(format!(
            "{what}: '{}': Numerical result out of range",
            arg.to_string_lossy()
        ))
    };
    let bytes = arg.as_bytes();
    let start = bytes
        .iter()
        .position(|&b| !is_c_space(b))
        .unwrap_or(bytes.len());
    let rest = &bytes[start..];
    let (negative, digits) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let mut value: i128 = 0;
    for &d in digits {
        value = value * 10 + i128::from(d - b'0');
        if value > i128::from(u64::MAX) {
            return Err(range());
        }
    }
    if negative {
        value = -value;
    }
    if value < i128::from(i64::MIN) || value > i128::from(i64::MAX) {
        return Err(range());
    }
    i32::try_from(value).map_err(|_| range())
}

/// The `-w` value as util-linux `strtotimeval_or_err` reads it (a C
/// floating-point number: decimal, hexadecimal, `inf`, `nan`, leading white
/// space allowed), then whole seconds and microseconds truncated toward zero.
fn parse_timeout(arg: &OsStr) -> Result<Timeout, UsageError> {
    let value = parse_c_float(arg.as_bytes()).ok_or_else(|| {
        UsageError::plain(format!(
            "invalid timeout value: '{}'",
            arg.to_string_lossy()
        ))
    })?;
    Ok(classify_timeout(value))
}

fn classify_timeout(value: f64) -> Timeout {
    // time_t is 64 bits; anything outside (or NaN) makes the timer refuse.
    if !value.is_finite() || value.abs() >= 9.223_372_036_854_775e18 {
        return Timeout::Unusable;
    }
    let secs = value.trunc();
    let micros = ((value - secs) * 1e6).trunc();
    if secs == 0.0 && micros == 0.0 {
        return Timeout::Zero;
    }
    if secs < 0.0 || micros < 0.0 {
        return Timeout::Unusable;
    }
    // Both are non-negative integers in range here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Timeout::Limit(Duration::new(secs as u64, micros as u32 * 1000))
}

/// `strtold` over the whole string: `None` when it is empty, malformed or
/// has anything after the number.
fn parse_c_float(bytes: &[u8]) -> Option<f64> {
    let start = bytes.iter().position(|&b| !is_c_space(b))?;
    let rest = &bytes[start..];
    let (sign, body) = match rest.first() {
        Some(b'-') => (-1.0, &rest[1..]),
        Some(b'+') => (1.0, &rest[1..]),
        _ => (1.0, rest),
    };
    let lower = body.to_ascii_lowercase();
    let magnitude = if lower == b"inf" || lower == b"infinity" {
        f64::INFINITY
    } else if lower == b"nan"
        || (lower.starts_with(b"nan(")
            && lower.ends_with(b")")
            && lower[4..lower.len() - 1]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_'))
    {
        f64::NAN
    } else if let Some(hex) = lower.strip_prefix(b"0x") {
        parse_hex_float(hex)?
    } else {
        parse_decimal(body)?
    };
    Some(sign * magnitude)
}

/// `DIGITS [. DIGITS] [e [+-] DIGITS]` with at least one mantissa digit.
fn parse_decimal(body: &[u8]) -> Option<f64> {
    let mut i = 0;
    let int_digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if body.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = body[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(body.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = body[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if exp_digits == 0 {
            return None;
        }
        i += exp_digits;
    }
    if i != body.len() {
        return None;
    }
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// Hexadecimal float after `0x`: `HEX [. HEX] [p [+-] DIGITS]`.
fn parse_hex_float(body: &[u8]) -> Option<f64> {
    let mut value = 0.0_f64;
    let mut scale = 0_i64;
    let mut digits = 0;
    let mut i = 0;
    let mut seen_point = false;
    while let Some(&b) = body.get(i) {
        if b == b'.' && !seen_point {
            seen_point = true;
        } else if let Some(d) = char::from(b).to_digit(16) {
            value = value * 16.0 + f64::from(d);
            digits += 1;
            if seen_point {
                scale -= 4;
            }
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    if body.get(i) == Some(&b'p') {
        i += 1;
        let negative = match body.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_digits = &body[i..];
        if exp_digits.is_empty() || !exp_digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let exp: i64 = std::str::from_utf8(exp_digits)
            .ok()?
            .parse()
            .unwrap_or(i64::MAX / 2);
        scale += if negative { -exp } else { exp };
        i = body.len();
    }
    if i != body.len() {
        return None;
    }
    let scale = i32::try_from(scale.clamp(-4096, 4096)).unwrap_or(0);
    Some(value * 2f64.powi(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("flockguard")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn run(args: &[&str]) -> Opts {
        match parse(&argv(args)) {
            Ok(Parsed::Run(opts)) => opts,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn err(args: &[&str]) -> UsageError {
        match parse(&argv(args)) {
            Err(e) => e,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn message(args: &[&str]) -> String {
        err(args).message.unwrap_or_default()
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn defaults_are_exclusive_blocking_conflict_code_one() {
        let opts = run(&["f", "true"]);
        assert_eq!(opts.op, Op::Exclusive);
        assert!(!opts.nonblock && !opts.close && !opts.no_fork && !opts.verbose);
        assert_eq!(opts.timeout, None);
        assert_eq!(opts.conflict_exit_code, 1);
        assert_eq!(
            opts.target,
            Target::File {
                path: os("f"),
                command: Command::Argv(vec![os("true")])
            }
        );
    }

    #[test]
    fn combined_short_flags_and_attached_arguments() {
        let opts = run(&["-snoE3", "f", "cmd"]);
        assert_eq!(opts.op, Op::Shared);
        assert!(opts.nonblock && opts.close);
        assert_eq!(opts.conflict_exit_code, 3);
        let opts = run(&["-w1.5", "9"]);
        assert_eq!(
            opts.timeout,
            Some(Timeout::Limit(Duration::from_millis(1500)))
        );
        assert_eq!(opts.target, Target::Fd(9));
    }

    #[test]
    fn a_short_option_argument_may_be_the_next_word_even_if_it_starts_with_a_dash() {
        assert_eq!(
            message(&["-w", "--", "f", "x"]),
            "invalid timeout value: '--'"
        );
        assert_eq!(run(&["-E", "7", "9"]).conflict_exit_code, 7);
        // `-swx`: `x` is the argument of `-w`.
        assert_eq!(
            message(&["-swx", "1", "f", "true"]),
            "invalid timeout value: 'x'"
        );
    }

    #[test]
    fn long_options_with_equals_or_next_word_and_unique_prefixes() {
        let opts = run(&["--wait=2", "--shared", "--nonblock", "--verb", "f", "c"]);
        assert_eq!(opts.timeout, Some(Timeout::Limit(Duration::from_secs(2))));
        assert_eq!(opts.op, Op::Shared);
        assert!(opts.nonblock && opts.verbose);
        assert_eq!(
            run(&["--timeout", "0.25", "9"]).timeout,
            Some(Timeout::Limit(Duration::from_millis(250)))
        );
        assert!(run(&["--nb", "9"]).nonblock);
        assert!(run(&["--nonblocking", "9"]).nonblock);
        assert_eq!(run(&["--exclusive", "-s", "-e", "9"]).op, Op::Exclusive);
        assert_eq!(run(&["--un", "9"]).op, Op::Unlock);
        assert_eq!(run(&["--conflict-exit-code=0", "9"]).conflict_exit_code, 0);
        assert!(run(&["--clo", "f", "c"]).close);
        assert!(run(&["--no-", "f", "c"]).no_fork);
        assert!(run(&["--allow-remote-fs", "9"]).allow_remote_fs);
    }

    #[test]
    fn glibc_messages_for_bad_options() {
        assert_eq!(message(&["-z", "f", "true"]), "invalid option -- 'z'");
        assert_eq!(message(&["-:"]), "invalid option -- ':'");
        assert_eq!(message(&["-+"]), "invalid option -- '+'");
        assert_eq!(
            message(&["--foo=bar", "f"]),
            "unrecognized option '--foo=bar'"
        );
        assert_eq!(message(&["-w"]), "option requires an argument -- 'w'");
        assert_eq!(message(&["--wait"]), "option '--wait' requires an argument");
        assert_eq!(message(&["--wa"]), "option '--wait' requires an argument");
        assert_eq!(
            message(&["--shared=1", "f"]),
            "option '--shared' doesn't allow an argument"
        );
        assert_eq!(
            message(&["--c=3", "f"]),
            "option '--c=3' is ambiguous; possibilities: '--conflict-exit-code' '--close'"
        );
        assert_eq!(
            message(&["--n", "f"]),
            "option '--n' is ambiguous; possibilities: '--nonblocking' '--no-fork'"
        );
        assert_eq!(
            message(&["--v", "f"]),
            "option '--v' is ambiguous; possibilities: '--verbose' '--version'"
        );
        assert!(err(&["-z"]).try_help);
        let question = err(&["-?", "f"]);
        assert_eq!(
            question,
            UsageError {
                message: None,
                try_help: true
            }
        );
    }

    #[test]
    fn options_are_handled_in_order() {
        assert_eq!(parse(&argv(&["-h", "-z"])), Ok(Parsed::Help));
        assert_eq!(message(&["-z", "-h"]), "invalid option -- 'z'");
        assert_eq!(
            parse(&argv(&["--verbose", "--version"])),
            Ok(Parsed::Version)
        );
        assert_eq!(
            message(&["-E", "300", "-z"]),
            "exit code out of range (expected 0 to 255)"
        );
        assert_eq!(run(&["-s", "-u", "9"]).op, Op::Unlock);
        assert_eq!(run(&["-u", "-s", "9"]).op, Op::Shared);
    }

    #[test]
    fn option_processing_stops_at_the_first_operand_or_double_dash() {
        let opts = run(&["f", "-n", "cmd"]);
        assert!(!opts.nonblock);
        assert_eq!(
            opts.target,
            Target::File {
                path: os("f"),
                command: Command::Argv(vec![os("-n"), os("cmd")])
            }
        );
        assert_eq!(
            run(&["--", "-f", "ls"]).target,
            Target::File {
                path: os("-f"),
                command: Command::Argv(vec![os("ls")])
            }
        );
        // A lone `-` is an operand.
        assert_eq!(
            run(&["-", "true"]).target,
            Target::File {
                path: os("-"),
                command: Command::Argv(vec![os("true")])
            }
        );
        assert_eq!(
            run(&["--", "--", "true"]).target,
            Target::File {
                path: os("--"),
                command: Command::Argv(vec![os("true")])
            }
        );
    }

    #[test]
    fn dash_c_takes_exactly_one_command() {
        assert_eq!(
            run(&["f", "-c", "echo hi"]).target,
            Target::File {
                path: os("f"),
                command: Command::Shell(os("echo hi"))
            }
        );
        assert_eq!(
            run(&["f", "--command", "x"]).target,
            Target::File {
                path: os("f"),
                command: Command::Shell(os("x"))
            }
        );
        assert_eq!(
            message(&["f", "-c"]),
            "-c requires exactly one command argument"
        );
        assert_eq!(
            message(&["f", "-c", "a", "b"]),
            "-c requires exactly one command argument"
        );
        assert_eq!(
            message(&["f", "--command"]),
            "--command requires exactly one command argument"
        );
        // `--command` is not an option before the file.
        assert_eq!(
            message(&["--command", "f"]),
            "unrecognized option '--command'"
        );
    }

    #[test]
    fn operand_errors() {
        assert_eq!(
            message(&["--"]),
            "requires file descriptor, file or directory"
        );
        assert_eq!(
            message(&["-s"]),
            "requires file descriptor, file or directory"
        );
        assert_eq!(message(&["x"]), "bad file descriptor: 'x'");
        assert_eq!(message(&["3x"]), "bad file descriptor: '3x'");
        assert_eq!(run(&[" 3"]).target, Target::Fd(3));
        assert_eq!(run(&["+3"]).target, Target::Fd(3));
        assert_eq!(run(&["--", "-1"]).target, Target::Fd(-1));
        assert_eq!(
            message(&["99999999999"]),
            "bad file descriptor: '99999999999': Numerical result out of range"
        );
        let none = parse(&argv(&[])).unwrap_err();
        assert_eq!(none.message.as_deref(), Some("not enough arguments"));
        assert!(none.try_help);
        assert_eq!(
            message(&["-oF", "f", "true"]),
            "the --no-fork and --close options are incompatible"
        );
        assert!(!err(&["-oF", "f", "true"]).try_help);
    }

    #[test]
    fn exit_code_values() {
        for (arg, code) in [
            ("5", 5),
            (" 5", 5),
            ("+5", 5),
            ("010", 10),
            ("-0", 0),
            ("255", 255),
        ] {
            assert_eq!(run(&["-E", arg, "9"]).conflict_exit_code, code, "{arg:?}");
        }
        for arg in ["abc", "", "0x10", "5 ", "- 5"] {
            assert_eq!(
                message(&["-E", arg, "9"]),
                format!("invalid exit code: '{arg}'")
            );
        }
        for arg in ["256", "-1", "2147483647"] {
            assert_eq!(
                message(&["-E", arg, "9"]),
                "exit code out of range (expected 0 to 255)"
            );
        }
        assert_eq!(
            message(&["-E", "99999999999", "9"]),
            "invalid exit code: '99999999999': Numerical result out of range"
        );
        assert_eq!(
            message(&["-E", "99999999999999999999", "9"]),
            "invalid exit code: '99999999999999999999': Numerical result out of range"
        );
    }

    #[test]
    fn timeout_values() {
        let t = |s: &str| parse_timeout(OsStr::new(s));
        assert_eq!(t("1.5"), Ok(Timeout::Limit(Duration::from_millis(1500))));
        assert_eq!(t(" 2"), Ok(Timeout::Limit(Duration::from_secs(2))));
        assert_eq!(t("+1"), Ok(Timeout::Limit(Duration::from_secs(1))));
        assert_eq!(t("0x10"), Ok(Timeout::Limit(Duration::from_secs(16))));
        assert_eq!(t("0x1.8p1"), Ok(Timeout::Limit(Duration::from_secs(3))));
        assert_eq!(t(".5"), Ok(Timeout::Limit(Duration::from_millis(500))));
        assert_eq!(t("1."), Ok(Timeout::Limit(Duration::from_secs(1))));
        assert_eq!(t("2e1"), Ok(Timeout::Limit(Duration::from_secs(20))));
        assert_eq!(t("0.000001"), Ok(Timeout::Limit(Duration::from_micros(1))));
        for zero in ["0", "0.0", "1e-7", "-0", "-1e-7", "0x0"] {
            assert_eq!(t(zero), Ok(Timeout::Zero), "{zero:?}");
        }
        for unusable in [
            "-1",
            "-0.5",
            "inf",
            "-Infinity",
            "nan",
            "NAN(1)",
            "1e400",
            "1e19",
        ] {
            assert_eq!(t(unusable), Ok(Timeout::Unusable), "{unusable:?}");
        }
        for bad in ["", "abc", "2 ", "1e", ".", "0x", "1,5", "- 1", "1.5s"] {
            assert_eq!(
                t(bad).unwrap_err().message.unwrap(),
                format!("invalid timeout value: '{bad}'"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn holders_subcommand() {
        assert_eq!(
            parse(&argv(&["holders", "/x"])),
            Ok(Parsed::Holders(HoldersOpts {
                json: false,
                path: os("/x")
            }))
        );
        assert_eq!(
            parse(&argv(&["holders", "--json", "/x"])),
            Ok(Parsed::Holders(HoldersOpts {
                json: true,
                path: os("/x")
            }))
        );
        assert_eq!(
            parse(&argv(&["holders", "/x", "--json"])),
            Ok(Parsed::Holders(HoldersOpts {
                json: true,
                path: os("/x")
            }))
        );
        assert_eq!(
            parse(&argv(&["holders", "--", "--json"])),
            Ok(Parsed::Holders(HoldersOpts {
                json: false,
                path: os("--json")
            }))
        );
        assert_eq!(parse(&argv(&["holders", "-h"])), Ok(Parsed::HoldersHelp));
        assert!(parse(&argv(&["holders"])).is_err());
        assert!(parse(&argv(&["holders", "a", "b"])).is_err());
        assert!(parse(&argv(&["holders", "--xml", "a"])).is_err());
        // Only the first word selects the subcommand; `./holders` locks a file of that name.
        assert!(matches!(
            parse(&argv(&["./holders", "true"])),
            Ok(Parsed::Run(_))
        ));
    }
}
