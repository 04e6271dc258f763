//! The container engine as the host uses it: a trait in runner's own small
//! types, so the WIT impl, registration, `status`, `reconcile` and the
//! proxy's signal reload never see an engine client's types. `bollard.rs`
//! implements it for one Docker engine, `fleet.rs` for several named hosts
//! (each one such engine).

use super::registration::AddressPolicy;
use crate::bindings::PluginError;
use std::collections::HashMap;
use std::sync::Arc;

/// What an engine call failed with, by kind; [`EngineError::to_plugin_error`]
/// is the one place it becomes the WIT error a plugin sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No such container or image (the engine's message).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the engine's state (a name in use).
    #[error("{0}")]
    Conflict(String),
    /// The first connection failed: no engine answers at `endpoint`.
    #[error(
        "cannot reach the engine at {endpoint}: {reason}; start Docker or point DOCKER_HOST / --docker-host at it"
    )]
    Unreachable { endpoint: String, reason: String },
    /// A request could not be carried to or from the engine.
    #[error("cannot reach the engine at {endpoint}: {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// The engine did not answer in time.
    #[error("the engine did not answer in time")]
    Timeout,
    /// The engine refused or failed the request (its message).
    #[error("{0}")]
    Failed(String),
    /// A Swarm call to an engine that is not a Swarm manager.
    #[error(
        "the engine at {endpoint} is not a Swarm manager; point runner at a manager (docker swarm init, or a manager's address), or deploy plain containers"
    )]
    NotSwarmManager { endpoint: String },
    /// One host of a fleet failed with `source`.
    #[error("host {host}: {source}")]
    OnHost {
        host: String,
        source: Box<EngineError>,
    },
}

impl EngineError {
    /// The WIT error for `docker {op} {target}` failing with this.
    pub fn to_plugin_error(&self, op: &str, target: &str) -> PluginError {
        self.to_plugin_error_of("docker", op, target)
    }

    /// As [`to_plugin_error`](Self::to_plugin_error), for a call of
    /// `interface` (`swarm` calls reach the same engine); an empty `target`
    /// (a call of no one thing, `swarm nodes`) is left out.
    pub fn to_plugin_error_of(&self, interface: &str, op: &str, target: &str) -> PluginError {
        let call = match target {
            "" => format!("{interface} {op}"),
            target => format!("{interface} {op} {target}"),
        };
        if let Self::OnHost { source, .. } = self {
            // The kind is the host's error's; the message names the host.
            let message = format!("{call}: {self}");
            return match source.to_plugin_error_of(interface, op, target) {
                PluginError::NotFound(_) => PluginError::NotFound(message),
                PluginError::Conflict(_) => PluginError::Conflict(message),
                PluginError::Unavailable(_) => PluginError::Unavailable(message),
                PluginError::Timeout(_) => PluginError::Timeout(message),
                _ => PluginError::Failed(message),
            };
        }
        let message = format!("{call}: {self}");
        match self {
            // Not tied to one request: the engine is not there at all.
            Self::Unreachable { .. } => PluginError::Unavailable(format!("{interface}: {self}")),
            Self::NotFound(_) => PluginError::NotFound(message),
            Self::Conflict(_) => PluginError::Conflict(message),
            Self::Unavailable { .. } | Self::NotSwarmManager { .. } => {
                PluginError::Unavailable(message)
            }
            Self::Timeout => PluginError::Timeout(message),
            Self::Failed(_) | Self::OnHost { .. } => PluginError::Failed(message),
        }
    }
}

/// A host port a container port is published on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    /// The container's TCP port (0 when the engine named none).
    pub container_port: u16,
    pub host_ip: String,
    pub host_port: u16,
}

/// A named host of a fleet: where containers can be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The host's name in the runner file (`prod-1`).
    pub name: String,
    /// Where the proxy and the stage reach the ports its containers publish.
    pub address: String,
}

/// One container as the engine describes it (inspect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The fleet host it runs on; empty for a lone engine.
    pub host: String,
    pub id: String,
    /// Without the engine's leading `/`.
    pub name: String,
    /// The image the container was created from, as it was named.
    pub image: String,
    /// The engine's state word (`created`, `running`, `exited`, …).
    pub state: String,
    pub running: bool,
    /// The last exit code the engine recorded.
    pub exit_code: Option<i64>,
    /// The health check's status word, when the engine reports one.
    pub health: Option<String>,
    pub labels: HashMap<String, String>,
    /// Sorted by container port, then host port.
    pub ports: Vec<PublishedPort>,
}

