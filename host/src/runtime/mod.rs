//! The runtime core: one engine per process, components loaded through the
//! artifact cache, one `InstancePre` per plugin, a fresh store per run with
//! its limits. It links the capabilities through [`crate::caps`] and knows
//! nothing of what any capability does.

mod cache;
mod limits;
mod stdio;

pub use cache::{ArtifactCache, CacheOutcome};
pub use limits::{Limits, MemoryLimitExceeded};

use crate::bindings::{Context as StageContext, Outcome, PluginError, Stage, StagePre};
use crate::caps::{self, Capabilities, CapabilitiesView};
use crate::grants::DirGrant;
use limits::MemoryLimiter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// How often the deadline clock ticks; deadlines are accurate to one tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A plugin that could not be loaded. All are "plugin faults" (exit 3),
/// except a missing file, which is a usage error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "plugin file {0} does not exist; pass the path of a .wasm component built for wasm32-wasip2"
    )]
    NotFound(PathBuf),
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a WebAssembly file (no \\0asm header); pass a .wasm component")]
    NotWasm(PathBuf),
    #[error(
        "{0} is a core WebAssembly module, not a component; build it with `--target wasm32-wasip2` \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule(PathBuf),
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} is a component but not a runner stage: {reason}. Build it against the `stage` world \
         in wit/ (package runner:plugin@0.1.0); `runner plugin inspect {path}` shows what it has"
    )]
    WrongWorld { path: PathBuf, reason: String },
}

/// A run that ended without an outcome from the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("plugin {plugin} exceeded its memory limit ({}); raise it with --memory", format_bytes(*limit))]
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
}

/// The result of a stage that ran to completion: the plugin's own answer.
pub type StageResult = Result<Outcome, PluginError>;

/// Process-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub cache: ArtifactCache,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache: ArtifactCache::new(ArtifactCache::default_dir()),
        }
    }
}

/// What one run of a stage gets: its context, capabilities and limits.
pub struct RunRequest {
    pub context: StageContext,
    pub capabilities: Capabilities,
    /// Directories preopened for WASI (`--allow-dir`).
    pub dirs: Vec<DirGrant>,
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

    /// The interfaces the plugin imports (`runner:plugin/kv@0.1.0`, ...).
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
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &ArtifactCache {
        &self.cache
    }

    /// Read, compile (or load precompiled) and type-check a plugin.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let read_error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound(path.into()),
            _ => LoadError::Read {
                path: path.into(),
                source: e,
            },
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if let Some(component) = self.cache.load_by_identity(&self.engine, &meta) {
            return Ok(Plugin {
                name: Arc::from(name),
                pre: self.link(path, &component)?,
                cache: CacheOutcome::Hit,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let plugin = self.load_bytes(&name, path, &bytes)?;
        self.cache.remember_identity(&self.engine, &meta, &bytes);
        Ok(plugin)
    }

    /// As [`Runtime::load`], from bytes already in memory.
    pub fn load_bytes(&self, name: &str, path: &Path, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let (component, cache) = self.compile(path, bytes)?;
        let pre = self.link(path, &component)?;
        Ok(Plugin {
            name: Arc::from(name),
            pre,
            cache,
        })
    }

    /// Check the header, then compile or load the precompiled artifact.
    pub fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), LoadError> {
        check_header(path, bytes)?;
        self.cache
            .load(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid {
                path: path.into(),
                reason: root_cause(&e),
            })
    }

    fn link(&self, path: &Path, component: &Component) -> Result<StagePre<RunState>, LoadError> {
        let wrong_world = |reason: String| LoadError::WrongWorld {
            path: path.into(),
            reason,
        };
        let ty = component.component_type();
        let has_run = ty.exports(&self.engine).any(|(name, _)| name == "run");
        if !has_run {
            let exports: Vec<String> = ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect();
            return Err(wrong_world(format!(
                "it does not export `run` (it exports: {})",
                if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                }
            )));
        }
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| {
            wrong_world(format!(
                "it imports something runner does not provide: {}",
                root_cause(&e)
            ))
        })?;
        StagePre::new(instance_pre).map_err(|e| {
            wrong_world(format!(
                "its `run` export has the wrong type: {}",
                root_cause(&e)
            ))
        })
    }

    /// Run a loaded plugin once, in a fresh store. `Ok` carries the plugin's
    /// own answer (its outcome, or the error it returned); `Err` is a fault:
    /// a trap, a limit, or a failure to instantiate.
    pub async fn run(&self, plugin: &Plugin, request: RunRequest) -> Result<StageResult, Fault> {
        let name = plugin.name.to_string();
        let limits = request.limits;
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdio::LogStream::new(
            plugin.name.clone(),
            stdio::Stream::Stdout,
        ))
        .stderr(stdio::LogStream::new(
            plugin.name.clone(),
            stdio::Stream::Stderr,
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        for dir in &request.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(dir.granted.path(), &dir.guest, perms)
                .map_err(|e| Fault::Instantiate {
                    plugin: name.clone(),
                    reason: format!(
                        "cannot open granted directory {}: {e}",
                        dir.granted.path().display()
                    ),
                })?;
        }
        let state = RunState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            caps: request.capabilities,
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

        let deadline = limits.deadline;
        let call = async {
            let stage: Stage = plugin.pre.instantiate_async(&mut store).await?;
            stage.call_run(&mut store, &request.context).await
        };
        // Epochs fire only inside guest code; this catches a run stuck in a
        // host call past its deadline (host calls have their own, shorter limit).
        let result = match tokio::time::timeout(deadline + EPOCH_TICK * 10, call).await {
            Ok(result) => result,
            Err(_) => return Err(deadline_fault(&name, deadline)),
        };
        result.map_err(|e| classify_fault(&name, &limits, store.data().limiter.exceeded, e))
    }
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

fn root_cause(e: &wasmtime::Error) -> String {
    e.chain()
        .last()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Tell garbage and core modules apart from components before compiling.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(LoadError::NotWasm(path.into()));
    }
    // Bytes 4..8: version (u16) and layer (u16); layer 0 is a core module, 1 a component.
    match &bytes[6..8] {
        [0, 0] => Err(LoadError::CoreModule(path.into())),
        [1, 0] => Ok(()),
        _ => Err(LoadError::Invalid {
            path: path.into(),
            reason: "unknown WebAssembly layer in the header".into(),
        }),
    }
}
