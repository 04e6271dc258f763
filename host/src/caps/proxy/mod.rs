//! `proxy`: switch and reload a proxy the operator configured.
//!
//! The operator defines each proxy in the runner file (`[proxies.NAME]`).
//! Two drivers:
//! - `files` (default; nginx, the seed's consul-template flow): a directory
//!   rendered config goes to, an optional check command (`nginx -t`), and the
//!   reload action, a command or a signal to a container (the seed's
//!   `docker kill -s HUP nginx`). A switch renders, checks and reloads as one
//!   atomic step (`files.rs`).
//! - `haproxy`: a backend's servers are changed in place through HAProxy's
//!   runtime API on its admin socket, without a reload (`haproxy.rs`), so a
//!   switch closes no client connection.
//!
//! A plugin can trigger only these actions. Every switch on one proxy holds
//! the proxy-wide lock, so services sharing a proxy serialize their switches.

mod files;
mod haproxy;

use super::docker::DockerEngine;
use super::template::{GrantedDir, TemplateCap};
use super::{Capability, Grants, RunContext, ValidateContext, denied};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::proxy;
use crate::grants::GrantError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use haproxy::servers_state as haproxy_servers;

/// A proxy as written in the runner file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// `files` (default: rendered config files + check + reload) or `haproxy`
    /// (servers changed through the admin socket, no reload).
    #[serde(default)]
    pub driver: Option<String>,
    /// Where templates render this proxy's config (relative to the runner
    /// file). Required by the `files` driver.
    #[serde(default)]
    pub config_dir: Option<String>,
    /// Command that validates the config without applying it, e.g. `["nginx", "-t", ...]`.
    #[serde(default)]
    pub check: Option<Vec<String>>,
    /// Command that reloads the proxy, e.g. `["nginx", "-s", "reload", ...]`.
    #[serde(default)]
    pub reload: Option<Vec<String>>,
    /// Or: a signal sent to a container, e.g. `{ container = "nginx", signal = "HUP" }`.
    #[serde(default)]
    pub reload_signal: Option<SignalSpec>,
    /// `haproxy` driver: the admin socket (`stats socket PATH level admin`).
    #[serde(default)]
    pub admin_socket: Option<String>,
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

/// How a proxy is switched.
#[derive(Debug, Clone)]
pub enum Driver {
    /// Rendered config files, checked and reloaded.
    Files,
    /// HAProxy's runtime API on this admin socket.
    Haproxy { admin_socket: PathBuf },
}

/// A validated proxy definition.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub name: String,
    pub driver: Driver,
    /// Where its config files are (`files` driver; optional for `haproxy`).
    pub config_dir: Option<GrantedDir>,
    pub check: Option<Vec<String>>,
    pub reload: Option<ReloadAction>,
    pub timeout: Duration,
    /// Commands run here: the runner file's directory, so its relative paths hold.
    pub workdir: PathBuf,
}

/// How to give a proxy its reload (said by every error about it).
const ONE_RELOAD: &str = "give exactly one of `reload = [\"cmd\", ...]` or `reload_signal = { container = \"...\", signal = \"HUP\" }`";

/// Why a `[proxies.NAME]` definition is refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxySpecError {
    /// A path could not be made absolute or opened.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("config_dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}", ONE_RELOAD)]
    Reload,
    #[error(
        "the files driver needs `config_dir = \"DIR\"` (where the upstream files are rendered)"
    )]
    FilesNeedConfigDir,
    #[error(
        "the haproxy driver needs `admin_socket = \"PATH\"` (HAProxy's `stats socket PATH level admin`)"
    )]
    HaproxyNeedsSocket,
    #[error(
        "driver \"{0}\" is not known; use \"files\" (config files + check + reload, e.g. nginx) or \"haproxy\" (runtime API, no reload)"
    )]
    UnknownDriver(String),
    #[error("`check` is an empty command")]
    EmptyCheck,
    #[error("timeout \"{value}\": {source}")]
    Timeout {
        value: String,
        source: humantime::DurationError,
    },
}

