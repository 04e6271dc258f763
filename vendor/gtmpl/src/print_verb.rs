use std::char;
use std::fmt;

use crate::error::PrintError;
use crate::printf::{params_to_chars, FormatParams};

use gtmpl_value::Value;

/// Print a verb like golang's printf.
pub fn print(p: &FormatParams, typ: char, val: &Value) -> Result<String, PrintError> {
    match *val {
        Value::Number(ref n) if n.as_u64().is_some() => {
            let u = n.as_u64().unwrap();
            Ok(match typ {
                'b' => printf_b(p, u),
                'd' | 'v' => printf_generic(p, u),
                'o' => printf_o(p, u),
                'c' => {
                    let c = char::from_u32(u as u32).ok_or(PrintError::NotAValidChar(u as i128))?;
                    printf_generic(p, c)
                }
                'q' => {
                    let c = char::from_u32(u as u32).ok_or(PrintError::NotAValidChar(u as i128))?;
                    printf_generic(p, format!("'{}'", escape_char(c)))
                }
                'x' => printf_x(p, u),
                'X' => printf_xx(p, u),
                'U' => printf_generic(p, format!("U+{:X}", u)),
                _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
            })
        }
        Value::Number(ref n) if n.as_i64().is_some() => {
            let i = n.as_i64().unwrap();
            Ok(match typ {
                'b' => printf_b(p, i),
                'd' => printf_generic(p, i),
                'o' => printf_o(p, i),
                'c' => {
                    let c = char::from_u32(i as u32).ok_or(PrintError::NotAValidChar(i as i128))?;
                    printf_generic(p, c)
                }
                'q' => {
                    let c = char::from_u32(i as u32).ok_or(PrintError::NotAValidChar(i as i128))?;
                    printf_generic(p, format!("'{}'", escape_char(c)))
                }
                'x' => printf_x(p, i),
                'X' => printf_xx(p, i),
                'U' => printf_generic(p, format!("U+{:X}", i)),
                _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
            })
        }
        Value::Number(ref n) if n.as_f64().is_some() => {
            let f = n.as_f64().unwrap();
            Ok(match typ {
                'e' => printf_e(p, f),
                'E' => printf_ee(p, f),
                'f' | 'F' => printf_generic(p, f),
                // runner patch: `%v` (and the shortest `%g`) as Go writes a float64.
                'v' | 'g' if p.precision.is_none() => printf_generic(p, go_float(f)),
                _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
            })
        }
        // runner patch: nil prints as Go's `%v` prints it.
        Value::Nil | Value::NoValue if typ == 'v' => Ok(printf_generic(p, "<nil>")),
        Value::Bool(ref b) => Ok(match typ {
            'v' | 't' => printf_generic(p, b),
            _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
        }),
        Value::String(ref s) => Ok(match typ {
            // runner patch: Go pads a string with zeros too (`%05s`).
            's' | 'v' if p.zero && !p.minus && p.width > s.chars().count() => {
                let shown: String = match p.precision {
                    Some(pr) => s.chars().take(pr).collect(),
                    None => s.clone(),
                };
                let pad = p.width.saturating_sub(shown.chars().count());
                format!("{}{}", "0".repeat(pad), shown)
            }
            's' | 'v' => printf_generic(p, s),
            'x' => printf_x(p, Hexer::from(s.as_str())),
            'X' => printf_xx(p, Hexer::from(s.as_str())),
            // runner patch: quoted and escaped as Go's strconv.Quote.
            'q' => printf_generic(p, go_quote(s)),
            _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
        }),
        Value::Array(_) => Ok(match typ {
            'v' => printf_generic(p, go_value(val)),
            _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
        }),
        // runner patch: as `{{.}}` prints it (sorted keys, Go's forms).
        Value::Map(_) => Ok(match typ {
            'v' => printf_generic(p, go_value(val)),
            _ => return Err(PrintError::UnableToFormat(val.clone(), typ)),
        }),
        _ => Err(PrintError::UnableToFormat(val.clone(), typ)),
    }
}

