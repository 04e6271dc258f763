//! `hooks`: run another stage plugin the operator configured, in its own
//! sandbox, and hand its outcome back to the caller (e.g. the blue-green
//! stage's pre- and post-integration tests).

use super::{Capability, Grants, RunContext, ValidateContext, denied};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::hooks;
use crate::grants::GrantError;
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

list_grant_spec! {
    /// Allow running hook NAME, defined as [hooks.NAME] in the runner file.
    HooksSpec { hooks: "allow-hook", "NAME" }
}

impl Capability for HooksCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/hooks"];
    const FLAG_HINT: &'static str = "--allow-hook NAME";
    const TOML_HINT: &'static str = "grants.hooks = [\"NAME\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("hooks.wit", include_str!("../../../wit/hooks.wit"))];
    type Spec = HooksSpec;
    type Grant = Vec<String>;

    /// Every granted hook must be defined in the runner file.
    fn validate(spec: &HooksSpec, cx: &mut ValidateContext<'_>) -> Result<Vec<String>, GrantError> {
        if let Some(name) = spec.hooks.iter().find(|h| !cx.hooks.contains(h)) {
            return Err(GrantError::Undefined {
                kind: "hook",
                table: "hooks",
                name: name.clone(),
            });
        }
        Ok(spec.hooks.clone())
    }

    fn granted(grants: &Grants) -> bool {
        !grants.hooks.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            allowed: cx.grants.hooks.clone(),
            runner: cx.host.hooks.clone(),
        }
    }

    link_interfaces!(hooks);
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
