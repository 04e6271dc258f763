//! consul-template's helper functions (its `template/funcs.go`), over gtmpl
//! values: strings, lists, parsing and regexes (encodings, JSON and hashes
//! are in `encoding.rs`, numbers in `math.rs`, registry data in `data.rs`).
//!
//! Template text may be a plugin's: every function is bounded by what it is
//! given (gtmpl charges the step budget and refuses a returned value over
//! the engine's value limit), `loop` is bounded by the range budget, and
//! `plugin` (which runs a command in consul-template) is refused.

use gtmpl::{Func, FuncError, Value};

/// Every function of this module, by its consul-template name.
pub(super) const LIBRARY: &[(&str, Func)] = &[
    ("toLower", to_lower),
    ("toUpper", to_upper),
    ("toTitle", to_title),
    ("trimSpace", trim_space),
    ("split", split),
    ("join", join),
    ("replaceAll", replace_all),
    ("contains", contains),
    ("in", in_list),
    ("containsAny", contains_any),
    ("containsAll", contains_all),
    ("parseBool", parse_bool),
    ("parseInt", parse_int),
    ("parseFloat", parse_float),
    ("regexMatch", regex_match),
    ("regexReplaceAll", regex_replace_all),
    ("plugin", plugin),
    ("trim", trim),
    ("trimPrefix", trim_prefix),
    ("trimSuffix", trim_suffix),
    ("indent", indent),
    ("parseUint", parse_uint),
    ("containsNone", contains_none),
    ("containsNotAll", contains_not_all),
];

/// Largest string a function builds: the engine's value limit, checked
/// before allocating (gtmpl checks a returned value only after it exists,
/// and `replaceAll "" (a 1 MiB string)` would multiply one).
pub(super) const MAX_RESULT_BYTES: usize = super::engine::MAX_OUTPUT_BYTES;

/// Most items a function makes a list of (`split`, `loop`): each item costs
/// the host far more than its bytes.
pub(super) const MAX_ITEMS: usize = 100_000;

/// Refuse a result of `len` bytes over [`MAX_RESULT_BYTES`].
fn bounded(name: &str, len: usize) -> Result<(), FuncError> {
    if len > MAX_RESULT_BYTES {
        return Err(err(
            name,
            format_args!(
                "the result would be {len} bytes, over the {MAX_RESULT_BYTES}-byte limit of a template value"
            ),
        ));
    }
    Ok(())
}

pub(super) fn err(name: &str, message: impl std::fmt::Display) -> FuncError {
    FuncError::Generic(format!("{name}: {message}"))
}

pub(super) fn arity(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(FuncError::ExactlyXArgs(name.into(), n))
    }
}

pub(super) fn string(name: &str, v: &Value) -> Result<String, FuncError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(err(name, format_args!("expected a string, got {other}"))),
    }
}

fn list<'a>(name: &str, v: &'a Value) -> Result<&'a [Value], FuncError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(err(name, format_args!("expected a list, got {other}"))),
    }
}

pub(super) fn one_string(name: &str, args: &[Value]) -> Result<String, FuncError> {
    arity(name, args, 1)?;
    string(name, &args[0])
}

fn to_lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(one_string("toLower", args)?.to_lowercase().into())
}

fn to_upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(one_string("toUpper", args)?.to_uppercase().into())
}

/// Go's `strings.Title`: the first letter of each word upper-cased; a word
/// starts after any ASCII character but a letter, digit or `_`, or after
/// non-ASCII white space.
fn to_title(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("toTitle", args)?;
    let mut previous_separates = true;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if previous_separates {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        previous_separates = if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            !c.is_alphanumeric() && c.is_whitespace()
        };
    }
    Ok(out.into())
}

fn trim_space(args: &[Value]) -> Result<Value, FuncError> {
    Ok(one_string("trimSpace", args)?.trim().to_string().into())
}