fn printf_b<B: fmt::Binary>(p: &FormatParams, u: B) -> String {
    match params_to_chars(p) {
        ('#', '_', '+', '_', _) => format!("{:+#width$b}", u, width = p.width),
        ('_', '_', '+', '_', _) => format!("{:+width$b}", u, width = p.width),
        ('#', '_', '_', '_', _) => format!("{:#width$b}", u, width = p.width),
        ('#', '0', '+', '_', _) => format!("{:+#0width$b}", u, width = p.width),
        ('_', '0', '+', '_', _) => format!("{:+0width$b}", u, width = p.width),
        ('#', '0', '_', '_', _) => format!("{:#0width$b}", u, width = p.width),
        ('#', '_', '+', '-', _) => format!("{:<+#width$b}", u, width = p.width),
        ('_', '_', '+', '-', _) => format!("{:<+width$b}", u, width = p.width),
        ('#', '_', '_', '-', _) => format!("{:<#width$b}", u, width = p.width),
        ('#', '0', '+', '-', _) => format!("{:<+#0width$b}", u, width = p.width),
        ('_', '0', '+', '-', _) => format!("{:<+0width$b}", u, width = p.width),
        ('#', '0', '_', '-', _) => format!("{:<#0width$b}", u, width = p.width),
        (_, _, _, _, _) => format!("{:width$b}", u, width = p.width),
    }
}

fn printf_o<B: fmt::Octal>(p: &FormatParams, u: B) -> String {
    match params_to_chars(p) {
        ('#', '_', '+', '_', _) => format!("{:+#width$o}", u, width = p.width),
        ('_', '_', '+', '_', _) => format!("{:+width$o}", u, width = p.width),
        ('#', '_', '_', '_', _) => format!("{:#width$o}", u, width = p.width),
        ('#', '0', '+', '_', _) => format!("{:+#0width$o}", u, width = p.width),
        ('_', '0', '+', '_', _) => format!("{:+0width$o}", u, width = p.width),
        ('#', '0', '_', '_', _) => format!("{:#0width$o}", u, width = p.width),
        ('#', '_', '+', '-', _) => format!("{:<+#width$o}", u, width = p.width),
        ('_', '_', '+', '-', _) => format!("{:<+width$o}", u, width = p.width),
        ('#', '_', '_', '-', _) => format!("{:<#width$o}", u, width = p.width),
        ('#', '0', '+', '-', _) => format!("{:<+#0width$o}", u, width = p.width),
        ('_', '0', '+', '-', _) => format!("{:<+0width$o}", u, width = p.width),
        ('#', '0', '_', '-', _) => format!("{:<#0width$o}", u, width = p.width),
        (_, _, _, _, _) => format!("{:width$o}", u, width = p.width),
    }
}

fn printf_x<B: fmt::LowerHex>(p: &FormatParams, u: B) -> String {
    match params_to_chars(p) {
        ('#', '_', '+', '_', _) => format!("{:+#width$x}", u, width = p.width),
        ('_', '_', '+', '_', _) => format!("{:+width$x}", u, width = p.width),
        ('#', '_', '_', '_', _) => format!("{:#width$x}", u, width = p.width),
        ('#', '0', '+', '_', _) => format!("{:+#0width$x}", u, width = p.width),
        ('_', '0', '+', '_', _) => format!("{:+0width$x}", u, width = p.width),
        ('#', '0', '_', '_', _) => format!("{:#0width$x}", u, width = p.width),
        ('#', '_', '+', '-', _) => format!("{:<+#width$x}", u, width = p.width),
        ('_', '_', '+', '-', _) => format!("{:<+width$x}", u, width = p.width),
        ('#', '_', '_', '-', _) => format!("{:<#width$x}", u, width = p.width),
        ('#', '0', '+', '-', _) => format!("{:<+#0width$x}", u, width = p.width),
        ('_', '0', '+', '-', _) => format!("{:<+0width$x}", u, width = p.width),
        ('#', '0', '_', '-', _) => format!("{:<#0width$x}", u, width = p.width),
        (_, _, _, _, _) => format!("{:width$x}", u, width = p.width),
    }
}

