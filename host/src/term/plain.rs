//! CI and pipes: one timestamped log line per event.

use super::{mark, seconds, summary};
use runner::pipeline::report::{Event, Reporter, StageStatus};
use std::io::Write;

/// One log line per event (plugin log lines and progress are already in
/// the log, so they are not repeated).
pub struct PlainReporter;

impl Reporter for PlainReporter {
    fn event(&self, event: &Event) {
        match event {
            Event::PipelineStarted {
                service,
                file,
                stages,
            } => tracing::info!(
                "pipeline {service} ({file}): {} stages: {}",
                stages.len(),
                stages.join(" → ")
            ),
            Event::StageStarted { stage, plugin, .. } => {
                tracing::info!("▶ {stage} ({plugin})")
            }
            Event::Progress { .. } | Event::Log { .. } => {}
            Event::StageFinished {
                stage,
                outcome,
                duration_ms,
                message,
                ..
            } => match outcome {
                StageStatus::Failed => tracing::error!(
                    "{} {stage} failed after {}: {message}",
                    mark(*outcome),
                    seconds(*duration_ms)
                ),
                _ => tracing::info!(
                    "{} {stage} {} in {}: {message}",
                    mark(*outcome),
                    outcome.as_str(),
                    seconds(*duration_ms)
                ),
            },
            Event::PipelineFinished {
                outcome,
                duration_ms,
                stages,
                ..
            } => {
                let table = summary(stages, *outcome, *duration_ms);
                let _ = std::io::stderr().write_all(format!("\n{table}").as_bytes());
            }
        }
    }
}
