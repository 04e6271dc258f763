//! Running stages and hooks: the glue between a validated definition, the
//! capabilities its grants allow, and the runtime. `runner exec` runs one
//! stage through it; `runner run` runs a pipeline of them.

use crate::bindings::runner::plugin::hooks::HookOutcome;
use crate::bindings::{Context as StageContext, PluginError};
use crate::caps::hooks::{HookCaller, HookRunner};
use crate::caps::template::{FileError, GrantedDir, read_inside_limited};
use crate::caps::{Capabilities, Grants, HostServices, RunContext};
use crate::pipeline::junit::Report;
use crate::runfile::HookDef;
use crate::runtime::{Limits, Plugin, Runtime, StageResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

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
    reports: Arc<Mutex<Vec<Report>>>,
    /// Outputs of earlier stages, given to hooks as inputs.
    inputs: Mutex<Vec<(String, String)>>,
    /// The limits of whoever runs the hooks: hooks inherit their host-call bounds.
    caller_limits: Limits,
}

impl Hooks {
    pub fn new(
        runtime: Arc<Runtime>,
        services: HostServices,
        service: &str,
        defs: Vec<HookDef>,
        reports: Arc<Mutex<Vec<Report>>>,
        caller_limits: Limits,
    ) -> Self {
        // Hooks do not nest, and only the stage holding the lock journals.
        let services = HostServices {
            hooks: None,
            journal_service: None,
            ..services
        };
        Self {
            runtime,
            services,
            service: service.to_string(),
            defs,
            loaded: tokio::sync::Mutex::new(HashMap::new()),
            reports,
            inputs: Mutex::new(Vec::new()),
            caller_limits,
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
        caller: HookCaller,
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
                            .load_source(&def.plugin)
                            .map_err(|e| PluginError::Failed(format!("hook {name}: {e}")))?,
                    );
                    loaded.insert(name.to_string(), p.clone());
                    p
                }
            }
        };
        // The operator's config wins: a caller sets only what the operator
        // declared overridable, so it cannot point the hook's grants elsewhere.
        let not_overridable = config
            .iter()
            .find(|(k, _)| caller == HookCaller::Plugin && !def.overridable.contains(k));
        if let Some((key, _)) = not_overridable {
            return Err(crate::caps::denied(
                "hooks",
                format_args!(
                    "the caller may not set \"{key}\" for hook \"{name}\" (not overridable)"
                ),
                format_args!("overridable = [\"{key}\"] in [hooks.{name}] of the runner file"),
            ));
        }
        let mut settings = def.config.clone();
        settings.retain(|(k, _)| !config.iter().any(|(c, _)| c == k));
        settings.extend(config);
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();
        tracing::info!("running hook {name} ({})", def.plugin);
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
            def.limits_under(&self.caller_limits),
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

/// Most bytes of outputs (keys and values) and message a stage may return:
/// outputs are copied into every later stage and into a paused run's record.
pub const MAX_OUTCOME_BYTES: usize = 1024 * 1024;

/// Refuse an outcome past [`MAX_OUTCOME_BYTES`] (as the stage's failure: the
/// plugin ran, and what it returned is unusable).
fn bounded_outcome(
    plugin: &str,
    outcome: crate::bindings::Outcome,
) -> Result<crate::bindings::Outcome, PluginError> {
    let size = outcome.message.len()
        + outcome
            .outputs
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > MAX_OUTCOME_BYTES {
        return Err(PluginError::InvalidConfig(format!(
            "{plugin} returned {size} bytes of outputs and message, more than the {} limit; \
             pass large data through a granted directory instead",
            crate::runtime::format_bytes(MAX_OUTCOME_BYTES as u64)
        )));
    }
    Ok(outcome)
}

/// Largest JUnit report merged (the plugin writes it; the host reads it).
const MAX_REPORT_BYTES: u64 = 16 * 1024 * 1024;

/// Read the report the plugin wrote, now, through its own granted
/// directories (cap-std: no `..`, no symlink out of the grant), so what is
/// merged later is what the plugin could itself read.
fn collect_report(plugin: &str, guest: &str, grants: &Grants, reports: &Mutex<Vec<Report>>) {
    let Some(path) = grants.dirs.host_path(guest) else {
        tracing::warn!(
            "JUnit report \"{guest}\" of {plugin} is outside its granted directories; not merged"
        );
        return;
    };
    let dirs: Vec<GrantedDir> = grants.dirs.granted();
    match read_inside_limited(&dirs, &path, MAX_REPORT_BYTES) {
        Ok(xml) => {
            if let Ok(mut reports) = reports.lock()
                && !reports.iter().any(|r| r.path == path)
            {
                reports.push(Report { path, xml });
            }
        }
        Err(FileError::NotFound(_)) => {}
        Err(e) => tracing::warn!("JUnit report of {plugin} not merged: {e}"),
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
    reports: &Mutex<Vec<Report>>,
) -> Result<StageResult, crate::runtime::Fault> {
    let report = context
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == crate::conventions::REPORT)
        .map(|(_, guest)| guest.clone());
    let plugin_name = plugin.name().to_string();
    let request = crate::runtime::RunRequest {
        capabilities: Capabilities::prepare(&RunContext {
            plugin: plugin.name(),
            grants,
            host: services,
            limits: &limits,
        }),
        limits,
        context,
    };
    let runtime = runtime.clone();
    // The task stays in the caller's span: a pipeline's stage span says
    // which stage the plugin's log lines belong to.
    let task = async move { runtime.run(&plugin, request).await }.in_current_span();
    let result = match tokio::spawn(task).await {
        Ok(result) => result,
        Err(join) => Ok(Err(PluginError::Failed(format!(
            "the plugin's task did not complete: {join}"
        )))),
    };
    if let Some(guest) = report {
        collect_report(&plugin_name, &guest, grants, reports);
    }
    result.map(|r| r.and_then(|outcome| bounded_outcome(&plugin_name, outcome)))
}
