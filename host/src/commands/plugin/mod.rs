//! `runner plugin inspect|new|list`, and (in the submodules) the registry
//! commands: `push|pull|login` (publish.rs), `lock|update` (lock.rs),
//! `bundle` (bundle.rs), `sign|verify` (sign.rs).

mod bundle;
mod lock;
mod publish;
mod sign;

pub(super) use bundle::bundle;
pub(super) use lock::{lock, update};
pub(super) use publish::{login, pull, push};
pub(super) use sign::{sign, verify};

use super::CommandError;
use super::host::runtime;
use crate::cli::Cli;
use crate::oci::OciRef;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A registry error as a command error: a usage error (exit 2), the
/// message says what to do.
pub(super) fn registry_error(e: crate::oci::OciError) -> CommandError {
    CommandError::Usage(e.to_string())
}

pub(super) fn client(cli: &Cli) -> crate::oci::RegistryClient {
    crate::oci::RegistryClient::new(
        cli.insecure_registry.clone(),
        crate::runtime::DEFAULT_MAX_PLUGIN_BYTES,
    )
}

pub(super) fn store(cli: &Cli) -> Result<crate::oci::store::PluginStore, CommandError> {
    cli.plugin_store
        .clone()
        .or_else(crate::oci::store::PluginStore::default_dir)
        .map(crate::oci::store::PluginStore::new)
        .ok_or_else(|| {
            CommandError::Usage(
                "no cache directory for the plugin store; set RUNNER_PLUGIN_STORE".into(),
            )
        })
}

pub(super) async fn inspect(cli: &Cli, plugin: &str) -> Result<(), CommandError> {
    if plugin.starts_with(crate::oci::SCHEME) {
        let reference = OciRef::parse(plugin).map_err(registry_error)?;
        let pulled = client(cli)
            .pull(&reference, true)
            .await
            .map_err(registry_error)?;
        let config = crate::oci::artifact::parse_config(&pulled.config);
        let component = config
            .as_ref()
            .and_then(|c| c.component.clone())
            .unwrap_or_default();
        let mut header = vec![
            ("plugin", reference.to_string()),
            ("digest", pulled.manifest_digest.to_string()),
            ("layer", pulled.plugin.layer_digest.to_string()),
        ];
        if let Some(config) = &config {
            header.push(("created", config.created.clone()));
        }
        let mut report = crate::inspect::report_names(
            &header,
            pulled.plugin.layer_size,
            &component.imports,
            &component.exports,
        );
        report.push_str(&describe_report(
            config.as_ref().and_then(|c| c.description.as_ref()),
        ));
        std::io::stdout().lock().write_all(report.as_bytes())?;
        if config.is_none() {
            tracing::warn!("{reference}: its config is not a Wasm config; imports unknown");
        }
        return Ok(());
    }
    let path = Path::new(plugin);
    let runtime = runtime(cli)?;
    // As `exec` reads it: a regular file under the size cap, no FIFO hang.
    let bytes = runtime.read_plugin(path)?;
    let (component, _) = runtime.compile(path, &bytes)?;
    let mut report = crate::inspect::report(runtime.engine(), path, bytes.len(), &component);
    // A stage can say what it takes and gives (a component of another world cannot).
    if let Ok(plugin) = runtime.load_bytes("inspect", path, &bytes) {
        let described = runtime.describe(&plugin).await?;
        report.push_str(&describe_report(described.as_ref()));
    }
    std::io::stdout().lock().write_all(report.as_bytes())?;
    Ok(())
}

fn describe_report(described: Option<&crate::describe::Description>) -> String {
    match described {
        Some(described) => described.report(),
        None => "\nsettings and outputs: not declared (built against the plain `stage` world, \
                 not `described-stage`)\n"
            .into(),
    }
}

/// What is on the plugin path (files, bundles) and in the store.
pub(super) fn list(cli: &Cli, plugin_path: &[PathBuf]) -> Result<(), CommandError> {
    let sources = super::host::sources(cli, plugin_path, None, false, Default::default())?;
    let path = crate::plugin_ref::PluginPath::new(&sources, Path::new("."));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<44} {:<20} {:>9}  WHERE",
        "PLUGIN", "DIGEST", "SIZE"
    )?;
    for dir in path.dirs() {
        if let Ok(Some(bundle)) = crate::oci::store::Bundle::open(dir) {
            for p in &bundle.manifest.plugins {
                let size = std::fs::metadata(bundle.store().blob_path(&p.layer))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let compiled = if p.precompiled.is_some() {
                    ", precompiled"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{:<44} {:<20} {:>9}  bundle {}{compiled}",
                    p.reference,
                    p.manifest.short(),
                    bytesize::ByteSize(size).to_string(),
                    dir.display()
                )?;
            }
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file)?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            writeln!(
                out,
                "{:<44} {:<20} {:>9}  {}",
                name,
                crate::oci::Digest::of(&bytes).short(),
                bytesize::ByteSize(bytes.len() as u64).to_string(),
                file.display()
            )?;
        }
    }
    let store = store(cli)?;
    for entry in store.entries() {
        writeln!(
            out,
            "{:<44} {:<20} {:>9}  store {}",
            entry.reference,
            entry.manifest.short(),
            bytesize::ByteSize(entry.size).to_string(),
            store.dir().display()
        )?;
    }
    Ok(())
}

/// A new plugin project in `dir` (default `./NAME`).
pub(super) fn new(
    name: &str,
    lang: crate::scaffold::Lang,
    dir: Option<&Path>,
) -> Result<(), CommandError> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| name.into());
    let files = crate::scaffold::create(name, lang, &dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created {} ({} files); next: see {}",
        dir.display(),
        files.len(),
        dir.join("README.md").display()
    )?;
    Ok(())
}
