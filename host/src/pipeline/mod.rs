//! `runner run`: a pipeline's stages in order, each a plugin in its own
//! sandbox with its own grants and limits. Outputs of a stage become inputs
//! (`<stage>.<key>`) of the ones after it and can be used in their config as
//! `${stage.key}`. The first failure stops the pipeline; a stage reporting a
//! `paused` output (`conventions::PAUSED`) stops it at a promotion gate (`runner promote` resumes).

pub mod file;
pub mod history;
pub mod junit;
pub mod report;

use crate::bindings::{Context as StageContext, PluginError, describe};
use crate::caps::HostServices;
use crate::caps::hooks::HookRunner;
use crate::conventions::{self, hook};
use crate::runtime::Runtime;
use crate::stage::{Hooks, run_plugin};
use file::{Pipeline, StageDef, interpolate};
use report::{Event, Reporter, StageStatus, StageSummary};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

/// What to run, and with what.
pub struct Execution {
    pub runtime: Arc<Runtime>,
    /// Registry and Docker; hooks are added per pipeline.
    pub services: HostServices,
    pub reporter: Arc<dyn Reporter>,
    /// Index of the first stage to run.
    pub from_stage: usize,
    /// Run only that stage (a rollback).
    pub only_one: bool,
    /// Outputs of stages already run (a resumed pipeline).
    pub outputs: BTreeMap<String, String>,
    /// Extra config for the first stage run (`action=rollback`).
    pub first_stage_config: Vec<(String, String)>,
    /// Leave out settings that refer to outputs of stages not run this time
    /// (a rollback runs the deploy stage alone: it needs no `${build.image}`).
    pub lenient_references: bool,
}

