//! Builtin functions.
use std::cmp::Ordering;
use std::convert::TryFrom;

use gtmpl_value::{Func, FuncError, Value};

use crate::go_escape::{html_escape_string, js_escape_string, query_escape};
use crate::print_verb::go_value;
use crate::utils::is_true;

pub static BUILTINS: &[(&str, Func)] = &[
    ("eq", eq as Func),
    ("ne", ne as Func),
    ("lt", lt as Func),
    ("le", le as Func),
    ("gt", gt as Func),
    ("ge", ge as Func),
    ("len", len as Func),
    ("and", and as Func),
    ("or", or as Func),
    ("not", not as Func),
    ("urlquery", urlquery as Func),
    ("print", print as Func),
    ("println", println as Func),
    ("printf", printf as Func),
    ("index", index as Func),
    ("call", call as Func),
    // runner patch: Go's other builtins.
    ("slice", slice as Func),
    ("html", html as Func),
    ("js", js as Func),
];

macro_rules! val {
    ($x:expr) => {
        Value::from($x)
    };
}

/// Help to write new functions for gtmpl.
#[macro_export]
macro_rules! gtmpl_fn {
 (
  $(#[$outer:meta])*
  fn $name:ident() -> Result<$otyp:ty, FuncError>
  { $($body:tt)* }
 ) => {
  $(#[$outer])*
  pub fn $name(args: &[$crate::Value]) -> Result<$crate::Value, FuncError> {
   fn inner() -> Result<$otyp, FuncError> {
    $($body)*
   }
   Ok($crate::Value::from(inner()?))
  }
 };
 (
  $(#[$outer:meta])*
  fn $name:ident($arg0:ident : $typ0:ty) -> Result<$otyp:ty, FuncError>
  { $($body:tt)* }
 ) => {
  $(#[$outer])*
  pub fn $name(
   args: &[$crate::Value]
  ) -> Result<$crate::Value, FuncError> {
   if args.is_empty() {
    return Err(FuncError::AtLeastXArgs(stringify!($name).into(), 1));
   }
   let x = &args[0];
   let $arg0: $typ0 = $crate::from_value(x)
    .ok_or(FuncError::UnableToConvertFromValue)?;
   fn inner($arg0 : $typ0) -> Result<$otyp, FuncError> {
    $($body)*
   }
   let ret: $crate::Value = inner($arg0)?.into();
   Ok(ret)
  }
 };
 (
  $(#[$outer:meta])*
  fn $name:ident($arg0:ident : $typ0:ty$(, $arg:ident : $typ:ty)*) -> Result<$otyp:ty, FuncError>
  { $($body:tt)* }
 ) => {
  $(#[$outer])*
  pub fn $name(
   args: &[$crate::Value]
  ) -> Result<$crate::Value, FuncError> {
   #[allow(unused_mut)]
   let mut args = args;
   if args.is_empty() {
    return Err(FuncError::AtLeastXArgs(stringify!($name).into(), 1));
   }
   let x = &args[0];
   let $arg0: $typ0 = $crate::from_value(x)
    .ok_or(FuncError::UnableToConvertFromValue)?;
   $(args = &args[1..];
     let x = &args[0];
     let $arg: $typ = $crate::from_value(x)
    .ok_or(FuncError::UnableToConvertFromValue)?;)*
   fn inner($arg0 : $typ0, $($arg : $typ,)*) -> Result<$otyp, FuncError> {
    $($body)*
   }
   let ret: $crate::Value = inner($arg0, $($arg),*)?.into();
   Ok(ret)
  }
 }
}

macro_rules! gn {
 (
  $(#[$outer:meta])*
  $name:ident($arg1:ident : ref Value, $arg2:ident : ref Value) ->
   Result<Value, FuncError>
  { $($body:tt)* }
 ) => {
  $(#[$outer])*
  pub fn $name(args: &[Value]) -> Result<Value, FuncError> {
   if args.len() != 2 {
    return Err(FuncError::AtLeastXArgs(stringify!($name).into(), 2));
   }
   let $arg1 = &args[0];
   let $arg2 = &args[1];
   fn inner($arg1: &Value, $arg2: &Value) -> Result<Value, FuncError> {
    $($body)*
   }
   inner($arg1, $arg2)
  }
 }
}

/// Returns the boolean OR of its arguments by returning the
/// first non-empty argument or the last argument, that is,
/// "or x y" behaves as "if x then x else y". All the
/// arguments are evaluated.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template("{{ or 1 2.0 false . }}", "foo");
/// assert_eq!(&equal.unwrap(), "1");
/// ```
pub fn or(args: &[Value]) -> Result<Value, FuncError> {
    for arg in args {
        if is_true(arg) {
            return Ok(arg.clone());
        }
    }
    args.iter()
        .cloned()
        .last()
        .ok_or_else(|| FuncError::AtLeastXArgs("or".into(), 1))
}

/// Returns the boolean AND of its arguments by returning the
/// first empty argument or the last argument, that is,
/// "and x y" behaves as "if x then y else x". All the
/// arguments are evaluated.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template("{{ and 1 2.0 true . }}", "foo");
/// assert_eq!(&equal.unwrap(), "foo");
/// ```
pub fn and(args: &[Value]) -> Result<Value, FuncError> {
    for arg in args {
        if !is_true(arg) {
            return Ok(arg.clone());
        }
    }
    args.iter()
        .cloned()
        .last()
        .ok_or_else(|| FuncError::AtLeastXArgs("and".into(), 1))
}

/// Returns the boolean negation of its single argument.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template("{{ not 0 }}", "");
/// assert_eq!(&equal.unwrap(), "true");
/// ```
pub fn not(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() != 1 {
        Err(FuncError::ExactlyXArgs("not".into(), 1))
    } else {
        Ok(val!(!is_true(&args[0])))
    }
}

/// Returns the integer length of its argument.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template("{{ len . }}", "foo");
/// assert_eq!(&equal.unwrap(), "3");
/// ```
pub fn len(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() != 1 {
        return Err(FuncError::ExactlyXArgs("len".into(), 1));
    }
    let arg = &args[0];
    let len = match *arg {
        Value::String(ref s) => s.len(),
        Value::Array(ref a) => a.len(),
        // runner patch: maps have a length too.
        Value::Object(ref o) | Value::Map(ref o) => o.len(),
        _ => {
            return Err(FuncError::Generic(format!("unable to call len on {}", arg)));
        }
    };

    Ok(val!(len))
}

/// Returns the result of calling the first argument, which
/// must be a function, with the remaining arguments as parameters.
///
/// # Example
/// ```
/// use gtmpl::{gtmpl_fn, template, Value};
/// use gtmpl_value::{FuncError, Function};
///
/// gtmpl_fn!(
/// fn add(a: u64, b: u64) -> Result<u64, FuncError> {
///     Ok(a + b)
/// });
/// let equal = template(r#"{{ call . 1 2 }}"#, Value::Function(Function { f: add }));
/// assert_eq!(&equal.unwrap(), "3");
/// ```
pub fn call(args: &[Value]) -> Result<Value, FuncError> {
    if args.is_empty() {
        Err(FuncError::AtLeastXArgs("call".into(), 1))
    } else if let Value::Function(ref f) = args[0] {
        (f.f)(&args[1..])
    } else {
        Err(FuncError::Generic(
            "call requires the first argument to be a function".into(),
        ))
    }
}

/// An implementation of golang's fmt.Sprint
///
/// Golang's Sprint formats using the default formats for its operands and returns the
/// resulting string. Spaces are added between operands when neither is a string.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template(r#"{{ print "Hello " . "!" }}"#, "world");
/// assert_eq!(&equal.unwrap(), "Hello world!");
/// ```
pub fn print(args: &[Value]) -> Result<Value, FuncError> {
    Ok(val!(go_sprint(args, false)))
}

/// `fmt.Sprint(args...)` as text/template hands the arguments over (runner
/// patch): each printed as Go's `%v` prints it, a space between two
/// operands when neither is a string. gtmpl printed lists and maps in Rust's
/// debug form and nil as `nil`. With `escaper`, nil is first made the
/// string `<no value>`, as Go's `evalArgs` (behind `html`, `js` and
/// `urlquery`) does; `print` writes it `<nil>`.
fn go_sprint(args: &[Value], escaper: bool) -> String {
    if let (true, [Value::String(s)]) = (escaper, args) {
        return s.clone();
    }
    let mut out = String::new();
    let mut prev_is_string = false;
    for (i, arg) in args.iter().enumerate() {
        let (text, is_string) = match arg {
            Value::String(s) => (s.clone(), true),
            Value::Nil | Value::NoValue if escaper => ("<no value>".to_string(), true),
            Value::Nil | Value::NoValue => ("<nil>".to_string(), false),
            other => (go_value(other), false),
        };
        if i > 0 && !is_string && !prev_is_string {
            out.push(' ');
        }
        out.push_str(&text);
        prev_is_string = is_string;
    }
    out
}

/// An implementation of golang's fmt.Sprintln
///
/// Sprintln formats using the default formats for its operands and returns the
/// resulting string. Spaces are always added between operands and a newline is appended.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template(r#"{{ println "Hello" . "!" }}"#, "world");
/// assert_eq!(&equal.unwrap(), "Hello world !\n");
/// ```
pub fn println(args: &[Value]) -> Result<Value, FuncError> {
    // runner patch: each operand as Go's `%v` prints it (see `go_sprint`).
    let mut s = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        match arg {
            Value::String(v) => s.push_str(v),
            Value::Nil | Value::NoValue => s.push_str("<nil>"),
            other => s.push_str(&go_value(other)),
        }
    }
    s.push('\n');
    Ok(val!(s))
}

/// An implementation of golang's fmt.Sprintf
/// Limitations:
/// - float:
///   * `g`, `G`, and `b` are weired and not implement yet
/// - pretty sure there are more
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template(r#"{{ printf "%v %s %v" "Hello" . "!" }}"#, "world");
/// assert_eq!(&equal.unwrap(), "Hello world !");
/// ```
pub fn printf(args: &[Value]) -> Result<Value, FuncError> {
    printf_bounded(args, crate::printf::MAX_FORMAT_WIDTH)
}

/// `printf` refusing widths and precisions above `max_width` (runner patch).
pub fn printf_bounded(args: &[Value], max_width: usize) -> Result<Value, FuncError> {
    if args.is_empty() {
        return Err(FuncError::AtLeastXArgs("printf".into(), 1));
    }
    if let Value::String(ref s) = args[0] {
        let s = crate::printf::sprintf_bounded(s, &args[1..], max_width)
            .map_err(|e| FuncError::Other(e.into()))?;
        Ok(val!(s))
    } else {
        Err(FuncError::Generic("printf requires a format string".into()))
    }
}

/// Returns the result of indexing its first argument by the
/// following arguments. Thus "index x 1 2 3" is, in Go syntax,
/// x[1][2][3]. Each indexed item must be a map, slice or array.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let ctx = vec![23, 42, 7];
/// let index = template("{{ index . 1 }}", ctx);
/// assert_eq!(&index.unwrap(), "42");
/// ```
pub fn index(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() < 2 {
        return Err(FuncError::AtLeastXArgs("index".into(), 2));
    }
    let mut col = args[0].clone();
    for val in &args[1..] {
        col = get_item(&col, val)?;
    }

    Ok(col)
}

// runner patch: as Go's `index`: a string's byte, a map's missing key as
// the zero value of its element type, errors for indexes out of range.
fn get_item(col: &Value, key: &Value) -> Result<Value, FuncError> {
    let position = |len: usize| match key {
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 && (i as u64) < len as u64 => Ok(i as usize),
            Some(i) => Err(FuncError::Generic(format!(
                "error calling index: index out of range: {}",
                i
            ))),
            None => Err(FuncError::Generic(format!(
                "error calling index: cannot index slice/array with type of {}",
                key
            ))),
        },
        _ => Err(FuncError::Generic(format!(
            "error calling index: cannot index slice/array with type of {}",
            key
        ))),
    };
    match (col, key) {
        (Value::Array(a), _) => Ok(a[position(a.len())?].clone()),
        (Value::String(s), _) => Ok(Value::from(s.as_bytes()[position(s.len())?])),
        (Value::Object(o), Value::String(k)) => o
            .get(k)
            .cloned()
            .ok_or_else(|| FuncError::Generic(format!("unable to get {} in {}", key, col))),
        (Value::Map(o), Value::String(k)) => Ok(o
            .get(k)
            .cloned()
            .unwrap_or_else(|| crate::utils::missing_map_value(o))),
        (Value::Map(_), _) | (Value::Object(_), _) => Err(FuncError::Generic(format!(
            "error calling index: value has type {}; should be string",
            key
        ))),
        (Value::Nil, _) | (Value::NoValue, _) => Err(FuncError::Generic(
            "error calling index: index of untyped nil".to_string(),
        )),
        _ => Err(FuncError::Generic(format!(
            "error calling index: can't index item of type {}",
            col
        ))),
    }
}

/// Returns the escaped value of the textual representation of
/// its arguments in a form suitable for embedding in a URL query.
///
/// runner patch: as Go's `urlquery`, `url.QueryEscape` of `fmt.Sprint` of
/// any number of arguments (gtmpl took one string and escaped less).
///
/// # Example
/// ```
/// use gtmpl::template;
/// let url = template(r#"{{ urlquery "foo bar?" }}"#, 0);
/// assert_eq!(&url.unwrap(), "foo+bar%3F");
/// ```
pub fn urlquery(args: &[Value]) -> Result<Value, FuncError> {
    Ok(val!(query_escape(&go_sprint(args, true))))
}

/// Returns the HTML-escaped text of its arguments, as Go's `html`
/// (`HTMLEscapeString` of `fmt.Sprint` of them; runner patch).
///
/// # Example
/// ```
/// use gtmpl::template;
/// let html = template(r#"{{ html "<a href='x'>" 1 2 }}"#, 0);
/// assert_eq!(&html.unwrap(), "&lt;a href=&#39;x&#39;&gt;1 2");
/// ```
pub fn html(args: &[Value]) -> Result<Value, FuncError> {
    Ok(val!(html_escape_string(&go_sprint(args, true))))
}

/// Returns the JavaScript-escaped text of its arguments, as Go's `js`
/// (`JSEscapeString` of `fmt.Sprint` of them; runner patch).
///
/// # Example
/// ```
/// use gtmpl::template;
/// let js = template(r#"{{ js "it's <b>" }}"#, 0);
/// assert_eq!(&js.unwrap(), r"it\'s \u003Cb\u003E");
/// ```
pub fn js(args: &[Value]) -> Result<Value, FuncError> {
    Ok(val!(js_escape_string(&go_sprint(args, true))))
}

/// Go's name for the type of `v`, in error messages (runner patch):
/// template values carry no Go type, so this is the type Go would give the
/// same value written in a template (`3` is an `int`) or decoded from JSON.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) if n.as_f64().is_some() => "float64",
        Value::Number(_) => "int",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) | Value::Map(_) => "map[string]interface {}",
        Value::Function(_) => "func",
        Value::Nil | Value::NoValue => "nil",
    }
}

/// Go's `indexArg`: an integer index in `0..=cap`.
fn slice_index(index: &Value, cap: usize) -> Result<usize, String> {
    let x: i64 = match index {
        Value::Number(n) if n.as_f64().is_none() => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i,
            // Go refuses a constant past int64 as an argument.
            (None, Some(u)) => return Err(format!("{} overflows int", u)),
            (None, None) => return Err("cannot index slice/array with type int".into()),
        },
        Value::Nil | Value::NoValue => return Err("cannot index slice/array with nil".into()),
        other => {
            return Err(format!(
                "cannot index slice/array with type {}",
                go_type(other)
            ))
        }
    };
    match usize::try_from(x) {
        Ok(i) if i <= cap => Ok(i),
        _ => Err(format!("index out of range: {}", x)),
    }
}

/// Returns the result of slicing its first argument by the remaining
/// arguments: `slice x 1 2` is, in Go syntax, `x[1:2]`, `slice x` is
/// `x[:]`, `slice x 1` is `x[1:]` and `slice x 1 2 3` is `x[1:2:3]`. The
/// first argument must be a string or a list (runner patch, Go 1.13's
/// `slice`, with its errors).
///
/// A string is sliced by bytes, as in Go; a cut inside a UTF-8 sequence
/// cannot be kept in a string value, so its broken bytes become U+FFFD.
///
/// # Example
/// ```
/// use gtmpl::template;
/// let s = template(r#"{{ slice "hello" 1 3 }}"#, 0);
/// assert_eq!(&s.unwrap(), "el");
/// ```
pub fn slice(args: &[Value]) -> Result<Value, FuncError> {
    let fail = |msg: String| FuncError::Generic(format!("error calling slice: {}", msg));
    let (item, indexes) = args.split_first().ok_or_else(|| {
        FuncError::Generic("wrong number of args for slice: want at least 1 got 0".into())
    })?;
    if let Value::Nil | Value::NoValue = item {
        return Err(fail("slice of untyped nil".into()));
    }
    if indexes.len() > 3 {
        return Err(fail(format!("too many slice indexes: {}", indexes.len())));
    }
    let len = match item {
        Value::String(_) if indexes.len() == 3 => {
            return Err(fail("cannot 3-index slice a string".into()))
        }
        Value::String(s) => s.len(),
        Value::Array(a) => a.len(),
        other => return Err(fail(format!("can't slice item of type {}", go_type(other)))),
    };
    // A list's capacity is its length here (Go may have spare capacity).
    let mut idx = [0, len, 0];
    for (i, index) in indexes.iter().enumerate() {
        idx[i] = slice_index(index, len).map_err(fail)?;
    }
    if idx[0] > idx[1] {
        return Err(fail(format!(
            "invalid slice index: {} > {}",
            idx[0], idx[1]
        )));
    }
    if indexes.len() == 3 && idx[1] > idx[2] {
        return Err(fail(format!(
            "invalid slice index: {} > {}",
            idx[1], idx[2]
        )));
    }
    let (from, to) = (idx[0], idx[1]);
    Ok(match item {
        Value::String(s) => {
            let bytes = s.as_bytes().get(from..to).unwrap_or_default();
            val!(String::from_utf8_lossy(bytes).into_owned())
        }
        Value::Array(a) => Value::Array(a.get(from..to).unwrap_or_default().to_vec()),
        // Not reached: anything else was refused above.
        other => other.clone(),
    })
}

/// Returns the boolean truth of arg1 == arg2 [== arg3 ...]
///
/// # Example
/// ```
/// use gtmpl::template;
/// let equal = template("{{ eq 1 1 . }}", 1);
/// assert_eq!(&equal.unwrap(), "true");
/// ```
pub fn eq(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() < 2 {
        return Err(FuncError::AtLeastXArgs("eq".into(), 2));
    }
    // runner patch: Go's `eq a b c` is a == b || a == c (gtmpl had "all"),
    // and values of different basic kinds are an error, not unequal.
    let first = &args[0];
    for x in &args[1..] {
        if go_equal(first, x)? {
            return Ok(Value::from(true));
        }
    }
    Ok(Value::from(false))
}

/// Go's basic kinds, as `eq` and `ne` compare them (runner patch).
#[derive(PartialEq)]
enum Kind {
    Bool,
    Int,
    Float,
    String,
    Other,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.as_f64().is_some() => Kind::Float,
        Value::Number(_) => Kind::Int,
        Value::String(_) => Kind::String,
        _ => Kind::Other,
    }
}

/// `a == b` as Go's text/template `eq` decides it (runner patch).
fn go_equal(a: &Value, b: &Value) -> Result<bool, FuncError> {
    let (ka, kb) = (kind(a), kind(b));
    if ka == Kind::Other || kb == Kind::Other {
        return Ok(a == b);
    }
    if ka != kb {
        return Err(FuncError::Generic(
            "error calling eq: incompatible types for comparison".to_string(),
        ));
    }
    Ok(match (a, b) {
        (Value::Number(x), Value::Number(y)) if ka == Kind::Int => {
            let wide = |n: &gtmpl_value::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            wide(x) == wide(y)
        }
        _ => a == b,
    })
}

gn!(
#[doc="
Returns the boolean truth of arg1 != arg2

# Example
```
use gtmpl::template;
let not_equal = template(\"{{ ne 2 . }}\", 1);
assert_eq!(&not_equal.unwrap(), \"true\");
```
"]
ne(a: ref Value, b: ref Value) -> Result<Value, FuncError> {
 Ok(Value::from(!go_equal(a, b)?))
});

gn!(
#[doc="
Returns the boolean truth of arg1 < arg2

# Example
```
use gtmpl::template;
let less_than = template(\"{{ lt 0 . }}\", 1);
assert_eq!(&less_than.unwrap(), \"true\");
```
"]
lt(a: ref Value, b: ref Value) -> Result<Value, FuncError> {
 let ret = match cmp(a, b) {
  None => return Err(FuncError::Generic(format!("unable to compare {} and {}", a, b))),
  Some(Ordering::Less) => true,
  _ => false,
 };
 Ok(Value::from(ret))
});

gn!(
#[doc="
Returns the boolean truth of arg1 <= arg2

# Example
```
use gtmpl::template;
let less_or_equal = template(\"{{ le 1.4 . }}\", 1.4);
assert_eq!(less_or_equal.unwrap(), \"true\");

let less_or_equal = template(\"{{ le 0.2 . }}\", 1.4);
assert_eq!(&less_or_equal.unwrap(), \"true\");
```
"]
le(a: ref Value, b: ref Value) -> Result<Value, FuncError> {
 let ret = match cmp(a, b) {
  None => return Err(FuncError::Generic(format!("unable to compare {} and {}", a, b))),
  Some(Ordering::Less) | Some(Ordering::Equal) => true,
  _ => false,
 };
 Ok(Value::from(ret))
});

gn!(
#[doc="
Returns the boolean truth of arg1 > arg2

# Example
```
use gtmpl::template;
let greater_than = template(\"{{ gt 1.4 . }}\", 1.2);
assert_eq!(&greater_than.unwrap(), \"true\");
```
"]
gt(a: ref Value, b: ref Value) -> Result<Value, FuncError> {
 let ret = match cmp(a, b) {
  None => return Err(FuncError::Generic(format!("unable to compare {} and {}", a, b))),
  Some(Ordering::Greater) => true,
  _ => false,
 };
 Ok(Value::from(ret))
});

gn!(
#[doc="
Returns the boolean truth of arg1 >= arg2

# Example
```
use gtmpl::template;
let greater_or_equal = template(\"{{ ge 1.4 1.3 }}\", 1.2);
assert_eq!(greater_or_equal.unwrap(), \"true\");

let greater_or_equal = template(\"{{ ge 1.4 . }}\", 0.2);
assert_eq!(&greater_or_equal.unwrap(), \"true\");
```
"]
ge(a: ref Value, b: ref Value) -> Result<Value, FuncError> {
 let ret = match cmp(a, b) {
  None => return Err(FuncError::Generic(format!("unable to compare {} and {}", a, b))),
  Some(Ordering::Greater) | Some(Ordering::Equal) => true,
  _ => false,
 };
 Ok(Value::from(ret))
});

fn cmp(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (&Value::Number(ref l), &Value::Number(ref r)) => {
            if let (Some(lf), Some(rf)) = (l.as_f64(), r.as_f64()) {
                return lf.partial_cmp(&rf);
            }
            if let (Some(li), Some(ri)) = (l.as_i64(), r.as_i64()) {
                return li.partial_cmp(&ri);
            }
            if let (Some(lu), Some(ru)) = (l.as_u64(), r.as_u64()) {
                return lu.partial_cmp(&ru);
            }
            None
        }
        (&Value::Bool(ref l), &Value::Bool(ref r)) => l.partial_cmp(r),
        (&Value::String(ref l), &Value::String(ref r)) => l.partial_cmp(r),
        (&Value::Array(ref l), &Value::Array(ref r)) => l.len().partial_cmp(&r.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests_mocked {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn test_macro() {
        gtmpl_fn!(
            fn f1(i: i64) -> Result<i64, FuncError> {
                Ok(i + 1)
            }
        );
        let vals: Vec<Value> = vec![val!(1i64)];
        let ret = f1(&vals);
        assert_eq!(ret.unwrap(), Value::from(2i64));

        gtmpl_fn!(
            fn f3(i: i64, j: i64, k: i64) -> Result<i64, FuncError> {
                Ok(i + j + k)
            }
        );
        let vals: Vec<Value> = vec![val!(1i64), val!(2i64), val!(3i64)];
        let ret = f3(&vals);
        assert_eq!(ret.unwrap(), Value::from(6i64));
    }

    #[test]
    fn test_eq() {
        let vals: Vec<Value> = vec![val!("foo".to_owned()), val!("foo".to_owned())];
        let ret = eq(&vals);
        assert_eq!(ret.unwrap(), Value::Bool(true));
        let vals: Vec<Value> = vec![val!(1u32), val!(1u32), val!(1i8)];
        let ret = eq(&vals);
        assert_eq!(ret.unwrap(), Value::Bool(true));
        let vals: Vec<Value> = vec![val!(false), val!(false), val!(false)];
        let ret = eq(&vals);
        assert_eq!(ret.unwrap(), Value::Bool(true));
    }

    #[test]
    fn test_and() {
        let vals: Vec<Value> = vec![val!(0i32), val!(1u8)];
        let ret = and(&vals);
        assert_eq!(ret.unwrap(), Value::from(0i32));

        let vals: Vec<Value> = vec![val!(1i32), val!(2u8)];
        let ret = and(&vals);
        assert_eq!(ret.unwrap(), Value::from(2u8));
    }

    #[test]
    fn test_or() {
        let vals: Vec<Value> = vec![val!(0i32), val!(1u8)];
        let ret = or(&vals);
        assert_eq!(ret.unwrap(), Value::from(1u8));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = or(&vals);
        assert_eq!(ret.unwrap(), Value::from(0u8));
    }

    #[test]
    fn test_ne() {
        let vals: Vec<Value> = vec![val!(0i32), val!(1u8)];
        let ret = ne(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = ne(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));

        let vals: Vec<Value> = vec![val!("foo"), val!("bar")];
        let ret = ne(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!("foo"), val!("foo")];
        let ret = ne(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));
    }

    #[test]
    fn test_lt() {
        let vals: Vec<Value> = vec![val!(-1i32), val!(1u8)];
        let ret = lt(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = lt(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));

        let vals: Vec<Value> = vec![val!(1i32), val!(0u8)];
        let ret = lt(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));
    }

    #[test]
    fn test_le() {
        let vals: Vec<Value> = vec![val!(-1i32), val!(1u8)];
        let ret = le(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = le(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!(1i32), val!(0u8)];
        let ret = le(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));
    }

    #[test]
    fn test_gt() {
        let vals: Vec<Value> = vec![val!(-1i32), val!(1u8)];
        let ret = gt(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = gt(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));

        let vals: Vec<Value> = vec![val!(1i32), val!(0u8)];
        let ret = gt(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));
    }

    #[test]
    fn test_ge() {
        let vals: Vec<Value> = vec![val!(-1i32), val!(1u8)];
        let ret = ge(&vals);
        assert_eq!(ret.unwrap(), Value::from(false));

        let vals: Vec<Value> = vec![val!(0i32), val!(0u8)];
        let ret = ge(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));

        let vals: Vec<Value> = vec![val!(1i32), val!(0u8)];
        let ret = ge(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));
    }

    #[test]
    fn test_print() {
        let vals: Vec<Value> = vec![val!("foo"), val!(1u8)];
        let ret = print(&vals);
        assert_eq!(ret.unwrap(), Value::from("foo1"));

        let vals: Vec<Value> = vec![val!("foo"), val!(1u8), val!(2)];
        let ret = print(&vals);
        assert_eq!(ret.unwrap(), Value::from("foo1 2"));

        let vals: Vec<Value> = vec![val!(true), val!(1), val!("foo"), val!(2)];
        let ret = print(&vals);
        assert_eq!(ret.unwrap(), Value::from("true 1foo2"));
    }

    #[test]
    fn test_println() {
        let vals: Vec<Value> = vec![val!("foo"), val!(1u8)];
        let ret = println(&vals);
        assert_eq!(ret.unwrap(), Value::from("foo 1\n"));

        let vals: Vec<Value> = vec![];
        let ret = println(&vals);
        assert_eq!(ret.unwrap(), Value::from("\n"));
    }

    #[test]
    fn test_index() {
        let vals: Vec<Value> = vec![val!(vec![vec![1, 2], vec![3, 4]]), val!(1), val!(0)];
        let ret = index(&vals);
        assert_eq!(ret.unwrap(), Value::from(3));

        let mut o = HashMap::new();
        o.insert(String::from("foo"), vec![String::from("bar")]);
        let col = Value::from(o);
        let vals: Vec<Value> = vec![col, val!("foo"), val!(0)];
        let ret = index(&vals);
        assert_eq!(ret.unwrap(), Value::from("bar"));

        let mut o = HashMap::new();
        o.insert(String::from("foo"), String::from("bar"));
        let col = Value::from(o);
        let vals: Vec<Value> = vec![col, val!("foo2")];
        let ret = index(&vals);
        // runner patch: a map of strings gives "" for a missing key (Go's
        // map[string]string); see `utils::missing_map_value`.
        assert_eq!(ret.unwrap(), Value::from(""));

        let mut o = HashMap::new();
        o.insert(String::from("foo"), Value::from(1));
        let vals: Vec<Value> = vec![Value::Map(o), val!("foo2")];
        assert_eq!(index(&vals).unwrap(), Value::NoValue);
    }

    #[test]
    fn test_builtins() {
        let vals: Vec<Value> = vec![val!("foo".to_owned()), val!("foo".to_owned())];
        let builtin_eq = BUILTINS
            .iter()
            .find(|&&(n, _)| n == "eq")
            .map(|&(_, f)| f)
            .unwrap();
        let ret = builtin_eq(&vals);
        assert_eq!(ret.unwrap(), Value::Bool(true));
    }

    #[test]
    fn test_gtmpl_fn() {
        gtmpl_fn!(
            fn add(a: u64, b: u64) -> Result<u64, FuncError> {
                Ok(a + b)
            }
        );
        let vals: Vec<Value> = vec![val!(1u32), val!(2u32)];
        let ret = add(&vals);
        assert_eq!(ret.unwrap(), Value::from(3u32));

        gtmpl_fn!(
            fn has_prefix(s: String, prefix: String) -> Result<bool, FuncError> {
                Ok(s.starts_with(&prefix))
            }
        );
        let vals: Vec<Value> = vec![val!("foobar"), val!("foo")];
        let ret = has_prefix(&vals);
        assert_eq!(ret.unwrap(), Value::from(true));
    }
}
