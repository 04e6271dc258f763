//! What a pipeline run reports: the [`Event`] model and the [`Reporter`]
//! the pipeline sends it to. How events are shown (terminal spinners, plain
//! lines, JSON) is the binary's business, not the library's.
//!
//! Plugins log through tracing (`caps::log`), not through a reporter: the
//! pipeline runs each stage inside a [`stage_span`], so whoever turns those
//! tracing events into [`Event::Log`] and [`Event::Progress`] knows, from the
//! event's own span, which stage they belong to. No process-wide "current
//! stage" exists.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Succeeded,
    Failed,
    /// Not run: an earlier stage failed or paused the pipeline.
    Skipped,
    /// Stopped at a manual promotion gate (`runner promote` continues).
    Paused,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Succeeded => "succeeded",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
            StageStatus::Paused => "paused",
        }
    }
}

/// One stage's line in the summary.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StageSummary {
    pub stage: String,
    pub outcome: StageStatus,
    pub duration_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    PipelineStarted {
        service: String,
        file: String,
        stages: Vec<String>,
    },
    StageStarted {
        stage: String,
        plugin: String,
        index: usize,
    },
    Progress {
        stage: String,
        step: String,
        done: u64,
        total: u64,
    },
    Log {
        stage: String,
        level: String,
        message: String,
    },
    StageFinished {
        stage: String,
        outcome: StageStatus,
        duration_ms: u64,
        message: String,
        outputs: std::collections::BTreeMap<String, String>,
    },
    PipelineFinished {
        service: String,
        outcome: StageStatus,
        duration_ms: u64,
        stages: Vec<StageSummary>,
    },
}

/// Where events go.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// The tracing target of [`stage_span`]. Not a module path, so a log filter
/// can leave the span out of the log lines (`runner_stage=off`) without
/// silencing a module.
pub const STAGE_SPAN_TARGET: &str = "runner_stage";

/// The span field naming the stage in [`stage_span`].
pub const STAGE_FIELD: &str = "stage";

/// The span a pipeline runs `stage` in (its plugin, its hooks): what a
/// plugin logs inside it is that stage's [`Event::Log`] or [`Event::Progress`].
pub fn stage_span(stage: &str) -> tracing::Span {
    tracing::trace_span!(target: STAGE_SPAN_TARGET, "stage", stage = stage)
}
