//! consul-template's encoding functions: base64 (standard and URL-safe),
//! JSON both ways (as Go's encoding/json writes and reads it) and the
//! digests (`sha256Hex`, `md5sum`). Each result is bounded as the other
//! functions' are (gtmpl refuses a returned value over the engine's limit).

use super::funcs::{arity, err, one_string};
use base64::Engine as _;
use gtmpl::{Func, FuncError, Value};

pub(super) const ENCODING_FUNCTIONS: &[(&str, Func)] = &[
    ("base64Encode", base64_encode),
    ("base64Decode", base64_decode),
    ("base64URLEncode", base64_url_encode),
    ("base64URLDecode", base64_url_decode),
    ("toJSON", to_json),
    ("toJSONPretty", to_json_pretty),
    ("parseJSON", parse_json),
    ("sha256Hex", sha256_hex),
    ("md5sum", md5sum),
];

fn base64_encode(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("base64Encode", args)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(s).into())
}

fn base64_decode(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("base64Decode", args)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| err("base64Decode", e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned().into())
}

fn base64_url_encode(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("base64URLEncode", args)?;
    Ok(base64::engine::general_purpose::URL_SAFE.encode(s).into())
}

fn base64_url_decode(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("base64URLDecode", args)?;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(s.as_bytes())
        .map_err(|e| err("base64URLDecode", e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned().into())
}

/// A gtmpl value as JSON: maps with sorted keys, as Go's encoder writes them.
fn json_value(name: &str, v: &Value) -> Result<serde_json::Value, FuncError> {
    Ok(match v {
        Value::NoValue | Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(i) = n.as_i64() {
                i.into()
            } else {
                match n.as_f64() {
                    // Go writes a whole float64 without a fraction: `1`, not `1.0`.
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => (f as i64).into(),
                    Some(f) => serde_json::Number::from_f64(f)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                    None => serde_json::Value::Null,
                }
            }
        }
        Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|v| json_value(name, v))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) | Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut map = serde_json::Map::new();
            for k in keys {
                map.insert(k.clone(), json_value(name, &m[k])?);
            }
            serde_json::Value::Object(map)
        }
        Value::Function(_) => return Err(err(name, "a function has no JSON form")),
    })
}

/// Go's `json.Marshal` escapes `<`, `>`, `&`, U+2028 and U+2029 in strings.
fn go_json_escapes(text: String) -> String {
    if !text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return text;
    }
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn to_json(args: &[Value]) -> Result<Value, FuncError> {
    arity("toJSON", args, 1)?;
    let json =
        serde_json::to_string(&json_value("toJSON", &args[0])?).map_err(|e| err("toJSON", e))?;
    Ok(go_json_escapes(json).into())
}

fn to_json_pretty(args: &[Value]) -> Result<Value, FuncError> {
    arity("toJSONPretty", args, 1)?;
    let json = serde_json::to_string_pretty(&json_value("toJSONPretty", &args[0])?)
        .map_err(|e| err("toJSONPretty", e))?;
    Ok(go_json_escapes(json).into())
}

fn md5sum(args: &[Value]) -> Result<Value, FuncError> {
    use md5::Digest;
    let s = one_string("md5sum", args)?;
    let digest = md5::Md5::digest(s.as_bytes());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into())
}

fn sha256_hex(args: &[Value]) -> Result<Value, FuncError> {
    use sha2::Digest;
    let s = one_string("sha256Hex", args)?;
    let digest = sha2::Sha256::digest(s.as_bytes());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into())
}

/// JSON text as template data (objects are maps, numbers numbers).
fn parse_json(args: &[Value]) -> Result<Value, FuncError> {
    let s = one_string("parseJSON", args)?;
    if s.trim().is_empty() {
        return Ok(Value::Map(Default::default()));
    }
    // serde_json refuses nesting past 128 levels: no stack overflow here.
    let json: serde_json::Value = serde_json::from_str(&s).map_err(|e| err("parseJSON", e))?;
    Ok(from_json(json))
}

fn from_json(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        // Go's encoding/json makes every number a float64.
        serde_json::Value::Number(n) => n.as_f64().map_or(Value::Nil, Value::from),
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}
