//! The pipeline commands: `run`, `validate`, `status`, `history`,
//! `rollback`, `promote` and `recover`.

use super::CommandError;
use super::host::{Host, Open, Targets, runtime, shutdown_signal};
use crate::bindings::describe;
use crate::caps::journal;
use crate::caps::proxy::{Driver, ProxyConfig, haproxy_servers};
use crate::cli::{Cli, HistoryArgs, PipelineArgs, RunOptions, ServiceArgs, ValidateArgs};
use crate::conventions::{self, RunKind};
use crate::pipeline::file::Pipeline;
use crate::pipeline::history::{self, DeployRecord, Paused};
use crate::pipeline::report::Reporter;
use crate::pipeline::{Execution, Finished, execute, junit};
use crate::registry::Registry;
use crate::runtime::{Limits, Runtime};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A run of (part of) a pipeline, as `run`, `rollback` and `promote` start it.
struct Start {
    kind: RunKind,
    from_stage: usize,
    only_one: bool,
    outputs: BTreeMap<String, String>,
}

fn load(
    cli: &Cli,
    file: &Path,
    plugin_path: &[std::path::PathBuf],
) -> Result<(Arc<Runtime>, Pipeline), CommandError> {
    let runtime = runtime(cli)?;
    let pipeline = Pipeline::load(file, plugin_path, Some(&runtime))?;
    for warning in &pipeline.warnings {
        tracing::warn!("{warning}");
    }
    Ok((runtime, pipeline))
}

/// The host of a pipeline command: the CLI's backends, else the file's `[targets]`.
fn connect(
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
    };
    Host::connect(cli, &targets, timeout, open)
}

fn check_service(pipeline: &Pipeline, service: &str) -> Result<(), CommandError> {
    if pipeline.service != service {
        return Err(CommandError::Usage(format!(
            "{} deploys {}, not {service}; pass the file that deploys {service} with -f FILE",
            pipeline.path.display(),
            pipeline.service
        )));
    }
    Ok(())
}

