//! consul-template's numeric functions: `loop` and the arithmetic helpers
//! (`add`, `subtract`, `multiply`, `divide`, `modulo`, `minimum`,
//! `maximum`), with its argument order (the piped value last: `{{ 5 |
//! subtract 2 }}` is 3) and Go's number rules: integers stay integers and
//! wrap on overflow, a float on either side makes a float, a string is an
//! error, and integer division or modulo by zero is an error (Go panics,
//! which text/template reports as the call's error).

use super::funcs::{MAX_ITEMS, arity, err};
use gtmpl::{Func, FuncError, Value};

pub(super) const MATH_FUNCTIONS: &[(&str, Func)] = &[
    ("loop", loop_range),
    ("add", add),
    ("subtract", subtract),
    ("multiply", multiply),
    ("divide", divide),
    ("modulo", modulo),
    ("minimum", minimum),
    ("maximum", maximum),
];

/// A template number as Go's reflection sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

fn num(name: &str, v: &Value) -> Result<Num, FuncError> {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                Ok(Num::Float(f))
            } else if let Some(i) = n.as_i64() {
                Ok(Num::Int(i))
            } else {
                // A u64 above i64::MAX: Go converts with int64(...), wrapping.
                n.as_u64()
                    .map(|u| Num::Int(u as i64))
                    .ok_or_else(|| err(name, format_args!("unknown type for {n}")))
            }
        }
        other => Err(err(name, format_args!("unknown type for {other}"))),
    }
}

fn value(n: Num) -> Value {
    match n {
        Num::Int(i) => Value::from(i),
        Num::Float(f) => Value::from(f),
    }
}

/// `a OP b` where the template wrote `OP b a` (`a | OP b`).
fn binary(
    name: &str,
    args: &[Value],
    ints: fn(i64, i64) -> Option<i64>,
    floats: fn(f64, f64) -> f64,
) -> Result<Value, FuncError> {
    arity(name, args, 2)?;
    let (b, a) = (num(name, &args[0])?, num(name, &args[1])?);
    let result = match (a, b) {
        (Num::Int(a), Num::Int(b)) => {
            Num::Int(ints(a, b).ok_or_else(|| err(name, "runtime error: integer divide by zero"))?)
        }
        (Num::Int(a), Num::Float(b)) => Num::Float(floats(a as f64, b)),
        (Num::Float(a), Num::Int(b)) => Num::Float(floats(a, b as f64)),
        (Num::Float(a), Num::Float(b)) => Num::Float(floats(a, b)),
    };
    Ok(value(result))
}

fn add(args: &[Value]) -> Result<Value, FuncError> {
    binary("add", args, |a, b| Some(a.wrapping_add(b)), |a, b| a + b)
}

fn subtract(args: &[Value]) -> Result<Value, FuncError> {
    binary(
        "subtract",
        args,
        |a, b| Some(a.wrapping_sub(b)),
        |a, b| a - b,
    )
}

fn multiply(args: &[Value]) -> Result<Value, FuncError> {
    binary(
        "multiply",
        args,
        |a, b| Some(a.wrapping_mul(b)),
        |a, b| a * b,
    )
}

fn divide(args: &[Value]) -> Result<Value, FuncError> {
    binary(
        "divide",
        args,
        |a, b| (b != 0).then(|| a.wrapping_div(b)),
        |a, b| a / b,
    )
}

/// Integers only, as consul-template's `modulo`.
fn modulo(args: &[Value]) -> Result<Value, FuncError> {
    arity("modulo", args, 2)?;
    let (b, a) = (num("modulo", &args[0])?, num("modulo", &args[1])?);
    match (a, b) {
        (Num::Int(a), Num::Int(b)) if b != 0 => Ok(Value::from(a.wrapping_rem(b))),
        (Num::Int(_), Num::Int(_)) => Err(err("modulo", "runtime error: integer divide by zero")),
        _ => Err(err("modulo", "unknown type: only integers have a modulo")),
    }
}

/// The smaller (or larger) of the two, keeping its own kind, as Go returns it.
fn extreme(name: &str, args: &[Value], smaller: bool) -> Result<Value, FuncError> {
    arity(name, args, 2)?;
    let (b, a) = (num(name, &args[0])?, num(name, &args[1])?);
    let as_f64 = |n: Num| match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    };
    let a_wins = match (a, b) {
        (Num::Int(x), Num::Int(y)) => (x < y) == smaller,
        _ => (as_f64(a) < as_f64(b)) == smaller,
    };
    Ok(value(if a_wins { a } else { b }))
}

fn minimum(args: &[Value]) -> Result<Value, FuncError> {
    extreme("minimum", args, true)
}

fn maximum(args: &[Value]) -> Result<Value, FuncError> {
    extreme("maximum", args, false)
}

/// An integer argument of `loop`: a number, or a string parsed as one.
fn loop_bound(v: &Value) -> Result<i64, FuncError> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|_| err("loop", format_args!("\"{s}\" is not an integer"))),
        other => match num("loop", other)? {
            Num::Int(i) => Ok(i),
            Num::Float(_) => Err(err("loop", format_args!("bad argument type: {other}"))),
        },
    }
}

/// `loop N` is 0..N; `loop START STOP` is START..STOP.
fn loop_range(args: &[Value]) -> Result<Value, FuncError> {
    let (start, stop) = match args {
        [n] => (0, loop_bound(n)?),
        [a, b] => (loop_bound(a)?, loop_bound(b)?),
        _ => {
            return Err(err(
                "loop",
                format_args!(
                    "wrong number of arguments, expected 1 or 2, but got {}",
                    args.len()
                ),
            ));
        }
    };
    // Its list is built before the range walks it: bounded here.
    if stop.saturating_sub(start) > MAX_ITEMS as i64 {
        return Err(err(
            "loop",
            format_args!("{start}..{stop} is more than {MAX_ITEMS} iterations"),
        ));
    }
    Ok(Value::Array((start..stop).map(Value::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(f: Func, args: &[Value]) -> Result<Value, FuncError> {
        f(args)
    }

    #[test]
    fn arithmetic_follows_go() {
        let int = |i: i64| Value::from(i);
        assert_eq!(call(subtract, &[int(2), int(5)]).unwrap(), int(3));
        assert_eq!(call(add, &[int(1), int(i64::MAX)]).unwrap(), int(i64::MIN));
        assert_eq!(
            call(add, &[Value::from(0.5), int(2)]).unwrap(),
            Value::from(2.5)
        );
        assert_eq!(call(divide, &[int(2), int(7)]).unwrap(), int(3));
        assert!(call(divide, &[int(0), int(7)]).is_err());
        assert!(call(modulo, &[int(0), int(7)]).is_err());
        assert!(call(add, &[Value::from("1"), int(7)]).is_err());
        assert_eq!(call(minimum, &[int(2), int(7)]).unwrap(), int(2));
        assert_eq!(
            call(maximum, &[Value::from(2.5), int(2)]).unwrap(),
            Value::from(2.5)
        );
        assert!(call(loop_range, &[int(0), int(MAX_ITEMS as i64 + 1)]).is_err());
        assert_eq!(
            call(loop_range, &[Value::from("2")]).unwrap(),
            Value::Array(vec![int(0), int(1)])
        );
    }
}
