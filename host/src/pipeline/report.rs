//! What a pipeline run shows: live progress on a terminal (indicatif),
//! timestamped plain lines in CI, or one JSON event per line (`--json`).
//!
//! Stages report through [`Event`]s. Plugins' own log lines and progress
//! calls arrive through tracing (target `plugin`), so a [`PluginEvents`]
//! layer forwards them to whichever reporter is active.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

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
        OutputMode::Terminal => Arc::new(TerminalReporter::new()),
        OutputMode::Plain => Arc::new(PlainReporter),
        OutputMode::Json => Arc::new(JsonReporter {
            out: Mutex::new(std::io::stdout()),
        }),
    }
}

/// The reporter plugin events go to while a pipeline runs.
static ACTIVE: RwLock<Option<(Arc<dyn Reporter>, String)>> = RwLock::new(None);

/// Send plugin events to `reporter`, attributed to `stage`, until cleared.
pub fn set_active(reporter: Option<(Arc<dyn Reporter>, String)>) {
    if let Ok(mut active) = ACTIVE.write() {
        *active = reporter;
    }
}

fn forward(make: impl FnOnce(String) -> Event) {
    let Ok(active) = ACTIVE.read() else { return };
    if let Some((reporter, stage)) = active.as_ref() {
        reporter.event(&make(stage.clone()));
    }
}

/// The tracing target of plugin progress as data (`step`, `done`, `total`).
pub const PROGRESS_TARGET: &str = "runner::progress";

/// A tracing layer forwarding plugin logs and progress to the active reporter.
pub struct PluginEvents;

#[derive(Default)]
struct PluginFields {
    message: String,
    step: Option<String>,
    done: u64,
    total: u64,
}

impl tracing::field::Visit for PluginFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "step" => self.step = Some(format!("{value:?}")),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "step" => self.step = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "done" => self.done = value,
            "total" => self.total = value,
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PluginEvents {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let target = event.metadata().target();
        if target != "plugin" && target != PROGRESS_TARGET {
            return;
        }
        let mut fields = PluginFields::default();
        event.record(&mut fields);
        // "[plugin] text": the stage already says which plugin.
        let message = match fields.message.split_once("] ") {
            Some((head, rest)) if head.starts_with('[') => rest.to_string(),
            _ => fields.message,
        };
        match fields.step.filter(|_| target == PROGRESS_TARGET) {
            Some(step) => forward(|stage| Event::Progress {
                stage,
                step,
                done: fields.done,
                total: fields.total,
            }),
            None => {
                let level = event.metadata().level().as_str().to_ascii_lowercase();
                forward(|stage| Event::Log {
                    stage,
                    level,
                    message,
                })
            }
        }
    }
}

/// While a terminal reporter shows bars, log lines are printed above them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// stderr for the log, printing around live progress bars.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
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
pub fn summary(stages: &[StageSummary], outcome: StageStatus, duration_ms: u64) -> String {
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

/// CI: one timestamped log line per event (progress only when it changes step).
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
            // Plugin log lines and progress are already in the log.
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

/// `--json`: every event as one line on stdout.
pub struct JsonReporter {
    out: Mutex<std::io::Stdout>,
}

impl Reporter for JsonReporter {
    fn event(&self, event: &Event) {
        let mut value = match serde_json::to_value(event) {
            Ok(v) => v,
            Err(_) => return,
        };
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "time".into(),
                humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string()
                    .into(),
            );
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }
}

/// A terminal: a spinner per running stage with its elapsed time and the
/// plugin's latest progress or log line; a ✓/✗ line when it ends.
pub struct TerminalReporter {
    bars: MultiProgress,
    current: Mutex<Option<ProgressBar>>,
}

impl TerminalReporter {
    fn new() -> Self {
        let bars = BARS.get_or_init(MultiProgress::new).clone();
        Self {
            bars,
            current: Mutex::new(None),
        }
    }
}

impl Reporter for TerminalReporter {
    fn event(&self, event: &Event) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        match event {
            Event::StageStarted { stage, .. } => {
                let bar = self.bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(stage.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                *current = Some(bar);
            }
            Event::Progress {
                step, done, total, ..
            } => {
                if let Some(bar) = current.as_ref() {
                    bar.set_message(if *total > 0 {
                        format!("{step} ({done}/{total})")
                    } else {
                        step.clone()
                    });
                }
            }
            Event::Log { message, .. } => {
                if let Some(bar) = current.as_ref() {
                    bar.set_message(message.clone());
                }
            }
            Event::StageFinished {
                stage,
                outcome,
                duration_ms,
                message,
                ..
            } => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                    self.bars.remove(&bar);
                }
                let first = message.lines().next().unwrap_or_default();
                let _ = self.bars.println(format!(
                    "{} {stage} {} {first}",
                    mark(*outcome),
                    seconds(*duration_ms)
                ));
            }
            Event::PipelineStarted {
                service, stages, ..
            } => {
                let _ = self
                    .bars
                    .println(format!("pipeline {service}: {}", stages.join(" → ")));
            }
            Event::PipelineFinished {
                outcome,
                duration_ms,
                stages,
                ..
            } => {
                let _ = self
                    .bars
                    .println(format!("\n{}", summary(stages, *outcome, *duration_ms)));
            }
        }
    }
}
