//! Plugin log lines and progress, from tracing into the reporter's events.
//!
//! The `log` capability and the plugin's stdout/stderr write tracing events
//! (targets [`PLUGIN_TARGET`] and [`PROGRESS_TARGET`]); the pipeline runs each
//! stage in a [`stage_span`](runner::pipeline::report::stage_span). An event
//! inside such a span becomes that stage's [`Event::Log`] or
//! [`Event::Progress`]; one outside any stage (`runner exec`) only goes to
//! the log.

use runner::caps::log::{PLUGIN_TARGET, PROGRESS_TARGET};
use runner::pipeline::report::{Event, Reporter, STAGE_FIELD, STAGE_SPAN_TARGET};
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A tracing layer forwarding plugin logs and progress to a reporter.
pub struct PluginEvents {
    reporter: Arc<dyn Reporter>,
}

impl PluginEvents {
    pub fn new(reporter: Arc<dyn Reporter>) -> Self {
        Self { reporter }
    }
}

/// The stage a stage span stands for, kept in the span's extensions.
struct StageName(String);

#[derive(Default)]
struct StageField(Option<String>);

impl Visit for StageField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == STAGE_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == STAGE_FIELD {
            self.0 = Some(value.to_string());
        }
    }
}

#[derive(Default)]
struct PluginFields {
    message: String,
    step: Option<String>,
    done: u64,
    total: u64,
}

impl Visit for PluginFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "step" => self.step = Some(format!("{value:?}")),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "step" => self.step = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "done" => self.done = value,
            "total" => self.total = value,
            _ => {}
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for PluginEvents
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().target() != STAGE_SPAN_TARGET {
            return;
        }
        let mut stage = StageField::default();
        attrs.record(&mut stage);
        if let (Some(stage), Some(span)) = (stage.0, ctx.span(id)) {
            span.extensions_mut().insert(StageName(stage));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target != PLUGIN_TARGET && target != PROGRESS_TARGET {
            return;
        }
        let stage = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<StageName>().map(|s| s.0.clone()))
        });
        let Some(stage) = stage else {
            return;
        };
        let mut fields = PluginFields::default();
        event.record(&mut fields);
        // "[plugin] text": the stage already says which plugin.
        let message = match fields.message.split_once("] ") {
            Some((head, rest)) if head.starts_with('[') => rest.to_string(),
            _ => fields.message,
        };
        let event = match fields.step.filter(|_| target == PROGRESS_TARGET) {
            Some(step) => Event::Progress {
                stage,
                step,
                done: fields.done,
                total: fields.total,
            },
            None => Event::Log {
                stage,
                level: event.metadata().level().as_str().to_ascii_lowercase(),
                message,
            },
        };
        self.reporter.event(&event);
    }
}
