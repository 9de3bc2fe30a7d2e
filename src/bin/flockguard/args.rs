//! Command-line parsing with the rules of util-linux flock(1): glibc
//! `getopt_long` with option processing stopping at the first operand, long
//! options abbreviable to any unambiguous prefix, and the same messages.
//! `lexopt` splits the words into options, values and operands; the
//! option table, prefix matching and messages are flock(1)'s.

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

/// The options of `locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocksOpts {
    pub(crate) json: bool,
    pub(crate) dir: OsString,
}

/// A successful parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Run(Opts),
    Holders(HoldersOpts),
    Locks(LocksOpts),
    Help,
    HoldersHelp,
    LocksHelp,
    Version,
}

/// A usage error: the message (without the program name) and whether the
/// "Try '... --help'" line follows. Exit status EX_USAGE.
///
/// The message is bytes: like glibc and util-linux, it quotes the words
/// of the command line as given, which need not be UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UsageError {
    pub(crate) message: Option<Vec<u8>>,
    pub(crate) try_help: bool,
}

impl UsageError {
    fn getopt(message: impl Into<Vec<u8>>) -> Self {
        UsageError {
            message: Some(message.into()),
            try_help: true,
        }
    }

    fn plain(message: impl Into<Vec<u8>>) -> Self {
        UsageError {
            message: Some(message.into()),
            try_help: false,
        }
    }
}

/// `parts` joined into one message.
fn bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
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

const fn opt(name: &'static str, has_arg: bool, code: char) -> LongOpt {
    LongOpt {
        name,
        has_arg,
        code,
    }
}

/// flock(1)'s table, in its order (the order of ambiguity messages), then
/// this tool's own options.
const LONG_OPTS: &[LongOpt] = &[
    opt("shared", false, 's'),
    opt("exclusive", false, 'x'),
    opt("unlock", false, 'u'),
    opt("nonblocking", false, 'n'),
    opt("nb", false, 'n'),
    opt("timeout", true, 'w'),
    opt("wait", true, 'w'),
    opt("conflict-exit-code", true, 'E'),
    opt("close", false, 'o'),
    opt("no-fork", false, 'F'),
    opt("verbose", false, VERBOSE),
    opt("help", false, 'h'),
    opt("version", false, 'V'),
    opt("allow-remote-fs", false, ALLOW_REMOTE_FS),
];

/// Short options without an argument; `w` and `E` take one.
const SHORT_FLAGS: &str = "sexnoFuhV?";
const SHORT_WITH_ARG: &str = "wE";

/// One token of the command line, owned so the parser can be asked for
/// an option's argument next.
enum Token {
    Short(char),
    Long(String),
    Operand(OsString),
}

fn next_token(parser: &mut lexopt::Parser) -> Option<Token> {
    // Every option's attached value is taken before the next call, so
    // `next` has no unexpected value to report.
    match parser.next().ok()?? {
        lexopt::Arg::Short(c) => Some(Token::Short(c)),
        lexopt::Arg::Long(name) => Some(Token::Long(name.to_owned())),
        lexopt::Arg::Value(value) => Some(Token::Operand(value)),
    }
}

/// A lexopt parser over the arguments after `argv[0]`, reading short
/// options as getopt does (`-w=1` is `-w` with the argument `=1`).
fn parser(args: &[OsString]) -> lexopt::Parser {
    let mut parser = lexopt::Parser::from_args(args.iter().cloned());
    parser.set_short_equals(false);
    parser
}

