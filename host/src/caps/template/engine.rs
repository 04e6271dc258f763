//! consul-template compatible rendering on gtmpl (Go text/template).
//!
//! gtmpl's functions are plain `fn` pointers and render synchronously, while
//! registry reads are async and grant-checked. So rendering works as
//! consul-template's own loop does: render with what is known; a function
//! whose data is missing records the dependency and returns an empty value;
//! the caller fetches the missing data and renders again, until a pass needs
//! nothing new. The known data lives in a thread-local scope that exists only
//! during one synchronous `render` call, so concurrent renders on other
//! threads (or tasks) never see each other's data.

use crate::registry::{Instance, KvEntry};
use gtmpl::{Context, FuncError, Template, Value};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

pub use crate::registry::Dependency;

/// Fetched data, filled in between passes.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<String, Vec<Instance>>,
    pub keys: HashMap<String, Option<Vec<u8>>>,
    pub prefixes: HashMap<String, Vec<KvEntry>>,
    pub service_names: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template does not parse: {0}")]
    Parse(String),
    #[error("template failed to render: {0}")]
    Exec(String),
    #[error("template still needed new data after {0} passes (a dependency cycle?)")]
    TooManyPasses(usize),
}

/// Where a render gets its data; the template capability implements it with
/// grant checks, tests with a map.
pub trait DataSource {
    fn fetch(
        &self,
        dep: &Dependency,
        into: &mut Snapshot,
    ) -> impl std::future::Future<Output = Result<(), crate::bindings::PluginError>> + Send;
}

const MAX_PASSES: usize = 8;

struct Scope {
    snapshot: Snapshot,
    missing: BTreeSet<Dependency>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Sets the scope for one synchronous render and always takes it back.
struct ScopeGuard;

impl ScopeGuard {
    fn enter(snapshot: Snapshot) -> Self {
        SCOPE.with(|s| {
            *s.borrow_mut() = Some(Scope {
                snapshot,
                missing: BTreeSet::new(),
            })
        });
        ScopeGuard
    }

