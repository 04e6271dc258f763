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
//!
//! # Bounds
//!
//! Template text can come from a plugin (`template.render-string` needs no
//! grant), so a render must never outrun or crash the host, whatever the text.
//! gtmpl had no hooks for that: its evaluator recursed once per nested
//! `{{template}}` (to a depth of 100 000, far past the stack), looped over
//! `range`s and expanded templates without any budget, and panicked on
//! `printf "%100000d"`. Its parse tree cannot be inspected from outside (the
//! node types are private), so no static analysis is possible short of
//! re-implementing its lexer, whose every disagreement with the real one would
//! be a way around the analysis; and a static bound on `range` has to assume
//! every loop runs over the largest list in the data, rejecting ordinary
//! nested loops over a big catalog. So gtmpl is vendored (`vendor/gtmpl`, see
//! its `PATCHES.md`) with one mechanism added where the work happens: a step
//! budget the evaluator itself charges for every node walked, range
//! iteration, command and argument evaluated and every KiB of value copied or
//! returned by a function, with limits on `{{template}}` depth, parser
//! nesting, value size and printf widths. Whatever the text, a render stops at
//! [`MAX_STEPS`] (well under a second), which makes exponential expansion,
//! recursion and long loops the same error. Around that, this module caps the
//! text and the output (a writer that refuses past [`MAX_OUTPUT_BYTES`]),
//! renders on its own thread with a stack that the nesting limits cannot
//! exhaust (so the async caller can give up at its timeout, and an abandoned
//! render still stops by itself at the step budget or [`MAX_RENDER_TIME`]),
//! and turns any panic left in gtmpl into [`RenderError::Panicked`].

use crate::registry::{Instance, KvEntry, ServiceSummary};
use gtmpl::{Context, ExecError, FuncError, Limits, ParseError, PrintError, Template, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest template text: a consul-template file is a few KiB; parsing is
/// linear in the text, and every node costs steps, so this keeps both small.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// How deeply `{{template}}` calls may nest: real templates nest a handful of
/// partials; a recursive template hits this at once instead of the stack.
pub const MAX_NESTING: usize = 64;
/// How deeply `if`/`range`/`with`/`else if`/`block` and parentheses may nest
/// within the text: gtmpl parses and walks them recursively, one stack frame
/// group per level.
pub const MAX_SYNTAX_NESTING: usize = 100;
/// The work one render pass may do, in gtmpl steps (a node, a range
/// iteration, an argument, a KiB copied): a large real template takes
/// thousands to a few hundred thousand; the limit takes well under a second.
pub const MAX_STEPS: u64 = 2_000_000;
/// The largest rendered output, and the largest value a function may return:
/// a generated config file is KiBs; this bounds memory whatever the text.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// The widest printf width or precision: a column wider than a screen is never
/// needed, and Rust's formatter panics above 65 535.
pub const MAX_FORMAT_WIDTH: usize = 1024;
/// Wall-clock limit on one render pass, a backstop behind [`MAX_STEPS`] so
/// that a render the caller gave up on cannot keep a thread busy.
pub const MAX_RENDER_TIME: Duration = Duration::from_secs(10);
/// The render thread's stack: the nesting limits bound recursion to
/// `MAX_NESTING * MAX_SYNTAX_NESTING` levels of a few hundred bytes each.
const RENDER_STACK_BYTES: usize = 64 << 20;
/// Errors quote template values, which may be large; keep messages readable.
const MAX_ERROR_CHARS: usize = 500;

pub use crate::registry::Dependency;

/// Fetched data, filled in between passes.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<String, Vec<Instance>>,
    pub keys: HashMap<String, Option<Vec<u8>>>,
    pub prefixes: HashMap<String, Vec<KvEntry>>,
    pub service_summaries: Option<Vec<ServiceSummary>>,
    /// The environment variables granted to templates (`env`), by name.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template does not parse: {0}")]
    Parse(String),
    #[error("template failed to render: {0}")]
    Exec(String),
    #[error("template still needed new data after {0} passes (a dependency cycle?)")]
    TooManyPasses(usize),
    #[error("template data: {0}")]
    BadDependency(String),
    #[error("template text is {0} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit")]
    TextTooLarge(usize),
    #[error("template nesting deeper than {0} levels (a recursive {{{{template}}}}?)")]
    TooDeep(usize),
    #[error(
        "template syntax nested deeper than {0} levels (if/range/with/else if/block/parentheses)"
    )]
    SyntaxTooDeep(usize),
    #[error(
        "template rendering took more than {0} steps (a loop or {{{{template}}}} calls that expand exponentially?)"
    )]
    TooManySteps(u64),
    #[error("template output larger than {0} bytes")]
    OutputTooLarge(usize),
    #[error(
        "template function {function} returned {size} bytes, over the {max}-byte limit on values"
    )]
    ValueTooLarge {
        function: String,
        size: usize,
        max: usize,
    },
    #[error("template printf width or precision {0} is over the limit of {1}")]
    FormatWidth(usize, usize),
    #[error("template rendering took longer than {}s", .0.as_secs())]
    TookTooLong(Duration),
    #[error("template engine panicked: {0}")]
    Panicked(String),
    #[error("cannot start a template render thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl RenderError {
    /// Errors a later pass with more data cannot fix.
    fn is_final(&self) -> bool {
        !matches!(self, RenderError::Exec(_))
    }
}

