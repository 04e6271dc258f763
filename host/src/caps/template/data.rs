//! consul-template's data functions (`service`, `services`, `key`,
//! `keyOrDefault`, `keyExists`, `ls`, `tree`, `safeLs`, `safeTree`, `env`,
//! `byTag`, `byKey`), read from the render's snapshot as its
//! `template/funcs.go` reads its brain: what is not fetched yet is recorded as
//! a dependency and renders empty for this pass.
//!
//! Queries parse, filter and sort as consul-template's `dependency/*.go` do:
//! `[tag.]name[?query][@dc][~near][|filter,...]`, filters `any`, `passing`,
//! `warning`, `critical`, `maintenance`, instances sorted by node then ID, tags
//! sorted; a KV prefix is listed raw, each key taken relative to it.

use super::engine::{Dependency, string_arg, with_scope};
use crate::registry::{Health, Instance, KvEntry};
use gtmpl::{Func, FuncError, Value};
use std::collections::HashMap;
use std::sync::LazyLock;

pub(super) const DATA_FUNCTIONS: &[(&str, Func)] = &[
    ("service", service),
    ("services", services),
    ("key", key),
    ("keyOrDefault", key_or_default),
    ("keyExists", key_exists),
    ("ls", ls),
    ("tree", tree),
    ("safeLs", safe_ls),
    ("safeTree", safe_tree),
    ("env", env),
    ("byTag", by_tag),
    ("byKey", by_key),
    ("byMeta", by_meta),
    ("explode", explode),
];

fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(items.into_iter().map(Value::from).collect())
}

fn string_map(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

fn sorted_tags(tags: &[String]) -> Value {
    let mut tags = tags.to_vec();
    tags.sort();
    strings(tags)
}

/// consul-template's `HealthService`.
fn instance_value(i: &Instance) -> Value {
    let checks = i
        .checks
        .iter()
        .map(|c| {
            obj(vec![
                ("Node", Value::from(c.node.clone())),
                ("CheckID", Value::from(c.check_id.clone())),
                ("Name", Value::from(c.name.clone())),
                ("Status", Value::from(c.status.clone())),
                ("Notes", Value::from(c.notes.clone())),
                ("Output", Value::from(c.output.clone())),
                ("ServiceID", Value::from(c.service_id.clone())),
                ("ServiceName", Value::from(c.service_name.clone())),
            ])
        })
        .collect();
    obj(vec![
        ("ID", Value::from(i.id.clone())),
        ("Name", Value::from(i.name.clone())),
        ("Address", Value::from(i.address.clone())),
        ("Port", Value::from(u64::from(i.port))),
        ("Tags", sorted_tags(&i.tags)),
        ("Status", Value::from(i.status.as_str())),
        ("Node", Value::from(i.node.clone())),
        ("NodeAddress", Value::from(i.node_address.clone())),
        ("ServiceMeta", string_map(&i.meta)),
        ("Checks", Value::Array(checks)),
    ])
}

/// consul-template's `HealthServiceQueryRe`: tag, name, query, datacenter,
/// near and filter parts.
static SERVICE_QUERY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(concat!(
        r"\A((?P<tag>[[:word:]=:\.\-_]+)\.)?",
        r"(?P<name>[[:word:]\-_]+)",
        r"(\?(?P<query>[[:word:]\-_=\&]+))?",
        r"(@(?P<dc>[[:word:]\.\-_]+))?",
        r"(~(?P<near>[[:word:]\.\-_]+))?",
        r"(\|(?P<filter>[[:word:],]+))?\z",
    ))
    .unwrap_or_else(|e| unreachable!("a constant pattern: {e}"))
});

/// A parsed `service` query.
struct ServiceQuery {
    tag: Option<String>,
    name: String,
    /// The statuses listed; `None` is any.
    accept: Option<Vec<Health>>,
}

fn parse_service_query(query: &str) -> Result<ServiceQuery, FuncError> {
    let caps = SERVICE_QUERY.captures(query).ok_or_else(|| {
        FuncError::Generic(format!("health.service: invalid format: \"{query}\""))
    })?;
    let mut accept = Some(Vec::new());
    match caps.name("filter").map(|f| f.as_str()) {
        None | Some("") => accept = Some(vec![Health::Passing]),
        Some(filters) => {
            for filter in filters.split(',').map(str::trim) {
                match filter {
                    "" => {}
                    "any" => accept = None,
                    f => match (Health::parse(f), accept.as_mut()) {
                        (Some(health), Some(list)) => list.push(health),
                        (Some(_), None) => {}
                        (None, _) => {
                            return Err(FuncError::Generic(format!(
                                "health.service: invalid filter: \"{f}\" in \"{query}\""
                            )));
                        }
                    },
                }
            }
        }
    }
    Ok(ServiceQuery {
        tag: caps.name("tag").map(|t| t.as_str().to_string()),
        name: caps["name"].to_string(),
        accept,
    })
}

