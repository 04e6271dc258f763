//! The operator's templates (`runner template render|watch`), as
//! consul-template runs them: render SRC to DEST, write only on change, run
//! the command only then; when watching, one blocking query per dependency
//! the last render used, a quiescence wait before re-rendering, and the data
//! re-read on every render (indexes only say *when* to look).

use super::engine::{Dependency, RenderErrorOrDenied, render};
use super::{DataSource, GrantedDir, RegistrySource, Snapshot, write_if_changed};
use crate::bindings::{PluginError, describe};
use crate::registry::Registry;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One `-template "SRC:DEST:CMD"`.
#[derive(Debug, Clone)]
pub struct TemplateJob {
    pub src: PathBuf,
    pub dest: PathBuf,
    /// Shell command run after DEST changed (a proxy reload).
    pub exec: Option<String>,
    pub exec_timeout: Duration,
    /// Print to stdout instead of writing DEST, run no command (`-dry`).
    pub dry: bool,
    /// The environment variables the template may read (`env`).
    pub env: std::collections::BTreeMap<String, String>,
}

/// How `watch` paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// Quiescence: re-render once no change arrived for this long...
    pub quiet: Duration,
    /// ...or this long after the first change, whichever comes first.
    pub max_delay: Duration,
    /// How long one blocking query waits for a change.
    pub query_wait: Duration,
    /// The least time between two queries of one dependency (rate limit).
    pub min_query_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateJobError {
    #[error("cannot read template {path}: {source}")]
    ReadSource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Template { path: PathBuf, message: String },
    /// The registry could not give the data (down, denied): worth retrying.
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0}")]
    Output(String),
    #[error("{0}")]
    Command(String),
}

/// What one render did.
#[derive(Debug)]
pub struct Rendered {
    pub changed: bool,
    /// Everything the render read: what a watcher must watch.
    pub dependencies: BTreeSet<Dependency>,
}

/// Reads through to the registry and notes every dependency fetched.
struct Recording<'a> {
    source: RegistrySource<'a>,
    seen: Mutex<BTreeSet<Dependency>>,
    env: &'a std::collections::BTreeMap<String, String>,
}

impl DataSource for Recording<'_> {
    async fn fetch(&self, dep: &Dependency, into: &mut Snapshot) -> Result<(), PluginError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(dep.clone());
        }
        self.source.fetch(dep, into).await
    }

    fn granted_env(&self) -> std::collections::BTreeMap<String, String> {
        self.env.clone()
    }
}

impl TemplateJob {
    /// Render once: DEST written atomically and only on change; the command
    /// runs only then and must exit 0.
    pub async fn render_once(&self, registry: &dyn Registry) -> Result<Rendered, TemplateJobError> {
        self.render(registry, false).await
    }

    /// Render; run the command on change, or regardless when `command_owed`
    /// (the last run failed: the proxy may still have the old file).
    async fn render(
        &self,
        registry: &dyn Registry,
        command_owed: bool,
    ) -> Result<Rendered, TemplateJobError> {
        let text =
            std::fs::read_to_string(&self.src).map_err(|source| TemplateJobError::ReadSource {
                path: self.src.clone(),
                source,
            })?;
        let recording = Recording {
            source: RegistrySource(registry),
            seen: Mutex::default(),
            env: &self.env,
        };
        let content = render(&text, &recording).await.map_err(|e| match e {
            RenderErrorOrDenied::Render(e) => TemplateJobError::Template {
                path: self.src.clone(),
                message: e.to_string(),
            },
            RenderErrorOrDenied::Fetch(e) => TemplateJobError::Data {
                path: self.src.clone(),
                message: describe(&e),
            },
        })?;
        if self.dry {
            // As consul-template's -dry prints it.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            write!(out, "> {}\n{content}", self.dest.display())
                .and_then(|()| out.flush())
                .map_err(|e| TemplateJobError::Output(format!("stdout: {e}")))?;
            return Ok(Rendered {
                changed: false,
                dependencies: recording.seen.into_inner().unwrap_or_default(),
            });
        }
        let dir = self
            .dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The operator's destination: its directory is created if missing,
        // as consul-template does.
        std::fs::create_dir_all(dir).map_err(|e| {
            TemplateJobError::Output(format!("output directory {}: {e}", dir.display()))
        })?;
        let granted = GrantedDir::new(dir).map_err(|e| {
            TemplateJobError::Output(format!("output directory {}: {e}", dir.display()))
        })?;
        let changed = write_if_changed(&[granted], &self.dest, content.as_bytes())
            .map_err(|e| TemplateJobError::Output(e.to_string()))?;
        tracing::info!(
            "{}: {}",
            self.dest.display(),
            if changed { "written" } else { "unchanged" }
        );
        if let (true, Some(command)) = (changed || command_owed, &self.exec) {
            self.run_command(command).await?;
        }
        Ok(Rendered {
            changed,
            dependencies: recording.seen.into_inner().unwrap_or_default(),
        })
    }