/// Where a render gets its data; the template capability implements it with
/// grant checks, tests with a map.
pub trait DataSource {
    fn fetch(
        &self,
        dep: &Dependency,
        into: &mut Snapshot,
    ) -> impl std::future::Future<Output = Result<(), crate::bindings::PluginError>> + Send;

    /// The environment variables templates may read (`env`), by name.
    fn granted_env(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

const MAX_PASSES: usize = 8;

#[derive(Debug)]
pub(super) struct Scope {
    pub(super) snapshot: Snapshot,
    missing: BTreeSet<Dependency>,
    /// Why a dependency was refused (an invalid name, too many of them).
    refused: Option<String>,
}

/// Most distinct data one template may depend on: each is fetched and held,
/// and a template builds their names.
pub const MAX_DEPENDENCIES: usize = 4096;

impl Scope {
    /// Record data a pass needs. Names are checked here, as a direct read
    /// checks them, so a template cannot hold unbounded names either.
    pub(super) fn need(&mut self, dep: Dependency) {
        if self.refused.is_some() || self.missing.contains(&dep) {
            return;
        }
        // An empty name is a placeholder from a lookup still to be fetched
        // (`service (key "x")` on the first pass): nothing to fetch yet.
        let empty = matches!(&dep, Dependency::Service(n) | Dependency::Key(n) if n.is_empty());
        if empty {
            return;
        }
        let invalid = match &dep {
            Dependency::Service(name) => crate::names::service_name(name).err(),
            Dependency::Key(key) => crate::names::kv_key(key).err(),
            Dependency::Prefix(prefix) => crate::names::kv_prefix(prefix).err(),
            Dependency::Services => None,
        };
        if let Some(e) = invalid {
            self.refused = Some(e.to_string());
        } else if self.missing.len() + self.snapshot.len() >= MAX_DEPENDENCIES {
            self.refused = Some(format!(
                "the template reads more than {MAX_DEPENDENCIES} keys, prefixes and services"
            ));
        } else {
            self.missing.insert(dep);
        }
    }
}

impl Snapshot {
    fn len(&self) -> usize {
        self.services.len() + self.keys.len() + self.prefixes.len()
    }
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
                refused: None,
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
            refused: None,
        })
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

pub(super) fn with_scope<T>(f: impl FnOnce(&mut Scope) -> T) -> Result<T, FuncError> {
    SCOPE.with(|s| match s.borrow_mut().as_mut() {
        Some(scope) => Ok(f(scope)),
        None => Err(FuncError::Generic(
            "template function called outside a render".into(),
        )),
    })
}

/// Render in passes until every dependency is fetched; each pass runs on its
/// own thread within the bounds above.
pub async fn render(text: &str, source: &impl DataSource) -> Result<String, RenderErrorOrDenied> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(RenderError::TextTooLarge(text.len()).into());
    }
    let text: Arc<str> = Arc::from(text);
    let mut snapshot = Snapshot {
        env: source.granted_env(),
        ..Snapshot::default()
    };
    for _ in 0..MAX_PASSES {
        let (result, scope) = render_pass(text.clone(), snapshot).await?;
        snapshot = scope.snapshot;
        if let Some(reason) = scope.refused {
            return Err(RenderError::BadDependency(reason).into());
        }
        if scope.missing.is_empty() || result.as_ref().is_err_and(RenderError::is_final) {
            return result.map_err(Into::into);
        }
        // A pass with missing data may fail on placeholders: fetch and retry.
        for dep in &scope.missing {
            source.fetch(dep, &mut snapshot).await?;
        }
    }
    Err(RenderError::TooManyPasses(MAX_PASSES).into())
}