impl ProxySpec {
    /// Validate; relative paths are taken from `base` (the runner file's
    /// directory). A config directory that does not exist yet (a later step
    /// creates it) is a warning, returned beside the config.
    pub fn validate(
        &self,
        name: &str,
        base: &Path,
    ) -> Result<(ProxyConfig, Option<String>), ProxySpecError> {
        let mut warning = None;
        let config_dir = match &self.config_dir {
            None => None,
            Some(dir) => {
                let dir = base.join(dir);
                if dir.is_dir() {
                    Some(GrantedDir::new(&dir)?)
                } else if dir.exists() {
                    return Err(ProxySpecError::NotADirectory(dir));
                } else {
                    warning = Some(format!(
                        "config_dir {} does not exist yet; it must exist before a stage switches or renders into it",
                        dir.display()
                    ));
                    Some(GrantedDir::not_yet_created(&dir)?)
                }
            }
        };
        let reload = match (&self.reload, &self.reload_signal) {
            (Some(cmd), None) if !cmd.is_empty() => Some(ReloadAction::Command(cmd.clone())),
            (None, Some(s)) => Some(ReloadAction::Signal {
                container: s.container.clone(),
                signal: s.signal.clone(),
            }),
            (None, None) => None,
            _ => return Err(ProxySpecError::Reload),
        };
        let driver = match self.driver.as_deref().unwrap_or("files") {
            "files" => {
                if config_dir.is_none() {
                    return Err(ProxySpecError::FilesNeedConfigDir);
                }
                if reload.is_none() {
                    return Err(ProxySpecError::Reload);
                }
                Driver::Files
            }
            "haproxy" => {
                let socket = self
                    .admin_socket
                    .as_ref()
                    .ok_or(ProxySpecError::HaproxyNeedsSocket)?;
                Driver::Haproxy {
                    admin_socket: std::path::absolute(base.join(socket))?,
                }
            }
            other => return Err(ProxySpecError::UnknownDriver(other.to_string())),
        };
        if self.check.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(ProxySpecError::EmptyCheck);
        }
        let timeout = match &self.timeout {
            Some(t) => humantime::parse_duration(t).map_err(|source| ProxySpecError::Timeout {
                value: t.clone(),
                source,
            })?,
            None => Duration::from_secs(10),
        };
        Ok((
            ProxyConfig {
                name: name.to_string(),
                driver,
                config_dir,
                check: self.check.clone(),
                reload,
                timeout,
                workdir: std::path::absolute(base)?,
            },
            warning,
        ))
    }
}

pub struct ProxyCap {
    proxies: Vec<ProxyConfig>,
    docker: DockerEngine,
    /// Renders upstream files with this plugin's template grants.
    templates: TemplateCap,
}

list_grant_spec! {
    /// Allow reloading proxy NAME, defined as [proxies.NAME] in the runner file.
    ProxyGrantSpec { proxies: "allow-proxy", "NAME" }
}

impl Capability for ProxyCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/proxy"];
    const FLAG_HINT: &'static str = "--allow-proxy NAME";
    const TOML_HINT: &'static str = "grants.proxies = [\"NAME\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("proxy.wit", include_str!("../../../../wit/proxy.wit"))];
    type Spec = ProxyGrantSpec;
    type Grant = Vec<ProxyConfig>;

    /// Every granted proxy must be defined in the runner file.
    fn validate(
        spec: &ProxyGrantSpec,
        cx: &mut ValidateContext<'_>,
    ) -> Result<Vec<ProxyConfig>, GrantError> {
        spec.proxies
            .iter()
            .map(|name| {
                cx.proxies
                    .iter()
                    .find(|p| &p.name == name)
                    .cloned()
                    .ok_or_else(|| GrantError::Undefined {
                        kind: "proxy",
                        table: "proxies",
                        name: name.clone(),
                    })
            })
            .collect()
    }

    fn granted(grants: &Grants) -> bool {
        !grants.proxy.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            proxies: cx.grants.proxy.clone(),
            docker: cx.host.docker.clone(),
            templates: TemplateCap::prepare(cx),
        }
    }

    link_interfaces!(proxy);
}