    fn leave(self) -> Scope {
        let scope = SCOPE.with(|s| s.borrow_mut().take());
        std::mem::forget(self);
        scope.unwrap_or_else(|| Scope {
            snapshot: Snapshot::default(),
            missing: BTreeSet::new(),
        })
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

fn with_scope<T>(f: impl FnOnce(&mut Scope) -> T) -> Result<T, FuncError> {
    SCOPE.with(|s| match s.borrow_mut().as_mut() {
        Some(scope) => Ok(f(scope)),
        None => Err(FuncError::Generic(
            "template function called outside a render".into(),
        )),
    })
}

/// Parse once, then render in passes until every dependency is fetched.
pub async fn render(text: &str, source: &impl DataSource) -> Result<String, RenderErrorOrDenied> {
    let template = parse(text)?;
    let mut snapshot = Snapshot::default();
    for _ in 0..MAX_PASSES {
        let guard = ScopeGuard::enter(snapshot);
        let result = template.render(&Context::empty());
        let scope = guard.leave();
        snapshot = scope.snapshot;
        if scope.missing.is_empty() {
            return result.map_err(|e| RenderError::Exec(e.to_string()).into());
        }
        // A pass with missing data may fail on placeholders: fetch and retry.
        for dep in &scope.missing {
            source.fetch(dep, &mut snapshot).await?;
        }
    }
    Err(RenderError::TooManyPasses(MAX_PASSES).into())
}

/// Either a template problem or a refused/failed data fetch.
#[derive(Debug, thiserror::Error)]
pub enum RenderErrorOrDenied {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{0}")]
    Fetch(#[from] crate::bindings::PluginError),
}

fn parse(text: &str) -> Result<Template, RenderError> {
    let mut template = Template::default();
    template.add_funcs(&[
        ("service", service as gtmpl::Func),
        ("services", services as gtmpl::Func),
        ("key", key as gtmpl::Func),
        ("keyOrDefault", key_or_default as gtmpl::Func),
        ("keyExists", key_exists as gtmpl::Func),
        ("ls", ls as gtmpl::Func),
        ("tree", tree as gtmpl::Func),
    ]);
    template
        .parse(text)
        .map_err(|e| RenderError::Parse(e.to_string()))?;
    Ok(template)
}

fn string_arg(name: &str, args: &[Value], i: usize) -> Result<String, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(FuncError::Generic(format!(
            "{name}: argument {} must be a string, got {other}",
            i + 1
        ))),
        None => Err(FuncError::AtLeastXArgs(name.into(), i + 1)),
    }
}

fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn instance_value(i: &Instance) -> Value {
    obj(vec![
        ("ID", Value::from(i.id.clone())),
        ("Name", Value::from(i.name.clone())),
        ("Address", Value::from(i.address.clone())),
        ("Port", Value::from(u64::from(i.port))),
        (
            "Tags",
            Value::Array(i.tags.iter().cloned().map(Value::from).collect()),
        ),
        (
            "Status",
            Value::from(if i.healthy { "passing" } else { "critical" }),
        ),
    ])
}

/// `service "[tag.]name" ["any"|"passing"]` (or `"name|any"`): healthy
/// instances by default, every instance with "any" (consul-template's filter).
fn service(args: &[Value]) -> Result<Value, FuncError> {
    let query = string_arg("service", args, 0)?;
    // `service "name|any"` is consul-template's inline form of the filter.
    let (query, inline_filter) = match query.split_once('|') {
        Some((q, f)) => (q.to_string(), Some(f.to_string())),
        None => (query, None),
    };
    let filter = inline_filter
        .map(Value::from)
        .or_else(|| args.get(1).cloned());
    let any = match filter.as_ref() {
        None => false,
        Some(Value::String(f)) if f == "any" => true,
        Some(Value::String(f)) if f == "passing" => false,
        Some(other) => {
            return Err(FuncError::Generic(format!(
                "service \"{query}\": health filter must be \"any\" or \"passing\", got {other}"
            )));
        }
    };
    let query = query.split('@').next().unwrap_or_default().to_string();
    let (tag, name) = match query.rsplit_once('.') {
        Some((t, n)) => (Some(t.to_string()), n.to_string()),
        None => (None, query),
    };
    with_scope(|scope| match scope.snapshot.services.get(&name) {
        Some(instances) => Value::Array(
            instances
                .iter()
                .filter(|i| any || i.healthy)
                .filter(|i| tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                .map(instance_value)
                .collect(),
        ),
        None => {
            scope.missing.insert(Dependency::Service(name));
            Value::Array(vec![])
        }
    })
}

fn services(_args: &[Value]) -> Result<Value, FuncError> {
    with_scope(|scope| match &scope.snapshot.service_names {
        Some(names) => Value::Array(
            names
                .iter()
                .map(|n| {
                    obj(vec![
                        ("Name", Value::from(n.clone())),
                        ("Tags", Value::Array(vec![])),
                    ])
                })
                .collect(),
        ),
        None => {
            scope.missing.insert(Dependency::Services);
            Value::Array(vec![])
        }
    })
}

/// Looks a key up; `None` means "not fetched yet" (and records the dependency).
fn lookup_key(name: &str, args: &[Value]) -> Result<(String, Option<Option<String>>), FuncError> {
    let path = string_arg(name, args, 0)?;
    let found = with_scope(|scope| match scope.snapshot.keys.get(&path) {
        Some(v) => Some(v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())),
        None => {
            scope.missing.insert(Dependency::Key(path.clone()));
            None
        }
    })?;
    Ok((path, found))
}

/// `key "path"`: the value; a missing key is an error (consul-template would
/// block until it exists, which a one-shot render cannot do).
fn key(args: &[Value]) -> Result<Value, FuncError> {
    match lookup_key("key", args)? {
        (_, None) => Ok(Value::from("")),
        (_, Some(Some(v))) => Ok(Value::from(v)),
        (path, Some(None)) => Err(FuncError::Generic(format!(
            "key \"{path}\" does not exist; use keyOrDefault \"{path}\" \"...\" if it may be absent"
        ))),
    }
}

fn key_or_default(args: &[Value]) -> Result<Value, FuncError> {
    let default = string_arg("keyOrDefault", args, 1)?;
    match lookup_key("keyOrDefault", args)? {
        (_, Some(Some(v))) => Ok(Value::from(v)),
        _ => Ok(Value::from(default)),
    }
}

fn key_exists(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(matches!(
        lookup_key("keyExists", args)?,
        (_, Some(Some(_)))
    )))
}

fn pairs(name: &str, args: &[Value], top_level_only: bool) -> Result<Value, FuncError> {
    let prefix = string_arg(name, args, 0)?;
    let base = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.clone()
    } else {
        format!("{prefix}/")
    };
    with_scope(|scope| match scope.snapshot.prefixes.get(&base) {
        Some(entries) => Value::Array(
            entries
                .iter()
                .filter_map(|e| {
                    let rel = e.key.strip_prefix(&base)?;
                    // Folder markers (`dir/`) are not pairs, as in Consul.
                    if rel.is_empty() || rel.ends_with('/') || (top_level_only && rel.contains('/'))
                    {
                        return None;
                    }
                    Some(obj(vec![
                        ("Key", Value::from(rel.to_string())),
                        (
                            "Value",
                            Value::from(String::from_utf8_lossy(&e.value).into_owned()),
                        ),
                    ]))
                })
                .collect(),
        ),
        None => {
            scope.missing.insert(Dependency::Prefix(base.clone()));
            Value::Array(vec![])
        }
    })
}

