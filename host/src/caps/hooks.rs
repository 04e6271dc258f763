//! `hooks`: run another stage plugin the operator configured, in its own
//! sandbox, and hand its outcome back to the caller (e.g. the blue-green
//! stage's pre- and post-integration tests).

use super::denied;
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::hooks;
use async_trait::async_trait;
use std::sync::Arc;

/// Who asks for a hook: the settings a plugin may pass are limited to what
/// the operator declared `overridable`; the pipeline (host code) passes its
/// own (`stage`, `phase`, `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookCaller {
    Plugin,
    Pipeline,
}

/// Runs a hook by name; implemented where plugins can be loaded (the command layer).
#[async_trait]
pub trait HookRunner: Send + Sync {
    async fn run_hook(
        &self,
        name: &str,
        config: Vec<(String, String)>,
        caller: HookCaller,
    ) -> Result<hooks::HookOutcome, PluginError>;
}

pub struct HooksCap {
    allowed: Vec<String>,
    runner: Option<Arc<dyn HookRunner>>,
}

impl HooksCap {
    pub fn new(allowed: Vec<String>, runner: Option<Arc<dyn HookRunner>>) -> Self {
        Self { allowed, runner }
    }
}

impl hooks::Host for HooksCap {
    async fn run(
        &mut self,
        name: String,
        config: Vec<(String, String)>,
    ) -> Result<hooks::HookOutcome, PluginError> {
        if !self.allowed.contains(&name) {
            return Err(denied(
                "hooks",
                format_args!("hook \"{name}\" is not granted"),
                format_args!("--allow-hook {name} (defined as [hooks.{name}] in the runner file)"),
            ));
        }
        let runner = self.runner.as_ref().ok_or_else(|| {
            PluginError::Unavailable(format!(
                "hooks: cannot run hook \"{name}\" from inside a hook"
            ))
        })?;
        runner.run_hook(&name, config, HookCaller::Plugin).await
    }
}
