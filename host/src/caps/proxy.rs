//! `proxy`: reload a proxy the operator configured, after checking its config.
//!
//! The operator defines each proxy in the runner file (`[proxies.NAME]`): the
//! directory rendered config goes to, an optional check command (`nginx -t`),
//! and the reload action, a command or a signal to a container (the seed's
//! `docker kill -s HUP nginx`). A plugin can trigger only that action.

use super::docker::DockerEngine;
use super::template::GrantedDir;
use super::{HostServices, denied};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::proxy;
use bollard::query_parameters::KillContainerOptions;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// A proxy as written in the runner file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Where templates render this proxy's config (relative to the runner file).
    pub config_dir: String,
    /// Command that validates the config without applying it, e.g. `["nginx", "-t", ...]`.
    #[serde(default)]
    pub check: Option<Vec<String>>,
    /// Command that reloads the proxy, e.g. `["nginx", "-s", "reload", ...]`.
    #[serde(default)]
    pub reload: Option<Vec<String>>,
    /// Or: a signal sent to a container, e.g. `{ container = "nginx", signal = "HUP" }`.
    #[serde(default)]
    pub reload_signal: Option<SignalSpec>,
    /// Limit for each command (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    pub container: String,
    pub signal: String,
}

#[derive(Debug, Clone)]
pub enum ReloadAction {
    Command(Vec<String>),
    Signal { container: String, signal: String },
}

/// A validated proxy definition.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub name: String,
    pub config_dir: GrantedDir,
    pub check: Option<Vec<String>>,
    pub reload: ReloadAction,
    pub timeout: Duration,
    /// Commands run here: the runner file's directory, so its relative paths hold.
    pub workdir: std::path::PathBuf,
}

impl ProxySpec {
    /// Validate; relative paths are taken from `base` (the runner file's directory).
    pub fn validate(&self, name: &str, base: &Path) -> Result<ProxyConfig, String> {
        let dir = base.join(&self.config_dir);
        if !dir.is_dir() {
            return Err(format!(
                "config_dir {} is not an existing directory; create it first",
                dir.display()
            ));
        }
        let config_dir = GrantedDir::new(&dir).map_err(|e| e.to_string())?;
        let reload = match (&self.reload, &self.reload_signal) {
            (Some(cmd), None) if !cmd.is_empty() => ReloadAction::Command(cmd.clone()),
            (None, Some(s)) => ReloadAction::Signal {
                container: s.container.clone(),
                signal: s.signal.clone(),
            },
            _ => {
                return Err("give exactly one of `reload = [\"cmd\", ...]` or `reload_signal = { container = \"...\", signal = \"HUP\" }`".into());
            }
        };
        if self.check.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("`check` is an empty command".into());
        }
        let timeout = match &self.timeout {
            Some(t) => humantime::parse_duration(t).map_err(|e| format!("timeout \"{t}\": {e}"))?,
            None => Duration::from_secs(10),
        };
        Ok(ProxyConfig {
            name: name.to_string(),
            config_dir,
            check: self.check.clone(),
            reload,
            timeout,
            workdir: std::path::absolute(base).map_err(|e| e.to_string())?,
        })
    }
}

pub struct ProxyCap {
    proxies: Vec<ProxyConfig>,
    docker: DockerEngine,
}

impl ProxyCap {
    pub fn new(proxies: Vec<ProxyConfig>, services: &HostServices) -> Self {
        Self {
            proxies,
            docker: services.docker.clone(),
        }
    }

    fn get(&self, name: &str) -> Result<&ProxyConfig, PluginError> {
        self.proxies.iter().find(|p| p.name == name).ok_or_else(|| {
            denied(
                "proxy",
                format_args!("proxy \"{name}\" is not granted"),
                format_args!(
                    "--allow-proxy {name} (defined as [proxies.{name}] in the runner file)"
                ),
            )
        })
    }
}