/// Parses the whole command line, `argv[0]` included.
pub(crate) fn parse(argv: &[OsString]) -> Result<Parsed, UsageError> {
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("holders") => return parse_holders(&argv[2..]),
        Some("locks") => return parse_locks(&argv[2..]),
        _ => {}
    }
    if argv.len() < 2 {
        return Err(UsageError::getopt("not enough arguments"));
    }

    let mut op = Op::Exclusive;
    let mut nonblock = false;
    let mut timeout = None;
    let mut conflict_exit_code = 1;
    let mut close = false;
    let mut no_fork = false;
    let mut verbose = false;
    let mut allow_remote_fs = false;

    let mut parser = parser(&argv[1..]);
    let mut operands = Vec::new();
    // Options end at the first operand, as with getopt's leading `+`.
    while let Some(token) = next_token(&mut parser) {
        let (code, arg) = match token {
            Token::Operand(first) => {
                operands.push(first);
                break;
            }
            Token::Short(c) => short_option(c, &mut parser)?,
            Token::Long(name) => long_option(&name, &mut parser)?,
        };
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
                conflict_exit_code = u8::try_from(code)
                    .map_err(|_| UsageError::plain("exit code out of range (expected 0 to 255)"))?;
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
    if let Some(rest) = parser.try_raw_args() {
        operands.extend(rest);
    }

    if no_fork && close {
        return Err(UsageError::plain(
            "the --no-fork and --close options are incompatible",
        ));
    }

    let target = match operands.as_slice() {
        [] => {
            return Err(UsageError::plain(
                "requires file descriptor, file or directory",
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

/// A short option and its argument, with glibc's messages.
fn short_option(
    c: char,
    parser: &mut lexopt::Parser,
) -> Result<(char, Option<OsString>), UsageError> {
    if SHORT_FLAGS.contains(c) {
        return Ok((c, None));
    }
    if SHORT_WITH_ARG.contains(c) {
        // Attached (`-w1`) or the next word, even one starting with `-`.
        return match parser.value() {
            Ok(arg) => Ok((c, Some(arg))),
            Err(_) => Err(UsageError::getopt(format!(
                "option requires an argument -- '{c}'"
            ))),
        };
    }
    // getopt reads bytes: a non-ASCII option character is reported by the
    // first byte of its encoding.
    let mut utf8 = [0; 4];
    let first = &c.encode_utf8(&mut utf8).as_bytes()[..1];
    Err(UsageError::getopt(bytes(&[
        b"invalid option -- '",
        first,
        b"'",
    ])))
}

/// A long option (without its leading `--`) and its argument, matched
/// exactly or by an unambiguous prefix as glibc `getopt_long` does.
fn long_option(
    name: &str,
    parser: &mut lexopt::Parser,
) -> Result<(char, Option<OsString>), UsageError> {
    let attached = parser.optional_value();
    // glibc's messages show the word as given, `=value` included.
    let shown = match &attached {
        Some(value) => bytes(&[name.as_bytes(), b"=", value.as_bytes()]),
        None => name.as_bytes().to_vec(),
    };
    let found = match LONG_OPTS.iter().find(|o| o.name == name) {
        Some(exact) => exact,
        None => {
            let mut matches = LONG_OPTS.iter().filter(|o| o.name.starts_with(name));
            let Some(first) = matches.next() else {
                return Err(UsageError::getopt(bytes(&[
                    b"unrecognized option '--",
                    &shown,
                    b"'",
                ])));
            };
            // Prefixes of two names for the same option are not ambiguous.
            let others: Vec<&LongOpt> = matches
                .filter(|o| o.code != first.code || o.has_arg != first.has_arg)
                .collect();
            if !others.is_empty() {
                let mut message =
                    bytes(&[b"option '--", &shown, b"' is ambiguous; possibilities:"]);
                for o in std::iter::once(first).chain(others) {
                    message.extend_from_slice(format!(" '--{}'", o.name).as_bytes());
                }
                return Err(UsageError::getopt(message));
            }
            first
        }
    };
    match (found.has_arg, attached) {
        (true, Some(value)) => Ok((found.code, Some(value))),
        (true, None) => match parser.value() {
            Ok(value) => Ok((found.code, Some(value))),
            Err(_) => Err(UsageError::getopt(format!(
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

/// `holders [--json] [--] FILE`.
fn parse_holders(args: &[OsString]) -> Result<Parsed, UsageError> {
    match subcommand("holders", "file", args)? {
        Some((json, path)) => Ok(Parsed::Holders(HoldersOpts { json, path })),
        None => Ok(Parsed::HoldersHelp),
    }
}

/// `locks [--json] [--] DIR`.
fn parse_locks(args: &[OsString]) -> Result<Parsed, UsageError> {
    match subcommand("locks", "directory", args)? {
        Some((json, dir)) => Ok(Parsed::Locks(LocksOpts { json, dir })),
        None => Ok(Parsed::LocksHelp),
    }
}

/// A subcommand's `--json` flag and its one operand, options anywhere;
/// `None` for `--help`.
fn subcommand(
    name: &str,
    what: &str,
    args: &[OsString],
) -> Result<Option<(bool, OsString)>, UsageError> {
    let mut parser = parser(args);
    let mut json = false;
    let mut operand = None;
    while let Some(token) = next_token(&mut parser) {
        match token {
            Token::Long(long) if long == "json" => {
                if parser.optional_value().is_some() {
                    return Err(UsageError::getopt(format!(
                        "{name}: option '--json' doesn't allow an argument"
                    )));
                }
                json = true;
            }
            Token::Long(long) if long == "help" => return Ok(None),
            Token::Short('h') => return Ok(None),
            Token::Long(long) => {
                let mut shown = long.into_bytes();
                if let Some(value) = parser.optional_value() {
                    shown.push(b'=');
                    shown.extend_from_slice(value.as_bytes());
                }
                return Err(UsageError::getopt(bytes(&[
                    name.as_bytes(),
                    b": unrecognized option '--",
                    &shown,
                    b"'",
                ])));
            }
            Token::Short(c) => {
                return Err(UsageError::getopt(format!(
                    "{name}: invalid option -- '{c}'"
                )))
            }
            Token::Operand(value) if operand.is_none() => operand = Some(value),
            Token::Operand(_) => {
                return Err(UsageError::getopt(format!("{name}: takes one {what}")))
            }
        }
    }
    match operand {
        Some(operand) => Ok(Some((json, operand))),
        None => Err(UsageError::getopt(format!("{name}: requires a {what}"))),
    }
}

/// C `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A base-10 `int32_t` as util-linux `strtos32_or_err` reads it: leading
/// white space and a sign allowed, nothing after the digits.
fn parse_i32(arg: &OsStr, what: &str) -> Result<i32, UsageError> {
    let invalid = || UsageError::plain(bytes(&[what.as_bytes(), b": '", arg.as_bytes(), b"'"]));
    let range = || {
        UsageError::plain(bytes(&[
            what.as_bytes(),
            b": '",
            arg.as_bytes(),
            b"': Numerical result out of range",
        ]))
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
        UsageError::plain(bytes(&[b"invalid timeout value: '", arg.as_bytes(), b"'"]))
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
        String::from_utf8_lossy(&err(args).message.unwrap_or_default()).into_owned()
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
        assert_eq!(none.message.as_deref(), Some(&b"not enough arguments"[..]));
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
                format!("invalid timeout value: '{bad}'").into_bytes(),
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
        assert_eq!(
            message(&["holders", "--xml", "a"]),
            "holders: unrecognized option '--xml'"
        );
        assert_eq!(
            message(&["holders", "--json=1", "a"]),
            "holders: option '--json' doesn't allow an argument"
        );
        assert_eq!(
            message(&["holders", "-q", "a"]),
            "holders: invalid option -- 'q'"
        );
        // Only the first word selects the subcommand; `./holders` locks a file of that name.
        assert!(matches!(
            parse(&argv(&["./holders", "true"])),
            Ok(Parsed::Run(_))
        ));
    }

    #[test]
    fn locks_subcommand() {
        assert_eq!(
            parse(&argv(&["locks", "/d"])),
            Ok(Parsed::Locks(LocksOpts {
                json: false,
                dir: os("/d")
            }))
        );
        assert_eq!(
            parse(&argv(&["locks", "/d", "--json"])),
            Ok(Parsed::Locks(LocksOpts {
                json: true,
                dir: os("/d")
            }))
        );
        assert_eq!(parse(&argv(&["locks", "--help"])), Ok(Parsed::LocksHelp));
        assert_eq!(message(&["locks"]), "locks: requires a directory");
        assert_eq!(message(&["locks", "a", "b"]), "locks: takes one directory");
    }

    #[test]
    fn short_option_equals_is_part_of_the_argument() {
        // getopt has no `-w=1` form: the `=` belongs to the argument.
        assert_eq!(
            message(&["-w=1", "f", "true"]),
            "invalid timeout value: '=1'"
        );
        assert_eq!(message(&["-s=", "f", "true"]), "invalid option -- '='");
    }
}
