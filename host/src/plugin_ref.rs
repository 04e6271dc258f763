//! Where a plugin comes from: one reference type, resolved in one place,
//! for `runner exec`, pipeline stages and hooks alike.
//!
//! A reference as written is a registry reference (`oci://REGISTRY/REPO:TAG`
//! or `…@sha256:…`), a file path (`plugins/build.wasm`, anything with a `/`
//! or ending in `.wasm`) or a name searched on the plugin path (`build` →
//! `build.wasm`). Resolving it yields a [`PluginSource`] the runtime loads
//! ([`crate::runtime::Runtime::load_source`]); a registry reference resolves
//! through [`crate::oci::resolve`] to verified bytes and digests.

use crate::oci::resolve::{Resolver, StoredPlugin};
use crate::oci::{OciError, OciRef};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin reference as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A `.wasm` file, relative to the file that names it (or the current
    /// directory on the command line).
    File(PathBuf),
    /// A name searched on the plugin path.
    Named(String),
    /// A plugin in an OCI registry.
    Oci(OciRef),
}

impl PluginRef {
    /// Classify `text`: a registry reference when it starts with `oci://`,
    /// a path when it has a `/` or ends in `.wasm`, else a name.
    pub fn parse(text: &str) -> Result<Self, PluginRefError> {
        if text.starts_with(crate::oci::SCHEME) {
            OciRef::parse(text)
                .map(Self::Oci)
                .map_err(|e| PluginRefError::Registry(Arc::new(e)))
        } else if text.contains('/') || text.ends_with(".wasm") {
            Ok(Self::File(PathBuf::from(text)))
        } else {
            Ok(Self::Named(text.to_string()))
        }
    }
}

impl std::str::FromStr for PluginRef {
    type Err = PluginRefError;
    /// On the command line anything that exists at `text` is that path,
    /// whatever its name (`runner exec --plugin my-stage`, a file in the
    /// current directory; a FIFO or directory is refused as such on loading).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match Self::parse(text)? {
            Self::Named(name) if Path::new(&name).exists() => Self::File(name.into()),
            parsed => parsed,
        })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Named(name) => f.write_str(name),
            Self::Oci(reference) => write!(f, "{reference}"),
        }
    }
}

/// What a reference resolved to: what the runtime loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A file on this machine (loaded through the artifact cache's identity
    /// index: an unchanged file is not even read again).
    File(PathBuf),
    /// A registry plugin: its bytes, verified against their digest.
    Stored(Arc<StoredPlugin>),
}

impl PluginSource {
    /// The file, for messages and for checks before a run (a registry
    /// plugin's blob in the store or bundle).
    pub fn path(&self) -> &Path {
        match self {
            Self::File(path) => path,
            Self::Stored(stored) => &stored.blob,
        }
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Stored(stored) => f.write_str(&stored.pinned()),
        }
    }
}

/// A reference that resolves to nothing, with the fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginRefError {
    /// A registry reference that does not parse, or does not resolve.
    #[error(transparent)]
    Registry(Arc<OciError>),
    /// A runner file's hook (`runner exec --file`): there is no plugin path.
    #[error("plugin {} does not exist", path.display())]
    NoFile { path: PathBuf },
    #[error(
        "plugin {} does not exist; build it (scripts/build-plugins) or fix the path",
        path.display()
    )]
    MissingFile { path: PathBuf },
    #[error(
        "plugin \"{name}\" not found as {name}.wasm in {}; add its directory with --plugin-path DIR or RUNNER_PLUGIN_PATH, or give a path",
        searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotOnPath {
        name: String,
        searched: Vec<PathBuf>,
    },
}

/// Resolve `plugin` with no plugin path (a runner file given to `runner
/// exec`): a name is a file in `base` too; registry references resolve
/// through `registry` (the command's lock, store and trust).
pub fn resolve_in(
    plugin: &PluginRef,
    base: &Path,
    registry: &Resolver,
) -> Result<PluginSource, PluginRefError> {
    let registry_error = |e| PluginRefError::Registry(Arc::new(e));
    let path = match plugin {
        PluginRef::File(path) => base.join(path),
        PluginRef::Named(name) => base.join(name),
        PluginRef::Oci(reference) => {
            return registry
                .resolve(reference, &[])
                .map(|stored| PluginSource::Stored(Arc::new(stored)))
                .map_err(registry_error);
        }
    };
    if path.is_file() {
        registry.check_file(&path).map_err(registry_error)?;
        Ok(PluginSource::File(path))
    } else {
        Err(PluginRefError::NoFile { path })
    }
}

/// Where plugins come from for one command: the `--plugin-path`
/// directories and how registry references resolve.
#[derive(Debug, Clone)]
pub struct Sources {
    pub dirs: Vec<PathBuf>,
    pub registry: Arc<Resolver>,
}