/// One pass off the async executor. Dropping the future (a caller's timeout)
/// abandons the thread, which stops by itself within the step budget.
async fn render_pass(text: Arc<str>, snapshot: Snapshot) -> Result<Pass, RenderError> {
    render_pass_with(text, snapshot, render_once).await
}

type Pass = (Result<String, RenderError>, Scope);

async fn render_pass_with(
    text: Arc<str>,
    snapshot: Snapshot,
    render_once: fn(&str, Snapshot) -> Pass,
) -> Result<Pass, RenderError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("template-render".into())
        .stack_size(RENDER_STACK_BYTES)
        .spawn(move || {
            let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                render_once(&text, snapshot)
            }));
            // The receiver is gone if the caller gave up; nothing to do.
            let _ = tx.send(pass.map_err(panic_message));
        })
        .map_err(RenderError::Thread)?;
    match rx.await {
        Ok(pass) => pass.map_err(RenderError::Panicked),
        Err(_) => Err(RenderError::Panicked(
            "the render thread ended without a result".into(),
        )),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    truncate(crate::runtime::panic_message(payload.as_ref()))
}

/// Parse and execute once, with the data known so far.
fn render_once(text: &str, snapshot: Snapshot) -> Pass {
    let guard = ScopeGuard::enter(snapshot);
    let result = parse(text).and_then(|template| execute(&template));
    (result, guard.leave())
}

fn execute(template: &Template) -> Result<String, RenderError> {
    let mut out = CappedWriter::default();
    template
        .execute(&mut out, &Context::empty())
        .map_err(|e| exec_error(e, out.overflowed))?;
    String::from_utf8(out.buf).map_err(|e| RenderError::Exec(e.to_string()))
}

