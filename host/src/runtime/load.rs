//! Loading a plugin: open it without blocking and check the handle, read it
//! under the size cap, compile it under a time limit (or take the cached
//! artifact), and type-check it against the linker once.

use super::{CacheOutcome, Plugin, RunState, Runtime, cache, format_bytes, root_cause};
use crate::bindings::StagePre;
use crate::oci::resolve::StoredPlugin;
use crate::plugin_ref::PluginSource;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;

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
    #[error("plugin {path} is {kind}, not a regular file; pass the path of a .wasm component")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "plugin {path} is {}, over runner's limit of {} for a plugin file; \
         a stage component is far smaller (a Python one with CPython inside is about 18 MB)",
        format_size(*size), format_bytes(*cap)
    )]
    TooLarge { path: PathBuf, size: u64, cap: u64 },
    #[error(
        "compiling plugin {path} took longer than {} (runner's limit for compiling a plugin); \
         a stage component compiles in seconds, so this one is broken or hostile",
        humantime::format_duration(*timeout)
    )]
    CompileTimeout { path: PathBuf, timeout: Duration },
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
         in wit/ (package runner:plugin@{}); `runner plugin inspect {path}` shows what it has",
        crate::CONTRACT_VERSION
    )]
    WrongWorld { path: PathBuf, reason: String },
    #[error(
        "plugin {path} targets runner:plugin@{targets}, this runner provides {}; {}",
        crate::CONTRACT_VERSION,
        contract_hint(targets)
    )]
    Contract { path: PathBuf, targets: String },
}

impl Runtime {
    /// Load a resolved plugin reference (see [`crate::plugin_ref`]).
    pub fn load_source(&self, source: &PluginSource) -> Result<Plugin, LoadError> {
        match source {
            PluginSource::File(path) => self.load(path),
            PluginSource::Stored(stored) => self.load_stored(stored),
        }
    }