    async fn run_command(&self, command: &str) -> Result<(), TemplateJobError> {
        let run = tokio::process::Command::new("sh")
            .args(["-c", command])
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(self.exec_timeout, run)
            .await
            .map_err(|_| {
                TemplateJobError::Command(format!(
                    "`{command}` did not finish within {}",
                    humantime::format_duration(self.exec_timeout)
                ))
            })?
            .map_err(|e| TemplateJobError::Command(format!("cannot run `{command}`: {e}")))?;
        if !status.success() {
            return Err(TemplateJobError::Command(format!(
                "`{command}` exited with {status}"
            )));
        }
        tracing::info!("ran `{command}`");
        Ok(())
    }

    /// Render, then re-render whenever the data it used changes; returns only
    /// on an error no retry can fix (the template itself, or its output).
    /// A registry outage or a failing command is logged and retried with
    /// backoff (the command until it succeeds, even if DEST no longer
    /// changes); the last good output stays in place meanwhile.
    pub async fn watch(
        &self,
        registry: Arc<dyn Registry>,
        timing: WatchTiming,
    ) -> Result<(), TemplateJobError> {
        let changed = Arc::new(Notify::new());
        let mut watchers: HashMap<Dependency, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut retry = retry_delays();
        let mut command_owed = false;
        loop {
            let retry_in = match self.render(&*registry, command_owed).await {
                Ok(rendered) => {
                    retry = retry_delays();
                    command_owed = false;
                    sync_watchers(&mut watchers, rendered.dependencies, |dep| {
                        tokio::spawn(watch_dependency(
                            registry.clone(),
                            dep,
                            changed.clone(),
                            timing,
                        ))
                    });
                    None
                }
                Err(e @ (TemplateJobError::Data { .. } | TemplateJobError::Command(_))) => {
                    command_owed |= matches!(e, TemplateJobError::Command(_));
                    let delay = retry.next().unwrap_or(MAX_RETRY_DELAY);
                    tracing::warn!("{e}; retrying in {}", humantime::format_duration(delay));
                    Some(delay)
                }
                Err(fatal) => {
                    for (_, w) in watchers.drain() {
                        w.abort();
                    }
                    return Err(fatal);
                }
            };
            match retry_in {
                Some(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = changed.notified() => {}
                    }
                }
                None => changed.notified().await,
            }
            quiesce(&changed, timing).await;
        }
    }
}

const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times()
        .build()
}

/// After a change: wait until `quiet` passes with no further change, but no
/// longer than `max_delay` in all (consul-template's `-wait min:max`).
async fn quiesce(changed: &Notify, timing: WatchTiming) {
    if timing.quiet.is_zero() {
        return;
    }
    let give_up = Instant::now() + timing.max_delay;
    loop {
        let until = (Instant::now() + timing.quiet).min(give_up);
        match tokio::time::timeout_at(until, changed.notified()).await {
            Ok(()) if Instant::now() < give_up => continue,
            _ => return,
        }
    }
}

/// Keep exactly one watcher per dependency the last render used.
fn sync_watchers(
    watchers: &mut HashMap<Dependency, tokio::task::JoinHandle<()>>,
    wanted: BTreeSet<Dependency>,
    mut start: impl FnMut(Dependency) -> tokio::task::JoinHandle<()>,
) {
    watchers.retain(|dep, handle| {
        let keep = wanted.contains(dep);
        if !keep {
            tracing::debug!("no longer watching {dep}");
            handle.abort();
        }
        keep
    });
    for dep in wanted {
        if !watchers.contains_key(&dep) {
            tracing::debug!("watching {dep}");
            watchers.insert(dep.clone(), start(dep));
        }
    }
}

/// One blocking query after another on `dep`, rate limited; signals `changed`
/// when its index moves. The first answer signals too: a change between the
/// render and the first query would otherwise be missed (the re-render it
/// costs writes nothing when nothing changed).
async fn watch_dependency(
    registry: Arc<dyn Registry>,
    dep: Dependency,
    changed: Arc<Notify>,
    timing: WatchTiming,
) {
    let mut index = 0u64;
    let mut pace = tokio::time::interval(timing.min_query_interval);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = retry_delays();
    loop {
        pace.tick().await;
        match registry
            .wait_for_change(&dep, index, timing.query_wait)
            .await
        {
            Ok(current) if current < index => {
                // The backend's index went backwards (a restore, a new
                // leader's log): start over, as Consul's docs ask.
                tracing::info!(
                    "{dep}: the registry index went back ({index} → {current}); resetting"
                );
                index = 0;
                retry = retry_delays();
                changed.notify_one();
            }
            Ok(current) => {
                retry = retry_delays();
                if current > index {
                    tracing::debug!("{dep}: index {index} → {current}");
                    index = current;
                    changed.notify_one();
                }
            }
            Err(e) => {
                let delay = retry.next().unwrap_or(MAX_RETRY_DELAY);
                tracing::warn!(
                    "watching {dep}: {e}; retrying in {}",
                    humantime::format_duration(delay)
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