/// `split SEP S`: S split at SEP; an empty (or blank) S is an empty list.
fn split(args: &[Value]) -> Result<Value, FuncError> {
    arity("split", args, 2)?;
    let (sep, s) = (string("split", &args[0])?, string("split", &args[1])?);
    let s = s.trim();
    if s.is_empty() {
        return Ok(Value::Array(vec![]));
    }
    let count = if sep.is_empty() {
        s.chars().count()
    } else {
        s.matches(sep.as_str()).count() + 1
    };
    if count > MAX_ITEMS {
        return Err(err(
            "split",
            format_args!("{count} parts, more than {MAX_ITEMS}"),
        ));
    }
    let parts: Vec<Value> = if sep.is_empty() {
        s.chars().map(|c| Value::from(c.to_string())).collect()
    } else {
        s.split(sep.as_str()).map(Value::from).collect()
    };
    Ok(Value::Array(parts))
}

/// `join SEP LIST`.
fn join(args: &[Value]) -> Result<Value, FuncError> {
    arity("join", args, 2)?;
    let sep = string("join", &args[0])?;
    let items = list("join", &args[1])?
        .iter()
        .map(|v| string("join", v))
        .collect::<Result<Vec<_>, _>>()?;
    let len = items.iter().map(String::len).sum::<usize>()
        + sep.len().saturating_mul(items.len().saturating_sub(1));
    bounded("join", len)?;
    Ok(items.join(&sep).into())
}

/// `replaceAll OLD NEW S`.
fn replace_all(args: &[Value]) -> Result<Value, FuncError> {
    arity("replaceAll", args, 3)?;
    let (old, new, s) = (
        string("replaceAll", &args[0])?,
        string("replaceAll", &args[1])?,
        string("replaceAll", &args[2])?,
    );
    let matches = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old.as_str()).count()
    };
    let len = (s.len() - matches.saturating_mul(old.len()).min(s.len()))
        .saturating_add(matches.saturating_mul(new.len()));
    bounded("replaceAll", len)?;
    if old.is_empty() {
        // Go inserts NEW between every rune (and at both ends).
        let mut out = new.clone();
        for c in s.chars() {
            out.push(c);
            out.push_str(&new);
        }
        return Ok(out.into());
    }
    Ok(s.replace(&old, &new).into())
}

/// consul-template's `in`: a list holds V when an item of V's kind equals
/// it (integers with integers, floats with floats, strings with strings:
/// `in (parseJSON "[1]") 1` is false, JSON numbers being floats); a string
/// holds a string it contains; anything else holds nothing.
fn holds(haystack: &Value, needle: &Value) -> bool {
    match haystack {
        Value::Array(items) => items.iter().any(|item| same_kind_equal(item, needle)),
        Value::String(text) => matches!(needle, Value::String(n) if text.contains(n.as_str())),
        _ => false,
    }
}

fn same_kind_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => a == b,
                _ => a.as_u64().is_some() && a.as_u64() == b.as_u64(),
            },
            _ => false,
        },
        _ => false,
    }
}

/// `contains V LIST`: `in LIST V`, for pipes (`{{ .Tags | contains "x" }}`).
fn contains(args: &[Value]) -> Result<Value, FuncError> {
    arity("contains", args, 2)?;
    Ok(holds(&args[1], &args[0]).into())
}

/// `in LIST V`: whether LIST (or a string) holds V.
fn in_list(args: &[Value]) -> Result<Value, FuncError> {
    arity("in", args, 2)?;
    Ok(holds(&args[0], &args[1]).into())
}

/// `containsAny VALUES LIST`.
fn contains_any(args: &[Value]) -> Result<Value, FuncError> {
    arity("containsAny", args, 2)?;
    let wanted = list("containsAny", &args[0])?;
    Ok(wanted.iter().any(|v| holds(&args[1], v)).into())
}

/// `containsAll VALUES LIST`.
fn contains_all(args: &[Value]) -> Result<Value, FuncError> {
    arity("containsAll", args, 2)?;
    let wanted = list("containsAll", &args[0])?;
    Ok(wanted.iter().all(|v| holds(&args[1], v)).into())
}

