//! Go's text escapers, byte for byte (runner patch): `html/template`'s
//! helpers as `text/template` exports them (`HTMLEscapeString`,
//! `JSEscapeString`) and `net/url.QueryEscape`, as Go 1.19 has them.

use crate::go_unicode::is_print_non_ascii;
use std::fmt::Write;

/// Go's `template.HTMLEscapeString`: `<`, `>`, `&`, `'`, `"` as entities
/// and NUL as U+FFFD.
pub fn html_escape_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`: quotes, backslash, `<`, `>`, `&` and
/// `=` escaped, ASCII controls as `\u00XX`, and runes that Go's
/// `unicode.IsPrint` rejects as `\uXXXX` (`%04X`, so more digits above
/// U+FFFF, as Go writes them).
pub fn js_escape_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u00{:02X}", c as u32);
            }
            c if (c as u32) < 0x80 || is_print_non_ascii(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
        }
    }
    out
}

/// Go's `url.QueryEscape`: ASCII letters, digits and `-_.~` kept, space as
/// `+`, every other byte as `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{:02X}", b);
            }
        }
    }
    out
}
