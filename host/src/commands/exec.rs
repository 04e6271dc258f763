//! `runner exec`: one stage plugin, once.

use super::CommandError;
use super::host::{Host, Open, Targets, runtime, shutdown_signal};
use crate::bindings::Context as StageContext;
use crate::caps::{Capabilities, RunContext};
use crate::cli::{Cli, ExecArgs};
use crate::plugin_ref::{PluginPath, PluginRef, PluginRefError, PluginSource};
use crate::runfile::RunnerFile;
use crate::runtime::Limits;
use crate::stage::Hooks;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

pub(super) async fn exec(cli: &Cli, args: &ExecArgs) -> Result<(), CommandError> {
    if args.lock && args.service.is_empty() {
        return Err(CommandError::LockWithoutService);
    }
    let sources = super::host::sources(cli, &args.plugin_path, None, false, Default::default())?;
    let runfile = match &args.grants.file {
        Some(path) => RunnerFile::load(path, &sources.registry)?,
        None => RunnerFile::default(),
    };
    for warning in &runfile.warnings {
        tracing::warn!("{warning}");
    }
    let mut spec = runfile.grants.clone();
    spec.merge(args.grants.grants.clone());
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
        http_max_body: args.limits.http_max_body,
    };

    let runtime = runtime(cli)?;
    let source = PluginPath::new(&sources, Path::new("."))
        .resolve(&args.plugin, Path::new(""))
        .or_else(|e| match (&args.plugin, &e) {
            // A missing file is the runtime's to report (with its exit code);
            // any other refusal (an unsigned file under --require-signature) stands.
            (PluginRef::File(path), PluginRefError::MissingFile { .. }) => {
                Ok(PluginSource::File(path.clone()))
            }
            _ => Err(CommandError::Usage(e.to_string())),
        })?;
    let plugin = runtime.load_source(&source)?;
    tracing::debug!(plugin = plugin.name(), cache = ?plugin.cache_outcome(), "plugin loaded");
    let stage = args
        .stage
        .clone()
        .unwrap_or_else(|| plugin.name().to_string());

    // The flags (and their environment variables) win over the file's [targets].
    let targets = Targets {
        consul: runfile.targets.consul.clone(),
        docker: args.docker_host.clone().or(runfile.targets.docker.clone()),
        hosts: runfile.hosts.clone(),
    };
    let host = Host::connect(cli, &targets, limits.host_call_timeout, Open::Lazy)?;
    // The deploy lock comes first: reconciling the catalog and everything
    // after it must not interleave with another deploy of the same service.
    let deploys = !grants.docker.is_empty() && !args.service.is_empty();
    let lock = if args.lock || deploys {
        Some(
            host.acquire_lock(&args.service, &stage, args.lock_wait)
                .await?,
        )
    } else {
        None
    };
    let mut services = host.services(lock.as_ref().map(|_| args.service.clone()));
    if !grants.docker.is_empty() {
        host.reconcile_catalog().await;
    }
    if !runfile.hooks.is_empty() {
        services.hooks = Some(Arc::new(Hooks::new(
            runtime.clone(),
            services.clone(),
            &args.service,
            runfile.hooks.clone(),
            Arc::default(),
            limits,
        )));
    }
    let request = crate::runtime::RunRequest {
        context: StageContext {
            service: args.service.clone(),
            stage: stage.clone(),
            config: args.config.clone(),
            inputs: args.inputs.clone(),
        },
        capabilities: Capabilities::prepare(&RunContext {
            plugin: plugin.name(),
            grants: &grants,
            host: &services,
            limits: &limits,
        }),
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