/// How a stage failed, for the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The stage returned an error (exit 1).
    Stage { stage: String, message: String },
    /// The plugin trapped, ran out of memory or time, or could not load (exit 3).
    Fault { stage: String, message: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Stage { stage, message } | Failure::Fault { stage, message } => {
                write!(f, "stage {stage} failed: {message}")
            }
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Finished {
    pub outcome: StageStatus,
    pub stages: Vec<StageSummary>,
    pub outputs: BTreeMap<String, String>,
    /// JUnit reports written by stages and hooks, as read when each finished.
    pub reports: Vec<junit::Report>,
    pub failure: Option<Failure>,
    /// The stage that paused, if one did.
    pub paused_at: Option<String>,
    /// The deploy stage's `image` setting, as run.
    pub deployed_image: Option<String>,
    pub duration_ms: u64,
}

pub async fn execute(pipeline: &Pipeline, x: Execution) -> Finished {
    let started = Instant::now();
    let selected: Vec<&StageDef> = pipeline
        .stages
        .iter()
        .skip(x.from_stage)
        .take(if x.only_one { 1 } else { usize::MAX })
        .collect();
    x.reporter.event(&Event::PipelineStarted {
        service: pipeline.service.clone(),
        file: pipeline.path.display().to_string(),
        stages: selected.iter().map(|s| s.name.clone()).collect(),
    });
    let reports = Arc::new(Mutex::new(Vec::new()));
    let hooks = Arc::new(Hooks::new(
        x.runtime.clone(),
        x.services.clone(),
        &pipeline.service,
        pipeline.runfile.hooks.clone(),
        reports.clone(),
        crate::runtime::Limits::default(),
    ));
    let mut services = x.services.clone();
    services.hooks = Some(hooks.clone());

    let mut outputs = x.outputs;
    let mut summaries = Vec::new();
    let mut outcome = StageStatus::Succeeded;
    let (mut failure, mut paused_at, mut deployed_image) = (None, None, None);
    for (i, stage) in selected.into_iter().enumerate() {
        if outcome != StageStatus::Succeeded {
            summaries.push(StageSummary {
                stage: stage.name.clone(),
                outcome: StageStatus::Skipped,
                duration_ms: 0,
                message: String::new(),
            });
            continue;
        }
        x.reporter.event(&Event::StageStarted {
            stage: stage.name.clone(),
            plugin: stage.plugin.to_string(),
            index: x.from_stage + i,
        });
        let stage_started = Instant::now();
        let extra = if i == 0 {
            x.first_stage_config.clone()
        } else {
            Vec::new()
        };
        // Only the deploy stage has the service's deploy journal: another
        // stage could otherwise forge what the deploy stage recovers from.
        let mut stage_services = services.clone();
        if pipeline.deploy_stage.as_deref() != Some(stage.name.as_str()) {
            stage_services.journal_service = None;
        }
        let run = StageRun {
            pipeline,
            stage,
            lenient: x.lenient_references,
            runtime: &x.runtime,
            services: &stage_services,
            hooks: &hooks,
            reports: &reports,
        };
        // Plugin log lines inside the span are this stage's (see `report`).
        let result = run
            .run(&outputs, extra)
            .instrument(report::stage_span(&stage.name))
            .await;
        let duration_ms = stage_started.elapsed().as_millis() as u64;
        let (status, message, stage_outputs) = match result {
            Ok((done, image)) => {
                if pipeline.deploy_stage.as_deref() == Some(stage.name.as_str()) {
                    deployed_image = image;
                }
                let paused = done
                    .outputs
                    .iter()
                    .any(|(k, v)| k == conventions::PAUSED && !v.is_empty());
                let stage_outputs: BTreeMap<String, String> = done.outputs.into_iter().collect();
                for (k, v) in &stage_outputs {
                    outputs.insert(conventions::stage_output(&stage.name, k), v.clone());
                }
                if paused {
                    paused_at = Some(stage.name.clone());
                    (StageStatus::Paused, done.message, stage_outputs)
                } else {
                    (StageStatus::Succeeded, done.message, stage_outputs)
                }
            }
            Err(f) => {
                let message = match &f {
                    Failure::Stage { message, .. } | Failure::Fault { message, .. } => {
                        message.clone()
                    }
                };
                failure = Some(f);
                (StageStatus::Failed, message, BTreeMap::new())
            }
        };
        x.reporter.event(&Event::StageFinished {
            stage: stage.name.clone(),
            outcome: status,
            duration_ms,
            message: message.clone(),
            outputs: stage_outputs,
        });
        summaries.push(StageSummary {
            stage: stage.name.clone(),
            outcome: status,
            duration_ms,
            message,
        });
        outcome = status;
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    x.reporter.event(&Event::PipelineFinished {
        service: pipeline.service.clone(),
        outcome,
        duration_ms,
        stages: summaries.clone(),
    });
    let reports = reports.lock().map(|r| r.clone()).unwrap_or_default();
    Finished {
        outcome,
        stages: summaries,
        outputs,
        reports,
        failure,
        paused_at,
        deployed_image,
        duration_ms,
    }
}

/// One stage: its before hooks, the plugin, its after hooks.
struct StageRun<'a> {
    pipeline: &'a Pipeline,
    stage: &'a StageDef,
    lenient: bool,
    runtime: &'a Arc<Runtime>,
    services: &'a HostServices,
    hooks: &'a Arc<Hooks>,
    reports: &'a Arc<Mutex<Vec<junit::Report>>>,
}

impl StageRun<'_> {
    /// The stage's outcome and its `image` setting as run.
    async fn run(
        &self,
        outputs: &BTreeMap<String, String>,
        extra: Vec<(String, String)>,
    ) -> Result<(crate::bindings::Outcome, Option<String>), Failure> {
        let stage = self.stage;
        let failed = |message: String| Failure::Stage {
            stage: stage.name.clone(),
            message,
        };
        let inputs: Vec<(String, String)> = outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.hooks.set_inputs(inputs.clone());
        for hook in &stage.before {
            self.run_hook(hook, hook::BEFORE, None)
                .await
                .map_err(|e| failed(format!("before-hook {hook}: {}", describe(&e))))?;
        }
        let mut config = Vec::new();
        for (key, value) in &stage.config {
            let missing_output = file::references(value)
                .iter()
                .any(|r| !r.starts_with("env.") && !outputs.contains_key(*r));
            if self.lenient && missing_output {
                tracing::debug!(
                    "{}: leaving out {key} (needs outputs of stages not run)",
                    stage.name
                );
                continue;
            }
            let value = interpolate(value, outputs).map_err(|e| {
                failed(format!(
                    "config {key} ({}:{}): {e}",
                    self.pipeline.path.display(),
                    stage.line
                ))
            })?;
            config.push((key.clone(), value));
        }
        config.extend(extra);
        let image = config
            .iter()
            .rev()
            .find(|(k, _)| k == conventions::IMAGE)
            .map(|(_, v)| v.clone());
        let plugin = self
            .runtime
            .load_source(&stage.plugin)
            .map(Arc::new)
            .map_err(|e| Failure::Fault {
                stage: stage.name.clone(),
                message: e.to_string(),
            })?;
        let result = run_plugin(
            self.runtime,
            plugin,
            StageContext {
                service: self.pipeline.service.clone(),
                stage: stage.name.clone(),
                config,
                inputs,
            },
            &stage.grants,
            stage.limits,
            self.services,
            self.reports,
        )
        .await;
        let result = match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(error)) => Err(failed(describe(&error))),
            Err(fault) => Err(Failure::Fault {
                stage: stage.name.clone(),
                message: fault.to_string(),
            }),
        };
        let status = if result.is_ok() {
            hook::SUCCEEDED
        } else {
            hook::FAILED
        };
        for hook in &stage.after {
            if let Err(e) = self.run_hook(hook, hook::AFTER, Some(status)).await {
                let message = format!("after-hook {hook}: {}", describe(&e));
                return Err(match result {
                    // The stage's own failure matters more.
                    Err(first) => first,
                    Ok(_) => failed(message),
                });
            }
        }
        result.map(|o| (o, image))
    }

    async fn run_hook(
        &self,
        hook: &str,
        phase: &str,
        outcome: Option<&str>,
    ) -> Result<(), PluginError> {
        let mut config = vec![
            (hook::STAGE.to_string(), self.stage.name.clone()),
            (hook::PHASE.to_string(), phase.to_string()),
        ];
        if let Some(outcome) = outcome {
            config.push((hook::OUTCOME.to_string(), outcome.to_string()));
        }
        let done = self
            .hooks
            .run_hook(hook, config, crate::caps::hooks::HookCaller::Pipeline)
            .await?;
        tracing::info!(
            "hook {hook} ({phase} {}): {}",
            self.stage.name,
            done.message
        );
        Ok(())
    }
}
