//! The behaviour behind each CLI command, one module per command (the
//! pipeline commands share `pipeline.rs`). Returns typed errors; `main.rs`
//! turns them into exit codes.

mod exec;
mod host;
mod kv;
mod lock;
mod pipeline;
mod plugin;
mod template;

pub use host::{Host, Targets};

use crate::bindings::PluginError;
use crate::cli::{Cli, Command, PluginCommand};
use crate::grants::GrantError;
use crate::registry::RegistryError;
use crate::runtime::{Fault, LoadError};
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
        Command::Exec(ref args) => exec::exec(&cli, args).await,
        Command::Plugin(PluginCommand::Inspect { ref plugin }) => {
            plugin::inspect(&cli, plugin).await
        }
        Command::Plugin(PluginCommand::Push {
            ref file,
            ref reference,
        }) => plugin::push(&cli, file, reference).await,
        Command::Plugin(PluginCommand::Sign {
            ref key,
            ref reference,
        }) => plugin::sign(&cli, key, reference).await,
        Command::Plugin(PluginCommand::Verify {
            ref key,
            ref reference,
        }) => plugin::verify(&cli, key, reference).await,
        Command::Plugin(PluginCommand::Pull { ref reference }) => {
            plugin::pull(&cli, reference).await
        }
        Command::Plugin(PluginCommand::List { ref plugin_path }) => plugin::list(&cli, plugin_path),
        Command::Plugin(PluginCommand::Login {
            ref registry,
            ref username,
            ..
        }) => plugin::login(&cli, registry, username).await,
        Command::Plugin(PluginCommand::Lock {
            ref file,
            ref plugin_path,
        }) => plugin::lock(&cli, file, plugin_path),
        Command::Plugin(PluginCommand::Update {
            ref name,
            ref file,
            ref plugin_path,
            locked,
        }) => plugin::update(&cli, name.as_deref(), file, plugin_path, locked),
        Command::Plugin(PluginCommand::Bundle {
            ref out,
            ref lock,
            ref references,
        }) => plugin::bundle(&cli, out, lock.as_deref(), references).await,
        Command::Plugin(PluginCommand::New {
            ref name,
            lang,
            ref dir,
        }) => plugin::new(name, lang, dir.as_deref()),
        Command::Kv(ref cmd) => kv::kv(&cli, cmd).await,
        Command::Catalog(ref cmd) => kv::catalog(&cli, cmd).await,
        Command::Lock(ref cmd) => lock::lock(&cli, cmd).await,
        Command::Template(ref cmd) => template::template(&cli, cmd).await,
    }
}
