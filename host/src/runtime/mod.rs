//! The runtime core: one engine per process, components loaded through the
//! artifact cache, one `InstancePre` per plugin, a fresh store per run with
//! its limits. It links the capabilities through [`crate::caps`] and knows
//! nothing of what any capability does.

mod cache;
mod limits;
mod load;
mod stdio;

pub use cache::{ArtifactCache, CacheOutcome, CacheRefused, engine_tag};
pub use limits::{
    DEFAULT_HTTP_MAX_BODY, Limits, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MemoryLimitExceeded,
    TABLE_ELEMENT_BYTES,
};
pub use load::LoadError;

use crate::bindings::{Context as StageContext, Outcome, PluginError, Stage, StagePre};
use crate::caps::{self, Capabilities, CapabilitiesView};
use futures_util::FutureExt;
use limits::MemoryLimiter;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How often the deadline clock ticks; deadlines are accurate to one tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A run that ended without an outcome from the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error(
        "plugin {plugin} exceeded its memory limit ({}) for all its memories and tables together; \
         raise it with --memory",
        format_bytes(*limit)
    )]
    Memory { plugin: String, limit: u64 },
    #[error("plugin {plugin} ran past its deadline ({deadline}); raise it with --deadline")]
    Deadline { plugin: String, deadline: String },
    #[error("plugin {plugin} trapped: {reason}")]
    Trap {
        plugin: String,
        reason: String,
        /// The wasm backtrace, shown with -v.
        backtrace: Option<String>,
    },
    #[error("plugin {plugin} could not start: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error(
        "plugin {plugin} tried to create more than {cap} {what} in one run, runner's fixed cap \
         (real plugins use a handful); a component that needs more is not a stage runner can run"
    )]
    TooMany {
        plugin: String,
        what: &'static str,
        cap: usize,
    },
    #[error(
        "runner failed while running plugin {plugin}: internal error (a panic: {message}); \
         the run was stopped. This is a bug in runner, please report it"
    )]
    HostPanic { plugin: String, message: String },
}

/// The result of a stage that ran to completion: the plugin's own answer.
pub type StageResult = Result<Outcome, PluginError>;

/// The largest plugin file runner reads: 64 MiB, 3.5× the largest real
/// plugin (componentize-py 0.25.1's output for examples/color-python, which
/// embeds CPython and its standard library: 18 MB; the Rust plugins are
/// 0.1–0.5 MB). It also bounds what Cranelift is given to compile, and so
/// the memory compiling takes, which `--memory` does not cover.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 64 * 1024 * 1024;

/// How long compiling one plugin may take, the default `--deadline`: the
/// Python plugin compiles in about 5 s with a release runner (2 cores), but
/// took 92 s (47 s of CPU) with a debug runner on a busy 2-core machine,
/// where Cranelift's debug assertions are on; a test suite must not trip it.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// Process-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub cache: ArtifactCache,
    /// Largest plugin file `Runtime::load` accepts.
    pub max_plugin_bytes: u64,
    /// Time limit on compiling one plugin (a cache miss).
    pub compile_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache: ArtifactCache::new(ArtifactCache::default_dir()),
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
        }
    }
}

/// What one run of a stage gets: its context, capabilities and limits.
pub struct RunRequest {
    pub context: StageContext,
    pub capabilities: Capabilities,
    pub limits: Limits,
}

/// The store's data for one run.
struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    caps: Capabilities,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl CapabilitiesView for RunState {
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.caps
    }
}

/// A loaded, type-checked plugin; cheap to run many times.
pub struct Plugin {
    name: Arc<str>,
    pre: StagePre<RunState>,
    cache: CacheOutcome,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// The interfaces the plugin imports (`runner:plugin/kv@0.1.4`, ...).
    pub fn imports(&self, engine: &Engine) -> Vec<String> {
        self.pre
            .instance_pre()
            .component()
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }
}