pub(super) fn validate(cli: &Cli, args: &ValidateArgs) -> Result<(), CommandError> {
    let runtime = runtime(cli)?;
    let pipeline = Pipeline::load(&args.file, &args.plugin_path, Some(&runtime))?;
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

pub(super) async fn run(
    cli: &Cli,
    args: &PipelineArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let (runtime, pipeline) = load(cli, &args.file, &args.options.plugin_path)?;
    let start = Start {
        kind: RunKind::Run,
        from_stage: 0,
        only_one: false,
        outputs: BTreeMap::new(),
    };
    run_pipeline(cli, &args.options, runtime, &pipeline, start, reporter).await
}

pub(super) async fn rollback(
    cli: &Cli,
    args: &ServiceArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    deploy_stage_only(cli, args, RunKind::Rollback, reporter).await
}

pub(super) async fn recover(
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
    let (runtime, pipeline) = load(cli, &args.file, &args.options.plugin_path)?;
    check_service(&pipeline, &args.service)?;
    let start = Start {
        kind,
        from_stage: deploy_stage(&pipeline)?,
        only_one: true,
        outputs: BTreeMap::new(),
    };
    run_pipeline(cli, &args.options, runtime, &pipeline, start, reporter).await
}

pub(super) async fn promote(
    cli: &Cli,
    args: &ServiceArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(), CommandError> {
    let (runtime, pipeline) = load(cli, &args.file, &args.options.plugin_path)?;
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

fn deploy_stage(pipeline: &Pipeline) -> Result<usize, CommandError> {
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
async fn run_pipeline(
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
    history::record(registry, &pipeline.service, &record).await?;
    // A promotion gate leaves where to resume; anything else ends the wait.
    let paused = finished.paused_at.as_ref().map(|stage| Paused {
        record: id,
        stage: stage.clone(),
        outputs: finished.outputs.clone(),
    });
    history::set_paused(registry, &pipeline.service, paused.as_ref()).await
}

pub(super) async fn history(cli: &Cli, args: &HistoryArgs) -> Result<(), CommandError> {
    let registry = Host::registry(cli, Open::Now)?;
    let records = history::list(&*registry, &args.service, args.limit).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
        }
        return Ok(());
    }
    if records.is_empty() {
        writeln!(out, "no deploys of {} recorded yet", args.service)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:20}  {:8}  {:12}  {:28}  {:6}  {:9}  {:>7}",
        "when", "kind", "who", "version", "color", "outcome", "time"
    )?;
    for r in &records {
        writeln!(
            out,
            "{:20}  {:8}  {:12}  {:28}  {:6}  {:9}  {:>6.1}s",
            r.started_at,
            r.kind,
            r.user,
            r.version,
            r.color,
            r.outcome,
            r.duration_ms as f64 / 1000.0
        )?;
    }
    Ok(())
}

pub(super) async fn status(cli: &Cli, args: &ServiceArgs) -> Result<(), CommandError> {
    // Without the pipeline file there is still the registry and the engine
    // to ask; only the proxy's upstream needs the file's [proxies].
    let pipeline = if args.file.exists() {
        let pipeline = Pipeline::load(&args.file, &args.options.plugin_path, None)?;
        check_service(&pipeline, &args.service)?;
        Some(pipeline)
    } else {
        None
    };
    let service = &args.service;
    let host = connect(
        cli,
        &args.options,
        pipeline.as_ref(),
        Duration::from_secs(30),
        Open::Now,
    )?;
    let registry = host.registry.clone();
    let mut out = String::new();
    let color = registry
        .kv_get(&conventions::color_key(service))
        .await?
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    out.push_str(&format!(
        "service     {service} ({})\ncolor       {}\n",
        match &pipeline {
            Some(_) => args.file.display().to_string(),
            None => format!("no {}: proxy not shown", args.file.display()),
        },
        color.as_deref().unwrap_or("none (never deployed)")
    ));
    let docker = host.docker.clone();
    out.push_str("containers\n");
    match crate::caps::docker::containers_named(&*docker, &conventions::container_prefix(service))
        .await
    {
        Ok(list) if list.is_empty() => out.push_str("  none\n"),
        Ok(list) => {
            for c in list {
                out.push_str(&format!(
                    "  {:24}  {:8}  {:40}  {}\n",
                    c.name,
                    c.state,
                    c.image,
                    c.ports.join(" ")
                ));
            }
        }
        Err(e) => out.push_str(&format!("  unknown: {}\n", describe(&e))),
    }
    let proxies = pipeline
        .as_ref()
        .map(|p| p.runfile.proxies.as_slice())
        .unwrap_or_default();
    for proxy in proxies {
        let upstreams = proxy_upstreams(proxy, service).await;
        out.push_str(&format!("proxy       {} → {upstreams}\n", proxy.name));
    }
    let lock = match registry.lock_holder(service).await {
        Ok(Some(holder)) => format!("held by {holder}"),
        Ok(None) => "free".to_string(),
        Err(e) => format!("unknown: {e}"),
    };
    out.push_str(&format!("lock        {lock}\n"));
    match journal::read(&*registry, service).await {
        Ok(None) => {}
        Ok(Some(entry)) => out.push_str(&format!(
            "interrupted deploy at step {} ({:?}, by {}, {}); recovery will {} \
             (`runner recover {service}`, or the next `runner run`)\n",
            entry.step,
            entry.phase,
            entry.holder,
            entry
                .details
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            entry.phase.recovery()
        )),
        Err(e) => out.push_str(&format!("interrupted deploy: unreadable journal: {e}\n")),
    }
    if let Some(paused) = history::paused(&*registry, service).await? {
        out.push_str(&format!(
            "promotion   waiting at stage {} (`runner promote {service}` continues)\n",
            paused.stage
        ));
    }
    out.push_str("last deploys\n");
    let records = history::list(&*registry, service, 5).await?;
    if records.is_empty() {
        out.push_str("  none\n");
    }
    for r in records {
        out.push_str(&format!(
            "  {}  {:8}  {:28}  {:6}  {:9}  {:.1}s  by {}\n",
            r.started_at,
            r.kind,
            r.version,
            r.color,
            r.outcome,
            r.duration_ms as f64 / 1000.0,
            r.user
        ));
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// What `proxy` sends `service` to: the `server` lines of its files, or the
/// ready servers of the HAProxy backend named after the service.
async fn proxy_upstreams(proxy: &ProxyConfig, service: &str) -> String {
    let servers = match &proxy.driver {
        Driver::Haproxy { admin_socket } => {
            match haproxy_servers(admin_socket, service, proxy.timeout).await {
                Ok(slots) => slots
                    .into_iter()
                    .filter(|s| s.ready)
                    .map(|s| format!("{}:{}", s.address, s.port))
                    .collect(),
                Err(e) => return format!("unknown: {}", describe(&e)),
            }
        }
        Driver::Files => {
            let mut servers = Vec::new();
            let Some(dir) = &proxy.config_dir else {
                return "no config_dir".into();
            };
            for entry in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !conventions::is_upstream_file(&name, service) {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                servers.extend(conventions::upstream_servers(&text));
            }
            servers
        }
    };
    if servers.is_empty() {
        "no upstream".to_string()
    } else {
        servers.join(", ")
    }
}
