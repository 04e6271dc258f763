//! Running stages and hooks: the glue between a validated definition, the
//! capabilities its grants allow, and the runtime. `runner exec` runs one
//! stage through it; `runner run` runs a pipeline of them.

use crate::bindings::runner::plugin::hooks::HookOutcome;
use crate::bindings::{Context as StageContext, PluginError};
use crate::caps::hooks::HookRunner;
use crate::caps::{Capabilities, HostServices};
use crate::grants::{Grants, host_path};
use crate::runfile::HookDef;
use crate::runtime::{Limits, Plugin, Runtime, StageResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Runs `[hooks.*]` for the stage being executed: each hook is loaded once,
/// then run in its own store under its own grants and limits, on its own task
/// (never nested inside the calling plugin's execution).
pub struct Hooks {
    runtime: Arc<Runtime>,
    /// Services for hook runs (without hooks: they do not nest).
    services: HostServices,
    service: String,
    defs: Vec<HookDef>,
    loaded: tokio::sync::Mutex<HashMap<String, Arc<Plugin>>>,
    /// The JUnit reports hooks wrote (host paths), for `runner run --junit`.
    reports: Arc<Mutex<Vec<PathBuf>>>,
    /// Outputs of earlier stages, given to hooks as inputs.
    inputs: Mutex<Vec<(String, String)>>,
}

impl Hooks {
    pub fn new(
        runtime: Arc<Runtime>,
        services: HostServices,
        service: &str,
        defs: Vec<HookDef>,
        reports: Arc<Mutex<Vec<PathBuf>>>,
    ) -> Self {
        Self {
            runtime,
            services,
            service: service.to_string(),
            defs,
            loaded: tokio::sync::Mutex::new(HashMap::new()),
            reports,
            inputs: Mutex::new(Vec::new()),
        }
    }

    /// Hooks run from now on see these earlier outputs as their inputs.
    pub fn set_inputs(&self, inputs: Vec<(String, String)>) {
        if let Ok(mut current) = self.inputs.lock() {
            *current = inputs;
        }
    }
}

#[async_trait::async_trait]
impl HookRunner for Hooks {
    async fn run_hook(
        &self,
        name: &str,
        config: Vec<(String, String)>,
    ) -> Result<HookOutcome, PluginError> {
        let def = self.defs.iter().find(|d| d.name == name).ok_or_else(|| {
            PluginError::NotFound(format!("hooks: no [hooks.{name}] in the runner file"))
        })?;
        let plugin = {
            let mut loaded = self.loaded.lock().await;
            match loaded.get(name) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(
                        self.runtime
                            .load(&def.plugin)
                            .map_err(|e| PluginError::Failed(format!("hook {name}: {e}")))?,
                    );
                    loaded.insert(name.to_string(), p.clone());
                    p
                }
            }
        };
        let mut settings = def.config.clone();
        settings.extend(config);
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();
        tracing::info!("running hook {name} ({})", def.plugin.display());
        let result = run_plugin(
            &self.runtime,
            plugin,
            StageContext {
                service: self.service.clone(),
                stage: name.to_string(),
                config: settings,
                inputs,
            },
            &def.grants,
            def.limits,
            &self.services,
            &self.reports,
        )
        .await;
        match result {
            Ok(Ok(outcome)) => Ok(HookOutcome {
                outputs: outcome.outputs,
                message: outcome.message,
            }),
            Ok(Err(error)) => Err(error),
            Err(fault) => Err(PluginError::Failed(format!("hook {name}: {fault}"))),
        }
    }
}

/// Run `plugin` once under `grants` and `limits`, on its own task, and note
/// the JUnit report it was configured to write (`report`), if it did.
pub async fn run_plugin(
    runtime: &Arc<Runtime>,
    plugin: Arc<Plugin>,
    context: StageContext,
    grants: &Grants,
    limits: Limits,
    services: &HostServices,
    reports: &Mutex<Vec<PathBuf>>,
) -> Result<StageResult, crate::runtime::Fault> {
    let report = context
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == "report")
        .and_then(|(_, guest)| host_path(&grants.dirs, guest));
    let request = crate::runtime::RunRequest {
        capabilities: Capabilities::new(plugin.name(), grants, services),
        dirs: grants.dirs.clone(),
        limits,
        context,
    };
    let runtime = runtime.clone();
    let result = match tokio::spawn(async move { runtime.run(&plugin, request).await }).await {
        Ok(result) => result,
        Err(join) => Ok(Err(PluginError::Failed(format!(
            "the plugin's task did not complete: {join}"
        )))),
    };
    if let Some(path) = report.filter(|p| p.is_file())
        && let Ok(mut reports) = reports.lock()
        && !reports.contains(&path)
    {
        reports.push(path);
    }
    result
}
