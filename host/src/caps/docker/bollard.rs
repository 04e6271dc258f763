//! [`ContainerEngine`] for one Docker engine, through bollard: the only
//! module that speaks bollard.

use super::engine::{
    BuildSpec, ContainerEngine, ContainerInfo, ContainerSpec, ContainerSummary, EngineError,
    ImageInfo, ListFilter, PublishedPort, Restart, keep_tail,
};
use super::registration::AddressPolicy;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, PushImageOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions, TagImageOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use std::collections::HashMap;

mod swarm;

/// bollard's own default request timeout (`connect_with_host`'s), for TLS too.
const CONNECT_TIMEOUT_SECS: u64 = 120;

/// Most build output kept for a failed build's error.
const MAX_BUILD_LOG: usize = 64 * 1024;

/// The engine connection, opened on first use (a stage that never calls
/// Docker never needs an engine).
pub struct BollardEngine {
    host: String,
    address: AddressPolicy,
    /// A directory holding `ca.pem`, `cert.pem` and `key.pem`, as Docker's
    /// `DOCKER_CERT_PATH`: speak TLS to `tcp://` and verify the engine.
    tls: Option<std::path::PathBuf>,
    client: tokio::sync::OnceCell<Docker>,
}

impl BollardEngine {
    /// `host` overrides `DOCKER_HOST`; the default is the local unix socket.
    pub fn new(host: Option<String>) -> Self {
        let host = host
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        Self {
            host,
            address: AddressPolicy::default(),
            tls: None,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// As [`new`](Self::new), with TLS as the docker CLI takes it from the
    /// environment: `DOCKER_TLS_VERIFY` set to anything non-empty speaks TLS
    /// to a `tcp://` engine and verifies it, with the certificates in
    /// `DOCKER_CERT_PATH` (else `~/.docker`). For the one engine of
    /// `--docker-host`/`DOCKER_HOST`; a runner file's `[hosts.*]` say their own.
    pub fn from_docker_env(host: Option<String>) -> Self {
        let engine = Self::new(host);
        let verify = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
        if !verify || !engine.host.starts_with("tcp://") {
            return engine;
        }
        let cert_path = std::env::var_os("DOCKER_CERT_PATH")
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| dirs::home_dir().map(|home| home.join(".docker")))
            .unwrap_or_else(|| std::path::PathBuf::from(".docker"));
        engine.with_tls(cert_path)
    }

    /// Speak TLS with the client certificate in `cert_dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`) and verify the engine against its `ca.pem`.
    pub fn with_tls(mut self, cert_dir: std::path::PathBuf) -> Self {
        self.tls = Some(cert_dir);
        self
    }

    /// Register this engine's containers at another address than loopback
    /// (an engine whose published ports are reached elsewhere).
    pub fn with_address_policy(mut self, address: AddressPolicy) -> Self {
        self.address = address;
        self
    }

    /// Connect and agree on an API version the engine speaks (engines older
    /// than bollard's default version refuse it otherwise).
    async fn client(&self) -> Result<&Docker, EngineError> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |e: bollard::errors::Error| EngineError::Unreachable {
                    endpoint: self.host.clone(),
                    reason: match &self.tls {
                        // A refused certificate reads as a failed connect:
                        // say which files were used.
                        Some(dir) => format!(
                            "{} (TLS with {}: ca.pem must sign the engine's certificate, cert.pem/key.pem be a client certificate the engine trusts)",
                            crate::error_chain::error_chain(&e),
                            dir.display()
                        ),
                        None => crate::error_chain::error_chain(&e),
                    },
                };
                let docker = match &self.tls {
                    Some(dir) => Docker::connect_with_ssl(
                        &self.host,
                        &dir.join("key.pem"),
                        &dir.join("cert.pem"),
                        &dir.join("ca.pem"),
                        CONNECT_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    ),
                    None => Docker::connect_with_host(&self.host),
                }
                .map_err(unreachable)?;
                docker.negotiate_version().await.map_err(unreachable)
            })
            .await
    }

    fn err(&self) -> impl Fn(bollard::errors::Error) -> EngineError + '_ {
        |e| engine_error(&self.host, e)
    }
}