fn printf_xx<B: fmt::UpperHex>(p: &FormatParams, u: B) -> String {
    match params_to_chars(p) {
        ('#', '_', '+', '_', _) => format!("{:+#width$X}", u, width = p.width),
        ('_', '_', '+', '_', _) => format!("{:+width$X}", u, width = p.width),
        ('#', '_', '_', '_', _) => format!("{:#width$X}", u, width = p.width),
        ('#', '0', '+', '_', _) => format!("{:+#0width$X}", u, width = p.width),
        ('_', '0', '+', '_', _) => format!("{:+0width$X}", u, width = p.width),
        ('#', '0', '_', '_', _) => format!("{:#0width$X}", u, width = p.width),
        ('#', '_', '+', '-', _) => format!("{:<+#width$X}", u, width = p.width),
        ('_', '_', '+', '-', _) => format!("{:<+width$X}", u, width = p.width),
        ('#', '_', '_', '-', _) => format!("{:<#width$X}", u, width = p.width),
        ('#', '0', '+', '-', _) => format!("{:<+#0width$X}", u, width = p.width),
        ('_', '0', '+', '-', _) => format!("{:<+0width$X}", u, width = p.width),
        ('#', '0', '_', '-', _) => format!("{:<#0width$X}", u, width = p.width),
        (_, _, _, _, _) => format!("{:width$X}", u, width = p.width),
    }
}

fn printf_generic<D: fmt::Display>(p: &FormatParams, c: D) -> String {
    if let Some(pr) = p.precision {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$.pr$}", c, width = p.width, pr = pr),
            ('_', '_', '+', '_', _) => format!("{:+width$.pr$}", c, width = p.width, pr = pr),
            ('#', '_', '_', '_', _) => format!("{:#width$.pr$}", c, width = p.width, pr = pr),
            ('#', '0', '+', '_', _) => format!("{:+#0width$.pr$}", c, width = p.width, pr = pr),
            ('_', '0', '+', '_', _) => format!("{:+0width$.pr$}", c, width = p.width, pr = pr),
            ('#', '0', '_', '_', _) => format!("{:#0width$.pr$}", c, width = p.width, pr = pr),
            // runner patch: `%05.2f` pads with zeros (gtmpl fell through to spaces).
            ('_', '0', '_', '_', _) => format!("{:0width$.pr$}", c, width = p.width, pr = pr),
            // runner patch: `-` alone left-aligns (and Go ignores `0` with it).
            ('_', _, '_', '-', _) => format!("{:<width$.pr$}", c, width = p.width, pr = pr),
            ('#', '_', '+', '-', _) => format!("{:<+#width$.pr$}", c, width = p.width, pr = pr),
            ('_', '_', '+', '-', _) => format!("{:<+width$.pr$}", c, width = p.width, pr = pr),
            ('#', '_', '_', '-', _) => format!("{:<#width$.pr$}", c, width = p.width, pr = pr),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$.pr$}", c, width = p.width, pr = pr),
            ('_', '0', '+', '-', _) => format!("{:<+0width$.pr$}", c, width = p.width, pr = pr),
            ('#', '0', '_', '-', _) => format!("{:<#0width$.pr$}", c, width = p.width, pr = pr),
            (_, _, _, _, _) => format!("{:width$.pr$}", c, width = p.width, pr = pr),
        }
    } else {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$}", c, width = p.width),
            ('_', '_', '+', '_', _) => format!("{:+width$}", c, width = p.width),
            ('#', '_', '_', '_', _) => format!("{:#width$}", c, width = p.width),
            ('#', '0', '+', '_', _) => format!("{:+#0width$}", c, width = p.width),
            ('_', '0', '+', '_', _) => format!("{:+0width$}", c, width = p.width),
            ('#', '0', '_', '_', _) => format!("{:#0width$}", c, width = p.width),
            ('_', '0', '_', '_', _) => format!("{:0width$}", c, width = p.width),
            ('_', _, '_', '-', _) => format!("{:<width$}", c, width = p.width),
            ('#', '_', '+', '-', _) => format!("{:<+#width$}", c, width = p.width),
            ('_', '_', '+', '-', _) => format!("{:<+width$}", c, width = p.width),
            ('#', '_', '_', '-', _) => format!("{:<#width$}", c, width = p.width),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$}", c, width = p.width),
            ('_', '0', '+', '-', _) => format!("{:<+0width$}", c, width = p.width),
            ('#', '0', '_', '-', _) => format!("{:<#0width$}", c, width = p.width),
            (_, _, _, _, _) => format!("{:width$}", c, width = p.width),
        }
    }
}

