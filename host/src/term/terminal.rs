//! A terminal: a spinner per running stage with its elapsed time and the
//! plugin's latest progress or log line; a ✓/✗ line when it ends.

use super::{mark, seconds, summary};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use runner::pipeline::report::{Event, Reporter};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The bars of the terminal reporter, once it shows any: log lines are
/// printed above them ([`LogWriter`]).
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(MultiProgress::new)
}

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

/// Creates the bars at the first event, so that log lines before a
/// pipeline starts are written to stderr directly.
#[derive(Default)]
pub struct TerminalReporter {
    current: Mutex<Option<ProgressBar>>,
}

impl Reporter for TerminalReporter {
    fn event(&self, event: &Event) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        let bars = bars();
        match event {
            Event::StageStarted { stage, .. } => {
                let bar = bars.add(ProgressBar::new_spinner());
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
                    bars.remove(&bar);
                }
                let first = message.lines().next().unwrap_or_default();
                let _ = bars.println(format!(
                    "{} {stage} {} {first}",
                    mark(*outcome),
                    seconds(*duration_ms)
                ));
            }
            Event::PipelineStarted {
                service, stages, ..
            } => {
                let _ = bars.println(format!("pipeline {service}: {}", stages.join(" → ")));
            }
            Event::PipelineFinished {
                outcome,
                duration_ms,
                stages,
                ..
            } => {
                let _ = bars.println(format!("\n{}", summary(stages, *outcome, *duration_ms)));
            }
        }
    }
}