/// Ticks the engine's epoch so deadlines fire; stops when the runtime drops.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("runner-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<RunState>,
    cache: ArtifactCache,
    max_plugin_bytes: u64,
    compile_timeout: Duration,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> wasmtime::Result<Self> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        caps::add_to_linker(&mut linker)?;
        Ok(Self {
            _ticker: EpochTicker::start(&engine),
            engine,
            linker,
            cache: config.cache,
            max_plugin_bytes: config.max_plugin_bytes,
            compile_timeout: config.compile_timeout,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &ArtifactCache {
        &self.cache
    }

    /// Run a loaded plugin once, in a fresh store. `Ok` carries the plugin's
    /// own answer (its outcome, or the error it returned); `Err` is a fault:
    /// a trap, a limit, or a failure to instantiate.
    pub async fn run(&self, plugin: &Plugin, request: RunRequest) -> Result<StageResult, Fault> {
        let name = plugin.name.to_string();
        let limits = request.limits;
        let mut store = self.new_store(plugin, request.capabilities, &limits)?;
        let deadline = limits.deadline;
        let call = async {
            let stage: Stage = plugin.pre.instantiate_async(&mut store).await?;
            stage.call_run(&mut store, &request.context).await
        };
        // Epochs fire only inside guest code; this catches a run stuck in a
        // host call past its deadline (host calls have their own, shorter limit).
        // A panic in host code (a capability, WASI, the limiter) while the
        // stage runs ends this run as a fault naming the plugin, not the
        // process: the caller still releases its lock and reports. The store
        // the panic went through is dropped, never used again.
        let call = catch_host_panic(&name, call);
        let result = match tokio::time::timeout(deadline + EPOCH_TICK * 10, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(fault)) => return Err(fault),
            Err(_) => return Err(deadline_fault(&name, deadline)),
        };
        let limiter = &store.data().limiter;
        tracing::debug!(
            plugin = %name,
            memory_and_tables = limiter.used(),
            memories = limiter.memories_created,
            tables = limiter.tables_created,
            "run's resources"
        );
        result.map_err(|e| classify_fault(&name, &limits, limiter.exceeded, e))
    }

    /// What a plugin of the `described-stage` world declares (its
    /// `describe` export), asked in a fresh sandbox with nothing granted and
    /// a short deadline. `Ok(None)`: it has no `describe` (a plain `stage`
    /// plugin). A description that breaks runner's bounds is a fault.
    pub async fn describe(
        &self,
        plugin: &Plugin,
    ) -> Result<Option<crate::describe::Description>, Fault> {
        let name = plugin.name.to_string();
        let ty = plugin.pre.instance_pre().component().component_type();
        if !ty
            .exports(&self.engine)
            .any(|(export, _)| export == "describe")
        {
            return Ok(None);
        }
        let limits = Limits {
            deadline: Duration::from_secs(10),
            ..Limits::default()
        };
        // Nothing is granted, so the registry is never opened (a lazy one
        // touches no disk: a `FROM scratch` image has no /tmp).
        let registry = crate::registry::LazyRegistry::new(
            std::path::PathBuf::from("/nonexistent/runner-describe"),
            Duration::from_secs(1),
        );
        let services = crate::caps::HostServices {
            registry: Arc::new(registry),
            docker: crate::caps::docker::DockerEngine::new(None),
            hooks: None,
            journal_service: None,
        };
        let grants = crate::caps::Grants::default();
        let capabilities = Capabilities::prepare(&crate::caps::RunContext {
            plugin: &name,
            grants: &grants,
            host: &services,
            limits: &limits,
        });
        let mut store = self.new_store(plugin, capabilities, &limits)?;
        let call = async {
            let instance = plugin
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await?;
            let func = instance
                .get_typed_func::<(), (crate::bindings::runner::plugin::types::Description,)>(
                    &mut store, "describe",
                )?;
            let (raw,) = func.call_async(&mut store, ()).await?;
            wasmtime::Result::Ok(crate::describe::lift(raw))
        };
        let call = catch_host_panic(&name, call);
        let described = match tokio::time::timeout(limits.deadline + EPOCH_TICK * 10, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(fault)) => return Err(fault),
            Err(_) => return Err(deadline_fault(&name, limits.deadline)),
        };
        let limiter = &store.data().limiter;
        let described =
            described.map_err(|e| classify_fault(&name, &limits, limiter.exceeded, e))?;
        described.map(Some).map_err(|e| Fault::Trap {
            plugin: name,
            reason: e.to_string(),
            backtrace: None,
        })
    }

    /// A fresh store for one call into `plugin`: WASI with only what the
    /// capabilities configure, the memory limiter and the epoch deadline.
    fn new_store(
        &self,
        plugin: &Plugin,
        capabilities: Capabilities,
        limits: &Limits,
    ) -> Result<Store<RunState>, Fault> {
        let name = plugin.name.to_string();
        let mut wasi = WasiCtx::builder();
        // stdout and stderr share one bound: what the plugin prints is log text.
        let budget = stdio::SharedBudget::default();
        wasi.stdout(stdio::LogStream::new(
            plugin.name.clone(),
            stdio::Stream::Stdout,
            budget.clone(),
        ))
        .stderr(stdio::LogStream::new(
            plugin.name.clone(),
            stdio::Stream::Stderr,
            budget,
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        capabilities
            .configure_wasi(&mut wasi)
            .map_err(|e| Fault::Instantiate {
                plugin: name.clone(),
                reason: e.to_string(),
            })?;
        let state = RunState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            caps: capabilities,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits
            .deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// Run `future`, turning a panic inside it into [`Fault::HostPanic`].
async fn catch_host_panic<T>(
    plugin: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, Fault> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(
                plugin,
                "host code panicked while running the plugin: {message}"
            );
            Fault::HostPanic {
                plugin: plugin.to_string(),
                message,
            }
        })
}

/// The message a panic carried (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// `256 MiB`, not `256.0 MiB`: limits are usually whole units.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    bytesize::ByteSize(bytes).to_string()
}

