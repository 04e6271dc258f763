//! `log`: levels and progress, into the host's tracing output. Needs no grant.

use crate::bindings::runner::plugin::{log, types};
use std::sync::Arc;

pub struct LogCap {
    plugin: Arc<str>,
}

impl LogCap {
    pub fn new(plugin: Arc<str>) -> Self {
        Self { plugin }
    }
}

impl types::Host for LogCap {}

impl log::Host for LogCap {
    fn write(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", "[{plugin}] {message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", "[{plugin}] {message}"),
            log::Level::Info => tracing::info!(target: "plugin", "[{plugin}] {message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", "[{plugin}] {message}"),
            log::Level::Error => tracing::error!(target: "plugin", "[{plugin}] {message}"),
        }
    }

    fn progress(&mut self, step: String, done: u64, total: u64) {
        let plugin = &*self.plugin;
        if total > 0 {
            tracing::info!(target: "plugin", "[{plugin}] {step} ({done}/{total})");
        } else {
            tracing::info!(target: "plugin", "[{plugin}] {step}");
        }
        // The same as data, for a pipeline's reporter (progress display, JSON
        // events); at trace level so the log shows the line above only once.
        tracing::trace!(target: crate::pipeline::report::PROGRESS_TARGET, step = %step, done, total);
    }
}