/// `service "[tag.]name[@dc][|filters]" ["filters"...]`: the instances
/// whose status the filters accept (passing by default), sorted by node then
/// ID. Extra arguments join the query with `|`, as consul-template does.
fn service(args: &[Value]) -> Result<Value, FuncError> {
    let mut parts = Vec::with_capacity(args.len());
    for i in 0..args.len().max(1) {
        parts.push(string_arg("service", args, i)?);
    }
    // No name yet (`service (key "app/svc")` before the key is fetched):
    // nothing, as consul-template renders it, not a query for "".
    if parts[0].is_empty() {
        return Ok(Value::Array(vec![]));
    }
    let query = parse_service_query(&parts.join("|"))?;
    with_scope(|scope| match scope.snapshot.services.get(&query.name) {
        Some(instances) => {
            let mut selected: Vec<&Instance> = instances
                .iter()
                .filter(|i| query.accept.as_ref().is_none_or(|a| a.contains(&i.status)))
                // Consul matches tags case-insensitively.
                .filter(|i| {
                    query
                        .tag
                        .as_ref()
                        .is_none_or(|t| i.tags.iter().any(|it| it.eq_ignore_ascii_case(t)))
                })
                .collect();
            selected.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
            Ok(Value::Array(
                selected.into_iter().map(instance_value).collect(),
            ))
        }
        None => {
            scope.need(Dependency::Service(query.name));
            Ok(Value::Array(vec![]))
        }
    })?
}

/// `services`: every service with its tags, sorted by name.
fn services(_args: &[Value]) -> Result<Value, FuncError> {
    with_scope(|scope| match &scope.snapshot.service_summaries {
        Some(summaries) => Value::Array(
            summaries
                .iter()
                .map(|s| {
                    obj(vec![
                        ("Name", Value::from(s.name.clone())),
                        ("Tags", sorted_tags(&s.tags)),
                    ])
                })
                .collect(),
        ),
        None => {
            scope.need(Dependency::Services);
            Value::Array(vec![])
        }
    })
}

/// A KV path as consul-template's `KVGetQueryRe`/`KVListQueryRe` take it:
/// one leading `/` dropped, and the `?query` and `@dc` parts (one datacenter
/// here).
fn kv_path(text: &str) -> &str {
    let text = text.strip_prefix('/').unwrap_or(text);
    text.split(['@', '?']).next().unwrap_or_default()
}

/// Looks a key up; `None` means "not fetched yet" (and records the dependency).
fn lookup_key(name: &str, args: &[Value]) -> Result<(String, Option<Option<String>>), FuncError> {
    let path = kv_path(&string_arg(name, args, 0)?).to_string();
    if path.is_empty() {
        return Ok((path, Some(None)));
    }
    let found = with_scope(|scope| match scope.snapshot.keys.get(&path) {
        Some(v) => Some(v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())),
        None => {
            scope.need(Dependency::Key(path.clone()));
            None
        }
    })?;
    Ok((path, found))
}

/// `key "path"`: the value; a missing key is an error (consul-template would
/// wait until it exists, which a one-shot render cannot do).
fn key(args: &[Value]) -> Result<Value, FuncError> {
    match lookup_key("key", args)? {
        (_, None) => Ok(Value::from("")),
        (_, Some(Some(v))) => Ok(Value::from(v)),
        (path, _) if path.is_empty() => Ok(Value::from("")),
        (path, Some(None)) => Err(FuncError::Generic(format!(
            "key \"{path}\" does not exist; use keyOrDefault \"{path}\" \"...\" if it may be absent"
        ))),
    }
}

/// `keyOrDefault "path" "default"`: an absent or empty value is the default.
fn key_or_default(args: &[Value]) -> Result<Value, FuncError> {
    let default = string_arg("keyOrDefault", args, 1)?;
    match lookup_key("keyOrDefault", args)? {
        (_, Some(Some(v))) if !v.is_empty() => Ok(Value::from(v)),
        _ => Ok(Value::from(default)),
    }
}

