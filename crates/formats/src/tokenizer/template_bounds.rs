//! The builtin filters and methods whose arguments alone decide how much they allocate (an
//! indent, a printf width, a batch size), bounded. Fuel counts each call as one instruction
//! and the output limit sees the result only after it was built, so without these a short
//! template could ask for gigabytes in one call (or make Rust's formatter panic: precisions
//! stop at 65535).

use minijinja::value::{Kwargs, Rest, StringInput, Value};
use minijinja::{Environment, Error, ErrorKind, State};

/// Widths, indents and counts real templates use are a few columns or items.
pub const MAX_WIDTH: usize = 256;

/// Puts the bounded versions in place of minijinja's and pycompat's.
pub(super) fn install(env: &mut Environment<'static>) {
    env.add_filter("indent", indent);
    env.add_filter("tojson", tojson);
    env.add_filter("format", format);
    env.add_filter("batch", batch);
    env.add_filter("slice", slice);
    // Templates call str.strip(), .startswith(), dict.items() ... as Python would.
    env.set_unknown_method_callback(|state, value, method, args| {
        if method == "format" {
            if let Some(s) = value.as_str() {
                check_format(s, Style::StrFormat)?;
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
}

fn too_large(what: &str, n: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} {n} is over the limit of {MAX_WIDTH}"),
    )
}

fn check(what: &str, n: usize) -> Result<(), Error> {
    if n > MAX_WIDTH {
        return Err(too_large(what, n));
    }
    Ok(())
}

fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let asked = match width {
        Some(w) => Some(w),
        None => kwargs.peek::<Option<usize>>("width")?,
    };
    check("indent width", asked.unwrap_or(0))?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// transformers' `tojson` (Python's `json.dumps`, [`super::pyjson`]), its indent bounded.
fn tojson(value: &Value, mut args: Rest<Value>) -> Result<Value, Error> {
    let kwargs = match args.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(args.pop().unwrap_or_default())?,
        _ => Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
    };
    let dumps = super::pyjson::Dumps::from_args(&args, &kwargs, MAX_WIDTH)?;
    Ok(Value::from(dumps.dumps(value)?))
}

fn format(state: &State, format_str: &Value, args: Rest<Value>) -> Result<Value, Error> {
    if let Some(s) = format_str.as_str() {
        check_format(s, Style::Printf)?;
    }
    minijinja::filters::format(state, format_str, args)
}

fn batch(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, Error> {
    check("batch size", count)?;
    minijinja::filters::batch(state, value, count, fill)
}

fn slice(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, Error> {
    check("slice count", count)?;
    minijinja::filters::slice(state, value, count, fill)
}

/// Which of Python's two format syntaxes a string is read with.
#[derive(Clone, Copy, PartialEq)]
pub enum Style {
    /// `%-10.3f`, `%(key)s`: the `format` filter.
    Printf,
    /// `{0:>10.3}`, `{name}`: `str.format()`.
    StrFormat,
}

/// Every width and precision the format string asks for is within [`MAX_WIDTH`]; widths
/// taken from the arguments (`%*d`, `{:{w}}`) are refused, and so are keys and field names
/// that are not ASCII, which minijinja's parser slices inside a character (a panic).
pub fn check_format(fmt: &str, style: Style) -> Result<(), Error> {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (b[i], style) {
            (b'%', Style::Printf) => {
                i += 1;
                if b.get(i) == Some(&b'(') {
                    let start = i;
                    while i < b.len() && b[i] != b')' {
                        i += 1;
                    }
                    ascii(&b[start..i], "format key")?;
                    i = (i + 1).min(b.len());
                }
                while matches!(b.get(i), Some(b'#' | b'0' | b'-' | b' ' | b'+')) {
                    i += 1;
                }
                i = number(b, i, "format width")?;
                if b.get(i) == Some(&b'.') {
                    i = number(b, i + 1, "format precision")?;
                }
            }
            (b'{', Style::StrFormat) => {
                i += 1;
                // The field name, then the spec after the first ':' up to the closing brace.
                let start = i;
                while i < b.len() && !matches!(b[i], b':' | b'}' | b'{') {
                    i += 1;
                }
                ascii(&b[start..i], "format field name")?;
                if b.get(i) == Some(&b':') {
                    i += 1;
                    while i < b.len() && b[i] != b'}' {
                        match b[i] {
                            b'{' => return Err(too_large("format width from an argument", "{}")),
                            b'0'..=b'9' => i = number(b, i, "format width")?,
                            _ => i += 1,
                        }
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn ascii(part: &[u8], what: &str) -> Result<(), Error> {
    if !part.is_ascii() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what} {:?} is not ASCII", String::from_utf8_lossy(part)),
        ));
    }
    Ok(())
}

/// Reads the digits at `i` (a `*` is refused), checks them, returns where they end.
fn number(b: &[u8], mut i: usize, what: &str) -> Result<usize, Error> {
    if b.get(i) == Some(&b'*') {
        return Err(too_large(what, "*"));
    }
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let digits = b
        .get(start..i)
        .and_then(|d| std::str::from_utf8(d).ok())
        .unwrap_or("");
    if !digits.is_empty() {
        match digits.parse::<usize>() {
            Ok(n) => check(what, n)?,
            Err(_) => return Err(too_large(what, digits)),
        }
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::{check_format, Style};

    #[test]
    fn format_widths_are_bounded() {
        let ok = |style, fmts: &[&str]| {
            for f in fmts {
                assert!(check_format(f, style).is_ok(), "{f}");
            }
        };
        let bad = |style, fmts: &[&str]| {
            for f in fmts {
                assert!(check_format(f, style).is_err(), "{f}");
            }
        };
        ok(
            Style::Printf,
            &[
                "%s",
                "%-10.3f|%05d|%(name)s|%%",
                r#"{"n": 99999, "s": "%s"}"#,
            ],
        );
        ok(
            Style::StrFormat,
            &[
                "{}",
                "{0:>10}",
                "{:.3f}",
                "2024-12-03 {x}",
                "{:é>5}",
                "%999s",
            ],
        );
        bad(
            Style::Printf,
            &["%999999999s", "%.999999999f", "%*d", "%.70000f"],
        );
        bad(Style::StrFormat, &["{:>999999999}", "{:.70000}", "{:{w}}"]);
        // Found by fuzz/chat_template (crash-35e6a6cd): an unclosed `%(key` read past the end.
        for cut in ["%(abc", "%(", "%", "%5.", "{", "{:", "{:5", "%(a)", "{0:{"] {
            let _ = (
                check_format(cut, Style::Printf),
                check_format(cut, Style::StrFormat),
            );
        }
        // Found by fuzz/chat_template (crash-b632a0e7): minijinja slices a non-ASCII key or
        // index one byte at a time, inside the character.
        bad(Style::Printf, &["%(é)s", "%s-%((({ \u{fffd}((d"]);
        bad(Style::StrFormat, &["{0[é]}"]);
    }
}
