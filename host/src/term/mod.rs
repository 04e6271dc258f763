//! How the binary shows a pipeline run: live progress on a terminal
//! (indicatif), timestamped plain lines in CI, or one JSON event per line
//! (`--json`). The library only sends [`Event`]s to a [`Reporter`]; the
//! terminal globals (the progress bars log lines print around) live here.

mod json;
mod plain;
mod plugin_events;
mod terminal;

pub use plugin_events::PluginEvents;
pub use terminal::LogWriter;

use runner::pipeline::report::{Reporter, StageStatus, StageSummary};
use std::sync::Arc;

/// How to show a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Live per-stage spinners (stderr is a terminal and `CI` is not set).
    Terminal,
    /// Timestamped lines (CI, pipes).
    Plain,
    /// JSON events on stdout, plain lines on stderr.
    Json,
}

impl OutputMode {
    pub fn detect(json: bool) -> Self {
        use std::io::IsTerminal;
        if json {
            OutputMode::Json
        } else if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            OutputMode::Terminal
        } else {
            OutputMode::Plain
        }
    }
}

pub fn reporter(mode: OutputMode) -> Arc<dyn Reporter> {
    match mode {
        OutputMode::Terminal => Arc::new(terminal::TerminalReporter::default()),
        OutputMode::Plain => Arc::new(plain::PlainReporter),
        OutputMode::Json => Arc::new(json::JsonReporter::default()),
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn mark(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Succeeded => "✓",
        StageStatus::Failed => "✗",
        StageStatus::Skipped => "-",
        StageStatus::Paused => "‖",
    }
}

/// The end-of-run table, one stage per line.
fn summary(stages: &[StageSummary], outcome: StageStatus, duration_ms: u64) -> String {
    let width = stages
        .iter()
        .map(|s| s.stage.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:width$}  {:9}  {:>7}  message\n",
        "stage", "outcome", "time"
    );
    for s in stages {
        let message = s.message.lines().next().unwrap_or_default();
        out.push_str(&format!(
            "{:width$}  {:9}  {:>7}  {message}\n",
            s.stage,
            s.outcome.as_str(),
            if s.outcome == StageStatus::Skipped {
                String::new()
            } else {
                seconds(s.duration_ms)
            }
        ));
    }
    out.push_str(&format!(
        "pipeline {} in {}\n",
        outcome.as_str(),
        seconds(duration_ms)
    ));
    out
}