fn key_exists(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(matches!(
        lookup_key("keyExists", args)?,
        (_, Some(Some(_)))
    )))
}

/// Which pairs of a listing a function keeps.
#[derive(Clone, Copy)]
enum Listing {
    /// `ls`: keys directly under the prefix.
    TopLevel,
    /// `tree`: every key that is not a folder marker.
    Recursive,
}

/// The pairs under a prefix, as consul-template's `KVListQuery` makes them:
/// every key starting with the prefix (so `ls "app"` also lists `apple`),
/// each `Key` being the rest with leading `/`s trimmed and `Path` the full key.
fn pairs(name: &str, args: &[Value], listing: Listing, safe: bool) -> Result<Value, FuncError> {
    let raw = string_arg(name, args, 0)?;
    if raw.is_empty() {
        return Ok(Value::Array(vec![]));
    }
    let prefix = kv_path(&raw).to_string();
    let listed = with_scope(|scope| match scope.snapshot.prefixes.get(&prefix) {
        Some(entries) => Some(
            entries
                .iter()
                .filter_map(|e| pair_value(&prefix, e, listing))
                .collect::<Vec<_>>(),
        ),
        None => {
            scope.need(Dependency::Prefix(prefix.clone()));
            None
        }
    })?;
    match listed {
        None => Ok(Value::Array(vec![])),
        // consul-template's safeLs/safeTree wait rather than render an empty
        // listing; a one-shot render cannot wait.
        Some(pairs) if pairs.is_empty() && safe => Err(FuncError::Generic(format!(
            "{name} \"{raw}\": no keys under the prefix (consul-template would wait for some; use {} to render an empty list)",
            if matches!(listing, Listing::TopLevel) {
                "ls"
            } else {
                "tree"
            }
        ))),
        Some(pairs) => Ok(Value::Array(pairs)),
    }
}

fn pair_value(prefix: &str, e: &KvEntry, listing: Listing) -> Option<Value> {
    let key = e.key.strip_prefix(prefix)?.trim_start_matches('/');
    let keep = match listing {
        Listing::TopLevel => !key.is_empty() && !key.contains('/'),
        Listing::Recursive => !key.rsplit('/').next().unwrap_or_default().is_empty(),
    };
    keep.then(|| {
        obj(vec![
            ("Path", Value::from(e.key.clone())),
            ("Key", Value::from(key.to_string())),
            (
                "Value",
                Value::from(String::from_utf8_lossy(&e.value).into_owned()),
            ),
            ("CreateIndex", Value::from(e.create_index)),
            ("ModifyIndex", Value::from(e.modify_index)),
        ])
    })
}

fn ls(args: &[Value]) -> Result<Value, FuncError> {
    pairs("ls", args, Listing::TopLevel, false)
}

fn tree(args: &[Value]) -> Result<Value, FuncError> {
    pairs("tree", args, Listing::Recursive, false)
}

fn safe_ls(args: &[Value]) -> Result<Value, FuncError> {
    pairs("safeLs", args, Listing::TopLevel, true)
}

fn safe_tree(args: &[Value]) -> Result<Value, FuncError> {
    pairs("safeTree", args, Listing::Recursive, true)
}

/// `env "NAME"`: a variable the operator granted (`runner template --env
/// NAME`); empty when granted but unset, as consul-template reads it. A
/// template reads nothing else of runner's environment.
fn env(args: &[Value]) -> Result<Value, FuncError> {
    let name = string_arg("env", args, 0)?;
    with_scope(|scope| match scope.snapshot.env.get(&name) {
        Some(value) => Ok(Value::from(value.clone())),
        None => Err(FuncError::Generic(format!(
            "env \"{name}\" is not granted to templates: grant it with `runner template --env {name}` (a plugin's: --allow-template-env {name})"
        ))),
    })?
}