/// Go's `strconv.ParseBool`; an empty string is false.
fn parse_bool(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("parseBool", args)?;
    Ok(match s.as_str() {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        other => return Err(err("parseBool", format_args!("invalid syntax \"{other}\""))),
    }
    .into())
}

/// A base-10 integer; an empty string is 0.
fn parse_int(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("parseInt", args)?;
    if s.is_empty() {
        return Ok(Value::from(0i64));
    }
    s.parse::<i64>()
        .map(Value::from)
        .map_err(|e| err("parseInt", format_args!("\"{s}\": {e}")))
}

/// A float; an empty string is 0.
fn parse_float(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("parseFloat", args)?;
    if s.is_empty() {
        return Ok(Value::from(0f64));
    }
    s.parse::<f64>()
        .map(Value::from)
        .map_err(|e| err("parseFloat", format_args!("\"{s}\": {e}")))
}

/// `trim CUTSET S`: Go's `strings.Trim`, every character of CUTSET off both ends.
fn trim(args: &[Value]) -> Result<Value, FuncError> {
    arity("trim", args, 2)?;
    let (cutset, s) = (string("trim", &args[0])?, string("trim", &args[1])?);
    Ok(s.trim_matches(|c| cutset.contains(c)).to_string().into())
}

fn trim_prefix(args: &[Value]) -> Result<Value, FuncError> {
    arity("trimPrefix", args, 2)?;
    let (prefix, s) = (
        string("trimPrefix", &args[0])?,
        string("trimPrefix", &args[1])?,
    );
    Ok(s.strip_prefix(prefix.as_str())
        .unwrap_or(&s)
        .to_string()
        .into())
}

fn trim_suffix(args: &[Value]) -> Result<Value, FuncError> {
    arity("trimSuffix", args, 2)?;
    let (suffix, s) = (
        string("trimSuffix", &args[0])?,
        string("trimSuffix", &args[1])?,
    );
    Ok(s.strip_suffix(suffix.as_str())
        .unwrap_or(&s)
        .to_string()
        .into())
}

/// `indent N S`: N spaces before every line of S that is not empty.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    arity("indent", args, 2)?;
    let spaces = match &args[0] {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| err("indent", "the width must be an integer"))?;
    let spaces = usize::try_from(spaces)
        .map_err(|_| err("indent", "indent value must be a positive integer"))?;
    let s = string("indent", &args[1])?;
    let lines = s.bytes().filter(|&b| b == b'\n').count() + 1;
    bounded(
        "indent",
        s.len().saturating_add(lines.saturating_mul(spaces)),
    )?;
    let prefix = " ".repeat(spaces);
    let mut out = String::with_capacity(s.len() + lines * spaces);
    let mut line_start = true;
    for c in s.chars() {
        if line_start && c != '\n' {
            out.push_str(&prefix);
        }
        out.push(c);
        line_start = c == '\n';
    }
    Ok(out.into())
}

/// A base-10 unsigned integer; an empty string is 0.
fn parse_uint(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("parseUint", args)?;
    if s.is_empty() {
        return Ok(Value::from(0u64));
    }
    s.parse::<u64>()
        .map(Value::from)
        .map_err(|e| err("parseUint", format_args!("\"{s}\": {e}")))
}

/// `containsNone VALUES LIST`.
fn contains_none(args: &[Value]) -> Result<Value, FuncError> {
    arity("containsNone", args, 2)?;
    let wanted = list("containsNone", &args[0])?;
    Ok((!wanted.iter().any(|v| holds(&args[1], v))).into())
}

/// `containsNotAll VALUES LIST`.
fn contains_not_all(args: &[Value]) -> Result<Value, FuncError> {
    arity("containsNotAll", args, 2)?;
    let wanted = list("containsNotAll", &args[0])?;
    Ok((!wanted.iter().all(|v| holds(&args[1], v))).into())
}

