//! `runner validate`: check a pipeline file without running anything.

use crate::cli::{Cli, ValidateArgs};
use crate::commands::CommandError;
use crate::commands::host::runtime;
use crate::pipeline::file::Pipeline;
use std::io::Write;

pub(crate) fn validate(cli: &Cli, args: &ValidateArgs) -> Result<(), CommandError> {
    let runtime = runtime(cli)?;
    let sources = crate::commands::host::sources(
        cli,
        &args.plugin_path,
        Some(&args.file),
        args.locked,
        Default::default(),
    )?;
    let pipeline = Pipeline::load(&args.file, &sources, Some(&runtime))?;
    let mut err = std::io::stderr().lock();
    for warning in &pipeline.warnings {
        writeln!(err, "warning: {warning}")?;
    }
    if args.strict && !pipeline.warnings.is_empty() {
        return Err(crate::pipeline::file::PipelineError::Invalid {
            problems: pipeline.warnings,
        }
        .into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: valid; service {}, {} stages: {}",
        args.file.display(),
        pipeline.service,
        pipeline.stages.len(),
        pipeline
            .stages
            .iter()
            .map(|s| format!("{} ({})", s.name, s.plugin))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}