/// `byTag`: services or instances grouped by tag (a map, so ranged in tag
/// order), each group in the list's order.
fn by_tag(args: &[Value]) -> Result<Value, FuncError> {
    let items = match args.first() {
        Some(Value::Array(items)) => items,
        Some(Value::Nil | Value::NoValue) => return Ok(Value::Map(HashMap::new())),
        Some(other) => {
            return Err(FuncError::Generic(format!(
                "byTag: wrong argument type {other}"
            )));
        }
        None => return Err(FuncError::ExactlyXArgs("byTag".into(), 1)),
    };
    let mut groups: HashMap<String, Vec<Value>> = HashMap::new();
    for item in items {
        let Value::Object(fields) = item else {
            return Err(FuncError::Generic(
                "byTag: the list must come from service or services".into(),
            ));
        };
        if let Some(Value::Array(tags)) = fields.get("Tags") {
            for tag in tags {
                if let Value::String(tag) = tag {
                    groups.entry(tag.clone()).or_default().push(item.clone());
                }
            }
        }
    }
    Ok(Value::Map(
        groups
            .into_iter()
            .map(|(k, v)| (k, Value::Array(v)))
            .collect(),
    ))
}

/// `byKey`: `tree` pairs grouped by their first key segment, each keyed by
/// the rest (pairs with no rest are dropped).
fn by_key(args: &[Value]) -> Result<Value, FuncError> {
    let Some(Value::Array(pairs)) = args.first() else {
        return Err(FuncError::Generic(
            "byKey: the argument must be a list of pairs from tree or ls".into(),
        ));
    };
    let mut groups: HashMap<String, HashMap<String, Value>> = HashMap::new();
    for pair in pairs {
        let Value::Object(fields) = pair else {
            return Err(FuncError::Generic(
                "byKey: the argument must be a list of pairs from tree or ls".into(),
            ));
        };
        let Some(Value::String(key)) = fields.get("Key") else {
            continue;
        };
        let (top, rest) = key.split_once('/').unwrap_or((key, ""));
        if rest.is_empty() {
            continue;
        }
        let mut renamed = fields.clone();
        renamed.insert("Key".into(), Value::from(rest.to_string()));
        groups
            .entry(top.to_string())
            .or_default()
            .insert(rest.to_string(), Value::Object(renamed));
    }
    Ok(Value::Map(
        groups
            .into_iter()
            .map(|(k, v)| (k, Value::Map(v)))
            .collect(),
    ))
}

/// `byMeta "k1,k2|int" INSTANCES`: instances grouped by the values of
/// service meta keys, as consul-template names the groups: each value with
/// characters other than `[a-zA-Z0-9_-]` made `_`, a missing one
/// `_no_KEY_` (or `0` for `|int`, whose values are zero-padded to five
/// digits), joined with `_`.
fn by_meta(args: &[Value]) -> Result<Value, FuncError> {
    let keys = string_arg("byMeta", args, 0)?;
    let Some(Value::Array(instances)) = args.get(1) else {
        return Err(FuncError::Generic(
            "byMeta: the second argument must be a list from service".into(),
        ));
    };
    let normalize = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut groups: HashMap<String, Vec<Value>> = HashMap::new();
    for instance in instances {
        let meta = match instance {
            Value::Object(fields) => match fields.get("ServiceMeta") {
                Some(Value::Map(meta)) => meta,
                _ => continue,
            },
            _ => continue,
        };
        let mut parts = Vec::new();
        for key in keys.split(',') {
            let (real_key, as_int) = match key.strip_suffix("|int") {
                Some(k) => (k, true),
                None => (key, false),
            };
            let value = match meta.get(real_key) {
                Some(Value::String(v)) if !v.is_empty() => v.clone(),
                _ if as_int => "0".to_string(),
                _ => format!("_no_{real_key}_"),
            };
            let value = if as_int {
                let n: i64 = value.parse().map_err(|_| {
                    FuncError::Generic(format!(
                        "byMeta: cannot parse {value} as number : strconv.Atoi: parsing \"{value}\": invalid syntax"
                    ))
                })?;
                format!("{n:05}")
            } else {
                value
            };
            parts.push(normalize(&value));
        }
        groups
            .entry(parts.join("_"))
            .or_default()
            .push(instance.clone());
    }
    Ok(Value::Map(
        groups
            .into_iter()
            .map(|(k, v)| (k, Value::Array(v)))
            .collect(),
    ))
}

/// The most levels `explode` makes: a KV key (at most
/// [`crate::names::MAX_KEY`] bytes) has at most half as many segments.
const MAX_EXPLODE_DEPTH: usize = crate::names::MAX_KEY / 2 + 1;

