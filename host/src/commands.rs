//! The behaviour behind each CLI command. Returns typed errors; `main.rs`
//! turns them into exit codes.

use crate::bindings::{Context as StageContext, PluginError};
use crate::caps::{Capabilities, HostServices};
use crate::cli::{CatalogCommand, Cli, Command, ExecArgs, KvCommand, PluginCommand};
use crate::grants::{GrantError, GrantsSpec};
use crate::registry::{EmbeddedRegistry, LazyRegistry, Registry, RegistryError};
use crate::runtime::{ArtifactCache, Fault, Limits, LoadError, Runtime, RuntimeConfig};
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
    #[error("{0}; check --state-dir")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Fault(#[from] Fault),
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CommandError {
    /// 0 success, 1 stage failed, 2 usage or config error, 3 plugin fault.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::StageFailed { .. } | CommandError::NotFound(_) => 1,
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

pub async fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Exec(ref args) => exec(&cli, args).await,
        Command::Plugin(PluginCommand::Inspect { ref path }) => inspect(&cli, path),
        Command::Kv(ref cmd) => kv(&cli, cmd).await,
        Command::Catalog(ref cmd) => catalog(&cli, cmd).await,
    }
}

fn open_registry(
    cli: &Cli,
    timeout: std::time::Duration,
) -> Result<Arc<dyn Registry>, CommandError> {
    Ok(Arc::new(EmbeddedRegistry::open(&cli.state_dir, timeout)?))
}

fn runtime(cli: &Cli) -> Result<Runtime, CommandError> {
    let dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(ArtifactCache::default_dir)
    };
    Runtime::new(RuntimeConfig {
        cache: ArtifactCache::new(dir),
    })
    .map_err(|e| CommandError::Engine(e.to_string()))
}

async fn exec(cli: &Cli, args: &ExecArgs) -> Result<(), CommandError> {
    let mut spec = match &args.grants.file {
        Some(path) => GrantsSpec::from_file(path)?,
        None => GrantsSpec::default(),
    };
    spec.merge(GrantsSpec {
        kv: args.grants.kv.clone(),
        services: args.grants.services.clone(),
        http: args.grants.http.clone(),
        dirs: args.grants.dirs.clone(),
        template_out: args.grants.template_out.clone(),
    });
    let grants = spec.validate()?;
    let limits = Limits {
        memory_bytes: args.limits.memory,
        deadline: args.limits.deadline,
        host_call_timeout: args.limits.host_call_timeout,
    };

    let runtime = runtime(cli)?;
    let plugin = runtime.load(&args.plugin)?;
    tracing::debug!(plugin = plugin.name(), cache = ?plugin.cache_outcome(), "plugin loaded");
    let stage = args
        .stage
        .clone()
        .unwrap_or_else(|| plugin.name().to_string());

    let services = HostServices {
        registry: Arc::new(LazyRegistry::new(
            cli.state_dir.clone(),
            limits.host_call_timeout,
        )),
        host_call_timeout: limits.host_call_timeout,
        http_max_body: args.limits.http_max_body,
    };
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
    let outcome =
        runtime
            .run(&plugin, request)
            .await?
            .map_err(|error| CommandError::StageFailed {
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

fn inspect(cli: &Cli, path: &std::path::Path) -> Result<(), CommandError> {
    let runtime = runtime(cli)?;
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound(path.into()),
        _ => LoadError::Read {
            path: path.into(),
            source: e,
        },
    })?;
    let (component, _) = runtime.compile(path, &bytes)?;
    let report = crate::inspect::report(runtime.engine(), path, bytes.len(), &component);
    std::io::stdout().lock().write_all(report.as_bytes())?;
    Ok(())
}

async fn kv(cli: &Cli, cmd: &KvCommand) -> Result<(), CommandError> {
    let registry = open_registry(cli, std::time::Duration::from_secs(30))?;
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
    let registry = open_registry(cli, std::time::Duration::from_secs(30))?;
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
