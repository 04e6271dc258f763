//! `runner run`, `rollback`, `recover` and `promote`: every way a deploy starts.

use super::{Start, check_service, connect, deploy_stage, load, run_pipeline};
use crate::cli::{Cli, PipelineArgs, ServiceArgs};
use crate::commands::CommandError;
use crate::commands::host::Open;
use crate::conventions::RunKind;
use crate::pipeline::history::{self};
use crate::pipeline::report::Reporter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn run(
    cli: &Cli,
    args: &PipelineArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let (runtime, pipeline) = load(cli, &args.file, &args.options)?;
    let start = Start {
        kind: RunKind::Run,
        from_stage: 0,
        only_one: false,
        outputs: BTreeMap::new(),
    };
    run_pipeline(cli, &args.options, runtime, &pipeline, start, reporter).await
}

pub(crate) async fn rollback(
    cli: &Cli,
    args: &ServiceArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    deploy_stage_only(cli, args, RunKind::Rollback, reporter).await
}

pub(crate) async fn recover(
    cli: &Cli,
    args: &ServiceArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    deploy_stage_only(cli, args, RunKind::Recover, reporter).await
}

/// Run the deploy stage alone with `action=<kind>` (`rollback`, `recover`),
/// recorded in the history as that kind.
async fn deploy_stage_only(
    cli: &Cli,
    args: &ServiceArgs,
    kind: RunKind,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let (runtime, pipeline) = load(cli, &args.file, &args.options)?;
    check_service(&pipeline, &args.service)?;
    let start = Start {
        kind,
        from_stage: deploy_stage(&pipeline)?,
        only_one: true,
        outputs: BTreeMap::new(),
    };
    run_pipeline(cli, &args.options, runtime, &pipeline, start, reporter).await
}

pub(crate) async fn promote(
    cli: &Cli,
    args: &ServiceArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let (runtime, pipeline) = load(cli, &args.file, &args.options)?;
    check_service(&pipeline, &args.service)?;
    let registry = connect(
        cli,
        &args.options,
        Some(&pipeline),
        Duration::from_secs(30),
        Open::Now,
    )?
    .registry;
    let Some(paused) = history::paused(&*registry, &pipeline.service).await? else {
        return Err(CommandError::Usage(format!(
            "no deploy of {} is waiting for promotion; run one whose deploy stage has promotion = \"manual\"",
            pipeline.service
        )));
    };
    let from_stage = pipeline
        .stages
        .iter()
        .position(|s| s.name == paused.stage)
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "the paused deploy stopped at stage {}, which {} no longer has",
                paused.stage,
                pipeline.path.display()
            ))
        })?;
    let start = Start {
        kind: RunKind::Promote,
        from_stage,
        only_one: false,
        outputs: paused.outputs,
    };
    run_pipeline(cli, &args.options, runtime, &pipeline, start, reporter).await
}