/// `explode PAIRS`: `tree` pairs as nested maps, one level per key segment.
fn explode(args: &[Value]) -> Result<Value, FuncError> {
    let Some(Value::Array(pairs)) = args.first() else {
        return Err(FuncError::Generic(
            "explode: the argument must be a list of pairs from tree or ls".into(),
        ));
    };
    let mut root: HashMap<String, Value> = HashMap::new();
    for pair in pairs {
        let Value::Object(fields) = pair else {
            continue;
        };
        let (Some(Value::String(key)), Some(value)) = (fields.get("Key"), fields.get("Value"))
        else {
            continue;
        };
        let segments: Vec<&str> = key.split('/').collect();
        // Keys come from `tree`, so within a KV key's length; a deeper map
        // would only cost stack to print and drop.
        if segments.len() > MAX_EXPLODE_DEPTH {
            return Err(FuncError::Generic(format!(
                "explode: \"{key}\" is deeper than {MAX_EXPLODE_DEPTH} levels"
            )));
        }
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        // Walk down, making maps: iterative, whatever the key's depth.
        let mut map = &mut root;
        for top in parents {
            let entry = map
                .entry((*top).to_string())
                .or_insert_with(|| Value::Map(HashMap::new()));
            map = match entry {
                Value::Map(nested) => nested,
                other => {
                    return Err(FuncError::Generic(format!(
                        "explode: not a map: \"{key}\": \"{top}\" already has value \"{other}\""
                    )));
                }
            };
        }
        if !last.is_empty() {
            map.insert((*last).to_string(), value.clone());
        }
    }
    Ok(Value::Map(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_queries_parse_as_consul_template_parses_them() {
        let q = parse_service_query("v1.2.web@dc1|passing,warning").unwrap();
        assert_eq!(q.tag.as_deref(), Some("v1.2"));
        assert_eq!(q.name, "web");
        assert_eq!(q.accept, Some(vec![Health::Passing, Health::Warning]));
        assert_eq!(
            parse_service_query("web").unwrap().accept,
            Some(vec![Health::Passing])
        );
        assert_eq!(
            parse_service_query("web|any,critical").unwrap().accept,
            None
        );
        let bad = |q: &str| match parse_service_query(q) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{q} parsed"),
        };
        assert!(bad("web|bogus").contains("invalid filter: \"bogus\""));
        assert!(bad("web|passing|warning").contains("invalid format"));
        assert!(bad("we b").contains("invalid format"));
        // consul-template's filter part allows no spaces.
        assert!(bad("web|passing, warning").contains("invalid format"));
        assert!(bad("x/../y").contains("invalid format"));
        assert!(bad("").contains("invalid format"));
    }

    fn pair(key: &str, value: &str) -> Value {
        obj(vec![
            ("Key", Value::from(key)),
            ("Value", Value::from(value)),
        ])
    }

    /// Hostile arguments (template text may be a plugin's) get errors, never
    /// panics or unbounded recursion.
    #[test]
    fn grouping_functions_refuse_what_they_cannot_group() {
        let clash = Value::Array(vec![pair("a", "1"), pair("a/b", "2")]);
        let err = explode(&[clash]).unwrap_err().to_string();
        assert!(err.contains("not a map"), "{err}");
        // As deep as a key can be, and deeper.
        let deep = "x/".repeat(MAX_EXPLODE_DEPTH - 1) + "leaf";
        assert!(explode(&[Value::Array(vec![pair(&deep, "v")])]).is_ok());
        let deeper = "x/".repeat(20_000) + "leaf";
        let err = explode(&[Value::Array(vec![pair(&deeper, "v")])]).unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
        for args in [vec![], vec![Value::from("x")], vec![Value::from(1u64)]] {
            assert!(explode(&args).is_err());
            assert!(by_key(&args).is_err());
            assert!(by_tag(&args).is_err());
            assert!(by_meta(&args).is_err());
        }
        let meta = |v: &str| {
            obj(vec![(
                "ServiceMeta",
                Value::Map([("w".to_string(), Value::from(v))].into()),
            )])
        };
        let err = by_meta(&[
            Value::from("w|int"),
            Value::Array(vec![meta("99999999999999999999")]),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot parse"), "{err}");
        // A value that is not an integer under `|int` fails the whole call,
        // as consul-template's does.
        let mixed = [
            Value::from("w|int,missing"),
            Value::Array(vec![meta("7"), meta("x y")]),
        ];
        assert!(by_meta(&mixed).is_err());
    }

    #[test]
    fn kv_paths_drop_a_leading_slash_and_the_datacenter() {
        assert_eq!(kv_path("/app/name@dc1"), "app/name");
        assert_eq!(kv_path("app/name?ns=x"), "app/name");
        assert_eq!(kv_path("app/"), "app/");
    }
}
