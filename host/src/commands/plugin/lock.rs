//! `runner plugin lock|update`: write runner.lock from what a pipeline's
//! registry references resolve to.

use crate::cli::Cli;
use crate::commands::CommandError;
use crate::commands::host::sources;
use crate::oci::lockfile::{LockEntry, LockFile};
use crate::oci::resolve::Mode;
use crate::pipeline::file::Pipeline;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Resolve the pipeline's references under `mode`: every stage and hook.
fn resolve(
    cli: &Cli,
    file: &Path,
    plugin_path: &[PathBuf],
    mode: Mode,
) -> Result<BTreeMap<String, LockEntry>, CommandError> {
    let sources = sources(cli, plugin_path, Some(file), false, mode)?;
    Pipeline::load(file, &sources, None)?;
    Ok(sources.registry.resolved())
}

fn write(file: &Path, resolved: &BTreeMap<String, LockEntry>) -> Result<PathBuf, CommandError> {
    let path = LockFile::path_for(file);
    LockFile {
        version: 1,
        plugins: resolved.values().cloned().collect(),
    }
    .write(&path)
    .map_err(super::registry_error)?;
    Ok(path)
}

pub(crate) fn lock(cli: &Cli, file: &Path, plugin_path: &[PathBuf]) -> Result<(), CommandError> {
    let resolved = resolve(cli, file, plugin_path, Mode::Lock)?;
    let path = write(file, &resolved)?;
    let mut out = std::io::stdout().lock();
    for entry in resolved.values() {
        writeln!(out, "{}  {}", entry.digest, entry.reference)?;
    }
    eprintln!("{}: {} plugins pinned", path.display(), resolved.len());
    Ok(())
}

/// The grant an import needs, for showing drift.
fn grant_of(import: &str) -> &'static str {
    match crate::caps::import_use(import) {
        Some(crate::caps::ImportUse::Capability(cap)) => cap.flag_hint,
        Some(crate::caps::ImportUse::Wasi(policy)) => policy,
        None => "not provided by runner",
    }
}

pub(crate) fn update(
    cli: &Cli,
    name: Option<&str>,
    file: &Path,
    plugin_path: &[PathBuf],
    locked: bool,
) -> Result<(), CommandError> {
    let path = LockFile::path_for(file);
    let old = LockFile::read(&path)
        .map_err(super::registry_error)?
        .unwrap_or_default();
    let resolved = resolve(cli, file, plugin_path, Mode::Update(name.map(String::from)))?;
    if let Some(name) = name
        && !resolved.values().any(|e| {
            e.reference == name
                || crate::oci::OciRef::parse(&e.reference).is_ok_and(|r| r.name() == name)
        })
    {
        return Err(CommandError::Usage(format!(
            "no registry plugin of {} is named \"{name}\"; give a reference as written or its last part",
            file.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut drift = Vec::new();
    for entry in resolved.values() {
        let Some(before) = old.get(&entry.reference) else {
            writeln!(out, "{}: new, {}", entry.reference, entry.digest)?;
            continue;
        };
        if before.digest == entry.digest {
            continue;
        }
        writeln!(
            out,
            "{}: {} -> {}",
            entry.reference,
            before.digest.short(),
            entry.digest.short()
        )?;
        for import in entry.imports.iter().filter(|i| !before.imports.contains(i)) {
            writeln!(
                out,
                "  + NEW CAPABILITY {import} (needs {})",
                grant_of(import)
            )?;
            drift.push(format!("{} imports {import}", entry.reference));
        }
        for import in before.imports.iter().filter(|i| !entry.imports.contains(i)) {
            writeln!(out, "  - no longer imports {import}")?;
        }
    }
    if locked && !drift.is_empty() {
        return Err(CommandError::Usage(format!(
            "refused (--locked): the update adds capabilities the locked plugins did not use: {}; \
             review them, then run `runner plugin update` without --locked",
            drift.join("; ")
        )));
    }
    let path = write(file, &resolved)?;
    eprintln!("{}: {} plugins pinned", path.display(), resolved.len());
    Ok(())
}
