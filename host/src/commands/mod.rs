//! The behaviour behind each CLI command. Returns typed errors; `main.rs`
//! turns them into exit codes.

mod pipeline;

use crate::bindings::{Context as StageContext, PluginError, describe};
use crate::caps::docker::DockerEngine;
use crate::caps::{Capabilities, HostServices};
use crate::cli::{CatalogCommand, Cli, Command, ExecArgs, KvCommand, LockCommand, PluginCommand};
use crate::grants::{GrantError, GrantsSpec};
use crate::registry::{
    ConsulRegistry, EmbeddedRegistry, LazyRegistry, LockAttempt, LockGuard, LockHolder, Registry,
    RegistryError,
};
use crate::runfile::RunnerFile;
use crate::runtime::{ArtifactCache, Fault, Limits, LoadError, Runtime, RuntimeConfig};
use crate::stage::Hooks;
use std::io::Write;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("stage {stage} failed: {}", crate::bindings::describe(error))]
    StageFailed { stage: String, error: PluginError },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("{0}; check --state-dir (embedded) or --consul (Consul)")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Fault(#[from] Fault),
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("the deploy lock of {service} is still held after {waited}{}; try again later, or see `runner lock status {service}`", holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default())]
    Locked {
        service: String,
        waited: String,
        holder: Option<Box<crate::registry::LockHolder>>,
    },
    #[error(transparent)]
    Template(#[from] crate::caps::template::TemplateJobError),
    #[error("--lock needs --service: the lock is per service")]
    LockWithoutService,
    #[error("interrupted by {0}; the deploy lock was released")]
    Interrupted(&'static str),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::file::PipelineError),
    #[error("{0}")]
    PipelineFailed(crate::pipeline::Failure),
    #[error(transparent)]
    Junit(#[from] crate::pipeline::junit::JunitError),
    #[error(transparent)]
    Scaffold(#[from] crate::scaffold::ScaffoldError),
    /// Asked for something the files or the state do not allow; the message says what to do.
    #[error("{0}")]
    Usage(String),
}

impl CommandError {
    /// 0 success, 1 stage failed, 2 usage or config error, 3 plugin fault.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::StageFailed { .. }
            | CommandError::NotFound(_)
            | CommandError::Locked { .. } => 1,
            CommandError::LockWithoutService => 2,
            CommandError::Template(e) => {
                use crate::caps::template::TemplateJobError as E;
                match e {
                    E::ReadSource { .. } | E::Template { .. } => 2,
                    E::Data { .. } | E::Output(_) | E::Command(_) => 1,
                }
            }
            CommandError::Interrupted(_) => 130,
            CommandError::Pipeline(_) | CommandError::Usage(_) | CommandError::Scaffold(_) => 2,
            CommandError::PipelineFailed(crate::pipeline::Failure::Stage { .. })
            | CommandError::Junit(_) => 1,
            CommandError::PipelineFailed(crate::pipeline::Failure::Fault { .. }) => 3,
            CommandError::Grant(_) | CommandError::Registry(_) | CommandError::Output(_) => 2,
            CommandError::Load(LoadError::NotFound(_)) => 2,
            CommandError::Load(_) | CommandError::Fault(_) | CommandError::Engine(_) => 3,
        }
    }

    /// Extra detail shown with -v (a trap's wasm backtrace).
    pub fn detail(&self) -> Option<&str> {
        match self {
            CommandError::Fault(Fault::Trap { backtrace, .. }) => backtrace.as_deref(),
            _ => None,
        }
    }
}

/// Run `cli`'s command; pipelines send what they do to `reporter`.
pub async fn run(
    cli: Cli,
    reporter: Arc<dyn crate::pipeline::report::Reporter>,
) -> Result<(), CommandError> {
    match cli.command {
        Command::Run(ref args) => pipeline::run(&cli, args, reporter).await,
        Command::Validate(ref args) => pipeline::validate(&cli, args),
        Command::Status(ref args) => pipeline::status(&cli, args).await,
        Command::History(ref args) => pipeline::history(&cli, args).await,
        Command::Rollback(ref args) => pipeline::rollback(&cli, args, reporter).await,
        Command::Promote(ref args) => pipeline::promote(&cli, args, reporter).await,
        Command::Recover(ref args) => pipeline::recover(&cli, args, reporter).await,
        Command::Exec(ref args) => exec(&cli, args).await,
        Command::Plugin(PluginCommand::Inspect { ref path }) => inspect(&cli, path),
        Command::Plugin(PluginCommand::New {
            ref name,
            lang,
            ref dir,
        }) => {
            let dir = dir.clone().unwrap_or_else(|| name.into());
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
        Command::Kv(ref cmd) => kv(&cli, cmd).await,
        Command::Catalog(ref cmd) => catalog(&cli, cmd).await,
        Command::Lock(ref cmd) => lock(&cli, cmd).await,
        Command::Template(ref cmd) => template(&cli, cmd).await,
    }
}

/// The registry backend: Consul when configured, else the embedded store
/// (opened eagerly for the kv/catalog commands, lazily for stages).
fn open_registry(
    cli: &Cli,
    timeout: std::time::Duration,
    lazy: bool,
) -> Result<Arc<dyn Registry>, CommandError> {
    open_registry_at(cli, None, timeout, lazy)
}

/// As `open_registry`, with `consul` (a pipeline file's target) used when
/// neither --consul nor CONSUL_HTTP_ADDR is given.
fn open_registry_at(
    cli: &Cli,
    consul: Option<&str>,
    timeout: std::time::Duration,
    lazy: bool,
) -> Result<Arc<dyn Registry>, CommandError> {
    Ok(match cli.consul.as_deref().or(consul) {
        Some(address) => Arc::new(ConsulRegistry::new(
            address,
            cli.consul_token.clone(),
            timeout,
        )?),
        None if lazy => Arc::new(LazyRegistry::new(cli.state_dir.clone(), timeout)),
        None => Arc::new(EmbeddedRegistry::open(&cli.state_dir, timeout)?),
    })
}

fn runtime(cli: &Cli) -> Result<Runtime, CommandError> {
    let dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(ArtifactCache::default_dir)
    };
    Runtime::new(RuntimeConfig {
        cache: ArtifactCache::new(dir),
        ..RuntimeConfig::default()
    })
    .map_err(|e| CommandError::Engine(e.to_string()))
}

async fn exec(cli: &Cli, args: &ExecArgs) -> Result<(), CommandError> {
    if args.lock && args.service.is_empty() {
        return Err(CommandError::LockWithoutService);
    }
    let runfile = match &args.grants.file {
        Some(path) => RunnerFile::load(path)?,
        None => RunnerFile::default(),
    };
    for warning in &runfile.warnings {
        tracing::warn!("{warning}");
    }
    let g = &args.grants;
    let mut spec = runfile.grants.clone();
    spec.merge(GrantsSpec {
        kv: g.kv.clone(),
        services: g.services.clone(),
        http: g.http.clone(),
        dirs: g.dirs.clone(),
        template_out: g.template_out.clone(),
        containers: g.containers.clone(),
        images: g.images.clone(),
        build: g.build,
        push: g.push,
        container_limits: g.container_limits.clone(),
        proxies: g.proxies.clone(),
        hooks: g.hooks.clone(),
    });
    let grants = spec.validate_with(&runfile.proxies, &runfile.hook_names())?;
    // One stage runs now: nothing will create a missing directory first.
    if let Some(dir) = grants.missing_dirs.first() {
        return Err(CommandError::Usage(format!(
            "granted directory {} is not an existing directory; create it first",
            dir.display()
        )));
    }
    let limits = Limits {
        memory_bytes: args.limits.memory,
        deadline: args.limits.deadline,
        host_call_timeout: args.limits.host_call_timeout,
    };

    let runtime = Arc::new(runtime(cli)?);
    let plugin = runtime.load(&args.plugin)?;
    tracing::debug!(plugin = plugin.name(), cache = ?plugin.cache_outcome(), "plugin loaded");
    let stage = args
        .stage
        .clone()
        .unwrap_or_else(|| plugin.name().to_string());

    let mut services = HostServices {
        registry: open_registry(cli, limits.host_call_timeout, true)?,
        docker: DockerEngine::new(args.docker_host.clone()),
        hooks: None,
        host_call_timeout: limits.host_call_timeout,
        http_max_body: args.limits.http_max_body,
        journal_service: None,
    };
    // The deploy lock comes first: reconciling the catalog and everything
    // after it must not interleave with another deploy of the same service.
    let deploys = !grants.docker.is_empty() && !args.service.is_empty();
    let lock = if args.lock || deploys {
        Some(acquire_lock(&*services.registry, &args.service, &stage, args.lock_wait).await?)
    } else {
        None
    };
    if lock.is_some() {
        services.journal_service = Some(args.service.clone());
    }
    if !grants.docker.is_empty() {
        reconcile_catalog(&services).await;
    }
    if !runfile.hooks.is_empty() {
        services.hooks = Some(Arc::new(Hooks::new(
            runtime.clone(),
            services.clone(),
            &args.service,
            runfile.hooks.clone(),
            Arc::default(),
        )));
    }
    let request = crate::runtime::RunRequest {
        context: StageContext {
            service: args.service.clone(),
            stage: stage.clone(),
            config: args.config.clone(),
            inputs: args.inputs.clone(),
        },
        capabilities: Capabilities::new(plugin.name(), &grants, &services),
        dirs: grants.dirs.clone(),
        limits,
    };
    let started = std::time::Instant::now();
    // Ctrl-C and SIGTERM end the stage but still release the lock.
    let result = tokio::select! {
        result = runtime.run(&plugin, request) => result.map_err(CommandError::from),
        signal = shutdown_signal() => Err(CommandError::Interrupted(signal)),
    };
    if let Some(lock) = lock
        && let Err(e) = lock.release().await
    {
        tracing::warn!("releasing the deploy lock of {}: {e}", args.service);
    }
    let outcome = result?.map_err(|error| CommandError::StageFailed {
        stage: stage.clone(),
        error,
    })?;
    tracing::info!(
        "stage {stage} succeeded in {:.1?}: {}",
        started.elapsed(),
        outcome.message
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        let outputs: serde_json::Map<String, serde_json::Value> = outcome
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let doc =
            serde_json::json!({ "stage": stage, "message": outcome.message, "outputs": outputs });
        writeln!(out, "{doc}")?;
    } else {
        for (k, v) in &outcome.outputs {
            writeln!(out, "{k}={v}")?;
        }
    }
    Ok(())
}

/// Drop catalog entries of containers stopped behind runner's back (and add
/// running ones of this registry it lacks) before a stage that manages containers; a failure
/// is logged, not fatal: the stage itself will meet the engine's error.
pub(crate) async fn reconcile_catalog(services: &HostServices) {
    match crate::caps::docker::reconcile(&services.docker, &*services.registry).await {
        Ok(done) if done == Default::default() => {}
        Ok(done) => tracing::info!(
            "catalog reconciled: {} gone, {} registered",
            done.dropped,
            done.registered
        ),
        Err(e) => tracing::warn!(
            "cannot reconcile the catalog with the engine: {}",
            describe(&e)
        ),
    }
}

/// Wait (bounded) for the deploy lock of `service`.
pub(crate) async fn acquire_lock(
    registry: &dyn Registry,
    service: &str,
    stage: &str,
    wait: std::time::Duration,
) -> Result<Box<dyn LockGuard>, CommandError> {
    let holder = LockHolder {
        host: crate::registry::this_host(),
        pid: std::process::id(),
        user: crate::registry::this_user(),
        version: env!("CARGO_PKG_VERSION").into(),
        stage: stage.into(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        match registry.try_lock(service, &holder).await? {
            LockAttempt::Acquired(guard) => {
                tracing::debug!("holding the deploy lock of {service}");
                return Ok(guard);
            }
            LockAttempt::Held(current) => {
                if started.elapsed() >= wait {
                    // The holder may have been mid-write a moment ago: ask once more.
                    let holder = match current {
                        Some(h) => Some(h),
                        None => registry.lock_holder(service).await.ok().flatten(),
                    };
                    return Err(CommandError::Locked {
                        service: service.into(),
                        waited: humantime::format_duration(wait).to_string(),
                        holder: holder.map(Box::new),
                    });
                }
                // A holder that just took the lock may not have written who it is yet.
                if !announced
                    && (current.is_some() || started.elapsed() > std::time::Duration::from_secs(1))
                {
                    let by = current.map(|h| format!(" by {h}")).unwrap_or_default();
                    tracing::info!("waiting for the deploy lock of {service}, held{by}");
                    announced = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
pub(crate) async fn shutdown_signal() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

async fn lock(cli: &Cli, cmd: &LockCommand) -> Result<(), CommandError> {
    let registry = open_registry(cli, std::time::Duration::from_secs(30), true)?;
    let nobody = |service: &str| {
        CommandError::NotFound(format!("nobody holds the deploy lock of {service}"))
    };
    match cmd {
        LockCommand::Status { service } => {
            let holder = registry
                .lock_holder(service)
                .await?
                .ok_or_else(|| nobody(service))?;
            writeln!(std::io::stdout().lock(), "{service}: held by {holder}")?;
        }
        LockCommand::Release { service } => {
            let released = registry.force_unlock(service).await.map_err(|e| match e {
                RegistryError::Refused(m) => CommandError::NotFound(m),
                e => e.into(),
            })?;
            if !released {
                return Err(nobody(service));
            }
            tracing::info!("released the deploy lock of {service}");
        }
    }
    Ok(())
}

async fn template(cli: &Cli, cmd: &crate::cli::TemplateCommand) -> Result<(), CommandError> {
    use crate::caps::template::{TemplateJob, WatchTiming};
    use crate::cli::{TemplateCommand, TemplateTargets};
    let jobs = |t: &TemplateTargets| -> Vec<TemplateJob> {
        let job = |src: &std::path::PathBuf, dest: &std::path::PathBuf, exec: &Option<String>| {
            TemplateJob {
                src: src.clone(),
                dest: dest.clone(),
                exec: exec.clone(),
                exec_timeout: t.exec_timeout,
            }
        };
        let positional = match (&t.src, &t.dest) {
            (Some(src), Some(dest)) => Some(job(src, dest, &t.exec)),
            _ => None,
        };
        positional
            .into_iter()
            .chain(t.templates.iter().map(|(s, d, c)| job(s, d, c)))
            .collect()
    };
    let registry = open_registry(cli, std::time::Duration::from_secs(30), false)?;
    match cmd {
        TemplateCommand::Render { targets, once: _ } => {
            for job in jobs(targets) {
                job.render_once(&*registry).await?;
            }
            Ok(())
        }
        TemplateCommand::Watch {
            targets,
            wait,
            query_wait,
        } => {
            let timing = WatchTiming {
                quiet: wait.0,
                max_delay: wait.1,
                query_wait: *query_wait,
                min_query_interval: std::time::Duration::from_millis(100),
            };
            let jobs = jobs(targets);
            // Each template watches its own data; the first error no retry
            // can fix (a broken template) ends them all.
            let watching = futures_util::future::try_join_all(
                jobs.iter().map(|job| job.watch(registry.clone(), timing)),
            );
            tokio::select! {
                result = watching => result.map(|_| ()).map_err(CommandError::from),
                signal = shutdown_signal() => {
                    tracing::info!("{signal}: stopped watching {} template(s)", jobs.len());
                    Ok(())
                }
            }
        }
    }
}

fn inspect(cli: &Cli, path: &std::path::Path) -> Result<(), CommandError> {
    let runtime = runtime(cli)?;
    // As `exec` reads it: a regular file under the size cap, no FIFO hang.
    let bytes = runtime.read_plugin(path)?;
    let (component, _) = runtime.compile(path, &bytes)?;
    let report = crate::inspect::report(runtime.engine(), path, bytes.len(), &component);
    std::io::stdout().lock().write_all(report.as_bytes())?;
    Ok(())
}

async fn kv(cli: &Cli, cmd: &KvCommand) -> Result<(), CommandError> {
    let registry = open_registry(cli, std::time::Duration::from_secs(30), false)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCommand::Get { key, detailed } => {
            let entry = registry
                .kv_get(key)
                .await?
                .ok_or_else(|| CommandError::NotFound(format!("key \"{key}\" does not exist")))?;
            if *detailed {
                writeln!(
                    out,
                    "key\t{}\ncreate_index\t{}\nmodify_index\t{}",
                    entry.key, entry.create_index, entry.modify_index
                )?;
                writeln!(out, "value\t{}", String::from_utf8_lossy(&entry.value))?;
            } else {
                out.write_all(&entry.value)?;
                if !entry.value.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
        }
        KvCommand::Put { key, value, cas } => match cas {
            Some(index) => {
                if !registry.kv_cas(key, value.as_bytes(), *index).await? {
                    return Err(CommandError::NotFound(format!(
                        "key \"{key}\" was not written: its modify index is not {index} (read it again with `runner kv get --detailed {key}`)"
                    )));
                }
            }
            None => {
                registry.kv_put(key, value.as_bytes()).await?;
            }
        },
        KvCommand::List { prefix } => {
            for entry in registry.kv_list(prefix).await? {
                writeln!(
                    out,
                    "{}\t{}",
                    entry.key,
                    String::from_utf8_lossy(&entry.value)
                )?;
            }
        }
        KvCommand::Delete { key } => {
            if !registry.kv_delete(key).await? {
                return Err(CommandError::NotFound(format!(
                    "key \"{key}\" does not exist"
                )));
            }
        }
    }
    Ok(())
}

async fn catalog(cli: &Cli, cmd: &CatalogCommand) -> Result<(), CommandError> {
    let registry = open_registry(cli, std::time::Duration::from_secs(30), false)?;
    let CatalogCommand::List { service } = cmd;
    let names = match service {
        Some(s) => vec![s.clone()],
        None => registry.services().await?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "SERVICE\tID\tADDRESS\tHEALTH\tTAGS")?;
    for name in names {
        for i in registry.instances(&name).await? {
            let health = if i.healthy { "passing" } else { "critical" };
            writeln!(
                out,
                "{}\t{}\t{}:{}\t{}\t{}",
                i.name,
                i.id,
                i.address,
                i.port,
                health,
                i.tags.join(",")
            )?;
        }
    }
    Ok(())
}