/// Collects output, failing (and so stopping the render) past the cap.
#[derive(Default)]
struct CappedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("template output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn exec_error(e: ExecError, output_overflowed: bool) -> RenderError {
    match e {
        ExecError::IOError(_) if output_overflowed => RenderError::OutputTooLarge(MAX_OUTPUT_BYTES),
        ExecError::TemplateDepth(n) => RenderError::TooDeep(n),
        ExecError::TooManySteps(n) => RenderError::TooManySteps(n),
        ExecError::DeadlineExceeded => RenderError::TookTooLong(MAX_RENDER_TIME),
        ExecError::ValueTooLarge {
            function,
            size,
            max,
        } => RenderError::ValueTooLarge {
            function,
            size,
            max,
        },
        ExecError::FuncError(FuncError::Other(ref inner)) => {
            match inner.downcast_ref::<PrintError>() {
                Some(PrintError::WidthTooLarge(n, max)) => RenderError::FormatWidth(*n, *max),
                _ => RenderError::Exec(truncate(e.to_string())),
            }
        }
        e => RenderError::Exec(truncate(e.to_string())),
    }
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        message.truncate(cut);
        message.push_str("...");
    }
    message
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
    let mut template = Template {
        limits: Limits {
            max_template_depth: MAX_NESTING,
            max_syntax_nesting: MAX_SYNTAX_NESTING,
            max_steps: MAX_STEPS,
            max_value_bytes: MAX_OUTPUT_BYTES,
            deadline: Some(Instant::now() + MAX_RENDER_TIME),
        },
        ..Template::default()
    };
    template.add_funcs(&[
        // Overrides gtmpl's own, to bound widths.
        ("printf", printf as gtmpl::Func),
    ]);
    template.add_funcs(super::data::DATA_FUNCTIONS);
    template.add_funcs(super::funcs::LIBRARY);
    template.add_funcs(super::encoding::ENCODING_FUNCTIONS);
    template.add_funcs(super::math::MATH_FUNCTIONS);
    // consul-template's `executeTemplate`, bounded as `{{template}}` is.
    template.enable_execute_template();
    template.parse(text).map_err(|e| match e {
        ParseError::TooDeep(n) => RenderError::SyntaxTooDeep(n),
        e => RenderError::Parse(truncate(e.to_string())),
    })?;
    Ok(template)
}

/// gtmpl's `printf`, refusing widths and precisions over [`MAX_FORMAT_WIDTH`].
fn printf(args: &[Value]) -> Result<Value, FuncError> {
    gtmpl::funcs::printf_bounded(args, MAX_FORMAT_WIDTH)
}

