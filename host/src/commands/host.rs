//! The host a command acts through, built once from the CLI and a runner
//! file's `[targets]`: the registry, the container engine, the Wasm runtime,
//! and the deploy lock and catalog upkeep every deploying command shares.

use super::CommandError;
use crate::bindings::describe;
use crate::caps::HostServices;
use crate::caps::docker::DockerEngine;
use crate::cli::Cli;
use crate::registry::{
    ConsulRegistry, EmbeddedRegistry, LazyRegistry, LockAttempt, LockGuard, LockHolder, Registry,
};
use crate::runtime::{ArtifactCache, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::time::Duration;

/// Where the backends are, beyond the CLI's flags: a pipeline file's
/// `[targets]`. A flag (or its environment variable) wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub consul: Option<String>,
    pub docker: Option<String>,
    /// The runner file's `[hosts.*]`: a fleet instead of one engine.
    pub hosts: Vec<crate::caps::docker::DockerHost>,
}

/// How to open the embedded registry: `Lazy` (on first use; stages that never
/// touch it do not create the state directory) or `Now` (the kv/catalog
/// commands, which report a bad state directory at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    Lazy,
    Now,
}

/// The backends of one command.
pub struct Host {
    pub registry: Arc<dyn Registry>,
    pub docker: DockerEngine,
}

impl Host {
    /// Connect to the registry (Consul when configured, else the embedded
    /// store) with `timeout` on each of its calls, and name the engine.
    pub fn connect(
        cli: &Cli,
        targets: &Targets,
        timeout: Duration,
        open: Open,
    ) -> Result<Self, CommandError> {
        let registry: Arc<dyn Registry> = match cli.consul.as_deref().or(targets.consul.as_deref())
        {
            Some(address) => Arc::new(ConsulRegistry::new(
                address,
                cli.consul_token.clone(),
                timeout,
            )?),
            None if open == Open::Lazy => {
                Arc::new(LazyRegistry::new(cli.state_dir.clone(), timeout))
            }
            None => Arc::new(EmbeddedRegistry::open(&cli.state_dir, timeout)?),
        };
        let docker = match (&targets.docker, targets.hosts.as_slice()) {
            (None, []) => DockerEngine::new(None),
            (Some(one), []) => DockerEngine::new(Some(one.clone())),
            (None, hosts) => crate::caps::docker::fleet(hosts),
            (Some(one), hosts) => {
                return Err(CommandError::Usage(format!(
                    "the runner file places containers on its hosts ({}), but --docker-host (or DOCKER_HOST) names the one engine {one}: \
                     unset DOCKER_HOST / drop --docker-host, or remove [hosts.*] from the file",
                    hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        Ok(Self { registry, docker })
    }

    /// The registry alone, for the commands that need nothing else.
    pub fn registry(cli: &Cli, open: Open) -> Result<Arc<dyn Registry>, CommandError> {
        Ok(Self::connect(cli, &Targets::default(), Duration::from_secs(30), open)?.registry)
    }

    /// What the capabilities of a stage share. `journal_service` is the
    /// service whose deploy lock the caller holds.
    pub fn services(&self, journal_service: Option<String>) -> HostServices {
        HostServices {
            registry: self.registry.clone(),
            docker: self.docker.clone(),
            hooks: None,
            journal_service,
        }
    }

    /// Drop catalog entries of containers stopped behind runner's back (and
    /// add running ones of this registry it lacks) before a stage that
    /// manages containers; a failure is logged, not fatal: the stage itself
    /// will meet the engine's error.
    pub async fn reconcile_catalog(&self) {
        match crate::caps::docker::reconcile(&*self.docker, &*self.registry).await {
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
    pub async fn acquire_lock(
        &self,
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
            match self.registry.try_lock(service, &holder).await? {
                LockAttempt::Acquired(guard) => {
                    tracing::debug!("holding the deploy lock of {service}");
                    return Ok(guard);
                }
                LockAttempt::Held(current) => {
                    if started.elapsed() >= wait {
                        // The holder may have been mid-write a moment ago: ask once more.
                        let holder = match current {
                            Some(h) => Some(h),
                            None => self.registry.lock_holder(service).await.ok().flatten(),
                        };
                        return Err(CommandError::Locked {
                            service: service.into(),
                            waited: humantime::format_duration(wait).to_string(),
                            holder: holder.map(Box::new),
                        });
                    }
                    // A holder that just took the lock may not have written who it is yet.
                    if !announced
                        && (current.is_some()
                            || started.elapsed() > std::time::Duration::from_secs(1))
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
}

/// The Wasm runtime, with the CLI's artifact cache settings.
pub fn runtime(cli: &Cli) -> Result<Arc<Runtime>, CommandError> {
    let dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(ArtifactCache::default_dir)
    };
    Runtime::new(RuntimeConfig {
        cache: ArtifactCache::new(dir),
        ..RuntimeConfig::default()
    })
    .map(Arc::new)
    .map_err(|e| CommandError::Engine(e.to_string()))
}

/// Where a command's plugins come from: `dirs` (`--plugin-path`), and for
/// registry references the store, the `--insecure-registry` list and, with
/// a pipeline `file`, the runner.lock beside it.
pub fn sources(
    cli: &Cli,
    dirs: &[std::path::PathBuf],
    file: Option<&std::path::Path>,
    locked: bool,
    mode: crate::oci::resolve::Mode,
) -> Result<crate::plugin_ref::Sources, CommandError> {
    use crate::oci::resolve::{Resolver, Settings};
    let settings = Settings {
        mode,
        locked,
        insecure: cli.insecure_registry.clone(),
        store: cli.plugin_store.clone(),
        max_plugin_bytes: crate::runtime::DEFAULT_MAX_PLUGIN_BYTES,
        trust_keys: trusted_keys(cli)?,
        require_signature: cli.require_signature,
    };
    let lock = file.map(crate::oci::lockfile::LockFile::path_for);
    Ok(crate::plugin_ref::Sources {
        dirs: dirs.to_vec(),
        registry: std::sync::Arc::new(Resolver::new(settings, lock)),
    })
}

/// The operator's trusted keys: `--trust-key` / `RUNNER_TRUST_KEYS`.
pub fn trusted_keys(cli: &Cli) -> Result<Vec<crate::oci::keys::TrustedKey>, CommandError> {
    cli.trust_key
        .iter()
        .map(|path| {
            crate::oci::keys::TrustedKey::load(path)
                .map_err(|e| CommandError::Usage(format!("--trust-key: {e}")))
        })
        .collect()
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
pub async fn shutdown_signal() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}
