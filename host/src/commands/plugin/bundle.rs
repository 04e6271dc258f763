//! `runner plugin bundle`: pull plugins and precompile them for this runner
//! build into a directory a CI image puts on RUNNER_PLUGIN_PATH.

use super::{client, registry_error, store};
use crate::cli::Cli;
use crate::commands::CommandError;
use crate::commands::host::runtime;
use crate::oci::lockfile::LockFile;
use crate::oci::store::{
    BUNDLE_FILE, Bundle, BundleManifest, BundledPlugin, PluginStore, Precompiled,
};
use crate::oci::{Digest, OciRef, artifact};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) async fn bundle(
    cli: &Cli,
    out: &Path,
    lock: Option<&Path>,
    references: &[String],
) -> Result<(), CommandError> {
    let mut wanted: Vec<(String, OciRef)> = Vec::new();
    if let Some(lock) = lock {
        let file = LockFile::read(lock)
            .map_err(registry_error)?
            .ok_or_else(|| CommandError::Usage(format!("{} does not exist", lock.display())))?;
        for entry in file.plugins {
            let reference = OciRef::parse(&entry.reference).map_err(registry_error)?;
            wanted.push((entry.reference, reference.pinned(&entry.digest)));
        }
    }
    for text in references {
        wanted.push((text.clone(), OciRef::parse(text).map_err(registry_error)?));
    }
    if wanted.is_empty() {
        return Err(CommandError::Usage(
            "nothing to bundle: give --lock runner.lock or references".into(),
        ));
    }
    let runtime = runtime(cli)?;
    let engine = crate::runtime::engine_tag(runtime.engine());
    let target = PluginStore::new(out.to_path_buf());
    let compiled_dir = out.join("compiled");
    std::fs::create_dir_all(&compiled_dir)?;
    let user_store = store(cli)?;
    let client = client(cli);
    let mut manifest = match Bundle::open(out).map_err(registry_error)? {
        Some(existing) => existing.manifest,
        None => BundleManifest {
            runner: env!("CARGO_PKG_VERSION").into(),
            plugins: Vec::new(),
        },
    };
    manifest.runner = env!("CARGO_PKG_VERSION").into();
    let cap = crate::runtime::DEFAULT_MAX_PLUGIN_BYTES;
    let mut stdout = std::io::stdout().lock();
    for (key, reference) in &wanted {
        let started = Instant::now();
        // The user's store first (offline when it was pulled before).
        let local = match reference.digest() {
            Some(digest) => from_store(&user_store, digest, cap)?,
            None => None,
        };
        let (manifest_digest, layer, bytes, source) = match local {
            Some((layer, bytes)) => {
                let digest = reference
                    .digest()
                    .cloned()
                    .unwrap_or_else(|| Digest::of(b""));
                copy_metadata(&user_store, &target, &digest)?;
                (digest, layer, bytes, "store")
            }
            None => {
                let pulled = client
                    .pull(reference, false)
                    .await
                    .map_err(registry_error)?;
                target.save(key, &pulled).map_err(registry_error)?;
                let bytes = pulled.layer.clone().unwrap_or_default();
                (
                    pulled.manifest_digest,
                    pulled.plugin.layer_digest,
                    bytes,
                    "registry",
                )
            }
        };
        target.put(&layer, &bytes).map_err(registry_error)?;
        bundle_signatures(
            cli,
            &client,
            &user_store,
            &target,
            reference,
            &manifest_digest,
        )
        .await?;
        let fetched = started.elapsed();
        let label = PathBuf::from(reference.pinned(&manifest_digest).to_string());
        let (component, _) = runtime.compile(&label, &bytes)?;
        let serialized = component
            .serialize()
            .map_err(|e| CommandError::Engine(e.to_string()))?;
        let file = format!("{}-{engine}.cwasm", layer.hex());
        let compiled_path = compiled_dir.join(&file);
        std::fs::write(&compiled_path, &serialized)?;
        let imports = artifact::component_info(&bytes)
            .map(|info| info.imports)
            .unwrap_or_default();
        manifest.plugins.retain(|p| p.reference != *key);
        manifest.plugins.push(BundledPlugin {
            reference: key.clone(),
            manifest: manifest_digest.clone(),
            layer,
            imports,
            precompiled: Some(Precompiled {
                file,
                blake3: blake3::hash(&serialized).to_hex().to_string(),
                engine: engine.clone(),
            }),
        });
        writeln!(
            stdout,
            "{}  {key}  (from {source} {} ms, precompiled {} ms)",
            manifest_digest,
            fetched.as_millis(),
            (started.elapsed() - fetched).as_millis()
        )?;
    }
    manifest
        .plugins
        .sort_by(|a, b| a.reference.cmp(&b.reference));
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CommandError::Usage(e.to_string()))?;
    std::fs::write(out.join(BUNDLE_FILE), text)?;
    eprintln!(
        "bundle {}: {} plugins, precompiled for runner {} (engine {engine}); put it on RUNNER_PLUGIN_PATH",
        out.display(),
        manifest.plugins.len(),
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

/// The plugin's signatures, so runs from the bundle verify them offline:
/// from the user's store, else the registry. With trusted keys, a plugin
/// no trusted key signed is not bundled.
async fn bundle_signatures(
    cli: &Cli,
    client: &crate::oci::RegistryClient,
    user_store: &PluginStore,
    target: &PluginStore,
    reference: &OciRef,
    manifest: &Digest,
) -> Result<(), CommandError> {
    let keys = crate::commands::host::trusted_keys(cli)?;
    let kept = user_store.signatures(manifest).map_err(registry_error)?;
    let verifies = |s: &crate::oci::signature::Signatures| {
        crate::oci::signature::verify(&keys, manifest, &s.layers).is_ok()
    };
    let signatures = match kept {
        Some(kept) if keys.is_empty() || verifies(&kept) => Some(kept),
        _ => match client.pull_signatures(reference, manifest).await {
            Ok(found) => found,
            Err(e) if keys.is_empty() && !cli.require_signature => {
                tracing::warn!("{reference}: its signatures were not bundled: {e}");
                None
            }
            Err(e) => return Err(registry_error(e)),
        },
    };
    if !keys.is_empty() || cli.require_signature {
        let layers = signatures
            .as_ref()
            .map(|s| s.layers.as_slice())
            .unwrap_or_default();
        if let Err(unverified) = crate::oci::signature::verify(&keys, manifest, layers) {
            return Err(registry_error(crate::oci::OciError::Unsigned {
                plugin: reference.pinned(manifest).to_string(),
                detail: if keys.is_empty() {
                    "--require-signature is set but no key is trusted (--trust-key FILE)".into()
                } else {
                    crate::oci::resolve::describe_failures(&[unverified], &keys)
                },
            }));
        }
    }
    if let Some(signatures) = signatures {
        target
            .put_signatures(manifest, &signatures)
            .map_err(registry_error)?;
    }
    Ok(())
}

/// A plugin already in the user's store, by manifest digest.
fn from_store(
    store: &PluginStore,
    manifest: &Digest,
    cap: u64,
) -> Result<Option<(Digest, Vec<u8>)>, CommandError> {
    let Some(plugin) = store.plugin_manifest(manifest).map_err(registry_error)? else {
        return Ok(None);
    };
    Ok(store
        .read(&plugin.layer_digest, cap)
        .map_err(registry_error)?
        .map(|bytes| (plugin.layer_digest, bytes)))
}

/// The manifest and config blobs, so `inspect` works from the bundle too.
fn copy_metadata(
    from: &PluginStore,
    to: &PluginStore,
    manifest: &Digest,
) -> Result<(), CommandError> {
    let cap = artifact::MAX_METADATA_BYTES;
    if let Some(bytes) = from.read(manifest, cap).map_err(registry_error)? {
        to.put(manifest, &bytes).map_err(registry_error)?;
        if let Ok(plugin) = artifact::parse_manifest(manifest.as_str(), &bytes)
            && let Some(config) = from
                .read(&plugin.config_digest, cap)
                .map_err(registry_error)?
        {
            to.put(&plugin.config_digest, &config)
                .map_err(registry_error)?;
        }
    }
    Ok(())
}
