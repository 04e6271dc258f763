//! The pipeline commands, a module each: `run`, `rollback`, `recover` and
//! `promote` (`deploy.rs`), `validate`, `status`, `history`. What they share
//! is here: loading the file, connecting the host, and the one path every
//! deploy takes (`run_pipeline`).

mod deploy;
mod history;
mod status;
mod validate;

pub(super) use deploy::{promote, recover, rollback, run};
pub(super) use history::history;
pub(super) use status::status;
pub(super) use validate::validate;

use crate::cli::{Cli, RunOptions};
use crate::commands::CommandError;
use crate::commands::host::{Host, Open, Targets, runtime, shutdown_signal};
use crate::conventions::{self, RunKind};
use crate::pipeline::file::Pipeline;
use crate::pipeline::history::{self as deploy_history, DeployRecord, Paused};
use crate::pipeline::report::Reporter;
use crate::pipeline::{Execution, Finished, execute, junit};
use crate::registry::Registry;
use crate::runtime::{Limits, Runtime};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A run of (part of) a pipeline, as `run`, `rollback` and `promote` start it.
pub(super) struct Start {
    kind: RunKind,
    from_stage: usize,
    only_one: bool,
    outputs: BTreeMap<String, String>,
}

pub(super) fn load(
    cli: &Cli,
    file: &Path,
    options: &RunOptions,
) -> Result<(Arc<Runtime>, Pipeline), CommandError> {
    let runtime = runtime(cli)?;
    let sources = super::host::sources(
        cli,
        &options.plugin_path,
        Some(file),
        options.locked,
        Default::default(),
    )?;
    let pipeline = Pipeline::load(file, &sources, Some(&runtime))?;
    for warning in &pipeline.warnings {
        tracing::warn!("{warning}");
    }
    Ok((runtime, pipeline))
}

/// The host of a pipeline command: the CLI's backends, else the file's `[targets]`.
pub(super) fn connect(
    cli: &Cli,
    options: &RunOptions,
    pipeline: Option<&Pipeline>,
    timeout: Duration,
    open: Open,
) -> Result<Host, CommandError> {
    let targets = Targets {
        consul: pipeline.and_then(|p| p.consul.clone()),
        docker: options
            .docker_host
            .clone()
            .or_else(|| pipeline.and_then(|p| p.docker_host.clone())),
        hosts: pipeline
            .map(|p| p.runfile.hosts.clone())
            .unwrap_or_default(),
    };
    Host::connect(cli, &targets, timeout, open)
}

pub(super) fn check_service(pipeline: &Pipeline, service: &str) -> Result<(), CommandError> {
    if pipeline.service != service {
        return Err(CommandError::Usage(format!(
            "{} deploys {}, not {service}; pass the file that deploys {service} with -f FILE",
            pipeline.path.display(),
            pipeline.service
        )));
    }
    Ok(())
}

pub(super) fn deploy_stage(pipeline: &Pipeline) -> Result<usize, CommandError> {
    let name = pipeline.deploy_stage.as_deref().ok_or_else(|| {
        CommandError::Usage(format!(
            "{} has no deploy stage: name one `deploy`, or set deploy_stage = \"NAME\"",
            pipeline.path.display()
        ))
    })?;
    Ok(pipeline
        .stages
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_default())
}

/// Lock, reconcile, run, record: the one path every deploy takes.
pub(super) async fn run_pipeline(
    cli: &Cli,
    options: &RunOptions,
    runtime: Arc<Runtime>,
    pipeline: &Pipeline,
    start: Start,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let host = connect(
        cli,
        options,
        Some(pipeline),
        Limits::default().host_call_timeout,
        Open::Lazy,
    )?;
    let registry = host.registry.clone();
    // Every stage runs under the service's deploy lock, taken below;
    // `execute` gives the journal to the deploy stage only.
    let services = host.services(Some(pipeline.service.clone()));
    let first = pipeline
        .stages
        .get(start.from_stage)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let lock = host
        .acquire_lock(&pipeline.service, &first, options.lock_wait)
        .await?;
    if pipeline.stages.iter().any(|s| !s.grants.docker.is_empty()) {
        host.reconcile_catalog().await;
    }
    let started_at = SystemTime::now();
    let execution = Execution {
        runtime,
        services,
        reporter,
        from_stage: start.from_stage,
        only_one: start.only_one,
        outputs: start.outputs,
        first_stage_config: start.kind.action().into_iter().collect(),
        lenient_references: start.kind.deploy_stage_only(),
    };
    let finished = tokio::select! {
        finished = execute(pipeline, execution) => Ok(finished),
        signal = shutdown_signal() => Err(CommandError::Interrupted(signal)),
    };
    let recorded = match &finished {
        Ok(f) => record(&*registry, pipeline, start.kind, started_at, f).await,
        Err(_) => Ok(()),
    };
    if let Err(e) = lock.release().await {
        tracing::warn!("releasing the deploy lock of {}: {e}", pipeline.service);
    }
    let finished = finished?;
    if let Err(e) = recorded {
        tracing::warn!("could not record the deploy in the history: {e}");
    }
    if let Some(path) = &options.junit {
        junit::write(&finished.reports, path)?;
        tracing::info!(
            "JUnit: {} report(s) merged into {}",
            finished.reports.len(),
            path.display()
        );
    }
    if let Some(stage) = &finished.paused_at {
        tracing::info!(
            "{} is waiting at {stage}'s promotion gate: `runner promote {}` continues, `runner rollback {}` undoes",
            pipeline.service,
            pipeline.service,
            pipeline.service
        );
    }
    match finished.failure {
        Some(failure) => Err(CommandError::PipelineFailed(failure)),
        None => Ok(()),
    }
}

async fn record(
    registry: &dyn Registry,
    pipeline: &Pipeline,
    kind: RunKind,
    started_at: SystemTime,
    finished: &Finished,
) -> Result<(), crate::registry::RegistryError> {
    let id = started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let id = format!("{id:020}");
    let deploy = pipeline.deploy_stage.clone().unwrap_or_default();
    let record = DeployRecord {
        id: id.clone(),
        kind: kind.as_str().into(),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        user: crate::registry::this_user(),
        host: crate::registry::this_host(),
        version: finished.deployed_image.clone().unwrap_or_default(),
        color: finished
            .outputs
            .get(&conventions::stage_output(&deploy, conventions::COLOR))
            .cloned()
            .unwrap_or_default(),
        outcome: finished.outcome.as_str().into(),
        duration_ms: finished.duration_ms,
        stages: finished.stages.clone(),
    };
    deploy_history::record(registry, &pipeline.service, &record).await?;
    // A promotion gate leaves where to resume; anything else ends the wait.
    let paused = finished.paused_at.as_ref().map(|stage| Paused {
        record: id,
        stage: stage.clone(),
        outputs: finished.outputs.clone(),
    });
    deploy_history::set_paused(registry, &pipeline.service, paused.as_ref()).await
}
