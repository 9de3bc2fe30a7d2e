//! The command line, read as util-linux flock(1) reads it: glibc
//! `getopt_long` with option processing stopping at the first operand, long
//! options abbreviable to an unambiguous prefix, and the same messages.

use std::ffi::{OsStr, OsString};
use std::num::IntErrorKind::{NegOverflow, PosOverflow};
use std::num::ParseIntError;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use flockguard::{FlockMode, RemoteFs};

/// The `-w` value, as flock(1) acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Less than a microsecond: the same as `-n`.
    Zero,
    Limit(Duration),
    /// Negative, infinite, NaN or beyond `time_t`: no timer takes it (exit 71).
    Unusable,
}

/// What the invocation asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Action {
    #[default]
    Help,
    Version,
    /// `--holders FILE`.
    Holders(OsString),
    /// `--locks DIR`.
    Locks(OsString),
    /// `FILE|DIR COMMAND...`, with `-c STRING` as `$SHELL -c STRING`.
    File(OsString, Vec<OsString>),
    /// `FD`: a descriptor inherited from the caller.
    Fd(i32),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Opts {
    /// The mode to lock in; `None` for `-u`.
    pub(crate) mode: Option<FlockMode>,
    pub(crate) nonblock: bool,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) conflict_exit_code: u8,
    pub(crate) close: bool,
    pub(crate) no_fork: bool,
    pub(crate) verbose: bool,
    pub(crate) remote_fs: RemoteFs,
    /// `--fcntl`, `--start`, `--length`: an OFD lock on `length` bytes
    /// (0: to the end) from `start`.
    pub(crate) fcntl: bool,
    pub(crate) start: u64,
    pub(crate) length: u64,
    pub(crate) json: bool,
    pub(crate) action: Action,
}

/// A usage error (exit 64). Bytes, since it quotes the command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// glibc getopt's message, if it prints one: after `argv[0]` as given,
    /// then `Try 'PROG --help' for more information.`
    Getopt(Option<Vec<u8>>),
    /// util-linux's own message, after the program name; whether the
    /// `Try` line follows.
    Plain(Vec<u8>, bool),
}

fn getopt(message: impl Into<Vec<u8>>) -> Usage {
    Usage::Getopt(Some(message.into()))
}

fn plain(message: impl Into<Vec<u8>>) -> Usage {
    Usage::Plain(message.into(), false)
}

fn try_help(message: &str) -> Usage {
    Usage::Plain(message.into(), true)
}

impl From<lexopt::Error> for Usage {
    fn from(err: lexopt::Error) -> Usage {
        match err {
            lexopt::Error::MissingValue { option: Some(o) } => getopt(match o.strip_prefix("--") {
                Some(long) => format!("option '--{}' requires an argument", candidates(long)[0]),
                None => format!("option requires an argument -- '{}'", &o[1..]),
            }),
            // getopt reads bytes: it names an unknown option by its first byte.
            lexopt::Error::UnexpectedOption(o) => {
                getopt([b"invalid option -- '", &o.as_bytes()[1..2], b"'"].concat())
            }
            other => getopt(other.to_string()),
        }
    }
}

/// flock(1)'s long options in the order of its table, which is the order
/// glibc lists the candidates of an ambiguous abbreviation in.
const FLOCK_LONG: &str = "shared exclusive unlock nonblocking nb timeout wait \
                          conflict-exit-code close no-fork verbose help version";

/// This command's own long options, then the long options that take a
/// value.
/// `fcntl`, `start` and `length` are util-linux 2.42's; flock(1) 2.38 has
/// neither them nor their abbreviations, so they match only spelled out and
/// an abbreviation means what it means to 2.38.
const OWN_LONG: &str = "allow-remote-fs holders locks json fcntl start length";
const VALUED: &str = "timeout wait conflict-exit-code start length holders locks";

/// The long options `given` may stand for, as glibc's `getopt_long` finds
/// them: the one spelled out, or flock(1)'s that it abbreviates. This
/// command's own options match only spelled out, so that every
/// abbreviation means what it means to flock(1).
fn candidates(given: &str) -> Vec<&'static str> {
    let mut names = OWN_LONG.split(' ').chain(FLOCK_LONG.split(' '));
    let prefixed = FLOCK_LONG.split(' ').filter(|n| n.starts_with(given));
    match names.find(|name| *name == given) {
        Some(name) => vec![name],
        None => prefixed.collect(),
    }
}