/// Run a configured command with a time limit; (success, combined output).
async fn run_command(
    proxy: &str,
    argv: &[String],
    workdir: &Path,
    timeout: Duration,
) -> Result<(bool, String), PluginError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| PluginError::InvalidConfig(format!("proxy {proxy}: empty command")))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(workdir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let shown = argv.join(" ");
    let output = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| {
            PluginError::Timeout(format!(
                "proxy {proxy}: `{shown}` did not finish within {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| PluginError::Failed(format!("proxy {proxy}: cannot run `{shown}`: {e}")))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        text = format!(
            "`{shown}` exited with {}:\n{}",
            output.status,
            text.trim_end()
        );
    }
    Ok((output.status.success(), text))
}

impl proxy::Host for ProxyCap {
    async fn config_dir(&mut self, proxy: String) -> Result<String, PluginError> {
        Ok(self.get(&proxy)?.config_dir.path().display().to_string())
    }

    async fn reload(&mut self, proxy: String) -> Result<proxy::ReloadReport, PluginError> {
        let config = self.get(&proxy)?.clone();
        let started = Instant::now();
        let mut output = String::new();
        if let Some(check) = &config.check {
            let (ok, text) = run_command(&proxy, check, &config.workdir, config.timeout).await?;
            if !ok {
                return Err(PluginError::Failed(format!(
                    "proxy {proxy}: the new config failed its check; the running proxy was not reloaded. {text}"
                )));
            }
            output.push_str(&text);
        }
        match &config.reload {
            ReloadAction::Command(argv) => {
                let (ok, text) = run_command(&proxy, argv, &config.workdir, config.timeout).await?;
                if !ok {
                    return Err(PluginError::Failed(format!(
                        "proxy {proxy}: reload failed: {text}"
                    )));
                }
                output.push_str(&text);
            }
            ReloadAction::Signal { container, signal } => {
                let docker = self.docker.client().await?;
                tokio::time::timeout(
                    config.timeout,
                    docker.kill_container(
                        container,
                        Some(KillContainerOptions {
                            signal: signal.clone(),
                        }),
                    ),
                )
                .await
                .map_err(|_| {
                    PluginError::Timeout(format!("proxy {proxy}: signalling {container} timed out"))
                })?
                .map_err(|e| {
                    PluginError::Failed(format!(
                        "proxy {proxy}: sending {signal} to {container}: {e}"
                    ))
                })?;
            }
        }
        tracing::info!("proxy {proxy} reloaded in {:.1?}", started.elapsed());
        Ok(proxy::ReloadReport {
            output,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(reload: Option<Vec<&str>>, signal: bool) -> ProxySpec {
        ProxySpec {
            config_dir: ".".into(),
            check: None,
            reload: reload.map(|r| r.into_iter().map(String::from).collect()),
            reload_signal: signal.then(|| SignalSpec {
                container: "nginx".into(),
                signal: "HUP".into(),
            }),
            timeout: None,
        }
    }

    #[test]
    fn exactly_one_reload_action() {
        let base = std::env::temp_dir();
        assert!(spec(Some(vec!["true"]), false).validate("p", &base).is_ok());
        assert!(spec(None, true).validate("p", &base).is_ok());
        assert!(
            spec(None, false)
                .validate("p", &base)
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(spec(Some(vec!["true"]), true).validate("p", &base).is_err());
    }

    #[tokio::test]
    async fn failed_check_prevents_the_reload() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let config = ProxyConfig {
            name: "p".into(),
            config_dir: GrantedDir::new(dir.path()).unwrap(),
            check: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo bad config >&2; exit 1".into(),
            ]),
            reload: ReloadAction::Command(vec!["touch".into(), marker.display().to_string()]),
            timeout: Duration::from_secs(10),
            workdir: dir.path().to_path_buf(),
        };
        let mut cap = ProxyCap {
            proxies: vec![config],
            docker: DockerEngine::new(None),
        };
        let err = proxy::Host::reload(&mut cap, "p".into()).await.unwrap_err();
        let PluginError::Failed(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("was not reloaded") && msg.contains("bad config"),
            "{msg}"
        );
        assert!(!marker.exists());
        let denied = proxy::Host::reload(&mut cap, "other".into())
            .await
            .unwrap_err();
        assert!(matches!(denied, PluginError::Denied(_)));
    }
}