/// One container as a listing shows it (no inspect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSummary {
    /// The fleet host it runs on; empty for a lone engine.
    pub host: String,
    pub id: String,
    /// The first name, without the leading `/`; empty when it has none.
    pub name: String,
    pub image: String,
    pub state: String,
    /// Published ports as `IP:PORT`.
    pub ports: Vec<String>,
    /// The value of its `runner.service` label ("" when none): a fleet
    /// spreads a service's replicas by it.
    pub service: String,
}

/// Which containers [`ContainerEngine::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Stopped containers too, not only running ones.
    pub all: bool,
    /// Only containers carrying this label (`KEY` or `KEY=VALUE`).
    pub label: Option<String>,
    /// Only containers whose name starts with this.
    pub name_prefix: Option<String>,
}

/// A local image's names and ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: Option<String>,
    /// `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// `repo@sha256:…` names.
    pub repo_digests: Vec<String>,
}

/// When the engine restarts a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    OnFailure,
    UnlessStopped,
    Always,
}

/// A container to create. Every field is already validated and granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    pub labels: HashMap<String, String>,
    /// TCP container ports, each published on `publish_ip` at a host port
    /// the engine picks (a fleet publishes on the chosen host's own IP).
    pub ports: Vec<u16>,
    pub publish_ip: String,
    pub memory_bytes: u64,
    pub pids: u32,
    /// CPUs in billionths; `None`: no CPU limit.
    pub nano_cpus: Option<u64>,
    pub restart: Restart,
    /// The fleet hosts it may be placed on (granted, and the one a stage
    /// pinned it to when it did), in the runner file's order; empty for a
    /// lone engine.
    pub hosts: Vec<String>,
}

/// An image to build from a packed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub tag: String,
    pub build_args: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    /// Memory (and memory + swap) of every RUN step.
    pub memory_bytes: u64,
}

/// A container engine. Calls take container IDs where the host resolved the
/// exact name first (`resolve` in `host.rs`); the engine itself would also
/// accept names and ID prefixes.
#[async_trait::async_trait]
pub trait ContainerEngine: Send + Sync {
    /// Where the engine listens, for messages (and so an HTTP grant cannot
    /// reach it).
    fn host(&self) -> &str;

    /// The address the instances of this engine's containers are
    /// registered at (an engine on several hosts answers its host's). The
    /// capability publishes ports on 127.0.0.1 today: an engine that
    /// registers another address must also publish where it registers
    /// (and only there), or the catalog names an address nothing serves.
    fn address_policy(&self) -> AddressPolicy {
        AddressPolicy::Loopback
    }

    /// The named hosts containers are placed on; empty for a lone engine
    /// (which needs no host grant: the operator named it).
    fn hosts(&self) -> Vec<HostInfo> {
        Vec::new()
    }

    /// Each named host's own engine, for a report per host (`status`);
    /// empty for a lone engine.
    fn members(&self) -> Vec<(HostInfo, Arc<dyn ContainerEngine>)> {
        Vec::new()
    }

    /// The engine as a Swarm manager, when it can be one (a lone Docker
    /// engine; whether it is a manager shows at the first call). `None`
    /// for a fleet of named hosts: a Swarm schedules its own nodes.
    fn swarm(&self) -> Option<&dyn super::swarm::SwarmEngine> {
        None
    }

    /// Connect now if not connected yet; a no-op afterwards. Callers
    /// connect before bounding a call by the host-call timeout.
    async fn connect(&self) -> Result<(), EngineError>;

    /// Pull `image` from its registry.
    async fn pull(&self, image: &str) -> Result<(), EngineError>;

    /// Build and tag an image from a tar `context`. A failed step is
    /// [`EngineError::Failed`] with the engine's message and the tail of the
    /// build output, bounded while it is read (the Dockerfile is the plugin's).
    async fn build(&self, spec: BuildSpec, context: Vec<u8>) -> Result<(), EngineError>;

    /// Give the image `source` (an ID) the name `repo:tag`.
    async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError>;

