//! Precompiled-artifact cache: compiling a component with Cranelift takes
//! milliseconds to seconds (a Python component: seconds), loading a
//! precompiled one is an mmap. Artifacts are keyed by the component's content
//! hash and the engine's compatibility hash (wasmtime version + settings), so
//! a new runner or a changed plugin never loads a stale artifact.
//!
//! Hashing the component costs as much as loading its artifact (2.5 ms for an
//! 18 MB Python plugin), so a small index maps a file's identity (device,
//! inode, size, mtime, ctime: any write changes ctime) to its artifact, and a
//! hit on an unchanged file reads neither the file nor its hash.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

/// What a load did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// Compiled and stored.
    Miss,
    /// A cached file was unreadable (corrupt, truncated, foreign): recompiled.
    Recompiled,
    Disabled,
}

impl ArtifactCache {
    /// `None` disables caching (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The default location: `$RUNNER_CACHE_DIR`, else the user cache dir.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("RUNNER_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("runner").join("components")))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The artifact's path for these component bytes under this engine.
    pub fn artifact_path(&self, engine: &Engine, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let content = blake3::hash(bytes);
        Some(dir.join(format!(
            "{}-{:016x}.cwasm",
            content.to_hex(),
            engine_hash(engine)
        )))
    }

    /// The index entry for a file's identity under this engine.
    fn identity_path(&self, engine: &Engine, meta: &std::fs::Metadata) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let identity = [
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
            engine_hash(engine),
        ];
        let mut hasher = blake3::Hasher::new();
        for part in identity {
            hasher.update(&part.to_le_bytes());
        }
        Some(
            dir.join("by-file")
                .join(format!("{}.cwasm", hasher.finalize().to_hex())),
        )
    }

    /// A hit for the unchanged file `meta` describes, without reading it.
    pub fn load_by_identity(&self, engine: &Engine, meta: &std::fs::Metadata) -> Option<Component> {
        let entry = self.identity_path(engine, meta)?;
        if std::fs::symlink_metadata(&entry).is_err() {
            return None;
        }
        // SAFETY: as in `load`: the entry links to an artifact this cache wrote.
        match unsafe { Component::deserialize_file(engine, &entry) } {
            Ok(component) => Some(component),
            Err(_) => {
                // Dangling or unusable: forget it; the full path recompiles if needed.
                let _ = std::fs::remove_file(&entry);
                None
            }
        }
    }

    /// Remember that the file `meta` describes has the artifact for `bytes`.
    pub fn remember_identity(&self, engine: &Engine, meta: &std::fs::Metadata, bytes: &[u8]) {
        let (Some(entry), Some(artifact)) = (
            self.identity_path(engine, meta),
            self.artifact_path(engine, bytes),
        ) else {
            return;
        };
        if !artifact.exists() {
            return;
        }
        let link = || -> std::io::Result<()> {
            let dir = entry.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&artifact, &tmp)?;
            std::fs::rename(&tmp, &entry)
        };
        if let Err(e) = link() {
            tracing::debug!("cannot index {}: {e}", entry.display());
        }
    }

    /// Load `bytes` as a component, from the cache when possible.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.artifact_path(engine, bytes) else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Disabled));
        };
        let mut outcome = CacheOutcome::Miss;
        if path.exists() {
            // SAFETY: the file was written by `store` below from wasmtime's own
            // serialization, under a name that includes the engine's
            // compatibility hash; wasmtime validates its header and version,
            // and any file it rejects is recompiled instead of trusted.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(
                        "cached artifact {} is unusable ({e}); recompiling",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                    outcome = CacheOutcome::Recompiled;
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store(&path, &component) {
            // A read-only or full cache dir slows the next start; it breaks nothing.
            tracing::warn!("cannot write artifact cache {}: {e}", path.display());
        }
        Ok((component, outcome))
    }
}

fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Write atomically: a crash mid-write leaves a temp file, never a partial artifact.
fn store(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