fn deadline_fault(plugin: &str, deadline: Duration) -> Fault {
    Fault::Deadline {
        plugin: plugin.to_string(),
        deadline: humantime::format_duration(deadline).to_string(),
    }
}

/// Name the root cause of a failed run, not wasmtime's outer context.
fn classify_fault(
    plugin: &str,
    limits: &Limits,
    memory_exceeded: bool,
    e: wasmtime::Error,
) -> Fault {
    if memory_exceeded || e.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return Fault::Memory {
            plugin: plugin.to_string(),
            limit: limits.memory_bytes,
        };
    }
    if let Some((what, cap)) = limits::count_cap_hit(&format!("{e:#}")) {
        return Fault::TooMany {
            plugin: plugin.to_string(),
            what,
            cap,
        };
    }
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string());
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => deadline_fault(plugin, limits.deadline),
        Some(trap) => Fault::Trap {
            plugin: plugin.to_string(),
            reason: trap_reason(trap),
            backtrace,
        },
        None => Fault::Trap {
            plugin: plugin.to_string(),
            reason: root_cause(&e),
            backtrace,
        },
    }
}

fn trap_reason(trap: &Trap) -> String {
    match trap {
        Trap::UnreachableCodeReached => {
            "wasm `unreachable` executed (in Rust plugins usually a panic: see the plugin's stderr above)".into()
        }
        other => other.to_string(),
    }
}

pub(super) fn root_cause(e: &wasmtime::Error) -> String {
    e.chain()
        .last()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn runtime(config: RuntimeConfig) -> Runtime {
        Runtime::new(config).expect("runtime")
    }

    fn uncached() -> RuntimeConfig {
        RuntimeConfig {
            cache: ArtifactCache::new(None),
            ..RuntimeConfig::default()
        }
    }

    #[test]
    fn only_regular_files_under_the_cap_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime(RuntimeConfig {
            max_plugin_bytes: 100,
            ..uncached()
        });
        let small = tmp.path().join("small.wasm");
        std::fs::write(&small, [0u8; 100]).unwrap();
        assert_eq!(rt.read_plugin(&small).unwrap().len(), 100);

        let big = tmp.path().join("big.wasm");
        std::fs::write(&big, [0u8; 101]).unwrap();
        let err = rt.read_plugin(&big).unwrap_err().to_string();
        assert!(
            err.contains("is 101 B, over runner's limit of 100 B"),
            "{err}"
        );

        let err = rt
            .read_plugin(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a character device"), "{err}");
        let err = rt.read_plugin(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(matches!(
            rt.read_plugin(&tmp.path().join("missing.wasm")),
            Err(LoadError::NotFound(_))
        ));
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("p.wasm");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would never return. Bound the test.
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = runtime(uncached());
            let _ = send.send(rt.load(&fifo).err().map(|e| e.to_string()));
        });
        let err = receive
            .recv_timeout(Duration::from_secs(30))
            .expect("load returned")
            .expect("an error");
        assert!(err.contains("is a FIFO (named pipe)"), "{err}");
    }

    #[test]
    fn compiling_is_bounded_in_time() {
        let rt = runtime(RuntimeConfig {
            compile_timeout: Duration::from_millis(1),
            ..uncached()
        });
        // Thousands of functions: far more than a millisecond of Cranelift.
        let funcs = "(func (result i32) i32.const 1 i32.const 2 i32.add)".repeat(20_000);
        let text = format!("(component (core module {funcs}))");
        let bytes = wat::parse_str(text).unwrap();
        let err = rt.compile(Path::new("slow.wasm"), &bytes).err().unwrap();
        assert!(matches!(err, LoadError::CompileTimeout { .. }), "{err}");
        assert!(err.to_string().contains("took longer than 1ms"), "{err}");
    }

    #[tokio::test]
    async fn a_host_panic_is_a_fault_naming_the_plugin() {
        let fault = catch_host_panic("color", async {
            if true {
                panic!("index out of bounds: the len is 0 but the index is 3");
            }
        })
        .await
        .unwrap_err();
        assert_eq!(fault.to_string().lines().count(), 1);
        let message = fault.to_string();
        assert!(message.contains("plugin color"), "{message}");
        assert!(
            message.contains("the len is 0 but the index is 3"),
            "{message}"
        );
        assert_eq!(catch_host_panic("color", async { 7 }).await.unwrap(), 7);
    }
}