    /// Push `name` (`tag`, or every tag when `None`) to its registry.
    async fn push(&self, name: &str, tag: Option<&str>) -> Result<(), EngineError>;

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError>;

    /// Create a container; its ID.
    async fn create(&self, spec: ContainerSpec) -> Result<String, EngineError>;

    /// Start a container; success when it already runs.
    async fn start(&self, id: &str) -> Result<(), EngineError>;

    /// Stop a container, killing it after `timeout_secs`; success when it
    /// is already stopped.
    async fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError>;

    /// Remove a container and its anonymous volumes.
    async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError>;

    /// Send `signal` (`HUP`, `SIGTERM`, …) to a container.
    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError>;

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError>;

    async fn list(&self, filter: ListFilter) -> Result<Vec<ContainerSummary>, EngineError>;

    /// Wait until the container stops; its exit code, or `None` when the
    /// engine ended the wait without one.
    async fn wait(&self, id: &str) -> Result<Option<i64>, EngineError>;

    /// The last `tail` lines of the container's stdout and stderr, at most
    /// `max_bytes` of them (the newest part is kept). An engine must hold
    /// to `max_bytes` while reading, not after: a container's output is
    /// plugin-controlled, and this bound is what keeps host memory bounded.
    async fn logs(&self, id: &str, tail: u32, max_bytes: usize) -> Result<String, EngineError>;
}

/// The engine every run in the process shares: a cheap handle around any
/// [`ContainerEngine`], Docker's through bollard unless built
/// [`DockerEngine::from_engine`]. It dereferences to the trait.
#[derive(Clone)]
pub struct DockerEngine {
    engine: Arc<dyn ContainerEngine>,
}

impl DockerEngine {
    /// The Docker engine at `host` (default: `DOCKER_HOST`, then the local
    /// socket), connected on first use; TLS as `DOCKER_TLS_VERIFY` and
    /// `DOCKER_CERT_PATH` say, as for the docker CLI.
    pub fn new(host: Option<String>) -> Self {
        Self::from_engine(Arc::new(super::bollard::BollardEngine::from_docker_env(
            host,
        )))
    }

    pub fn from_engine(engine: Arc<dyn ContainerEngine>) -> Self {
        Self { engine }
    }
}

impl std::ops::Deref for DockerEngine {
    type Target = dyn ContainerEngine;

    fn deref(&self) -> &Self::Target {
        &*self.engine
    }
}

/// Past `max` bytes, keep the newest half of `text` behind `marker`: engine
/// output (logs, build steps) can be any size, and its end is what matters.
pub fn keep_tail(text: &mut String, max: usize, marker: &str) {
    if text.len() <= max {
        return;
    }
    let mut cut = text.len() - max / 2;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.replace_range(..cut, marker);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_typed_plugin_errors() {
        let e = EngineError::NotFound("No such container: x".into());
        assert!(matches!(
            e.to_plugin_error("inspect", "x"),
            PluginError::NotFound(m) if m == "docker inspect x: No such container: x"
        ));
        assert!(matches!(
            EngineError::Conflict("in use".into()).to_plugin_error("create", "x"),
            PluginError::Conflict(_)
        ));
        assert!(matches!(
            EngineError::Failed("m (engine status 500)".into()).to_plugin_error("create", "x"),
            PluginError::Failed(_)
        ));
        assert!(matches!(
            EngineError::Timeout.to_plugin_error("ping", "x"),
            PluginError::Timeout(m) if m == "docker ping x: the engine did not answer in time"
        ));
        let unreachable = EngineError::Unreachable {
            endpoint: "unix:///nowhere".into(),
            reason: "no such file".into(),
        };
        let PluginError::Unavailable(msg) = unreachable.to_plugin_error("run", "x") else {
            panic!()
        };
        assert!(
            msg.starts_with("docker: cannot reach the engine at unix:///nowhere: no such file;"),
            "{msg}"
        );
    }

    #[test]
    fn keep_tail_keeps_the_newest_part_on_a_char_boundary() {
        let mut text = "é".repeat(100);
        keep_tail(&mut text, 50, "[…]");
        assert!(text.starts_with("[…]") && text.len() < 60, "{text}");
        let mut short = "abc".to_string();
        keep_tail(&mut short, 50, "[…]");
        assert_eq!(short, "abc");
    }
}