pub(super) fn string_arg(name: &str, args: &[Value], i: usize) -> Result<String, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(FuncError::Generic(format!(
            "{name}: argument {} must be a string, got {other}",
            i + 1
        ))),
        None => Err(FuncError::AtLeastXArgs(name.into(), i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::PluginError;

    #[derive(Default)]
    struct MapSource {
        instances: HashMap<String, Vec<Instance>>,
        kv: Vec<(String, String)>,
        env: BTreeMap<String, String>,
    }

    impl DataSource for MapSource {
        fn granted_env(&self) -> BTreeMap<String, String> {
            self.env.clone()
        }

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
                    let mut names: Vec<_> = self.instances.keys().cloned().collect();
                    names.sort();
                    into.service_summaries = Some(
                        names
                            .into_iter()
                            .map(|name| crate::registry::ServiceSummary {
                                name,
                                tags: Vec::new(),
                            })
                            .collect(),
                    );
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
            status: if healthy {
                crate::registry::Health::Passing
            } else {
                crate::registry::Health::Critical
            },
            ..Instance::default()
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

    /// Go's text/template where gtmpl differed (vendor/gtmpl/PATCHES.md):
    /// each expected output is what Go 1.19 prints for the same template.
    #[test]
    fn go_template_semantics_gtmpl_got_wrong() {
        let src = MapSource::default();
        let cases = [
            // `eq` with more than two arguments is "equal to any".
            (r#"{{eq "b" "a" "b"}} {{eq "c" "a" "b"}}"#, "true false"),
            // `%q` quotes as strconv.Quote; `%%` is a literal percent.
            (r#"{{printf "%q" "a\"b\n"}}"#, r#""a\"b\n""#),
            (r#"{{printf "100%% %d%%" 5}}"#, "100% 5%"),
            // Integer literals with a base prefix or separators.
            (
                "{{0x10}} {{0o17}} {{017}} {{0b101}} {{1_000}} {{-0x10}}",
                "16 15 15 5 1000 -16",
            ),
        ];
        for (template, want) in cases {
            assert_eq!(
                block_on(render(template, &src)).unwrap(),
                want,
                "{template}"
            );
        }
        // Lists print as Go prints a slice, not gtmpl's debug form.
        let mut src = MapSource::default();
        src.instances
            .insert("web".into(), vec![inst("web", "a", 1, true, &["x", "y"])]);
        assert_eq!(
            block_on(render("{{range service \"web\"}}{{.Tags}}{{end}}", &src)).unwrap(),
            "[x y]"
        );
    }

    /// consul-template's readings: an empty service name renders nothing;
    /// a key's leading `/` and `@dc` are not part of it; `keyOrDefault` of an
    /// empty value is the default; tags match case-insensitively (Consul's).
    #[test]
    fn consul_template_readings_of_names_keys_and_tags() {
        let mut src = MapSource {
            kv: vec![
                ("app/svc".into(), "web".into()),
                ("app/empty".into(), String::new()),
            ],
            ..Default::default()
        };
        src.instances
            .insert("web".into(), vec![inst("web", "a", 1, true, &["Blue"])]);
        let t = concat!(
            r#"[{{range service (key "app/none-yet" | printf "%.0s")}}x{{end}}]"#,
            r#"{{key "/app/svc"}} {{key "app/svc@dc1"}} "#,
            r#"{{keyOrDefault "app/empty" "dflt"}} "#,
            r#"{{range service "blue.web"}}{{.ID}}{{end}}"#,
        );
        src.kv.push(("app/none-yet".into(), "ignored".into()));
        assert_eq!(block_on(render(t, &src)).unwrap(), "[]web web dflt a");
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
            ..MapSource::default()
        };
        let t = "{{range service (key \"app/svc\")}}{{.Port}}{{end}}";
        assert_eq!(block_on(render(t, &src)).unwrap(), "9");
    }

    #[test]
    fn parse_errors_are_reported() {
        let err = block_on(render("{{range}}", &MapSource::default())).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }

    fn render_err(text: &str) -> RenderError {
        match block_on(render(text, &MapSource::default())) {
            Err(RenderErrorOrDenied::Render(e)) => e,
            other => panic!("expected a render error, got {other:?}"),
        }
    }

    /// `{{define "tN"}}` calling `t(N+1)` twice, 40 levels: 2^40 leaves.
    fn exponential(leaf: &str) -> String {
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!(
                "{{{{define \"t{i}\"}}}}{{{{template \"t{n}\"}}}}{{{{template \"t{n}\"}}}}{{{{end}}}}",
                n = i + 1
            ));
        }
        text.push_str(&format!(
            "{{{{define \"t40\"}}}}{leaf}{{{{end}}}}{{{{template \"t0\"}}}}"
        ));
        text
    }

    // Before the bounds, this overflowed the stack and aborted the process.
    #[test]
    fn self_recursion_is_a_nesting_error() {
        let err = render_err(r#"{{define "r"}}x{{template "r"}}{{end}}{{template "r"}}"#);
        assert!(matches!(err, RenderError::TooDeep(MAX_NESTING)), "{err:?}");
        assert!(
            err.to_string()
                .contains("nesting deeper than 64 levels (a recursive {{template}}?)"),
            "{err}"
        );
    }

    // Before: a stack overflow (abort), as above.
    #[test]
    fn mutual_recursion_is_a_nesting_error() {
        let err = render_err(
            r#"{{define "a"}}{{template "b" .}}{{end}}{{define "b"}}{{template "a" .}}{{end}}{{template "a" 1}}"#,
        );
        assert!(matches!(err, RenderError::TooDeep(MAX_NESTING)), "{err:?}");
    }

    #[test]
    fn nesting_up_to_the_cap_still_renders() {
        // d0 .. d{depth-1}: `depth` nested calls.
        let chain = |depth: usize| {
            let mut text = String::new();
            for i in 0..depth - 1 {
                text.push_str(&format!(
                    "{{{{define \"d{i}\"}}}}{{{{template \"d{}\"}}}}{{{{end}}}}",
                    i + 1
                ));
            }
            text.push_str(&format!(
                "{{{{define \"d{}\"}}}}deep{{{{end}}}}{{{{template \"d0\"}}}}",
                depth - 1
            ));
            text
        };
        assert_eq!(
            block_on(render(&chain(MAX_NESTING), &MapSource::default())).unwrap(),
            "deep"
        );
        let err = render_err(&chain(MAX_NESTING + 1));
        assert!(matches!(err, RenderError::TooDeep(MAX_NESTING)), "{err:?}");
    }

    // Before: `%100000d` panicked inside gtmpl; width 2000 and precision
    // 5000 rendered.
    #[test]
    fn printf_width_and_precision_are_capped() {
        for (text, n) in [
            (r#"{{printf "%100000d" 1}}"#, 100_000),
            (r#"{{printf "%2000s" "x"}}"#, 2000),
            (r#"{{printf "%.5000f" 1.5}}"#, 5000),
            (r#"{{printf "%*d" 70000 1}}"#, 70_000),
            (r#"{{printf "%.*s" 9999 "x"}}"#, 9999),
        ] {
            let err = render_err(text);
            assert!(
                matches!(err, RenderError::FormatWidth(got, MAX_FORMAT_WIDTH) if got == n),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains("over the limit of 1024"), "{err}");
        }
        assert_eq!(
            block_on(render(
                r#"{{printf "%-6s|%5.2f" "ab" 3.14159}}"#,
                &MapSource::default()
            ))
            .unwrap(),
            "ab    | 3.14"
        );
    }

    // Before: ran for hours, writing 2^40 bytes.
    #[test]
    fn exponential_expansion_with_output_stops_at_the_step_budget() {
        let err = render_err(&exponential("x"));
        assert!(
            matches!(err, RenderError::TooManySteps(MAX_STEPS)),
            "{err:?}"
        );
    }

    // Before: ran for hours without writing a byte.
    #[test]
    fn exponential_expansion_without_output_stops_at_the_step_budget() {
        let err = render_err(&exponential(""));
        assert!(
            matches!(err, RenderError::TooManySteps(MAX_STEPS)),
            "{err:?}"
        );
        assert!(err.to_string().contains("more than 2000000 steps"), "{err}");
    }

    // Before: rendered 32 MiB.
    #[test]
    fn huge_output_is_capped() {
        let leaf = "y".repeat(4096);
        let mut text = String::new();
        for i in 0..13 {
            text.push_str(&format!(
                "{{{{define \"o{i}\"}}}}{{{{template \"o{n}\"}}}}{{{{template \"o{n}\"}}}}{{{{end}}}}",
                n = i + 1
            ));
        }
        text.push_str(&format!(
            "{{{{define \"o13\"}}}}{leaf}{{{{end}}}}{{{{template \"o0\"}}}}"
        ));
        let err = render_err(&text);
        assert!(
            matches!(err, RenderError::OutputTooLarge(MAX_OUTPUT_BYTES)),
            "{err:?}"
        );
    }

    // Before: each `print $x $x` doubled a string that is never written, to
    // 2^40 bytes.
    #[test]
    fn values_that_double_without_output_are_capped() {
        let mut text = String::from(r#"{{$v0 := printf "%1000s" ""}}"#);
        for i in 1..=40 {
            text.push_str(&format!("{{{{$v{i} := print $v{p} $v{p}}}}}", p = i - 1));
        }
        let err = render_err(&text);
        assert!(
            matches!(err, RenderError::ValueTooLarge { ref function, .. } if function == "print"),
            "{err:?}"
        );
    }

    // Before: rendered.
    #[test]
    fn text_over_the_size_cap_is_refused() {
        let err = render_err(&"x".repeat(MAX_TEMPLATE_BYTES + 1));
        assert!(matches!(err, RenderError::TextTooLarge(_)), "{err:?}");
        assert!(err.to_string().contains("1048576-byte limit"), "{err}");
    }

    // Before: the parser recursed per parenthesis and overflowed the stack.
    #[test]
    fn deep_syntax_nesting_is_refused() {
        for text in [
            format!("{{{{{}1{}}}}}", "(".repeat(50_000), ")".repeat(50_000)),
            format!("{}x{}", "{{if 1}}".repeat(5000), "{{end}}".repeat(5000)),
            format!("{{{{if 0}}}}{}{{{{end}}}}", "{{else if 0}}".repeat(5000)),
        ] {
            let err = render_err(&text);
            assert!(
                matches!(err, RenderError::SyntaxTooDeep(MAX_SYNTAX_NESTING)),
                "{err:?}"
            );
        }
    }

    // The deepest recursion the limits allow fits the render thread's stack.
    #[test]
    fn deepest_allowed_nesting_fits_the_stack() {
        let ifs = MAX_SYNTAX_NESTING;
        let body =
            |inner: &str| format!("{}{inner}{}", "{{if 1}}".repeat(ifs), "{{end}}".repeat(ifs));
        let mut text = String::new();
        // n0 .. n63: 64 nested calls, each inside 100 nested ifs.
        let leaf = MAX_NESTING - 1;
        for i in 0..leaf {
            let call = format!("{{{{template \"n{}\"}}}}", i + 1);
            text.push_str(&format!(
                "{{{{define \"n{i}\"}}}}{}{{{{end}}}}",
                body(&call)
            ));
        }
        text.push_str(&format!(
            "{{{{define \"n{leaf}\"}}}}{}{{{{end}}}}{{{{template \"n0\"}}}}",
            body("ok")
        ));
        assert_eq!(
            block_on(render(&text, &MapSource::default())).unwrap(),
            "ok"
        );
    }

    // Before: `%[0]d` overflowed an index (a panic in debug builds).
    #[test]
    fn printf_argument_index_zero_is_an_error() {
        let err = render_err(r#"{{printf "%[0]d" 1}}"#);
        assert!(err.to_string().contains("index 0"), "{err}");
    }

    // Before: `"\x"` looped forever in gtmpl's parser; `"\é"` and `"\x1é"`
    // panicked slicing a multi-byte character.
    #[test]
    fn malformed_string_escapes_are_parse_errors() {
        for text in [r#"{{"\x"}}"#, r#"{{"\u"}}"#, r#"{{"\é"}}"#, r#"{{"\x1é"}}"#] {
            let err = render_err(text);
            assert!(matches!(err, RenderError::Parse(_)), "{text}: {err:?}");
        }
    }

    // Whatever still panics in gtmpl is an error, not an abort.
    #[test]
    fn a_panic_while_rendering_is_an_error() {
        let err = block_on(render_pass_with(
            Arc::from("x"),
            Snapshot::default(),
            |_, _| panic!("boom"),
        ))
        .unwrap_err();
        assert!(
            matches!(err, RenderError::Panicked(ref m) if m == "boom"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("template engine panicked: boom"),
            "{err}"
        );
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

    /// `env` reads a granted variable (empty when unset) and refuses any
    /// other, naming the grant: template text may be a plugin's.
    #[test]
    fn env_reads_only_granted_variables() {
        let mut src = MapSource::default();
        src.env.insert("REGION".into(), "eu-west-1".into());
        src.env.insert("UNSET".into(), String::new());
        assert_eq!(
            block_on(render(r#"{{env "REGION"}}|{{env "UNSET"}}|"#, &src)).unwrap(),
            "eu-west-1||"
        );
        for name in ["HOME", "PATH", "", "region"] {
            let text = format!("{{{{env {name:?}}}}}");
            let err = block_on(render(&text, &src)).unwrap_err().to_string();
            assert!(err.contains("--allow-template-env"), "{text}: {err}");
        }
    }

    #[test]
    fn dependencies_are_checked_and_bounded() {
        let source = MapSource::default();
        let many: String = (0..=MAX_DEPENDENCIES)
            .map(|i| format!(r#"{{{{keyOrDefault "k/{i}" ""}}}}"#))
            .collect();
        for text in [r#"{{key "a/../b"}}"#, r#"{{ls "a/../b"}}"#, many.as_str()] {
            let err = block_on(render(text, &source)).unwrap_err().to_string();
            assert!(err.contains("template data:"), "{text}: {err}");
        }
    }
}