/// Largest compiled regex a template may ask for (the pattern may be a
/// plugin's; Rust's regex runs in linear time, this bounds its memory).
const MAX_REGEX_BYTES: usize = 1 << 20;

fn regex(name: &str, pattern: &str) -> Result<regex::Regex, FuncError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| err(name, format_args!("pattern \"{pattern}\": {e}")))
}

/// `regexMatch RE S`.
fn regex_match(args: &[Value]) -> Result<Value, FuncError> {
    arity("regexMatch", args, 2)?;
    let re = regex("regexMatch", &string("regexMatch", &args[0])?)?;
    Ok(re.is_match(&string("regexMatch", &args[1])?).into())
}

/// `regexReplaceAll RE REPLACEMENT S`, `$1` for groups as in Go.
fn regex_replace_all(args: &[Value]) -> Result<Value, FuncError> {
    arity("regexReplaceAll", args, 3)?;
    let re = regex("regexReplaceAll", &string("regexReplaceAll", &args[0])?)?;
    let replacement = string("regexReplaceAll", &args[1])?;
    let s = string("regexReplaceAll", &args[2])?;
    // `Regex::replace_all`, bounded before each expansion: `$0$0…` can make
    // one expansion far larger than the replacement text.
    let dollars = replacement.matches('$').count();
    let mut out = String::new();
    let mut last = 0;
    for caps in re.captures_iter(&s) {
        let Some(whole) = caps.get(0) else { continue };
        let at_most = out.len()
            + (whole.start() - last)
            + replacement.len()
            + dollars.saturating_mul(whole.len());
        bounded("regexReplaceAll", at_most)?;
        out.push_str(&s[last..whole.start()]);
        caps.expand(&replacement, &mut out);
        last = whole.end();
    }
    bounded("regexReplaceAll", out.len() + (s.len() - last))?;
    out.push_str(&s[last..]);
    Ok(out.into())
}

/// consul-template's `plugin` runs a command: never from a template here.
fn plugin(_args: &[Value]) -> Result<Value, FuncError> {
    Err(err(
        "plugin",
        "runner does not run commands from templates; render the data the command needs \
         (key, service) and transform it with the template's functions, or run the command \
         in a stage plugin",
    ))
}

#[cfg(test)]
mod tests {
    use super::super::engine::{DataSource, Dependency, Snapshot, render};
    use crate::bindings::PluginError;

    /// No registry data: these templates use none.
    struct NoData;

    impl DataSource for NoData {
        async fn fetch(&self, _: &Dependency, _: &mut Snapshot) -> Result<(), PluginError> {
            Ok(())
        }
    }