/// The full name of long option `--given[=VALUE]`, or glibc's message.
/// lexopt reads an option's name as UTF-8, lossily; so is its value here.
fn long(given: &str, parser: &mut lexopt::Parser) -> Result<&'static str, Usage> {
    let found = candidates(given);
    if let [name] = found[..] {
        let ok = VALUED.split(' ').any(|v| v == name) || parser.optional_value().is_none();
        let message = format!("option '--{name}' doesn't allow an argument");
        return if ok { Ok(name) } else { Err(getopt(message)) };
    }
    let value = parser.optional_value();
    let value = value.map_or(String::new(), |v| format!("={}", v.to_string_lossy()));
    let shown = format!("'--{given}{value}'");
    // glibc leaves out a candidate that is the same option as the first;
    // among flock(1)'s, only `--nb` after `--nonblocking`.
    let same = |n: &&&str| found[0] == "nonblocking" && **n == "nb";
    let list = found.iter().filter(|n| !same(n));
    let list: String = list.map(|n| format!(" '--{n}'")).collect();
    Err(getopt(match list.is_empty() {
        true => format!("unrecognized option {shown}"),
        false => format!("option {shown} is ambiguous; possibilities:{list}"),
    }))
}

/// Reads the arguments after the program name.
pub(crate) fn parse(args: Vec<OsString>) -> Result<Opts, Usage> {
    use lexopt::prelude::*;
    if args.is_empty() {
        return Err(try_help("not enough arguments"));
    }
    let mut opts = Opts {
        mode: Some(FlockMode::Exclusive),
        conflict_exit_code: 1,
        ..Opts::default()
    };
    let (mut report, mut operands) = (None, Vec::new());
    let mut parser = lexopt::Parser::from_args(args);
    // getopt reads `-w=1` as `-w` with the value `=1`.
    parser.set_short_equals(false);
    while let Some(arg) = parser.next()? {
        let arg = match arg {
            // Owned, since `given` borrows the parser.
            #[allow(clippy::unnecessary_to_owned)]
            Long(given) => Long(long(&given.to_owned(), &mut parser)?),
            Short(c) => Short(c),
            Value(value) => Value(value),
        };
        match arg {
            Short('s') | Long("shared") => opts.mode = Some(FlockMode::Shared),
            Short('x' | 'e') | Long("exclusive") => opts.mode = Some(FlockMode::Exclusive),
            Short('u') | Long("unlock") => opts.mode = None,
            Short('n') | Long("nonblocking" | "nb") => opts.nonblock = true,
            Short('o') | Long("close") => opts.close = true,
            Short('F') | Long("no-fork") => opts.no_fork = true,
            Long("verbose") => opts.verbose = true,
            Long("fcntl") => opts.fcntl = true,
            Long("start") => (opts.fcntl, opts.start) = (true, size(parser.value()?, START)?),
            Long("length") => (opts.fcntl, opts.length) = (true, size(parser.value()?, LENGTH)?),
            Short('w') | Long("timeout" | "wait") => opts.timeout = Some(timeout(parser.value()?)?),
            Short('E') | Long("conflict-exit-code") => {
                let code = int32(&parser.value()?, "invalid exit code")?;
                let range = || plain("exit code out of range (expected 0 to 255)");
                opts.conflict_exit_code = u8::try_from(code).map_err(|_| range())?;
            }
            Short('h') | Long("help") => return Ok(Opts::default()),
            Short('V') | Long("version") => {
                return Ok(Opts {
                    action: Action::Version,
                    ..opts
                })
            }
            Long("allow-remote-fs") => opts.remote_fs = RemoteFs::Allow,
            Long("json") => opts.json = true,
            Long("holders") => report = Some(Action::Holders(parser.value()?)),
            Long("locks") => report = Some(Action::Locks(parser.value()?)),
            // In flock(1)'s option string, so getopt prints no message.
            Short('?') => return Err(Usage::Getopt(None)),
            Value(first) => operands.extend(std::iter::once(first).chain(parser.raw_args()?)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if opts.no_fork && opts.close {
        return Err(plain("the --no-fork and --close options are incompatible"));
    }
    let action = match (report, &operands[..]) {
        (Some(report), []) => report,
        (Some(_), _) => return Err(try_help("--holders and --locks take no operand")),
        (None, [path, flag, rest @ ..]) if flag == "-c" || flag == "--command" => {
            let [line] = rest else {
                let what = b" requires exactly one command argument";
                return Err(plain([flag.as_bytes(), what].concat()));
            };
            let shell = std::env::var_os("SHELL").filter(|s| !s.is_empty());
            let shell = shell.unwrap_or_else(|| "/bin/sh".into());
            Action::File(path.clone(), vec![shell, "-c".into(), line.clone()])
        }
        (None, [path, argv @ ..]) if !argv.is_empty() => Action::File(path.clone(), argv.to_vec()),
        (None, [fd]) => Action::Fd(int32(fd, "bad file descriptor")?),
        (None, _) => return Err(plain("requires file descriptor, file or directory")),
    };
    if opts.json && !matches!(action, Action::Holders(_) | Action::Locks(_)) {
        return Err(try_help("--json applies to --holders and --locks only"));
    }
    Ok(Opts { action, ..opts })
}

/// The white space C's `isspace` accepts in the C locale.
const C_SPACE: [char; 6] = [' ', '\t', '\n', '\x0b', '\x0c', '\r'];

/// util-linux's messages for a number it cannot read: `WHAT: 'WORD'`,
/// then `tail` (empty, or [`RANGE`] for ERANGE).
fn bad_number(what: &str, word: &OsStr, tail: &str) -> Usage {
    let quoted = [b"'", word.as_bytes(), b"'"].concat();
    let message = [what.as_bytes(), b": ", &quoted, tail.as_bytes()];
    plain(message.concat())
}

const RANGE: &str = ": Numerical result out of range";
const INVALID: &str = ": Invalid argument";
const LENGTH: &str = "length of lock range";
const START: &str = "start offset";

/// A number as util-linux's `strtos32_or_err` reads it: leading white
/// space, a sign, decimal digits and nothing after; ERANGE outside `i32`.
fn int32(word: &OsStr, what: &str) -> Result<i32, Usage> {
    let text = word.to_str().unwrap_or("?").trim_start_matches(C_SPACE);
    let range = |e: ParseIntError| matches!(e.kind(), PosOverflow | NegOverflow);
    let tail = |e| [RANGE, ""][usize::from(!range(e))];
    text.parse().map_err(|e| bad_number(what, word, tail(e)))
}

/// A `--start` or `--length` value as util-linux's `strtosize_or_err`
/// reads it: after white space, `strtoumax(3)` in base 0 (`0x10` is 16,
/// `010` is 8; no sign but `+`), then nothing or a unit `K`, `M`, `G`,
/// `T`, `P`, `E`, `Z` or `Y` (either case), alone or with `iB` for powers
/// of 1024, or with `B` for powers of 1000. A fraction before the unit
/// (`1.5K`) is refused. `what` names the value.
fn size(word: OsString, what: &str) -> Result<u64, Usage> {
    let fail = |tail| bad_number(&format!("invalid as {what}"), &word, tail);
    let text = word.as_bytes();
    let text = &text[text
        .iter()
        .take_while(|c| C_SPACE.contains(&char::from(**c)))
        .count()..];
    let text = text.strip_prefix(b"+").unwrap_or(text);
    let hex = (text.len() > 2 && text[..2].eq_ignore_ascii_case(b"0x")).then(|| &text[2..]);
    let (radix, digits) = match hex.filter(|h| h[0].is_ascii_hexdigit()) {
        Some(hex) => (16, hex),
        None => (if text.starts_with(b"0") { 8 } else { 10 }, text),
    };
    let end = digits
        .iter()
        .take_while(|c| char::from(**c).is_digit(radix))
        .count();
    let number = std::str::from_utf8(&digits[..end]).unwrap_or_default();
    // No digits (a `-` included) is EINVAL; past u64, ERANGE.
    let x = u64::from_str_radix(number, radix)
        .map_err(|_| fail([RANGE, INVALID][usize::from(end == 0)]))?;
    let (base, letter) = match &digits[end..] {
        [] => (1, b'K'),
        [c] | [c, b'i', b'B' | b'b'] => (1024, *c),
        [c, b'B' | b'b'] => (1000, *c),
        _ => (0, 0),
    };
    let power = b"KMGTPEZY"
        .iter()
        .position(|c| *c == letter.to_ascii_uppercase());
    let power = power.filter(|_| base > 0).ok_or_else(|| fail(INVALID))?;
    let scaled = (0..=power).try_fold(x, |v, _| v.checked_mul(base));
    scaled.ok_or_else(|| fail(RANGE))
}

/// The `-w` value as util-linux reads it: `strtold(3)` over the whole word,
/// then seconds and microseconds, each truncated toward zero.
///
/// Beyond the decimal numbers anyone writes, flock(1)'s outcome depends on
/// C's reading in these cases, which are why this is not Rust's `parse`:
/// - leading white space is skipped: `" 2"` waits 2 s;
/// - hexadecimal floats are numbers: `0x10` waits 16 s, `0x1p-6` 1/64 s;
/// - `nan(CHARS)` is NaN, which no timer takes (exit 71), as `inf` and
///   `nan` are;
/// - a magnitude outside `long double`'s range, `1e5000` or `1e-5000`, is
///   ERANGE (exit 64, "Numerical result out of range"), where an `f64`
///   would be infinite (exit 71) or zero (`-n`). The test is on the
///   logarithm, so it can differ from C within rounding of the limits, for
///   inexact hexadecimal subnormals and for mantissas of over 300 digits.
///
/// util-linux keeps the value in a `double` and multiplies its fraction by
/// 10^6 in `long double`; so does this, but for the last bits of that
/// product: a wait can differ from flock(1)'s by a microsecond where the
/// product lies within 2^-64 below a whole number, and a decimal within
/// rounding of a tie between two `double`s can round the other way.
fn timeout(word: OsString) -> Result<Timeout, Usage> {
    let invalid = |tail| bad_number("invalid timeout value", &word, tail);
    let text = word.to_str().ok_or_else(|| invalid(""))?;
    let text = text.trim_start_matches(C_SPACE);
    let sign = if text.starts_with('-') { -1.0 } else { 1.0 };
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let body = body.to_ascii_lowercase();
    let payload = body.strip_prefix("nan(").and_then(|p| p.strip_suffix(')'));
    let nan = payload.is_some_and(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if nan || ["inf", "infinity", "nan"].contains(&body.as_str()) {
        return Ok(Timeout::Unusable);
    }
    // The digits' radix, the exponent's base, its steps per fraction digit,
    // and the logarithms of long double's smallest normal and largest values.
    let (radix, base, step, number, marker, limits) = match body.strip_prefix("0x") {
        Some(hex) => (16, 2.0, 4.0, hex, 'p', (-16445.0, 16384.0)),
        None => (10, 10.0, 1.0, &body[..], 'e', (-4931.47338, 4932.07544)),
    };
    let (mantissa, exp) = number.split_once(marker).unwrap_or((number, "0"));
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = [int, frac].concat();
    let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    let all = |text: &str, radix| !text.is_empty() && text.chars().all(|c| c.is_digit(radix));
    if !all(&digits, radix) || !all(exp_digits, 10) {
        return Err(invalid(""));
    }
    let digit = |m: f64, c: char| m * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0));
    let m = digits.chars().fold(0.0, digit);
    let exp = exp.parse::<f64>().unwrap_or(0.0) - step * frac.len() as f64;
    let log = m.log(base) + exp;
    if log >= limits.1 || (m != 0.0 && log < limits.0) {
        return Err(invalid(RANGE));
    }
    // Rust reads C's decimal syntax, rounded as strtold then `double` round.
    let value = match radix {
        16 => m * 2f64.powi(exp.clamp(-1100.0, 1100.0) as i32),
        _ => body.parse().unwrap_or(0.0),
    };
    let (secs, frac) = (sign * value.trunc(), sign * (value - value.trunc()));
    // f64's product can round up to a whole microsecond that the exact
    // product stays below; `mul_add` rounds once, after the subtraction.
    let micros = (frac * 1e6).trunc();
    let below = micros > 0.0 && frac.mul_add(1e6, -micros) < 0.0;
    // time_t is 64 bits; a timer refuses a negative part.
    Ok(match (secs, micros - f64::from(u8::from(below))) {
        _ if value >= 2f64.powi(63) => Timeout::Unusable,
        (s, m) if s == 0.0 && m == 0.0 => Timeout::Zero,
        (s, m) if s < 0.0 || m < 0.0 => Timeout::Unusable,
        (s, m) => Timeout::Limit(Duration::new(s as u64, m as u32 * 1000)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_length_read_sizes_and_imply_fcntl() {
        let opts = parse_words(&["--start", "1K", "--length=2MiB", "f", "true"]).unwrap();
        assert!(opts.fcntl);
        assert_eq!((opts.start, opts.length), (1024, 2 << 20));
        let opts = parse_words(&["--start", "3KB", "f", "true"]).unwrap();
        assert_eq!((opts.fcntl, opts.start, opts.length), (true, 3000, 0));
        let opts = parse_words(&["--fcntl", "f", "true"]).unwrap();
        assert_eq!((opts.fcntl, opts.start, opts.length), (true, 0, 0));
        assert!(!parse_words(&["f", "true"]).unwrap().fcntl);
        // The values util-linux 2.42.2's ul_parse_size gives for these.
        for (word, want) in [
            ("0", 0),
            ("2MiB", 2 << 20),
            ("1k", 1024),
            ("1kib", 1024),
            ("1Kb", 1000),
            ("1EB", 1_000_000_000_000_000_000),
            ("15E", 15 << 60),
            ("0Y", 0),
            ("0x10", 16),
            ("0x1G", 1 << 30),
            ("010", 8),
            (" +7", 7),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(size(word.into(), START), Ok(want), "{word:?}");
        }
        for word in [
            "x", "", "-1", " -1", "1KIB", "1 K", "1B", "1iB", "0x", "08", "1.5K",
        ] {
            let want = format!("invalid as start offset: '{word}': Invalid argument");
            assert_eq!(size(word.into(), START), Err(plain(want)), "{word:?}");
        }
        for word in ["1Z", "16E", "18446744073709551616", "99999999999999999999Q"] {
            let want = format!("invalid as length of lock range: '{word}'{RANGE}");
            assert_eq!(size(word.into(), LENGTH), Err(plain(want)), "{word:?}");
        }
        assert_eq!(
            message(&["--start"]),
            "option '--start' requires an argument"
        );
    }

    fn parse_words(words: &[&str]) -> Result<Opts, Usage> {
        parse(words.iter().map(OsString::from).collect())
    }

    fn message(words: &[&str]) -> String {
        match parse_words(words) {
            Err(Usage::Getopt(Some(m)) | Usage::Plain(m, _)) => String::from_utf8(m).unwrap(),
            other => panic!("{words:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn timeout_values_as_strtold_reads_them() {
        let limit = |ms| Ok(Timeout::Limit(Duration::from_millis(ms)));
        for (word, want) in [
            ("1.5", limit(1500)),
            (" \t2", limit(2000)),
            ("+1", limit(1000)),
            (".5", limit(500)),
            ("1.", limit(1000)),
            ("2e1", limit(20_000)),
            ("1.e3", limit(1_000_000)),
            ("0x10", limit(16_000)),
            ("0X1.8P1", limit(3000)),
            ("0x.8", limit(500)),
            ("0x1p-6", Ok(Timeout::Limit(Duration::from_micros(15_625)))),
            ("0.000001", Ok(Timeout::Zero)),
        ] {
            assert_eq!(timeout(word.into()), want, "{word:?}");
        }
        // The timers flock(1) 2.38.1 arms for these, read with strace: the
        // double nearest 0.3 is below it, and so on.
        for (word, secs, micros) in [
            ("0.3", 0, 299_999),
            ("0.000002", 0, 1),
            ("1.000001", 1, 0),
            ("2.5", 2, 500_000),
            ("0x1p-6", 0, 15_625),
            ("0.7", 0, 699_999),
            ("1e-5", 0, 10),
            ("123.456789", 123, 456_789),
            ("0.1", 0, 100_000),
        ] {
            let want = Ok(Timeout::Limit(Duration::new(secs, micros * 1000)));
            assert_eq!(timeout(word.into()), want, "{word:?}");
        }
        for (word, want) in [
            ("0", Ok(Timeout::Zero)),
            ("-0", Ok(Timeout::Zero)),
            ("1e-7", Ok(Timeout::Zero)),
            ("-1e-7", Ok(Timeout::Zero)),
            ("1e-400", Ok(Timeout::Zero)),
            ("0e5000", Ok(Timeout::Zero)),
            ("0x1p-16445", Ok(Timeout::Zero)),
            ("-1", Ok(Timeout::Unusable)),
            ("-0.5", Ok(Timeout::Unusable)),
            ("inf", Ok(Timeout::Unusable)),
            ("-Infinity", Ok(Timeout::Unusable)),
            ("nan", Ok(Timeout::Unusable)),
            ("NAN(a_1)", Ok(Timeout::Unusable)),
            ("1e19", Ok(Timeout::Unusable)),
            ("1e400", Ok(Timeout::Unusable)),
            ("1.18e4932", Ok(Timeout::Unusable)),
            ("0x1p16383", Ok(Timeout::Unusable)),
        ] {
            assert_eq!(timeout(word.into()), want, "{word:?}");
        }
        for bad in [
            "", "abc", "2 ", "1e", ".", ".e1", "0x", "0x1p", "1,5", "- 1", "+-1", "nan(-)",
        ] {
            let want = format!("invalid timeout value: '{bad}'").into_bytes();
            assert_eq!(
                timeout(bad.into()),
                Err(Usage::Plain(want, false)),
                "{bad:?}"
            );
        }
        for range in [
            "1e5000",
            "-1e5000",
            "1e-5000",
            "1.19e4932",
            "3.3e-4932",
            "0x1p16384",
            "0x1p-16446",
        ] {
            let want = format!("invalid timeout value: '{range}'{RANGE}").into_bytes();
            assert_eq!(
                timeout(range.into()),
                Err(Usage::Plain(want, false)),
                "{range:?}"
            );
        }
    }

    #[test]
    fn long_options_are_flock1s_abbreviations_and_this_commands_full_names() {
        let opts = parse_words(&["--non", "--time=2", "--sh", "--verb", "9"]).unwrap();
        assert!(opts.nonblock && opts.verbose);
        assert_eq!(opts.mode, Some(FlockMode::Shared));
        assert_eq!(opts.timeout, Some(Timeout::Limit(Duration::from_secs(2))));
        assert_eq!(parse_words(&["--h"]).unwrap().action, Action::Help);
        let opts = parse_words(&["--json", "--holders=f"]).unwrap();
        assert_eq!(
            (opts.json, opts.action),
            (true, Action::Holders("f".into()))
        );
        let opts = parse_words(&["--locks", "d", "--json"]).unwrap();
        assert_eq!((opts.json, opts.action), (true, Action::Locks("d".into())));
        assert_eq!(message(&["--hold", "f"]), "unrecognized option '--hold'");
        assert_eq!(message(&["--lock=d"]), "unrecognized option '--lock=d'");
        assert_eq!(message(&["--allow", "9"]), "unrecognized option '--allow'");
        assert_eq!(
            message(&["--holders"]),
            "option '--holders' requires an argument"
        );
        assert_eq!(
            message(&["--json=1", "--holders", "f"]),
            "option '--json' doesn't allow an argument"
        );
        assert_eq!(
            message(&["--holders", "f", "g"]),
            "--holders and --locks take no operand"
        );
        assert_eq!(
            message(&["--json", "f", "true"]),
            "--json applies to --holders and --locks only"
        );
        assert_eq!(
            message(&["--n", "f", "true"]),
            "option '--n' is ambiguous; possibilities: '--nonblocking' '--no-fork'"
        );
    }

    #[test]
    fn operands_after_the_first_are_the_command_whatever_they_look_like() {
        let opts = parse_words(&["holders", "--locks", "-n", "x"]).unwrap();
        assert!(!opts.nonblock);
        let argv = ["--locks", "-n", "x"].map(OsString::from).to_vec();
        assert_eq!(opts.action, Action::File("holders".into(), argv));
        let opts = parse_words(&["--", "--holders", "true"]).unwrap();
        assert_eq!(
            opts.action,
            Action::File("--holders".into(), vec!["true".into()])
        );
    }
}
