//! From an `oci://` reference to verified component bytes: the digest from
//! the reference itself or `runner.lock`, the blobs from a bundle on the
//! plugin path or the store, and the registry only for what neither has.

use super::keys::TrustedKey;
use super::lockfile::{LockEntry, LockFile};
use super::signature::{self, Signatures};
use super::store::{Bundle, PluginStore, Precompiled};
use super::{Digest, OciError, OciRef, RegistryClient, artifact};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a resolution is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Run (or validate): locked digests win; a reference missing from the
    /// lock is resolved now (with a warning) unless `locked`.
    #[default]
    Run,
    /// `runner plugin lock`: keep what is locked, resolve what is not.
    Lock,
    /// `runner plugin update [NAME]`: resolve the tags again (all, or the
    /// references NAME matches).
    Update(Option<String>),
}

/// How references are resolved.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub mode: Mode,
    /// CI: a missing or stale lock, or a component importing more than its
    /// lock records, is an error.
    pub locked: bool,
    /// Registries (`host:port`) spoken to over plain HTTP though not local.
    pub insecure: Vec<String>,
    /// The store [default: [`PluginStore::default_dir`]].
    pub store: Option<PathBuf>,
    pub max_plugin_bytes: u64,
    /// The operator's trusted keys (`--trust-key`, `RUNNER_TRUST_KEYS`):
    /// when given, they replace a file's `[trust] keys`, which come from
    /// the checkout.
    pub trust_keys: Vec<TrustedKey>,
    /// `--require-signature`: every plugin must be a registry plugin signed
    /// by a trusted key (and some key must be trusted).
    pub require_signature: bool,
}

/// A resolved registry plugin, bytes verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlugin {
    /// As written.
    pub reference: OciRef,
    pub manifest: Digest,
    pub layer: Digest,
    /// Where the component's bytes are (store or bundle).
    pub blob: PathBuf,
    /// The verified component; `None` when a trusted bundle's precompiled
    /// artifact is what will load (read from `blob` only if it cannot).
    pub bytes: Option<Arc<[u8]>>,
    pub imports: Vec<String>,
    /// A precompiled artifact from a trusted bundle.
    pub precompiled: Option<(PathBuf, Precompiled)>,
}

impl StoredPlugin {
    /// `oci://…:1.2@sha256:…`: what runs.
    pub fn pinned(&self) -> String {
        let mut text = self.reference.to_string();
        if self.reference.digest().is_none() {
            text = format!("{text}@{}", self.manifest);
        }
        text
    }
}

/// Resolves `oci://` references for one command.
#[derive(Debug)]
pub struct Resolver {
    settings: Settings,
    /// `runner.lock`'s path; `None` for `runner exec` with no pipeline.
    lock_path: Option<PathBuf>,
    lock: Mutex<Option<Option<LockFile>>>,
    bundles: Mutex<BTreeMap<PathBuf, Option<Arc<Bundle>>>>,
    resolved: Mutex<BTreeMap<String, LockEntry>>,
    /// A pipeline or runner file's `[trust] keys`.
    file_keys: Mutex<Vec<TrustedKey>>,
    client: RegistryClient,
}

impl Resolver {
    pub fn new(settings: Settings, lock_path: Option<PathBuf>) -> Self {
        let client = RegistryClient::new(settings.insecure.clone(), settings.max_plugin_bytes);
        Self {
            settings,
            lock_path,
            lock: Mutex::new(None),
            bundles: Mutex::new(BTreeMap::new()),
            resolved: Mutex::new(BTreeMap::new()),
            file_keys: Mutex::new(Vec::new()),
            client,
        }
    }