/// A bollard error by kind, with the engine's message.
fn engine_error(host: &str, e: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code: 404,
            message,
        } => EngineError::NotFound(message),
        E::DockerResponseServerError {
            status_code: 409,
            message,
        } => EngineError::Conflict(message),
        E::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Failed(format!("{message} (engine status {status_code})")),
        E::DockerStreamError { error } => EngineError::Failed(error),
        E::RequestTimeoutError => EngineError::Timeout,
        E::JsonDataError { .. } | E::JsonSerdeError { .. } | E::StrParseError { .. } => {
            EngineError::Failed(format!("unexpected answer from the engine: {e}"))
        }
        other => EngineError::Unavailable {
            endpoint: host.to_string(),
            reason: other.to_string(),
        },
    }
}

/// The engine answers 304 to starting a running or stopping a stopped
/// container: the state asked for already holds, which is success.
fn already_done(result: Result<(), bollard::errors::Error>) -> Result<(), bollard::errors::Error> {
    match result {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        other => other,
    }
}

fn published_ports(info: &ContainerInspectResponse) -> Vec<PublishedPort> {
    let mut ports: Vec<PublishedPort> = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|(key, bindings)| {
            let container_port = key
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            bindings.iter().flatten().filter_map(move |b| {
                Some(PublishedPort {
                    container_port,
                    host_ip: b.host_ip.clone().unwrap_or_default(),
                    host_port: b.host_port.as_deref()?.parse().ok()?,
                })
            })
        })
        .collect();
    ports.sort_by_key(|p| (p.container_port, p.host_port));
    ports
}

fn container_info(info: ContainerInspectResponse) -> ContainerInfo {
    let ports = published_ports(&info);
    let state = info.state.as_ref();
    let config = info.config.as_ref();
    ContainerInfo {
        host: String::new(),
        id: info.id.clone().unwrap_or_default(),
        name: info
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        state: state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        running: state.and_then(|s| s.running).unwrap_or(false),
        exit_code: state.and_then(|s| s.exit_code),
        health: state
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|s| s.to_string()),
        labels: config.and_then(|c| c.labels.clone()).unwrap_or_default(),
        ports,
    }
}

