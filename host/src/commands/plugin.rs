//! `runner plugin inspect|new`.

use super::CommandError;
use super::host::runtime;
use crate::cli::Cli;
use std::io::Write;
use std::path::Path;

pub(super) fn inspect(cli: &Cli, path: &Path) -> Result<(), CommandError> {
    let runtime = runtime(cli)?;
    // As `exec` reads it: a regular file under the size cap, no FIFO hang.
    let bytes = runtime.read_plugin(path)?;
    let (component, _) = runtime.compile(path, &bytes)?;
    let report = crate::inspect::report(runtime.engine(), path, bytes.len(), &component);
    std::io::stdout().lock().write_all(report.as_bytes())?;
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