    /// A registry plugin, its bytes already verified against their digest:
    /// from the bundle's precompiled artifact when there is one for this
    /// engine, else through the artifact cache.
    fn load_stored(&self, stored: &StoredPlugin) -> Result<Plugin, LoadError> {
        let name = stored.reference.name().to_string();
        let label = PathBuf::from(stored.pinned());
        if let Some((path, precompiled)) = &stored.precompiled {
            if precompiled.engine != cache::engine_tag(&self.engine) {
                tracing::warn!(
                    "{} was precompiled by another runner build (engine {}, this one {}); \
                     compiling it (rebuild the bundle with this runner to start without compiling)",
                    path.display(),
                    precompiled.engine,
                    cache::engine_tag(&self.engine)
                );
            } else {
                match self.load_precompiled(path, &precompiled.blake3) {
                    Ok(component) => {
                        tracing::debug!(plugin = %label.display(), "loaded the bundle's precompiled artifact");
                        return Ok(Plugin {
                            name: Arc::from(name),
                            pre: self.link(&label, &component)?,
                            cache: CacheOutcome::Hit,
                        });
                    }
                    Err(why) => tracing::warn!(
                        "precompiled {} is unusable ({why}); it was not run, compiling {} instead",
                        path.display(),
                        label.display()
                    ),
                }
            }
        }
        let bytes = match &stored.bytes {
            Some(bytes) => bytes.clone(),
            None => {
                crate::oci::store::read_verified(&stored.blob, &stored.layer, self.max_plugin_bytes)
                    .map(std::sync::Arc::from)
                    .map_err(|e| LoadError::Invalid {
                        path: label.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        self.load_bytes(&name, &label, &bytes)
    }

    /// A bundle's precompiled artifact, checked against the BLAKE3 its
    /// bundle manifest records before wasmtime sees it.
    fn load_precompiled(&self, path: &Path, expected: &str) -> Result<Component, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| e.to_string())?;
        let identity = |meta: &std::fs::Metadata| {
            (
                meta.dev(),
                meta.ino(),
                meta.size(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            )
        };
        let before = file.metadata().map_err(|e| e.to_string())?;
        if !before.is_file() {
            return Err("not a regular file".into());
        }
        // Native code is a few times the component's size.
        if before.len() > self.max_plugin_bytes.saturating_mul(8) {
            return Err("larger than any artifact runner writes".into());
        }
        // Hash and load the very file that was opened (its descriptor, not
        // the path), each where it lies: mapped, not copied.
        let handle = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // Hashed once per file identity: a start that verified this very
        // file (unchanged: same inode, size and times) left a keyed record
        // in the artifact cache, as the cache trusts its own unchanged files.
        let vouched = self.cache.vouched(&before, expected);
        if !vouched {
            let mut hasher = blake3::Hasher::new();
            // A Python plugin's artifact is tens of MB: hashed on every core.
            if before.len() > 8 * 1024 * 1024 {
                hasher.update_mmap_rayon(&handle)
            } else {
                hasher.update_mmap(&handle)
            }
            .map_err(|e| e.to_string())?;
            if hasher.finalize().to_hex().as_str() != expected {
                return Err("its content does not match the bundle manifest".into());
            }
        }
        // SAFETY: the artifact is the one `runner plugin bundle` wrote with
        // wasmtime's own serialization under this engine's compatibility
        // tag: its BLAKE3 matches the bundle manifest (now, or for this
        // unchanged file at an earlier start, as recorded), and the bundle
        // directory is writable only by its owner (root or this user), as
        // trusted as the runner binary beside it. A write between the hash
        // and the mapping changes the file's ctime, checked below before
        // the component is used. Wasmtime still checks header and version.
        let component = unsafe { Component::deserialize_file(&self.engine, &handle) }
            .map_err(|e| e.to_string())?;
        let after = file.metadata().map_err(|e| e.to_string())?;
        if identity(&before) != identity(&after) {
            return Err("it changed while it was being loaded".into());
        }
        if !vouched {
            self.cache.vouch(&after, expected);
        }
        Ok(component)
    }

    /// Read, compile (or load precompiled) and type-check a plugin file.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let (file, meta) = self.open_plugin(path)?;
        let mut rejected = false;
        match self.cache.load_by_identity(&self.engine, &meta) {
            cache::IdentityLookup::Hit(component) => {
                return Ok(Plugin {
                    name: Arc::from(name),
                    pre: self.link(path, &component)?,
                    cache: CacheOutcome::Hit,
                });
            }
            cache::IdentityLookup::Rejected => rejected = true,
            cache::IdentityLookup::Absent => {}
        }
        let bytes = self.read_capped(path, file)?;
        let mut plugin = self.load_bytes(&name, path, &bytes)?;
        if rejected && plugin.cache == CacheOutcome::Miss {
            plugin.cache = CacheOutcome::Recompiled;
        }
        self.cache.remember_identity(&self.engine, &meta, &bytes);
        Ok(plugin)
    }

    /// Read a plugin file as [`Runtime::load`] does: a regular file of at
    /// most the configured size, never blocking on a FIFO or a device.
    pub fn read_plugin(&self, path: &Path) -> Result<Vec<u8>, LoadError> {
        let (file, _) = self.open_plugin(path)?;
        self.read_capped(path, file)
    }

    /// Open without blocking (a FIFO with no writer would hang a plain open)
    /// and check the opened handle, not the path, so what is read is what
    /// was checked. The metadata is what the identity index keys on.
    fn open_plugin(&self, path: &Path) -> Result<(std::fs::File, std::fs::Metadata), LoadError> {
        let read_error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound(path.into()),
            _ => LoadError::Read {
                path: path.into(),
                source: e,
            },
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        let kind = meta.file_type();
        if !kind.is_file() {
            let kind = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO (named pipe)"
            } else if kind.is_char_device() {
                "a character device"
            } else if kind.is_block_device() {
                "a block device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(LoadError::NotAFile {
                path: path.into(),
                kind,
            });
        }
        if meta.len() > self.max_plugin_bytes {
            return Err(self.too_large(path, meta.len()));
        }
        Ok((file, meta))
    }

    /// Read at most the cap plus one byte: a file that grew past the cap
    /// since it was checked is refused, not read to its end.
    fn read_capped(&self, path: &Path, file: std::fs::File) -> Result<Vec<u8>, LoadError> {
        let mut bytes = Vec::new();
        file.take(self.max_plugin_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| LoadError::Read {
                path: path.into(),
                source: e,
            })?;
        if bytes.len() as u64 > self.max_plugin_bytes {
            return Err(self.too_large(path, bytes.len() as u64));
        }
        Ok(bytes)
    }

    fn too_large(&self, path: &Path, size: u64) -> LoadError {
        LoadError::TooLarge {
            path: path.into(),
            size,
            cap: self.max_plugin_bytes,
        }
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
        if bytes.len() as u64 > self.max_plugin_bytes {
            return Err(self.too_large(path, bytes.len() as u64));
        }
        self.cache
            .load(&self.engine, bytes, || self.compile_bounded(bytes))
            .map_err(|e| match e.downcast_ref::<CompileTimedOut>() {
                Some(_) => LoadError::CompileTimeout {
                    path: path.into(),
                    timeout: self.compile_timeout,
                },
                None => LoadError::Invalid {
                    path: path.into(),
                    reason: root_cause(&e),
                },
            })
    }