fn create_body(spec: ContainerSpec) -> ContainerCreateBody {
    let port_bindings = spec
        .ports
        .iter()
        .map(|p| {
            (
                format!("{p}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some(spec.publish_ip.clone()),
                    // Empty: the engine picks a free host port.
                    host_port: Some(String::new()),
                }]),
            )
        })
        .collect();
    let restart = match spec.restart {
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
    };
    ContainerCreateBody {
        image: Some(spec.image),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: spec.command,
        labels: Some(spec.labels),
        exposed_ports: Some(spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            memory: i64::try_from(spec.memory_bytes).ok(),
            // No swap beyond the memory limit.
            memory_swap: i64::try_from(spec.memory_bytes).ok(),
            pids_limit: Some(i64::from(spec.pids)),
            nano_cpus: spec.nano_cpus.and_then(|n| i64::try_from(n).ok()),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl ContainerEngine for BollardEngine {
    fn host(&self) -> &str {
        &self.host
    }

    fn swarm(&self) -> Option<&dyn super::swarm::SwarmEngine> {
        Some(self)
    }

    fn address_policy(&self) -> AddressPolicy {
        self.address.clone()
    }

    async fn connect(&self) -> Result<(), EngineError> {
        self.client().await.map(|_| ())
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let mut progress = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(step) = progress.next().await {
            step.map_err(self.err())?;
        }
        Ok(())
    }

    async fn build(&self, spec: BuildSpec, context: Vec<u8>) -> Result<(), EngineError> {
        let docker = self.client().await?;
        // The API field is 32-bit.
        let memory = i32::try_from(spec.memory_bytes).unwrap_or(i32::MAX);
        let options = BuildImageOptions {
            dockerfile: spec.dockerfile,
            memory: Some(memory),
            memswap: Some(memory),
            t: Some(spec.tag),
            rm: true,
            buildargs: Some(spec.build_args.into_iter().collect()),
            labels: Some(spec.labels),
            ..Default::default()
        };
        let mut output =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut log = String::new();
        while let Some(step) = output.next().await {
            let step = step.map_err(self.err())?;
            if let Some(detail) = step.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Failed(format!("{detail}\n{log}")));
            }
            if let Some(line) = step.stream {
                log.push_str(&line);
                // Only the tail explains a failure; the host keeps a bounded one.
                keep_tail(&mut log, MAX_BUILD_LOG, "[…]\n");
            }
        }
        Ok(())
    }

    async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        docker
            .tag_image(
                source,
                Some(TagImageOptions {
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(self.err())
    }

    async fn push(&self, name: &str, tag: Option<&str>) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let mut progress = docker.push_image(
            name,
            Some(PushImageOptions {
                tag: tag.map(str::to_string),
                ..Default::default()
            }),
            None,
        );
        while let Some(step) = progress.next().await {
            let step = step.map_err(self.err())?;
            if let Some(message) = step.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Failed(message));
            }
        }
        Ok(())
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        let docker = self.client().await?;
        let image = docker.inspect_image(reference).await.map_err(self.err())?;
        Ok(ImageInfo {
            id: image.id,
            repo_tags: image.repo_tags.unwrap_or_default(),
            repo_digests: image.repo_digests.unwrap_or_default(),
        })
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, EngineError> {
        let docker = self.client().await?;
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), create_body(spec))
            .await
            .map_err(self.err())?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        already_done(
            docker
                .start_container(id, None::<StartContainerOptions>)
                .await,
        )
        .map_err(self.err())
    }

    async fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let options = StopContainerOptions {
            t: Some(i32::try_from(timeout_secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        already_done(docker.stop_container(id, Some(options)).await).map_err(self.err())
    }

    async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptions {
            force,
            v: true,
            ..Default::default()
        };
        docker
            .remove_container(id, Some(options))
            .await
            .map_err(self.err())
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        docker
            .kill_container(id, Some(options))
            .await
            .map_err(self.err())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let docker = self.client().await?;
        docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map(container_info)
            .map_err(self.err())
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        let docker = self.client().await?;
        let mut filters = HashMap::new();
        if let Some(label) = filter.label {
            filters.insert("label".to_string(), vec![label]);
        }
        if let Some(prefix) = filter.name_prefix {
            // The engine matches names (with their leading `/`) as a regex.
            filters.insert("name".to_string(), vec![format!("^/{prefix}")]);
        }
        let summaries = docker
            .list_containers(Some(ListContainersOptions {
                all: filter.all,
                filters: (!filters.is_empty()).then_some(filters),
                ..Default::default()
            }))
            .await
            .map_err(self.err())?;
        Ok(summaries
            .into_iter()
            .map(|c| ContainerSummary {
                host: String::new(),
                service: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(super::registration::LABEL_SERVICE))
                    .cloned()
                    .unwrap_or_default(),
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                ports: c
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        p.public_port
                            .map(|port| format!("{}:{port}", p.ip.unwrap_or_default()))
                    })
                    .collect(),
            })
            .collect())
    }

    async fn wait(&self, id: &str) -> Result<Option<i64>, EngineError> {
        let docker = self.client().await?;
        let mut stream = docker.wait_container(id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(exit)) => Ok(Some(exit.status_code)),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Ok(Some(code))
            }
            Some(Err(e)) => Err(engine_error(&self.host, e)),
            None => Ok(None),
        }
    }

    async fn logs(&self, id: &str, tail: u32, max_bytes: usize) -> Result<String, EngineError> {
        let docker = self.client().await?;
        let stream = docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        bounded_logs(stream, max_bytes, self.err()).await
    }
}

/// A log stream's text, at most `max_bytes` of its newest part, bounded
/// while read: a container can log gigabytes.
async fn bounded_logs(
    mut stream: impl futures_util::Stream<
        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Unpin,
    max_bytes: usize,
    err: impl Fn(bollard::errors::Error) -> EngineError,
) -> Result<String, EngineError> {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&chunk.map_err(&err)?.to_string());
        keep_tail(&mut text, max_bytes, "[… earlier log lines truncated]\n");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bollard_errors_are_typed() {
        let e = |status_code| bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "msg".into(),
        };
        assert_eq!(
            engine_error("h", e(404)),
            EngineError::NotFound("msg".into())
        );
        assert_eq!(
            engine_error("h", e(409)),
            EngineError::Conflict("msg".into())
        );
        assert_eq!(
            engine_error("h", e(500)),
            EngineError::Failed("msg (engine status 500)".into())
        );
        assert_eq!(
            engine_error("h", bollard::errors::Error::RequestTimeoutError),
            EngineError::Timeout
        );
        assert!(already_done(Err(e(304))).is_ok());
        assert!(already_done(Err(e(404))).is_err());
    }
}
