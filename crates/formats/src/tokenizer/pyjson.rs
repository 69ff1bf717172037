//! `tojson` as Hugging Face transformers defines it for chat templates: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, not
//! Jinja's HTML-safe compact one. Python's separators are `", "` and `": "` (`","` between
//! items once an indent is given), keys keep their order, non-ASCII stays as it is.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Deeper values are refused (serde_json reads no deeper; a namespace holding itself would
/// otherwise recurse forever).
pub const MAX_DEPTH: usize = 128;

/// How `json.dumps` was asked to write.
pub struct Dumps {
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(s)`: a newline and `s` per level.
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

impl Dumps {
    /// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
    /// sort_keys=False)`, positionally or by keyword. `max_indent` bounds an indent's width.
    pub fn from_args(args: &[Value], kwargs: &Kwargs, max_indent: usize) -> Result<Self, Error> {
        const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
        if args.len() > NAMES.len() {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                "tojson takes at most 4 arguments",
            ));
        }
        let mut got: [Option<Value>; 4] = Default::default();
        for (i, name) in NAMES.iter().enumerate() {
            let kw = kwargs.get::<Option<Value>>(name)?;
            got[i] = match (args.get(i), kw) {
                (Some(_), Some(_)) => {
                    return Err(invalid(format!("tojson got two values for {name}")))
                }
                (Some(v), None) => Some(v.clone()),
                (None, kw) => kw,
            };
        }
        kwargs.assert_all_used()?;
        let [ensure_ascii, indent, separators, sort_keys] = got;
        let indent = match indent {
            None => None,
            Some(v) if v.is_none() => None,
            // Python: an int (a bool is one) is that many spaces, a string is itself.
            Some(v) => Some(match v.kind() {
                ValueKind::Bool => " ".repeat(v.is_true() as usize),
                ValueKind::Number => {
                    let n = v
                        .as_i64()
                        .ok_or_else(|| invalid("tojson: indent must be an integer"))?;
                    let n = usize::try_from(n).unwrap_or(0);
                    if n > max_indent {
                        return Err(invalid(format!(
                            "tojson indent {n} is over the limit of {max_indent}"
                        )));
                    }
                    " ".repeat(n)
                }
                ValueKind::String => {
                    let s = v.as_str().unwrap_or("");
                    if s.len() > max_indent {
                        return Err(invalid("tojson: the indent string is too long"));
                    }
                    s.to_string()
                }
                _ => return Err(invalid("tojson: indent must be an integer or a string")),
            }),
        };
        let (item_sep, key_sep) = match separators {
            Some(s) if !s.is_none() => {
                let parts: Vec<Value> = s
                    .try_iter()
                    .map_err(|_| invalid("tojson: separators must be a pair of strings"))?
                    .collect();
                match parts.as_slice() {
                    [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                        let (a, b) = (a.as_str().unwrap_or(""), b.as_str().unwrap_or(""));
                        if a.len() > max_indent || b.len() > max_indent {
                            return Err(invalid("tojson: the separators are too long"));
                        }
                        (a.to_string(), b.to_string())
                    }
                    _ => return Err(invalid("tojson: separators must be a pair of strings")),
                }
            }
            _ if indent.is_some() => (",".to_string(), ": ".to_string()),
            _ => (", ".to_string(), ": ".to_string()),
        };
        Ok(Self {
            ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
            indent,
            item_sep,
            key_sep,
            sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        })
    }

    pub fn dumps(&self, value: &Value) -> Result<String, Error> {
        let mut out = String::new();
        self.write(&mut out, value, 0)?;
        Ok(out)
    }

    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, level: usize) -> Result<(), Error> {
        if level > MAX_DEPTH {
            return Err(invalid(format!(
                "tojson: the value nests deeper than {MAX_DEPTH}"
            )));
        }
        match v.kind() {
            ValueKind::Undefined => {
                return Err(invalid("tojson: Undefined is not JSON serializable"))
            }
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => number(out, v),
            ValueKind::String => self.string(out, v.as_str().unwrap_or("")),
            // A slice or a reversed list is a lazy iterable here and a list in Python.
            ValueKind::Seq | ValueKind::Iterable => {
                let items = v.try_iter().map_err(|e| invalid(format!("tojson: {e}")))?;
                self.seq(out, items, level)?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v
                    .try_iter()
                    .map_err(|e| invalid(format!("tojson: {e}")))?
                    .collect();
                let mut pairs = Vec::with_capacity(keys.len());
                for k in keys.drain(..) {
                    let item = v.get_item(&k)?;
                    pairs.push((key_text(&k)?, item));
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if pairs.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, (k, item)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.string(out, k);
                    out.push_str(&self.key_sep);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            _ => {
                return Err(invalid(format!(
                    "tojson: a {} is not JSON serializable",
                    v.kind()
                )))
            }
        }
        Ok(())
    }

    fn seq(
        &self,
        out: &mut String,
        items: impl Iterator<Item = Value>,
        level: usize,
    ) -> Result<(), Error> {
        let mut first = true;
        for item in items {
            out.push_str(if first { "[" } else { &self.item_sep });
            first = false;
            self.newline(out, level + 1);
            self.write(out, &item, level + 1)?;
        }
        if first {
            out.push_str("[]");
        } else {
            self.newline(out, level);
            out.push(']');
        }
        Ok(())
    }

    /// Python's `json` string escapes: `ensure_ascii` escapes everything outside `' '..='~'`
    /// (astral characters as surrogate pairs); otherwise only `"`, `\` and controls.
    fn string(&self, out: &mut String, s: &str) {
        use std::fmt::Write as _;
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
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{u:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A key as `json.dumps` writes it: strings as they are, numbers, booleans and None as
/// their JSON text; anything else is Python's TypeError.
fn key_text(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or("").to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number => {
            let mut s = String::new();
            number(&mut s, k);
            s
        }
        _ => {
            return Err(invalid(format!(
                "tojson: keys must be str, int, float, bool or None, not a {}",
                k.kind()
            )))
        }
    })
}

/// An int as its digits, a float as Python's `float.__repr__` (`1.0`, `1e-05`, `1e+16`,
/// `NaN`, `Infinity`).
fn number(out: &mut String, v: &Value) {
    if v.is_integer() {
        out.push_str(&v.to_string());
        return;
    }
    let f = match f64::try_from(v.clone()) {
        Ok(f) => f,
        Err(_) => {
            out.push_str(&v.to_string());
            return;
        }
    };
    out.push_str(&py_float(f));
}

pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest digits that read back, as Python's repr chooses them.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e300, "1.5e+300"),
            (123.456, "123.456"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(py_float(f), want);
        }
    }
}