    /// Compile on a thread of its own and wait at most the compile timeout.
    /// Cranelift cannot be interrupted: past the limit the thread is left to
    /// finish on its own and its result dropped; the process exits on the
    /// load error soon after, which ends it. Its memory is bounded by the
    /// plugin size cap (compiling is roughly linear in the code's size).
    fn compile_bounded(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let (send, receive) = std::sync::mpsc::sync_channel(1);
        let engine = self.engine.clone();
        // The thread may outlive this call, so it owns its copy of the bytes.
        let owned = bytes.to_vec();
        std::thread::Builder::new()
            .name("runner-compile".into())
            .spawn(move || {
                let _ = send.send(Component::new(&engine, &owned));
            })
            .map_err(wasmtime::Error::from)?;
        match receive.recv_timeout(self.compile_timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(CompileTimedOut.into()),
            // The thread died without sending: Cranelift panicked.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(wasmtime::Error::msg(
                "the compiler failed (panicked) on this component",
            )),
        }
    }

    fn link(&self, path: &Path, component: &Component) -> Result<StagePre<RunState>, LoadError> {
        let wrong_world = |reason: String| LoadError::WrongWorld {
            path: path.into(),
            reason,
        };
        let ty = component.component_type();
        // Before linking: an incompatible contract is said as such, not as
        // a missing import.
        let mut newer = None;
        for (name, _) in ty.imports(&self.engine) {
            match contract_import(name) {
                Some(Compat::Incompatible(targets)) => {
                    return Err(LoadError::Contract {
                        path: path.into(),
                        targets,
                    });
                }
                Some(Compat::Newer(targets)) => newer = Some(targets),
                _ => {}
            }
        }
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
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| match &newer {
                // Built against a later compatible contract and using what it added.
                Some(targets) => LoadError::Contract {
                    path: path.into(),
                    targets: targets.clone(),
                },
                None => wrong_world(format!(
                    "it imports something runner does not provide: {}",
                    root_cause(&e)
                )),
            })?;
        StagePre::new(instance_pre).map_err(|e| {
            wrong_world(format!(
                "its `run` export has the wrong type: {}",
                root_cause(&e)
            ))
        })
    }
}

/// How an import of the `runner:plugin` package relates to the contract
/// this runner provides. The rules are wasmtime's linker's (semver): from
/// 1.0 the major version must match; before, `0.MINOR` must (a patch
/// release only adds). See wit/VERSIONING.md.
#[derive(Debug, PartialEq, Eq)]
enum Compat {
    Same,
    /// Compatible, but later: works unless it uses what was added.
    Newer(String),
    Incompatible(String),
}

fn contract_import(name: &str) -> Option<Compat> {
    let version = name.strip_prefix("runner:plugin/")?.split_once('@')?.1;
    let Ok(targets) = semver::Version::parse(version) else {
        return Some(Compat::Incompatible(version.to_string()));
    };
    let provides = semver::Version::parse(crate::CONTRACT_VERSION).ok()?;
    let key = |v: &semver::Version| match (v.major, v.minor) {
        (0, 0) => (0, 0, v.patch),
        (0, minor) => (0, minor, 0),
        (major, _) => (major, 0, 0),
    };
    Some(if key(&targets) != key(&provides) {
        Compat::Incompatible(version.to_string())
    } else if targets > provides {
        Compat::Newer(version.to_string())
    } else {
        Compat::Same
    })
}

fn contract_hint(targets: &str) -> String {
    let older = semver::Version::parse(targets)
        .ok()
        .zip(semver::Version::parse(crate::CONTRACT_VERSION).ok())
        .is_some_and(|(t, p)| t < p);
    if older {
        "rebuild it against this runner's contract (its wit/, which `runner plugin new` copies)"
            .into()
    } else {
        format!(
            "run it with a runner that provides runner:plugin@{targets} (or rebuild it against this one's wit/)"
        )
    }
}

/// The compile time limit ran out (see [`Runtime::compile_bounded`]).
#[derive(Debug, thiserror::Error)]
#[error("compiling took too long")]
struct CompileTimedOut;

/// A file's size, exact in bytes too when it is not a whole unit.
fn format_size(bytes: u64) -> String {
    let short = format_bytes(bytes);
    if short.ends_with(" B") || bytes.is_multiple_of(1024) {
        short
    } else {
        format!("{short} ({bytes} bytes)")
    }
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

#[cfg(test)]
mod contract_tests {
    use super::{Compat, contract_import};

    #[test]
    fn imports_are_matched_by_the_contracts_semver_rules() {
        let current = format!("runner:plugin/log@{}", crate::CONTRACT_VERSION);
        assert_eq!(contract_import(&current), Some(Compat::Same));
        assert_eq!(contract_import("wasi:io/poll@0.2.6"), None);
        assert_eq!(
            contract_import("runner:plugin/log@0.2.0"),
            Some(Compat::Incompatible("0.2.0".into()))
        );
        assert_eq!(
            contract_import("runner:plugin/log@1.0.0"),
            Some(Compat::Incompatible("1.0.0".into()))
        );
        assert_eq!(
            contract_import("runner:plugin/log@0.1.99"),
            Some(Compat::Newer("0.1.99".into()))
        );
        assert_eq!(
            contract_import("runner:plugin/log@x"),
            Some(Compat::Incompatible("x".into()))
        );
    }
}