fn printf_e<E: fmt::LowerExp>(p: &FormatParams, f: E) -> String {
    if let Some(pr) = p.precision {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$.pr$e}", f, width = p.width, pr = pr),
            ('_', '_', '+', '_', _) => format!("{:+width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '_', '_', '_', _) => format!("{:#width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '0', '+', '_', _) => format!("{:+#0width$.pr$e}", f, width = p.width, pr = pr),
            ('_', '0', '+', '_', _) => format!("{:+0width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '0', '_', '_', _) => format!("{:#0width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '_', '+', '-', _) => format!("{:<+#width$.pr$e}", f, width = p.width, pr = pr),
            ('_', '_', '+', '-', _) => format!("{:<+width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '_', '_', '-', _) => format!("{:<#width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$.pr$e}", f, width = p.width, pr = pr),
            ('_', '0', '+', '-', _) => format!("{:<+0width$.pr$e}", f, width = p.width, pr = pr),
            ('#', '0', '_', '-', _) => format!("{:<#0width$.pr$e}", f, width = p.width, pr = pr),
            (_, _, _, _, _) => format!("{:width$.pr$e}", f, width = p.width, pr = pr),
        }
    } else {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$e}", f, width = p.width),
            ('_', '_', '+', '_', _) => format!("{:+width$e}", f, width = p.width),
            ('#', '_', '_', '_', _) => format!("{:#width$e}", f, width = p.width),
            ('#', '0', '+', '_', _) => format!("{:+#0width$e}", f, width = p.width),
            ('_', '0', '+', '_', _) => format!("{:+0width$e}", f, width = p.width),
            ('#', '0', '_', '_', _) => format!("{:#0width$e}", f, width = p.width),
            ('#', '_', '+', '-', _) => format!("{:<+#width$e}", f, width = p.width),
            ('_', '_', '+', '-', _) => format!("{:<+width$e}", f, width = p.width),
            ('#', '_', '_', '-', _) => format!("{:<#width$e}", f, width = p.width),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$e}", f, width = p.width),
            ('_', '0', '+', '-', _) => format!("{:<+0width$e}", f, width = p.width),
            ('#', '0', '_', '-', _) => format!("{:<#0width$e}", f, width = p.width),
            (_, _, _, _, _) => format!("{:width$e}", f, width = p.width),
        }
    }
}

fn printf_ee<E: fmt::UpperExp>(p: &FormatParams, f: E) -> String {
    if let Some(pr) = p.precision {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$.pr$E}", f, width = p.width, pr = pr),
            ('_', '_', '+', '_', _) => format!("{:+width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '_', '_', '_', _) => format!("{:#width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '0', '+', '_', _) => format!("{:+#0width$.pr$E}", f, width = p.width, pr = pr),
            ('_', '0', '+', '_', _) => format!("{:+0width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '0', '_', '_', _) => format!("{:#0width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '_', '+', '-', _) => format!("{:<+#width$.pr$E}", f, width = p.width, pr = pr),
            ('_', '_', '+', '-', _) => format!("{:<+width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '_', '_', '-', _) => format!("{:<#width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$.pr$E}", f, width = p.width, pr = pr),
            ('_', '0', '+', '-', _) => format!("{:<+0width$.pr$E}", f, width = p.width, pr = pr),
            ('#', '0', '_', '-', _) => format!("{:<#0width$.pr$E}", f, width = p.width, pr = pr),
            (_, _, _, _, _) => format!("{:width$.pr$E}", f, width = p.width, pr = pr),
        }
    } else {
        match params_to_chars(p) {
            ('#', '_', '+', '_', _) => format!("{:+#width$E}", f, width = p.width),
            ('_', '_', '+', '_', _) => format!("{:+width$E}", f, width = p.width),
            ('#', '_', '_', '_', _) => format!("{:#width$E}", f, width = p.width),
            ('#', '0', '+', '_', _) => format!("{:+#0width$E}", f, width = p.width),
            ('_', '0', '+', '_', _) => format!("{:+0width$E}", f, width = p.width),
            ('#', '0', '_', '_', _) => format!("{:#0width$E}", f, width = p.width),
            ('#', '_', '+', '-', _) => format!("{:<+#width$E}", f, width = p.width),
            ('_', '_', '+', '-', _) => format!("{:<+width$E}", f, width = p.width),
            ('#', '_', '_', '-', _) => format!("{:<#width$E}", f, width = p.width),
            ('#', '0', '+', '-', _) => format!("{:<+#0width$E}", f, width = p.width),
            ('_', '0', '+', '-', _) => format!("{:<+0width$E}", f, width = p.width),
            ('#', '0', '_', '-', _) => format!("{:<#0width$E}", f, width = p.width),
            (_, _, _, _, _) => format!("{:width$E}", f, width = p.width),
        }
    }
}

/// A value as Go's `fmt` prints it with `%v` (runner patch): lists as
/// `[a b]`, maps as `map[k:v]` with sorted keys, strings bare, absent values
/// as `<no value>`; gtmpl's own `Display` prints `[String("a")]`.
pub fn go_value(val: &Value) -> String {
    match val {
        Value::NoValue => "<no value>".to_string(),
        Value::Nil => "<nil>".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_value).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Map(m) | Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_value(&m[k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) => go_float(f),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A float as Go's `%v` writes it (`strconv.FormatFloat(f, 'g', -1, 64)`
/// with fmt's exponent threshold): the shortest digits that read back as
/// `f`, in exponent form when the exponent is below -4 or 6 and above
/// (`1e+06`), as `%g` with the shortest precision decides (runner patch).
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // Rust's `{:e}` is the shortest round-trip digits: `1.5e3`.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= 6 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{}{:02}", mantissa, sign, exp.abs())
    } else {
        format!("{}", f)
    }
}

/// `s` as Go's `strconv.Quote` writes it (runner patch).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn escape_char(c: char) -> String {
    let mut s = c.escape_default().to_string();
    if s.starts_with(r"\u") {
        s = s.replace("{", "").replace("}", "");
    }
    s
}

struct Hexer<'a> {
    s: &'a str,
}

impl<'a> From<&'a str> for Hexer<'a> {
    fn from(s: &'a str) -> Self {
        Hexer { s }
    }
}

impl<'a> fmt::UpperHex for Hexer<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for u in self.s.as_bytes() {
            write!(f, "{:X}", u)?
        }
        Ok(())
    }
}

impl<'a> fmt::LowerHex for Hexer<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for u in self.s.as_bytes() {
            write!(f, "{:x}", u)?
        }
        Ok(())
    }
}
