//! `log`: levels and progress, into the host's tracing output. Needs no grant.
//!
//! Needing no grant, it is bounded instead: one message is cut at
//! [`MAX_MESSAGE`] and one run's log at [`MAX_RUN_LOG`], each with a marker,
//! so a plugin cannot fill the operator's terminal, CI log or host memory.

use super::{Capability, Grants, NoGrant, RunContext, ValidateContext};
use crate::bindings::runner::plugin::{log, types};
use crate::grants::GrantError;
use std::sync::Arc;

/// The tracing target of what plugins log (here and on stdout/stderr), as
/// `[plugin] text`. The binary shows these lines, and inside a pipeline's
/// stage span also reports them as the stage's log events.
pub const PLUGIN_TARGET: &str = "plugin";

/// The tracing target of plugin progress as data (`step`, `done`, `total`),
/// for a pipeline's reporter.
pub const PROGRESS_TARGET: &str = "runner::progress";

/// Longest log message kept whole (longer ones are cut, with a marker).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most log text one run may write; past it, messages are dropped.
pub const MAX_RUN_LOG: usize = 4 * 1024 * 1024;
/// Most log messages one run may write (a flood of short lines floods a CI
/// log as surely as one huge line).
pub const MAX_RUN_MESSAGES: usize = 20_000;

/// What a run may still log; shared by the `log` interface and the
/// plugin's stdout/stderr.
#[derive(Debug)]
pub struct LogBudget {
    left: usize,
    messages_left: usize,
    exhausted: bool,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            left: MAX_RUN_LOG,
            messages_left: MAX_RUN_MESSAGES,
            exhausted: false,
        }
    }
}

impl LogBudget {
    /// The message as it may be logged: cut to [`MAX_MESSAGE`] with a
    /// marker; `None` once the run's budget is spent (a marker is returned
    /// the first time).
    pub fn admit<'a>(&mut self, message: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        if self.exhausted {
            return None;
        }
        if self.left == 0 || self.messages_left == 0 {
            self.exhausted = true;
            return Some(
                format!(
                    "[log truncated: this run wrote more than {} or {MAX_RUN_MESSAGES} messages of log; the rest is dropped]",
                    crate::runtime::format_bytes(MAX_RUN_LOG as u64)
                )
                .into(),
            );
        }
        self.messages_left -= 1;
        let limit = MAX_MESSAGE.min(self.left);
        if message.len() <= limit {
            self.left -= message.len();
            return Some(message.into());
        }
        let mut cut = limit;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        self.left -= cut;
        Some(
            format!(
                "{}… [truncated {} bytes]",
                &message[..cut],
                message.len() - cut
            )
            .into(),
        )
    }
}

pub struct LogCap {
    plugin: Arc<str>,
    budget: LogBudget,
}

impl LogCap {
    pub fn new(plugin: Arc<str>) -> Self {
        Self {
            plugin,
            budget: LogBudget::default(),
        }
    }
}

impl types::Host for LogCap {}

impl log::Host for LogCap {
    async fn write(&mut self, level: log::Level, message: String) {
        let Some(message) = self.budget.admit(&message) else {
            return;
        };
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: PLUGIN_TARGET, "[{plugin}] {message}"),
            log::Level::Debug => tracing::debug!(target: PLUGIN_TARGET, "[{plugin}] {message}"),
            log::Level::Info => tracing::info!(target: PLUGIN_TARGET, "[{plugin}] {message}"),
            log::Level::Warn => tracing::warn!(target: PLUGIN_TARGET, "[{plugin}] {message}"),
            log::Level::Error => tracing::error!(target: PLUGIN_TARGET, "[{plugin}] {message}"),
        }
    }

    async fn enabled(&mut self, level: log::Level) -> bool {
        match level {
            log::Level::Trace => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::ERROR),
        }
    }

    async fn progress(&mut self, step: String, done: u64, total: u64) {
        let Some(step) = self.budget.admit(&step) else {
            return;
        };
        let plugin = &*self.plugin;
        if total > 0 {
            tracing::info!(target: PLUGIN_TARGET, "[{plugin}] {step} ({done}/{total})");
        } else {
            tracing::info!(target: PLUGIN_TARGET, "[{plugin}] {step}");
        }
        // The same as data, for a pipeline's reporter (progress display, JSON
        // events); at trace level so the log shows the line above only once.
        tracing::trace!(target: PROGRESS_TARGET, step = %step, done, total);
    }
}

impl Capability for LogCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/types", "runner:plugin/log"];
    const FLAG_HINT: &'static str = "always available";
    const WIT: &'static [(&'static str, &'static str)] = &[
        ("types.wit", include_str!("../../../wit/types.wit")),
        ("log.wit", include_str!("../../../wit/log.wit")),
    ];
    type Spec = NoGrant;
    type Grant = ();

    fn validate(_: &NoGrant, _: &mut ValidateContext<'_>) -> Result<(), GrantError> {
        Ok(())
    }

    fn granted(_: &Grants) -> bool {
        true
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self::new(Arc::from(cx.plugin))
    }

    link_interfaces!(types, log);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_runs_are_bounded_with_markers() {
        let mut budget = LogBudget::default();
        let huge = "é".repeat(MAX_MESSAGE);
        let cut = budget.admit(&huge).unwrap();
        assert!(cut.len() < MAX_MESSAGE + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("[truncated {} bytes]", huge.len() - MAX_MESSAGE)));
        let line = "x".repeat(MAX_MESSAGE);
        let mut kept = 0;
        let mut markers = 0;
        for _ in 0..(MAX_RUN_LOG / MAX_MESSAGE + 10) {
            match budget.admit(&line) {
                Some(m) if m.starts_with("[log truncated") => markers += 1,
                Some(m) => kept += m.len(),
                None => {}
            }
        }
        assert!(kept <= MAX_RUN_LOG, "{kept}");
        assert_eq!(markers, 1);
        assert!(budget.admit("more").is_none());
    }
}
