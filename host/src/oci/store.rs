//! The content-addressed plugin store (`$XDG_CACHE_HOME/runner/plugins`,
//! or `RUNNER_PLUGIN_STORE`): `blobs/sha256/<hex>` for manifests, configs
//! and components, every read verified against the digest it is filed
//! under, and `index.json` naming what was pulled from where (for `runner
//! plugin list`; nothing trusts it).
//!
//! A bundle (`runner plugin bundle`) is the same layout, read-only, plus
//! `runner-bundle.json` (each plugin's reference, digests, imports and its
//! artifact precompiled for one runner build) and `compiled/`.

use super::artifact::{self, PluginManifest};
use super::signature::{self, SignatureLayer, Signatures};
use super::{Digest, OciError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory of blobs filed by digest.
#[derive(Debug, Clone)]
pub struct PluginStore {
    dir: PathBuf,
}

/// One line of the store's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub reference: String,
    pub manifest: Digest,
    pub layer: Digest,
    pub size: u64,
}

impl PluginStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// `$RUNNER_PLUGIN_STORE`, else `<user cache>/runner/plugins`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("RUNNER_PLUGIN_STORE")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("runner").join("plugins")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> OciError {
        let path = path.to_path_buf();
        move |source| OciError::Store {
            path: path.clone(),
            source,
        }
    }

    /// File `bytes` under `digest` (checked first: a store never holds a
    /// blob under another blob's name). Written atomically.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, OciError> {
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what: "a blob about to be stored".into(),
                expected: digest.clone(),
                actual,
                hint: String::new(),
            });
        }
        let path = self.blob_path(digest);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(self.io(&dir))?;
        let temp = tempfile::NamedTempFile::new_in(&dir).map_err(self.io(&dir))?;
        std::fs::write(temp.path(), bytes).map_err(self.io(temp.path()))?;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(self.io(temp.path()))?;
        temp.persist(&path).map_err(|e| self.io(&path)(e.error))?;
        Ok(path)
    }

    /// The blob filed under `digest`, at most `cap` bytes, verified;
    /// `Ok(None)` when there is none.
    pub fn read(&self, digest: &Digest, cap: u64) -> Result<Option<Vec<u8>>, OciError> {
        read_verified_at(self.blob_path(digest), digest, cap)
    }

    /// The plugin manifest filed under `manifest`, if stored.
    pub fn plugin_manifest(&self, manifest: &Digest) -> Result<Option<PluginManifest>, OciError> {
        let Some(bytes) = self.read(manifest, artifact::MAX_METADATA_BYTES)? else {
            return Ok(None);
        };
        artifact::parse_manifest(manifest.as_str(), &bytes).map(Some)
    }

    /// Store a pulled plugin and note where it came from.
    pub fn save(&self, reference: &str, pulled: &super::Pulled) -> Result<(), OciError> {
        self.put(&pulled.manifest_digest, &pulled.manifest)?;
        self.put(&pulled.plugin.config_digest, &pulled.config)?;
        if let Some(layer) = &pulled.layer {
            self.put(&pulled.plugin.layer_digest, layer)?;
        }
        self.record(IndexEntry {
            reference: reference.to_string(),
            manifest: pulled.manifest_digest.clone(),
            layer: pulled.plugin.layer_digest.clone(),
            size: pulled.plugin.layer_size,
        })
    }

    fn signature_pointer(&self, plugin: &Digest) -> PathBuf {
        self.dir.join("signatures").join(plugin.hex())
    }

    /// Keep the signatures of plugin manifest `plugin`: the signature
    /// manifest and payloads as blobs, and `signatures/<hex>` naming the
    /// manifest (replaced atomically: the newest fetch wins).
    pub fn put_signatures(&self, plugin: &Digest, signatures: &Signatures) -> Result<(), OciError> {
        self.put(&signatures.manifest_digest, &signatures.manifest)?;
        for layer in &signatures.layers {
            self.put(&layer.digest, &layer.payload)?;
        }
        let path = self.signature_pointer(plugin);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(self.io(&dir))?;
        let temp = tempfile::NamedTempFile::new_in(&dir).map_err(self.io(&dir))?;
        std::fs::write(temp.path(), signatures.manifest_digest.as_str())
            .map_err(self.io(temp.path()))?;
        temp.persist(&path).map_err(|e| self.io(&path)(e.error))?;
        Ok(())
    }

    /// The signatures kept for plugin manifest `plugin`, every blob
    /// verified; `Ok(None)` when none are kept.
    pub fn signatures(&self, plugin: &Digest) -> Result<Option<Signatures>, OciError> {
        let path = self.signature_pointer(plugin);
        let pointer = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => read_capped(file, 128).map_err(self.io(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let manifest_digest = Digest::parse(String::from_utf8_lossy(&pointer).trim())?;
        let Some(manifest) = self.read(&manifest_digest, artifact::MAX_METADATA_BYTES)? else {
            return Ok(None);
        };
        let refs = signature::parse_manifest(&manifest).map_err(|detail| OciError::File {
            path: self.blob_path(&manifest_digest),
            detail,
        })?;
        let mut layers = Vec::with_capacity(refs.len());
        for layer in refs {
            let Some(payload) = self.read(&layer.digest, signature::MAX_PAYLOAD_BYTES)? else {
                continue;
            };
            layers.push(SignatureLayer {
                digest: layer.digest,
                payload,
                signature: layer.signature,
            });
        }
        Ok(Some(Signatures {
            manifest_digest,
            manifest,
            layers,
        }))
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// What was pulled, newest record per reference.
    pub fn entries(&self) -> Vec<IndexEntry> {
        std::fs::read(self.index_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn record(&self, entry: IndexEntry) -> Result<(), OciError> {
        let mut entries = self.entries();
        entries.retain(|e| e.reference != entry.reference);
        entries.push(entry);
        entries.sort_by(|a, b| a.reference.cmp(&b.reference));
        let path = self.index_path();
        let text = serde_json::to_vec_pretty(&entries).map_err(|e| OciError::File {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let temp = tempfile::NamedTempFile::new_in(&self.dir).map_err(self.io(&self.dir))?;
        std::fs::write(temp.path(), text).map_err(self.io(temp.path()))?;
        temp.persist(&path).map_err(|e| self.io(&path)(e.error))?;
        Ok(())
    }
}

/// Read a file of at most `cap` bytes (plus one, so a larger one is seen)
/// in large reads: its size is known, so the buffer is allocated once.
pub fn read_capped(file: std::fs::File, cap: u64) -> std::io::Result<Vec<u8>> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len.min(cap).saturating_add(1) as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The blob at `path`, which must hash to `digest` (for a blob a resolved
/// plugin names; see [`PluginStore::read`]).
pub fn read_verified(path: &Path, digest: &Digest, cap: u64) -> Result<Vec<u8>, OciError> {
    read_verified_at(path.to_path_buf(), digest, cap)?.ok_or_else(|| OciError::Store {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fn read_verified_at(path: PathBuf, digest: &Digest, cap: u64) -> Result<Option<Vec<u8>>, OciError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Store {
            path: path.clone(),
            source,
        }
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let meta = file.metadata().map_err(io(&path))?;
    if !meta.is_file() {
        return Err(OciError::File {
            path,
            detail: "is not a regular file".into(),
        });
    }
    let bytes = read_capped(file, cap).map_err(io(&path))?;
    if bytes.len() as u64 > cap {
        return Err(OciError::TooLarge {
            what: path.display().to_string(),
            size: meta.len(),
            cap,
        });
    }
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(OciError::DigestMismatch {
            what: format!("stored blob {}", path.display()),
            expected: digest.clone(),
            actual,
            hint: format!(
                ". The file changed after it was stored; remove it ({}) and pull again",
                path.display()
            ),
        });
    }
    Ok(Some(bytes))
}

/// `runner-bundle.json`: what a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// The runner version that precompiled the artifacts.
    pub runner: String,
    pub plugins: Vec<BundledPlugin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundledPlugin {
    pub reference: String,
    pub manifest: Digest,
    pub layer: Digest,
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precompiled: Option<Precompiled>,
}

/// A component precompiled for one runner build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precompiled {
    /// File name in `compiled/`.
    pub file: String,
    /// BLAKE3 of the artifact, checked before it is loaded.
    pub blake3: String,
    /// The engine compatibility tag it was compiled under.
    pub engine: String,
}

/// An opened bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: BundleManifest,
    /// Whether its precompiled artifacts may be loaded: the directory and
    /// its `compiled/` are writable only by their owner, root or this user.
    pub trusted: bool,
}

pub const BUNDLE_FILE: &str = "runner-bundle.json";
/// A bundle manifest is a few KB per plugin.
const MAX_BUNDLE_MANIFEST: u64 = 16 * 1024 * 1024;

impl Bundle {
    /// The bundle in `dir`, or `None` when `dir` holds none.
    pub fn open(dir: &Path) -> Result<Option<Self>, OciError> {
        let path = dir.join(BUNDLE_FILE);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let bytes = match opened.and_then(|file| read_capped(file, MAX_BUNDLE_MANIFEST)) {
            Ok(bytes) if bytes.len() as u64 > MAX_BUNDLE_MANIFEST => {
                return Err(OciError::TooLarge {
                    what: path.display().to_string(),
                    size: bytes.len() as u64,
                    cap: MAX_BUNDLE_MANIFEST,
                });
            }
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OciError::Store { path, source }),
        };
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|e| OciError::File {
                path: path.clone(),
                detail: format!("not a runner bundle manifest: {e}"),
            })?;
        let trusted = [dir.to_path_buf(), dir.join("compiled")]
            .iter()
            .all(|d| owned_safely(d));
        if !trusted {
            tracing::warn!(
                "bundle {}: its directory is writable by another user or owned by someone else; \
                 its precompiled artifacts are not loaded (plugins compile at start)",
                dir.display()
            );
        }
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            manifest,
            trusted,
        }))
    }

    pub fn store(&self) -> PluginStore {
        PluginStore::new(self.dir.clone())
    }

    pub fn find(&self, manifest: &Digest) -> Option<&BundledPlugin> {
        self.manifest
            .plugins
            .iter()
            .find(|p| p.manifest == *manifest)
    }

    pub fn compiled_path(&self, precompiled: &Precompiled) -> Option<PathBuf> {
        // The name is written by `runner plugin bundle`; anything else is refused.
        let ok = precompiled
            .file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !precompiled.file.starts_with('.');
        ok.then(|| self.dir.join("compiled").join(&precompiled.file))
    }
}

/// Owned by root or this user, and not writable by group or others.
fn owned_safely(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    (meta.uid() == 0 || meta.uid() == me) && meta.mode() & 0o022 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_on_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::new(dir.path().to_path_buf());
        let digest = Digest::of(b"component");
        assert!(store.put(&Digest::of(b"other"), b"component").is_err());
        let path = store.put(&digest, b"component").unwrap();
        assert_eq!(store.read(&digest, 100).unwrap().unwrap(), b"component");
        std::fs::write(&path, b"c0mponent").unwrap();
        let e = store.read(&digest, 100).unwrap_err().to_string();
        assert!(
            e.contains("does not match its digest") && e.contains("pull again"),
            "{e}"
        );
        std::fs::write(&path, vec![b'x'; 200]).unwrap();
        assert!(matches!(
            store.read(&digest, 100),
            Err(OciError::TooLarge { .. })
        ));
        assert!(store.read(&Digest::of(b"absent"), 100).unwrap().is_none());
    }
}
