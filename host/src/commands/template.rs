//! `runner template render|watch`: consul-template's job, from the registry.

use super::CommandError;
use super::host::{Host, Open, shutdown_signal};
use crate::cli::Cli;

pub(super) async fn template(
    cli: &Cli,
    cmd: &crate::cli::TemplateCommand,
) -> Result<(), CommandError> {
    use crate::caps::template::{TemplateJob, WatchTiming};
    use crate::cli::{TemplateCommand, TemplateTargets};
    let jobs = |t: &TemplateTargets| -> Vec<TemplateJob> {
        let job = |src: &std::path::PathBuf, dest: &std::path::PathBuf, exec: &Option<String>| {
            TemplateJob {
                src: src.clone(),
                dest: dest.clone(),
                exec: exec.clone(),
                exec_timeout: t.exec_timeout,
                // `-` is stdout, as -dry: never a file named `-`.
                dry: t.dry || dest.as_os_str() == "-",
                // Granted but unset reads as empty, as consul-template's env.
                env: t
                    .env
                    .iter()
                    .map(|name| (name.clone(), std::env::var(name).unwrap_or_default()))
                    .collect(),
            }
        };
        let positional = match (&t.src, &t.dest) {
            (Some(src), Some(dest)) => Some(job(src, dest, &t.exec)),
            _ => None,
        };
        positional
            .into_iter()
            .chain(t.templates.iter().map(|(s, d, c)| job(s, d, c)))
            .collect()
    };
    // A template rendered from a registry nobody has written renders an
    // upstream with no servers: say which registry it is, and how to pick Consul.
    if cli.consul.is_none() && !cli.state_dir.exists() {
        tracing::warn!(
            "no registry configured: rendering from a new, empty embedded registry in {}; \
             for Consul's data pass --consul URL (or -consul-addr, CONSUL_HTTP_ADDR)",
            cli.state_dir.display()
        );
    }
    let registry = Host::registry(cli, Open::Now)?;
    match cmd {
        TemplateCommand::Render { targets, once: _ } => {
            for job in jobs(targets) {
                job.render_once(&*registry).await?;
            }
            Ok(())
        }
        TemplateCommand::Watch {
            targets,
            wait,
            query_wait,
        } => {
            let timing = WatchTiming {
                quiet: wait.0,
                max_delay: wait.1,
                query_wait: *query_wait,
                min_query_interval: std::time::Duration::from_millis(100),
            };
            let jobs = jobs(targets);
            // Each template watches its own data; the first error no retry
            // can fix (a broken template) ends them all.
            let watching = futures_util::future::try_join_all(
                jobs.iter().map(|job| job.watch(registry.clone(), timing)),
            );
            tokio::select! {
                result = watching => result.map(|_| ()).map_err(CommandError::from),
                signal = shutdown_signal() => {
                    tracing::info!("{signal}: stopped watching {} template(s)", jobs.len());
                    Ok(())
                }
            }
        }
    }
}