impl ProxyCap {
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

/// Run the check command, if any: (passed, output).
pub(crate) async fn check(config: &ProxyConfig) -> Result<(bool, String), PluginError> {
    match &config.check {
        Some(check) => run_command(&config.name, check, &config.workdir, config.timeout).await,
        None => Ok((true, String::new())),
    }
}

/// Run the reload action; its output.
pub(crate) async fn reload_now(
    config: &ProxyConfig,
    docker: &DockerEngine,
) -> Result<String, PluginError> {
    let proxy = &config.name;
    match &config.reload {
        None => Err(PluginError::InvalidConfig(format!(
            "proxy {proxy} has no reload action (its driver switches without a reload)"
        ))),
        Some(ReloadAction::Command(argv)) => {
            let (ok, text) = run_command(proxy, argv, &config.workdir, config.timeout).await?;
            if !ok {
                return Err(PluginError::Failed(format!(
                    "proxy {proxy}: reload failed: {text}"
                )));
            }
            Ok(text)
        }
        Some(ReloadAction::Signal { container, signal }) => {
            // Connected first: the timeout bounds the signal, not the connection.
            docker
                .connect()
                .await
                .map_err(|e| e.to_plugin_error("kill", container))?;
            tokio::time::timeout(config.timeout, docker.kill(container, signal))
                .await
                .map_err(|_| {
                    PluginError::Timeout(format!("proxy {proxy}: signalling {container} timed out"))
                })?
                .map_err(|e| {
                    PluginError::Failed(format!(
                        "proxy {proxy}: sending {signal} to {container}: {e}"
                    ))
                })?;
            Ok(String::new())
        }
    }
}

/// Most servers one switch may name, and the longest address.
const MAX_SERVERS: usize = 256;
const MAX_ADDRESS: usize = 253;

/// Servers a plugin names are addresses, never config syntax: an IP or a
/// host name, and a non-zero port.
fn check_servers(proxy: &str, servers: &[proxy::Server]) -> Result<(), PluginError> {
    if servers.is_empty() {
        return Err(PluginError::InvalidConfig(format!(
            "proxy {proxy}: a switch needs at least one server"
        )));
    }
    if servers.len() > MAX_SERVERS {
        return Err(PluginError::InvalidConfig(format!(
            "proxy {proxy}: {} servers, at most {MAX_SERVERS}",
            servers.len()
        )));
    }
    for s in servers {
        let ok = !s.address.is_empty()
            && s.address.len() <= MAX_ADDRESS
            && (s.address.parse::<std::net::IpAddr>().is_ok()
                || s.address
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        if !ok || s.port == 0 {
            return Err(PluginError::InvalidConfig(format!(
                "proxy {proxy}: server \"{}:{}\" is not an address and port",
                s.address
                    .chars()
                    .take(80)
                    .collect::<String>()
                    .escape_debug(),
                s.port
            )));
        }
    }
    Ok(())
}

impl proxy::Host for ProxyCap {
    async fn config_dir(&mut self, proxy: String) -> Result<String, PluginError> {
        match &self.get(&proxy)?.config_dir {
            Some(dir) => Ok(dir.path().display().to_string()),
            None => Err(PluginError::InvalidConfig(format!(
                "proxy {proxy} has no config_dir (driver haproxy switches through its admin socket)"
            ))),
        }
    }

    async fn reload(&mut self, proxy: String) -> Result<proxy::ReloadReport, PluginError> {
        let config = self.get(&proxy)?.clone();
        let started = Instant::now();
        let (ok, mut output) = check(&config).await?;
        if !ok {
            return Err(PluginError::Failed(format!(
                "proxy {proxy}: the new config failed its check; the running proxy was not reloaded. {output}"
            )));
        }
        output.push_str(&reload_now(&config, &self.docker).await?);
        tracing::info!("proxy {proxy} reloaded in {:.1?}", started.elapsed());
        Ok(proxy::ReloadReport {
            output,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn switch(
        &mut self,
        proxy: String,
        upstream: proxy::Upstream,
    ) -> Result<proxy::SwitchReport, PluginError> {
        let config = self.get(&proxy)?.clone();
        check_servers(&proxy, &upstream.servers)?;
        let started = Instant::now();
        let (output, reloaded) = match &config.driver {
            Driver::Files => (
                files::switch(&config, &self.templates, &self.docker, upstream).await?,
                true,
            ),
            Driver::Haproxy { admin_socket } => (
                haproxy::switch(&config, admin_socket, &upstream).await?,
                false,
            ),
        };
        tracing::info!(
            "proxy {proxy} switched in {:.1?}{}",
            started.elapsed(),
            if reloaded { " (reloaded)" } else { "" }
        );
        Ok(proxy::SwitchReport {
            output,
            duration_ms: started.elapsed().as_millis() as u64,
            reloaded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(reload: Option<Vec<&str>>, signal: bool) -> ProxySpec {
        ProxySpec {
            config_dir: Some(".".into()),
            reload: reload.map(|r| r.into_iter().map(String::from).collect()),
            reload_signal: signal.then(|| SignalSpec {
                container: "nginx".into(),
                signal: "HUP".into(),
            }),
            ..Default::default()
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
                .to_string()
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
            driver: Driver::Files,
            config_dir: Some(GrantedDir::new(dir.path()).unwrap()),
            check: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo bad config >&2; exit 1".into(),
            ]),
            reload: Some(ReloadAction::Command(vec![
                "touch".into(),
                marker.display().to_string(),
            ])),
            timeout: Duration::from_secs(10),
            workdir: dir.path().to_path_buf(),
        };
        let mut cap = ProxyCap {
            proxies: vec![config],
            docker: DockerEngine::new(None),
            templates: crate::caps::testing::TestHost::new().prepare(&Grants::default()),
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

    #[tokio::test]
    async fn a_signal_reload_goes_through_the_container_engine() {
        use crate::caps::docker::fake::FakeEngine;
        use crate::caps::docker::{ContainerEngine, ContainerSpec, Restart};
        let engine = std::sync::Arc::new(FakeEngine::new());
        engine.add_image("nginx:alpine");
        let id = engine
            .create(ContainerSpec {
                name: "nginx".into(),
                image: "nginx:alpine".into(),
                env: vec![],
                command: None,
                labels: Default::default(),
                ports: vec![],
                publish_ip: "127.0.0.1".into(),
                memory_bytes: 1 << 30,
                pids: 1024,
                nano_cpus: None,
                restart: Restart::No,
                hosts: vec![],
            })
            .await
            .unwrap();
        engine.start(&id).await.unwrap();
        let config = |container: &str| ProxyConfig {
            name: "p".into(),
            driver: Driver::Files,
            config_dir: None,
            check: None,
            reload: Some(ReloadAction::Signal {
                container: container.into(),
                signal: "HUP".into(),
            }),
            timeout: Duration::from_secs(10),
            workdir: std::env::temp_dir(),
        };
        let docker = DockerEngine::from_engine(engine.clone());
        reload_now(&config("nginx"), &docker).await.unwrap();
        assert!(engine.calls().contains(&"kill nginx".to_string()));
        assert!(
            engine.containers()[0].running,
            "HUP reloads, it does not stop"
        );
        let Err(PluginError::Failed(msg)) = reload_now(&config("ghost"), &docker).await else {
            panic!("signalled a missing container")
        };
        assert_eq!(
            msg,
            "proxy p: sending HUP to ghost: No such container: ghost"
        );
    }
}
