//! A plugin's stdout and stderr, line by line into the log, prefixed by the
//! plugin's name, under the same per-message and per-run bounds as the
//! `log` interface (`caps::log::LogBudget`).

use crate::caps::log::{LogBudget, PLUGIN_TARGET};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One run's log budget, shared by its stdout and stderr.
pub type SharedBudget = Arc<Mutex<LogBudget>>;

#[derive(Clone)]
pub struct LogStream {
    plugin: Arc<str>,
    stream: Stream,
    budget: SharedBudget,
    /// The span the run started in (a pipeline's stage span): WASI writes
    /// the stream from a task of its own, outside it.
    span: tracing::Span,
}

impl LogStream {
    pub fn new(plugin: Arc<str>, stream: Stream, budget: SharedBudget) -> Self {
        Self {
            plugin,
            stream,
            budget,
            span: tracing::Span::current(),
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            sink: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Buffers partial lines; a line longer than this is logged in pieces.
const MAX_LINE: usize = 16 * 1024;

struct LineWriter {
    sink: LogStream,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        let Ok(mut budget) = self.sink.budget.lock() else {
            return;
        };
        let Some(text) = budget.admit(text) else {
            return;
        };
        let plugin = &*self.sink.plugin;
        let _run = self.sink.span.enter();
        match self.sink.stream {
            Stream::Stdout => tracing::info!(target: PLUGIN_TARGET, "[{plugin}] {text}"),
            Stream::Stderr => tracing::warn!(target: PLUGIN_TARGET, "[{plugin}] {text}"),
        }
    }

    fn flush_lines(&mut self) {
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.pending.len() > MAX_LINE {
            let chunk = std::mem::take(&mut self.pending);
            self.emit(&chunk);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        self.flush_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}