/// `ls "prefix"`: the pairs directly under prefix.
fn ls(args: &[Value]) -> Result<Value, FuncError> {
    pairs("ls", args, true)
}

/// `tree "prefix"`: every pair under prefix, keys relative to it.
fn tree(args: &[Value]) -> Result<Value, FuncError> {
    pairs("tree", args, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::PluginError;

    #[derive(Default)]
    struct MapSource {
        instances: HashMap<String, Vec<Instance>>,
        kv: Vec<(String, String)>,
    }

    impl DataSource for MapSource {
        async fn fetch(&self, dep: &Dependency, into: &mut Snapshot) -> Result<(), PluginError> {
            match dep {
                Dependency::Service(s) => {
                    into.services.insert(
                        s.clone(),
                        self.instances.get(s).cloned().unwrap_or_default(),
                    );
                }
                Dependency::Key(k) => {
                    let v = self
                        .kv
                        .iter()
                        .find(|(kk, _)| kk == k)
                        .map(|(_, v)| v.clone().into_bytes());
                    into.keys.insert(k.clone(), v);
                }
                Dependency::Prefix(p) => {
                    let entries = self
                        .kv
                        .iter()
                        .filter(|(k, _)| k.starts_with(p.as_str()))
                        .map(|(k, v)| KvEntry {
                            key: k.clone(),
                            value: v.clone().into_bytes(),
                            create_index: 1,
                            modify_index: 1,
                        })
                        .collect();
                    into.prefixes.insert(p.clone(), entries);
                }
                Dependency::Services => {
                    into.service_names = Some(self.instances.keys().cloned().collect());
                }
            }
            Ok(())
        }
    }

    fn inst(name: &str, id: &str, port: u16, healthy: bool, tags: &[&str]) -> Instance {
        Instance {
            id: id.into(),
            name: name.into(),
            address: "10.100.198.201".into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            healthy,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The seed's `nginx-upstreams-blue.ctmpl`, unchanged. Go's text/template
    /// keeps the whitespace around actions, so the exact bytes consul-template
    /// writes are these (the seed's book shows them with blank lines collapsed).
    #[test]
    fn seed_upstream_template_renders_byte_for_byte() {
        let seed = "upstream books-ms {\n {{range service \"books-ms-blue\" \"any\"}}\n server {{.Address}}:{{.Port}};\n {{end}}\n}\n";
        let mut src = MapSource::default();
        src.instances.insert(
            "books-ms-blue".into(),
            vec![inst(
                "books-ms-blue",
                "prod:books-ms-blue:8080",
                32769,
                false,
                &[],
            )],
        );
        let out = block_on(render(seed, &src)).unwrap();
        assert_eq!(
            out,
            "upstream books-ms {\n \n server 10.100.198.201:32769;\n \n}\n"
        );
    }

    #[test]
    fn service_without_any_lists_only_healthy_and_filters_tags() {
        let mut src = MapSource::default();
        src.instances.insert(
            "web".into(),
            vec![
                inst("web", "a", 1, true, &["v1"]),
                inst("web", "b", 2, false, &["v1"]),
                inst("web", "c", 3, true, &["v2"]),
            ],
        );
        let t = "{{range service \"web\"}}{{.ID}} {{end}}|{{range service \"v1.web\" \"any\"}}{{.ID}} {{end}}|{{range service \"web\" \"any\"}}{{.Port}}{{range .Tags}}[{{.}}]{{end}} {{end}}";
        assert_eq!(
            block_on(render(t, &src)).unwrap(),
            "a c |a b |1[v1] 2[v1] 3[v2] "
        );
    }

    #[test]
    fn inline_any_filter_form() {
        let mut src = MapSource::default();
        src.instances.insert(
            "web".into(),
            vec![
                inst("web", "a", 1, true, &[]),
                inst("web", "b", 2, false, &[]),
            ],
        );
        let t = "{{range service \"web|any\"}}{{.ID}}{{end}} {{range service \"web|passing\"}}{{.ID}}{{end}}";
        assert_eq!(block_on(render(t, &src)).unwrap(), "ab a");
    }

    #[test]
    fn key_functions_and_listing() {
        let src = MapSource {
            kv: vec![
                ("app/color".into(), "blue".into()),
                ("app/conf/a".into(), "1".into()),
                ("app/conf/b/c".into(), "2".into()),
            ],
            ..Default::default()
        };
        let t = "{{key \"app/color\"}} {{keyOrDefault \"app/none\" \"dflt\"}} {{keyExists \"app/color\"}} {{keyExists \"app/none\"}} \
                 ls:{{range ls \"app/conf\"}}{{.Key}}={{.Value}};{{end}} tree:{{range tree \"app/conf/\"}}{{.Key}}={{.Value}};{{end}}";
        assert_eq!(
            block_on(render(t, &src)).unwrap(),
            "blue dflt true false ls:a=1; tree:a=1;b/c=2;"
        );
    }

    #[test]
    fn missing_key_is_an_error_naming_the_key_and_the_fix() {
        let err = block_on(render("{{key \"app/none\"}}", &MapSource::default()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app/none") && err.contains("keyOrDefault"),
            "{err}"
        );
    }

    #[test]
    fn dependent_lookups_resolve_over_passes() {
        let src = MapSource {
            kv: vec![("app/svc".into(), "web".into())],
            instances: [("web".to_string(), vec![inst("web", "a", 9, true, &[])])].into(),
        };
        let t = "{{range service (key \"app/svc\")}}{{.Port}}{{end}}";
        assert_eq!(block_on(render(t, &src)).unwrap(), "9");
    }

    #[test]
    fn parse_errors_are_reported() {
        let err = block_on(render("{{range}}", &MapSource::default())).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }

    #[test]
    fn concurrent_renders_do_not_share_data() {
        let threads: Vec<_> = (0..8u16)
            .map(|n| {
                std::thread::spawn(move || {
                    let mut src = MapSource::default();
                    src.instances
                        .insert("s".into(), vec![inst("s", "x", n, true, &[])]);
                    for _ in 0..50 {
                        assert_eq!(
                            block_on(render("{{range service \"s\"}}{{.Port}}{{end}}", &src))
                                .unwrap(),
                            n.to_string()
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