    /// The keys of a file's `[trust]` table (used when the operator gave none).
    pub fn set_file_keys(&self, keys: Vec<TrustedKey>) {
        *self.file_keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Whether a file's `[trust] keys` count: only when the operator gave
    /// no keys and does not require signatures (under `--require-signature`
    /// only the operator's keys count: a file's are the checkout's word).
    pub fn uses_file_keys(&self) -> bool {
        self.settings.trust_keys.is_empty() && !self.settings.require_signature
    }

    /// The keys signatures are checked against: the operator's, else the file's.
    pub fn trusted_keys(&self) -> Vec<TrustedKey> {
        if !self.uses_file_keys() {
            return self.settings.trust_keys.clone();
        }
        self.file_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Under `--require-signature` a plugin file cannot run: nothing signs it.
    pub fn check_file(&self, path: &Path) -> Result<(), OciError> {
        if !self.settings.require_signature {
            return Ok(());
        }
        Err(OciError::Unsigned {
            plugin: path.display().to_string(),
            detail: "it is a file, and --require-signature runs only registry plugins signed \
                     by a trusted key; push it (`runner plugin push`), sign it (`runner plugin \
                     sign`) and name it oci://REGISTRY/REPO@sha256:DIGEST"
                .into(),
        })
    }

    /// Check that plugin `manifest` of `reference` is signed by a trusted
    /// key: with signatures kept in a bundle or the store, else fetched
    /// from the registry (and kept).
    fn check_signature(
        &self,
        reference: &OciRef,
        manifest: &Digest,
        keys: &[TrustedKey],
        bundles: &[Arc<Bundle>],
        store: &PluginStore,
    ) -> Result<(), OciError> {
        let plugin = reference.pinned(manifest).to_string();
        if keys.is_empty() {
            return Err(OciError::Unsigned {
                plugin,
                detail: "--require-signature is set but no key is trusted; give the signers' \
                         public keys with --trust-key FILE (RUNNER_TRUST_KEYS): under \
                         --require-signature a file's [trust] keys do not count"
                    .into(),
            });
        }
        let mut kept: Vec<Signatures> = Vec::new();
        for blobs in bundles.iter().map(|b| b.store()).chain([store.clone()]) {
            kept.extend(blobs.signatures(manifest)?);
        }
        let verified = |signatures: &Signatures| {
            signature::verify(keys, manifest, &signatures.layers).map(|key| {
                tracing::info!(
                    "{plugin}: signature verified, key {} ({})",
                    key.path.display(),
                    key.short()
                );
            })
        };
        let mut failures = Vec::new();
        for signatures in &kept {
            match verified(signatures) {
                Ok(()) => return Ok(()),
                Err(unverified) => failures.push(unverified),
            }
        }
        // None kept, or none by a trusted key: the registry may have newer ones.
        let fetched = block_on(self.client.pull_signatures(reference, manifest))?;
        let detail = match fetched {
            // Kept only when they verify: junk pushed to the tag must not
            // replace the signatures an offline run relies on.
            Ok(Some(signatures)) => match verified(&signatures) {
                Ok(()) => {
                    store.put_signatures(manifest, &signatures)?;
                    return Ok(());
                }
                Err(unverified) => describe_failures(&[unverified], keys),
            },
            Ok(None) if failures.is_empty() => format!(
                "it has no signature (no tag {} in its repository); sign it with \
                 `runner plugin sign --key KEY {plugin}`",
                signature::tag(manifest)
            ),
            Ok(None) => describe_failures(&failures, keys),
            Err(e @ (OciError::Unreachable { .. } | OciError::Auth { .. })) => {
                if failures.is_empty() {
                    format!("no signature is kept for it, and its registry cannot be asked ({e})")
                } else {
                    describe_failures(&failures, keys)
                }
            }
            Err(e) => return Err(e),
        };
        Err(OciError::Unsigned { plugin, detail })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn lock_path(&self) -> Option<&Path> {
        self.lock_path.as_deref()
    }

    pub fn store(&self) -> Result<PluginStore, OciError> {
        self.settings
            .store
            .clone()
            .or_else(PluginStore::default_dir)
            .map(PluginStore::new)
            .ok_or_else(|| OciError::Store {
                path: PathBuf::from("$XDG_CACHE_HOME/runner/plugins"),
                source: std::io::Error::other("no cache directory; set RUNNER_PLUGIN_STORE"),
            })
    }

    /// The lock file, read once.
    pub fn lock(&self) -> Result<Option<LockFile>, OciError> {
        let mut slot = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let lock = match &self.lock_path {
                Some(path) => LockFile::read(path)?,
                None => None,
            };
            *slot = Some(lock);
        }
        Ok(slot.clone().flatten())
    }

    /// What was resolved so far, by reference as written.
    pub fn resolved(&self) -> BTreeMap<String, LockEntry> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn bundles(&self, dirs: &[PathBuf]) -> Result<Vec<Arc<Bundle>>, OciError> {
        let mut cache = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        for dir in dirs {
            if !cache.contains_key(dir) {
                cache.insert(dir.clone(), Bundle::open(dir)?.map(Arc::new));
            }
            if let Some(Some(bundle)) = cache.get(dir) {
                found.push(bundle.clone());
            }
        }
        Ok(found)
    }

    fn selected_for_update(&self, reference: &OciRef) -> bool {
        match &self.settings.mode {
            Mode::Update(None) => true,
            Mode::Update(Some(name)) => *name == reference.to_string() || name == reference.name(),
            _ => false,
        }
    }

    /// Resolve `reference`, searching bundles in `plugin_dirs`.
    pub fn resolve(
        &self,
        reference: &OciRef,
        plugin_dirs: &[PathBuf],
    ) -> Result<StoredPlugin, OciError> {
        let key = reference.to_string();
        let lock = self.lock()?;
        let locked_entry = lock.as_ref().and_then(|l| l.get(&key)).cloned();
        let bundles = self.bundles(plugin_dirs)?;
        let store = self.store()?;
        let mut pulled_now = None;
        let manifest = if let Some(digest) = reference.digest() {
            digest.clone()
        } else if let Some(entry) = locked_entry
            .as_ref()
            .filter(|_| !self.selected_for_update(reference))
        {
            entry.digest.clone()
        } else if self.settings.locked && self.settings.mode == Mode::Run {
            return Err(OciError::Locked(match (&self.lock_path, &lock) {
                (Some(path), Some(_)) => format!(
                    "{} has no entry for {key} (--locked); run `runner plugin lock` and commit {}",
                    path.display(),
                    path.display()
                ),
                (Some(path), None) => format!(
                    "--locked: there is no {} to pin {key}; run `runner plugin lock` and commit it",
                    path.display()
                ),
                (None, _) => format!("--locked: {key} is not pinned; give it with @sha256:DIGEST"),
            }));
        } else {
            let pulled = block_on(self.client.pull(reference, false))??;
            store.save(&key, &pulled)?;
            if self.settings.mode == Mode::Run && self.lock_path.is_some() {
                tracing::warn!(
                    "{key} is not in runner.lock: running {} (what the tag points at now); \
                     `runner plugin lock` pins it",
                    pulled.manifest_digest
                );
            }
            let digest = pulled.manifest_digest.clone();
            pulled_now = Some(pulled);
            digest
        };

        let keys = self.trusted_keys();
        if !keys.is_empty() || self.settings.require_signature {
            self.check_signature(reference, &manifest, &keys, &bundles, &store)?;
        }

        let cap = self.settings.max_plugin_bytes;
        // Bundles first (read-only, maybe precompiled), then the store.
        let mut found = None;
        for bundle in &bundles {
            let Some(entry) = bundle.find(&manifest) else {
                continue;
            };
            let blobs = bundle.store();
            // What runs is bound to the pinned (and signed) manifest: its own
            // blob, verified, must name the layer the bundle's index gives.
            match blobs.plugin_manifest(&manifest)? {
                Some(pinned) if pinned.layer_digest == entry.layer => {}
                _ => {
                    tracing::warn!(
                        "bundle {}: its entry for {} names layer {}, which the manifest does not; \
                         the entry is not used",
                        bundle.dir.display(),
                        manifest.short(),
                        entry.layer.short()
                    );
                    continue;
                }
            }
            let precompiled = entry
                .precompiled
                .as_ref()
                .filter(|_| bundle.trusted)
                .and_then(|p| bundle.compiled_path(p).map(|path| (path, p.clone())));
            // What runs is the precompiled artifact, verified against the
            // bundle manifest when it loads; the component is read (and
            // verified) only if that artifact cannot be used.
            let bytes = match precompiled {
                Some(_) => None,
                None => match blobs.read(&entry.layer, cap)? {
                    Some(bytes) => Some(bytes),
                    None => continue,
                },
            };
            found = Some((
                entry.layer.clone(),
                blobs.blob_path(&entry.layer),
                bytes,
                precompiled,
                entry.imports.clone(),
            ));
            break;
        }
        let (layer, blob, bytes, precompiled, bundled_imports) = match found {
            Some(found) => found,
            None => {
                let layer = match &pulled_now {
                    Some(pulled) => Some(pulled.plugin.layer_digest.clone()),
                    None => store.plugin_manifest(&manifest)?.map(|m| m.layer_digest),
                };
                let stored = match &layer {
                    Some(layer) => store.read(layer, cap)?.map(|bytes| (layer.clone(), bytes)),
                    None => None,
                };
                let (layer, bytes) = match stored {
                    Some(found) => found,
                    None => {
                        let pinned = reference.pinned(&manifest);
                        let pulled = block_on(self.client.pull(&pinned, false))??;
                        store.save(&key, &pulled)?;
                        let bytes = pulled.layer.unwrap_or_default();
                        (pulled.plugin.layer_digest, bytes)
                    }
                };
                (
                    layer.clone(),
                    store.blob_path(&layer),
                    Some(bytes),
                    None,
                    Vec::new(),
                )
            }
        };
        let imports = match &bytes {
            Some(bytes) => {
                artifact::component_info(bytes)
                    .map_err(|found| OciError::NotAPlugin {
                        reference: key.clone(),
                        found: format!("its layer is not a WebAssembly component ({found})"),
                    })?
                    .imports
            }
            // Recorded by `runner plugin bundle` from the verified component.
            None => bundled_imports,
        };
        if let Some(entry) = &locked_entry
            && entry.digest == manifest
        {
            let added: Vec<&String> = imports
                .iter()
                .filter(|i| !entry.imports.contains(i))
                .collect();
            if !added.is_empty() {
                let list = added
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let message = format!(
                    "{key} ({}) imports {list}, which runner.lock does not record for it; \
                     review the plugin, then `runner plugin update {}`",
                    manifest.short(),
                    reference.name()
                );
                if self.settings.locked {
                    return Err(OciError::Locked(message));
                }
                tracing::warn!("{message}");
            }
        }
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.clone(),
                LockEntry {
                    reference: key,
                    digest: manifest.clone(),
                    layer: layer.clone(),
                    imports: imports.clone(),
                },
            );
        Ok(StoredPlugin {
            reference: reference.clone(),
            manifest,
            layer,
            blob,
            bytes: bytes.map(Arc::from),
            imports,
            precompiled,
        })
    }

    /// After a pipeline was loaded under `--locked`: lock entries nothing
    /// used any more are a stale lock.
    pub fn check_stale(&self) -> Result<(), OciError> {
        if !self.settings.locked || self.settings.mode != Mode::Run {
            return Ok(());
        }
        let Some(lock) = self.lock()? else {
            return Ok(());
        };
        let used = self.resolved();
        let unused: Vec<&str> = lock
            .plugins
            .iter()
            .filter(|e| !used.contains_key(&e.reference))
            .map(|e| e.reference.as_str())
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        Err(OciError::Locked(format!(
            "{} is stale (--locked): it pins {}, which the pipeline no longer uses; run `runner plugin lock`",
            self.lock_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "runner.lock".into()),
            unused.join(", ")
        )))
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }
}

/// What was wrong with the signatures found, and the fix.
pub(crate) fn describe_failures(failures: &[signature::Unverified], keys: &[TrustedKey]) -> String {
    let mut reasons: Vec<&str> = failures
        .iter()
        .flat_map(|f| f.reasons.iter().map(String::as_str))
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    let count: usize = failures.iter().map(|f| f.signatures).max().unwrap_or(0);
    format!(
        "it has {count} signature(s), none by a trusted key for this digest ({}); trusted: {}. \
         Sign it with one of those keys, or trust its signer's public key (--trust-key)",
        if reasons.is_empty() {
            "no readable signature".to_string()
        } else {
            reasons.join("; ")
        },
        keys.iter()
            .map(|k| format!("{} ({})", k.path.display(), k.short()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Run `future` to completion from synchronous code, whether or not a
/// Tokio runtime is running on this thread: on a thread of its own with a
/// small runtime of its own.
pub fn block_on<F>(future: F) -> Result<F::Output, OciError>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(future))
            })
            .join()
            .map_err(|_| std::io::Error::other("the registry client panicked"))?
    })
    .map_err(|source| OciError::Store {
        path: PathBuf::from("<tokio runtime>"),
        source,
    })
}