impl Sources {
    /// Directories only, registry references resolved with the defaults
    /// and no lock file.
    pub fn dirs(dirs: &[PathBuf]) -> Self {
        Self {
            dirs: dirs.to_vec(),
            registry: Arc::new(Resolver::new(Default::default(), None)),
        }
    }
}

/// Where named plugins are searched: `--plugin-path` directories, then
/// `RUNNER_PLUGIN_PATH`, then the runner file's `plugins/` directory (and
/// bundles in any of them, for registry references).
#[derive(Debug, Clone)]
pub struct PluginPath {
    dirs: Vec<PathBuf>,
    /// The directories the operator named (flags, environment): the only
    /// ones searched for bundles, whose precompiled artifacts are native
    /// code. A pipeline's own `plugins/` is the checkout's, and a checkout
    /// may come from a pull request.
    operator_dirs: Vec<PathBuf>,
    registry: Arc<Resolver>,
}

impl PluginPath {
    pub fn new(sources: &Sources, file_dir: &Path) -> Self {
        let mut dirs = sources.dirs.clone();
        if let Some(env) = std::env::var_os("RUNNER_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&env));
        }
        let operator_dirs = dirs.clone();
        dirs.push(file_dir.join("plugins"));
        Self {
            dirs,
            operator_dirs,
            registry: sources.registry.clone(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Resolve `plugin`; a file path is taken relative to `base`.
    pub fn resolve(&self, plugin: &PluginRef, base: &Path) -> Result<PluginSource, PluginRefError> {
        match plugin {
            PluginRef::Oci(reference) => self
                .registry
                .resolve(reference, &self.operator_dirs)
                .map(|stored| PluginSource::Stored(Arc::new(stored)))
                .map_err(|e| PluginRefError::Registry(Arc::new(e))),
            PluginRef::File(path) => {
                let path = base.join(path);
                if path.is_file() {
                    self.check_file(&path)?;
                    Ok(PluginSource::File(path))
                } else {
                    Err(PluginRefError::MissingFile { path })
                }
            }
            PluginRef::Named(name) => {
                // Cargo names a crate's artifact with '_' for '-'.
                let names = [
                    format!("{name}.wasm"),
                    format!("{}.wasm", name.replace('-', "_")),
                ];
                self.dirs
                    .iter()
                    .flat_map(|d| names.iter().map(move |n| d.join(n)))
                    .find(|p| p.is_file())
                    .ok_or_else(|| PluginRefError::NotOnPath {
                        name: name.clone(),
                        searched: self.dirs.clone(),
                    })
                    .and_then(|path| {
                        self.check_file(&path)?;
                        Ok(PluginSource::File(path))
                    })
            }
        }
    }

    fn check_file(&self, path: &Path) -> Result<(), PluginRefError> {
        self.registry
            .check_file(path)
            .map_err(|e| PluginRefError::Registry(Arc::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_paths_or_names() {
        assert_eq!(
            PluginRef::parse("build").unwrap(),
            PluginRef::Named("build".into())
        );
        assert_eq!(
            PluginRef::parse("plugins/build.wasm").unwrap(),
            PluginRef::File("plugins/build.wasm".into())
        );
        assert_eq!(
            PluginRef::parse("x.wasm").unwrap(),
            PluginRef::File("x.wasm".into())
        );
        assert!(matches!(
            PluginRef::parse("oci://127.0.0.1:5000/team/notify:1.2").unwrap(),
            PluginRef::Oci(_)
        ));
        let e = PluginRef::parse("oci://notify:1.2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no registry"), "{e}");
    }

    #[test]
    fn names_are_searched_with_cargo_underscores_and_paths_are_relative() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::write(plugins.join("integration_test.wasm"), b"").unwrap();
        let path = PluginPath::new(&Sources::dirs(&[]), dir.path());
        assert_eq!(
            path.resolve(&PluginRef::parse("integration-test").unwrap(), dir.path())
                .unwrap(),
            PluginSource::File(plugins.join("integration_test.wasm"))
        );
        assert_eq!(
            path.resolve(
                &PluginRef::parse("plugins/integration_test.wasm").unwrap(),
                dir.path()
            )
            .unwrap(),
            PluginSource::File(plugins.join("integration_test.wasm"))
        );
        let missing = path
            .resolve(&PluginRef::parse("nope").unwrap(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("plugin \"nope\" not found as nope.wasm in"),
            "{missing}"
        );
        assert!(matches!(
            path.resolve(&PluginRef::parse("gone.wasm").unwrap(), dir.path()),
            Err(PluginRefError::MissingFile { .. })
        ));
    }
}