    fn render_text(template: &str) -> Result<String, String> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(render(template, &NoData))
            .map_err(|e| format!("{e:?}"))
    }

    /// Each expected output is what consul-template (Go) prints.
    #[test]
    fn functions_render_as_consul_template_renders_them() {
        let cases = [
            (r#"{{"Hello World" | toLower}}"#, "hello world"),
            (r#"{{"hello" | toUpper}}"#, "HELLO"),
            (
                r#"{{"hello wide-world o'neil" | toTitle}}"#,
                "Hello Wide-World O'Neil",
            ),
            (r#"[{{"  x y  " | trimSpace}}]"#, "[x y]"),
            (r#"{{range split "," "a,b,c"}}<{{.}}>{{end}}"#, "<a><b><c>"),
            (r#"{{split "," "" | len}}"#, "0"),
            (r#"{{"a,b" | split "," | join ";"}}"#, "a;b"),
            (r#"{{"a.b.c" | replaceAll "." "-"}}"#, "a-b-c"),
            (
                r#"{{$l := split "," "x,y"}}{{contains "y" $l}} {{in $l "z"}}"#,
                "true false",
            ),
            (
                r#"{{$l := split "," "x,y"}}{{containsAny (split "," "z,y") $l}} {{containsAll (split "," "z,y") $l}}"#,
                "true false",
            ),
            (
                r#"{{parseBool "true"}} {{parseInt "42"}} {{parseInt ""}} {{parseFloat "1.5"}}"#,
                "true 42 0 1.5",
            ),
            (
                r#"{{"hi" | base64Encode}} {{"aGk=" | base64Decode}}"#,
                "aGk= hi",
            ),
            (
                r#"{{split "," "a,<b>" | toJSON}}"#,
                r#"["a","\u003cb\u003e"]"#,
            ),
            (
                r#"{{range loop 3}}{{.}}{{end}} {{range loop 2 4}}{{.}}{{end}}"#,
                "012 23",
            ),
            (
                r#"{{regexMatch "^v[0-9]+$" "v12"}} {{"a1b22" | regexReplaceAll "([0-9]+)" "<$1>"}}"#,
                "true a<1>b<22>",
            ),
            (
                r#"{{"abc" | sha256Hex}}"#,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                r#"{{with parseJSON `{"b":[1,2],"a":"x"}`}}{{.a}} {{index .b 1}}{{end}}"#,
                "x 2",
            ),
            // Maps print as Go prints them, with sorted keys, in both forms.
            (
                r#"{{$m := parseJSON `{"b":[1,"x"],"a":2}`}}{{$m}} {{printf "%v" $m}}"#,
                "map[a:2 b:[1 x]] map[a:2 b:[1 x]]",
            ),
            (
                r#"{{5 | add 2}} {{5 | subtract 2}} {{5 | multiply 2}} {{5 | divide 2}} {{5 | modulo 2}}"#,
                "7 3 10 2 1",
            ),
        ];
        for (template, want) in cases {
            assert_eq!(render_text(template).as_deref(), Ok(want), "{template}");
        }
    }

    #[test]
    fn plugin_is_refused_and_unbounded_loops_and_division_fail_cleanly() {
        let refused = render_text(r#"{{plugin "/bin/sh" "-c" "id"}}"#).unwrap_err();
        assert!(refused.contains("does not run commands"), "{refused}");
        let big = render_text("{{range loop 100000000}}x{{end}}").unwrap_err();
        assert!(big.contains("iterations"), "{big}");
        let huge = render_text(r#"{{regexMatch "((a{1000}){1000}){1000}" "a"}}"#).unwrap_err();
        assert!(huge.contains("regexMatch: pattern"), "{huge}");
        let deep = render_text(&format!("{{{{parseJSON `{}`}}}}", "[".repeat(10_000))).unwrap_err();
        assert!(deep.contains("parseJSON"), "{deep}");
        // Results multiplied from bounded inputs are refused before they
        // are built, not after (the host would allocate them first).
        let mib = r#"{{$m := printf "%1024s" "" | replaceAll " " (printf "%1024s" "")}}"#;
        for (template, name) in [
            (
                format!(r#"{mib}{{{{$m | replaceAll "" $m}}}}"#),
                "replaceAll",
            ),
            (
                format!(r#"{mib}{{{{$m | replaceAll " " $m}}}}"#),
                "replaceAll",
            ),
            (
                format!(
                    r#"{mib}{{{{join $m (split "," (printf "%99s" "" | replaceAll " " ","))}}}}"#
                ),
                "join",
            ),
            (
                format!(
                    r#"{mib}{{{{regexReplaceAll " " "$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0" $m}}}}"#
                ),
                "regexReplaceAll",
            ),
            (
                r#"{{split "," (printf "%1000s" "" | replaceAll " " (printf "%200s" "") | replaceAll " " ",")}}"#.to_string(),
                "split",
            ),
        ] {
            let refused = render_text(&template).unwrap_err();
            let bounded = refused.contains("more than") || refused.contains("limit of a template value");
            assert!(refused.contains(name) && bounded, "{template}: {refused}");
        }
        let zero = render_text("{{5 | divide 0}}").unwrap_err();
        assert!(zero.contains("integer divide by zero"), "{zero}");
    }
}
