//! `docker`: the Docker engine through bollard, limited to granted container
//! names and images, plus the registration service.
//!
//! Registration is third-party, as Registrator does it (seed 002): when a
//! plugin runs a container for a service, the host registers the instance
//! (127.0.0.1 and the published host port) and deregisters it when the
//! container is stopped or removed through runner. [`reconcile`] at the start
//! of a run drops instances whose container stopped behind runner's back.

use super::globs::{Globs, glob_matcher};
use super::template::GrantedDir;
use super::{
    Capability, GrantSpec, Grants, RunContext, ValidateContext, bounded, denied, registry_error,
};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::docker;
use crate::grants::{GrantError, InvalidGrant};
use crate::names;
use crate::registry::{Instance, Registry};
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
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};

/// Labels runner puts on every container it runs. Every `runner.` label is
/// the host's alone: a plugin that could set them could register its
/// container under any service.
pub const LABEL_MANAGED: &str = "runner.managed";
const RESERVED_LABELS: &str = "runner.";
/// Most container log text `logs` returns (the newest part is kept).
const MAX_LOGS_BYTES: usize = 4 * 1024 * 1024;
/// Most build output kept for a failed build's error.
const MAX_BUILD_LOG: usize = 64 * 1024;
const LABEL_SERVICE: &str = "runner.service";
const LABEL_SERVICE_PORT: &str = "runner.service-port";
const LABEL_TAGS: &str = "runner.service-tags";
/// The identity of the registry whose catalog the container belongs to
/// ([`Registry::identity`]): `reconcile` adopts only its own registry's
/// containers, so registries sharing an engine keep apart.
pub const LABEL_REGISTRY: &str = "runner.registry";
/// Catalog ids of instances runner registered: `runner:<container>:<port>`.
pub(crate) const REGISTRATION_PREFIX: &str = "runner:";

/// What a plugin may do with the engine.
#[derive(Debug, Clone, Default)]
pub struct DockerGrant {
    /// Container names (`--allow-container`).
    pub containers: Globs,
    /// Image references (`--allow-image`).
    pub images: Globs,
    /// `--allow-build`: build images from granted directories.
    pub build: bool,
    /// `--allow-push`: push granted images.
    pub push: bool,
    /// Applied to every container the plugin runs.
    pub limits: ContainerLimits,
}

/// Resource limits of a container a plugin runs. A plugin's container is
/// the plugin's reach onto the host: without limits, one image could take
/// the machine's memory or fork without bound, so the defaults are finite
/// and the operator raises them per grant (`--container-limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLimits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// CPUs (in billionths), `None`: no CPU limit (contention, not exhaustion).
    pub nano_cpus: Option<u64>,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1024 * 1024 * 1024,
            pids: 1024,
            nano_cpus: None,
        }
    }
}

impl ContainerLimits {
    /// `memory=4GiB,pids=4096,cpus=1.5`; unnamed limits keep their defaults.
    pub fn parse(text: &str) -> Result<Self, InvalidGrant> {
        let mut limits = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("\"{part}\" is not KEY=VALUE (memory=, pids=, cpus=)"))?;
            match key.trim() {
                "memory" => {
                    let size: bytesize::ByteSize = value
                        .trim()
                        .parse()
                        .map_err(|e| format!("memory \"{value}\": {e}"))?;
                    if size.as_u64() < 6 * 1024 * 1024 {
                        return Err("memory must be at least 6MiB (Docker's minimum)".into());
                    }
                    limits.memory_bytes = size.as_u64();
                }
                "pids" => {
                    limits.pids = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("pids \"{value}\" is not a positive number"))?;
                }
                "cpus" => {
                    let cpus: f64 = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|c: &f64| c.is_finite() && *c > 0.0 && *c <= 1024.0)
                        .ok_or_else(|| format!("cpus \"{value}\" is not a number of CPUs"))?;
                    limits.nano_cpus = Some((cpus * 1e9) as u64);
                }
                other => {
                    return Err(format!(
                        "unknown container limit \"{other}\" (memory=, pids=, cpus=)"
                    )
                    .into());
                }
            }
        }
        Ok(limits)
    }
}

impl DockerGrant {
    pub fn parse(
        containers: &[String],
        images: &[String],
        build: bool,
        push: bool,
    ) -> Result<Self, InvalidGrant> {
        Ok(Self {
            containers: Globs::parse(containers)?,
            images: Globs::parse(images)?,
            build,
            push,
            limits: ContainerLimits::default(),
        })
    }

    pub fn with_limits(mut self, limits: ContainerLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.images.is_empty() && !self.build && !self.push
    }

    /// Validate the name (Docker's rule), then check the grant.
    fn container(&self, op: &str, name: &str) -> Result<(), PluginError> {
        names::container_name(name).map_err(|e| e.to_plugin_error("docker"))?;
        if self.containers.matches(name) {
            Ok(())
        } else {
            Err(denied(
                "docker",
                format_args!("{op} of container \"{name}\" is not granted"),
                format_args!("--allow-container {name}"),
            ))
        }
    }

    /// Validate the reference (the distribution grammar), then check the grant.
    fn image(&self, op: &str, image: &str) -> Result<(), PluginError> {
        names::image_reference(image).map_err(|e| e.to_plugin_error("docker"))?;
        if self.images.matches(image) {
            Ok(())
        } else {
            Err(denied(
                "docker",
                format_args!("{op} of image \"{image}\" is not granted"),
                format_args!("--allow-image {image}"),
            ))
        }
    }
}

/// The engine connection, shared by every run in the process and opened on
/// first use (a stage that never calls Docker never needs an engine).
#[derive(Clone)]
pub struct DockerEngine {
    host: String,
    client: Arc<tokio::sync::OnceCell<Docker>>,
}

impl DockerEngine {
    /// `host` overrides `DOCKER_HOST`; the default is the local unix socket.
    pub fn new(host: Option<String>) -> Self {
        let host = host
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        Self {
            host,
            client: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Connect and agree on an API version the engine speaks (engines older
    /// than bollard's default version refuse it otherwise).
    pub async fn client(&self) -> Result<&Docker, PluginError> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |e: bollard::errors::Error| {
                    PluginError::Unavailable(format!(
                        "docker: cannot reach the engine at {}: {e}; start Docker or point DOCKER_HOST / --docker-host at it",
                        self.host
                    ))
                };
                let docker = Docker::connect_with_host(&self.host).map_err(unreachable)?;
                docker.negotiate_version().await.map_err(unreachable)
            })
            .await
    }
}

/// A Docker error as the plugin sees it: typed, with the engine's message.
fn engine_error(op: &str, target: &str, host: &str, e: bollard::errors::Error) -> PluginError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code: 404,
            message,
        } => PluginError::NotFound(format!("docker {op} {target}: {message}")),
        E::DockerResponseServerError {
            status_code: 409,
            message,
        } => PluginError::Conflict(format!("docker {op} {target}: {message}")),
        E::DockerResponseServerError {
            status_code,
            message,
        } => PluginError::Failed(format!(
            "docker {op} {target}: {message} (engine status {status_code})"
        )),
        E::DockerStreamError { error } => {
            PluginError::Failed(format!("docker {op} {target}: {error}"))
        }
        E::RequestTimeoutError => PluginError::Timeout(format!(
            "docker {op} {target}: the engine did not answer in time"
        )),
        E::JsonDataError { .. } | E::JsonSerdeError { .. } | E::StrParseError { .. } => {
            PluginError::Failed(format!(
                "docker {op} {target}: unexpected answer from the engine: {e}"
            ))
        }
        other => PluginError::Unavailable(format!(
            "docker {op} {target}: cannot reach the engine at {host}: {other}"
        )),
    }
}

pub struct DockerCap {
    grant: DockerGrant,
    /// `--allow-service`: a container may be registered only under a granted service.
    services: super::catalog::ServiceGrant,
    /// Where build contexts may come from (`--allow-dir`).
    build_dirs: Vec<GrantedDir>,
    /// The same directories with the paths the plugin sees them at.
    guest_dirs: Vec<super::dirs::DirGrant>,
    engine: DockerEngine,
    registry: Arc<dyn Registry>,
    timeout: Duration,
}

impl DockerCap {
    /// Image operations (pull, build, push) move megabytes: allow them longer.
    fn image_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(600))
    }

    fn err(&self, op: &str, target: &str) -> impl Fn(bollard::errors::Error) -> PluginError {
        let (op, target, host) = (
            op.to_string(),
            target.to_string(),
            self.engine.host().to_string(),
        );
        move |e| engine_error(&op, &target, &host, e)
    }

    async fn inspect_raw(&self, name: &str) -> Result<ContainerInspectResponse, PluginError> {
        let docker = self.engine.client().await?;
        docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(self.err("inspect", name))
    }

    /// The container named exactly `name`, resolved once; every operation
    /// then acts on its ID. The engine also resolves IDs and ID prefixes, so
    /// a granted-looking name could otherwise reach another container.
    /// A container run for a service may be acted on only with that service
    /// granted (`--allow-service`): acting on it changes the catalog.
    async fn resolve(&self, op: &str, name: &str) -> Result<Resolved, PluginError> {
        let info = self.inspect_raw(name).await?;
        if container_name(&info) != name {
            return Err(PluginError::NotFound(format!(
                "docker {op} {name}: no container has that name"
            )));
        }
        if let Some(service) = registered_service(&info)
            && !self.services.allows(&service)
        {
            return Err(denied(
                "docker",
                format_args!(
                    "{op} of container \"{name}\" changes the catalog of service \"{service}\", which is not granted"
                ),
                format_args!("--allow-service {service}"),
            ));
        }
        let id = info.id.clone().unwrap_or_default();
        if id.is_empty() {
            return Err(PluginError::Failed(format!(
                "docker {op} {name}: the engine gave no container ID"
            )));
        }
        Ok(Resolved { id, info })
    }

    /// Register the container if it was run for a service.
    async fn register(&self, info: &ContainerInspectResponse) -> Result<(), PluginError> {
        if let Some(instance) = registration(info) {
            // Only what this stage could register itself.
            self.services.check("register", &instance.name)?;
            self.registry
                .register(&instance)
                .await
                .map_err(|e| registry_error("docker registration", e))?;
            tracing::info!(
                "registered {} as {} at {}:{}",
                container_name(info),
                instance.name,
                instance.address,
                instance.port
            );
        }
        Ok(())
    }

    async fn deregister(&self, info: &ContainerInspectResponse) -> Result<(), PluginError> {
        let labels = labels(info);
        if let (Some(service), Some(port)) =
            (registered_service(info), labels.get(LABEL_SERVICE_PORT))
        {
            let id = registration_id(&container_name(info), port);
            if self
                .registry
                .deregister(&service, &id)
                .await
                .map_err(|e| registry_error("docker registration", e))?
            {
                tracing::info!("deregistered {id} from {service}");
            }
        }
        Ok(())
    }

    /// The ID of the local image named exactly `reference`. The engine also
    /// takes IDs and ID prefixes where a name is expected (`3f2a`,
    /// `sha256:…`), which a pattern such as `*` would match; only a name the
    /// image really carries counts.
    async fn resolve_image(&self, op: &str, reference: &str) -> Result<String, PluginError> {
        let docker = self.engine.client().await?;
        let image = docker
            .inspect_image(reference)
            .await
            .map_err(self.err(op, reference))?;
        let named = if reference.contains('@') {
            image
                .repo_digests
                .unwrap_or_default()
                .iter()
                .any(|d| d == reference)
        } else {
            let last = reference.rsplit('/').next().unwrap_or(reference);
            let tagged = if last.contains(':') {
                reference.to_string()
            } else {
                format!("{reference}:latest")
            };
            image.repo_tags.unwrap_or_default().contains(&tagged)
        };
        match image.id {
            Some(id) if named => Ok(id),
            _ => Err(PluginError::NotFound(format!(
                "docker {op} {reference}: no local image is named exactly that (image IDs are not accepted)"
            ))),
        }
    }

    /// The packed context, and the text of its Dockerfile (`dockerfile`
    /// inside it) when there is one, read through the same handle.
    async fn build_context(
        &self,
        context_dir: &str,
        dockerfile: &str,
    ) -> Result<(Vec<u8>, Option<String>), PluginError> {
        // The plugin may name the context as it sees it (`/build/app` for a
        // `build:/build` grant) or as a host path.
        let host = self
            .guest_dirs
            .iter()
            .find_map(|d| d.host_path(context_dir))
            .unwrap_or_else(|| context_dir.into());
        let dir =
            super::template::open_dir_inside(&self.build_dirs, &host).map_err(|e| match e {
                super::template::FileError::NotGranted { .. } => denied(
                    "docker",
                    format_args!(
                        "build context \"{context_dir}\" is outside the granted directories"
                    ),
                    format_args!("--allow-dir {context_dir}"),
                ),
                super::template::FileError::NotFound(_) => {
                    PluginError::NotFound(format!("docker build: context \"{context_dir}\": {e}"))
                }
                e => PluginError::Denied(format!("docker build: context \"{context_dir}\": {e}")),
            })?;
        let dockerfile = dockerfile.to_string();
        tokio::task::spawn_blocking(move || {
            let text = super::build_context::read_dockerfile(&dir, &dockerfile)?;
            let packed = super::build_context::pack(&dir, super::build_context::MAX_CONTEXT_BYTES)?;
            Ok::<_, super::build_context::ContextError>((packed, text))
        })
        .await
        .map_err(|e| PluginError::Failed(format!("docker build: packing the context: {e}")))?
        .map_err(|e| {
            PluginError::Failed(format!(
                "docker build: packing the context {context_dir}: {e}"
            ))
        })
    }
}

/// Past `max` bytes, keep the newest half of `text` behind `marker`: engine
/// output (logs, build steps) can be any size, and its end is what matters.
fn keep_tail(text: &mut String, max: usize, marker: &str) {
    if text.len() <= max {
        return;
    }
    let mut cut = text.len() - max / 2;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.replace_range(..cut, marker);
}

/// A container resolved by exact name: act on `id`.
struct Resolved {
    id: String,
    info: ContainerInspectResponse,
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

fn container_name(info: &ContainerInspectResponse) -> String {
    info.name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

fn labels(info: &ContainerInspectResponse) -> HashMap<String, String> {
    info.config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

/// The service a container was run for, by runner (`runner.managed`).
fn registered_service(info: &ContainerInspectResponse) -> Option<String> {
    let labels = labels(info);
    if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
        return None;
    }
    labels.get(LABEL_SERVICE).filter(|s| !s.is_empty()).cloned()
}

fn registration_id(container: &str, container_port: &str) -> String {
    format!("{REGISTRATION_PREFIX}{container}:{container_port}")
}

fn published_ports(info: &ContainerInspectResponse) -> Vec<docker::PortBinding> {
    let mut ports: Vec<docker::PortBinding> = info
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
                Some(docker::PortBinding {
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

/// The catalog instance for a running container that was run for a service.
fn registration(info: &ContainerInspectResponse) -> Option<Instance> {
    let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let labels = labels(info);
    // Runner sets all its labels on the containers it runs, so an image's own
    // `runner.*` labels never count.
    let service = registered_service(info)?;
    let port = labels.get(LABEL_SERVICE_PORT)?;
    crate::names::service_name(&service).ok()?;
    let container_port: u16 = port.parse().ok()?;
    let binding = published_ports(info)
        .into_iter()
        .find(|p| p.container_port == container_port)?;
    running.then(|| Instance {
        id: registration_id(&container_name(info), port),
        name: service.clone(),
        address: "127.0.0.1".into(),
        port: binding.host_port,
        tags: labels
            .get(LABEL_TAGS)
            .map(|t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        healthy: true,
    })
}

fn to_wit(info: &ContainerInspectResponse) -> docker::Container {
    let state = info.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let mut labels: Vec<(String, String)> = labels(info).into_iter().collect();
    labels.sort();
    docker::Container {
        id: info.id.clone().unwrap_or_default(),
        name: container_name(info),
        image: info
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        state: state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        running,
        exit_code: if running {
            None
        } else {
            state.and_then(|s| s.exit_code)
        },
        health: state
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        ports: published_ports(info),
        labels,
    }
}

/// One container as `runner status` shows it.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub image: String,
    /// Published `127.0.0.1:PORT`s.
    pub ports: Vec<String>,
}

/// Containers (running or not) whose name starts with `prefix`, by name.
pub async fn containers_named(
    engine: &DockerEngine,
    prefix: &str,
) -> Result<Vec<ContainerStatus>, PluginError> {
    let docker = engine.client().await?;
    let filters = HashMap::from([("name".to_string(), vec![format!("^/{prefix}")])]);
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| engine_error("list", "containers", engine.host(), e))?;
    let mut list: Vec<ContainerStatus> = summaries
        .into_iter()
        .map(|c| ContainerStatus {
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
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

/// Whose catalog a running service container belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Labelled with this registry's identity.
    This,
    /// Labelled with another registry's (another state directory or Consul
    /// on the same engine).
    Other,
    /// No registry label: run by a runner older than the label.
    Unlabelled,
}

fn owner(info: &ContainerInspectResponse, identity: &str) -> Owner {
    match labels(info).get(LABEL_REGISTRY).map(String::as_str) {
        None | Some("") => Owner::Unlabelled,
        Some(label) if label == identity => Owner::This,
        Some(_) => Owner::Other,
    }
}

/// Whether `registered` says what `current` (from the engine) says: service,
/// address, port and tags. Health is the backend's (Consul's checks), not
/// the container's.
fn same_registration(registered: &Instance, current: &Instance) -> bool {
    let sorted = |tags: &[String]| {
        let mut tags = tags.to_vec();
        tags.sort();
        tags
    };
    registered.name == current.name
        && registered.address == current.address
        && registered.port == current.port
        && sorted(&registered.tags) == sorted(&current.tags)
}

/// What [`reconcile`] changed in the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Instances dropped: their container no longer runs.
    pub dropped: usize,
    /// Running containers of this registry registered anew, or registered
    /// again because their address, port or tags changed.
    pub registered: usize,
}

/// Make the catalog true to the engine, whatever registration writes failed
/// or what was stopped behind runner's back: drop the instances runner
/// registered (`runner:` IDs) whose container no longer runs, and register
/// the running service containers of this registry (labelled with its
/// [`Registry::identity`]) that the catalog lacks or holds with a stale
/// port. Containers of other registries on the same engine are never
/// registered here; nor are unlabelled ones (run by older runners), though
/// an instance of either already in this catalog stays while its container
/// runs, as before the label (a moved state directory keeps its catalog).
pub async fn reconcile(
    engine: &DockerEngine,
    registry: &dyn Registry,
) -> Result<Reconciled, PluginError> {
    let docker = engine.client().await?;
    let reg = |e| registry_error("docker reconcile", e);
    let err = |e| engine_error("list", "containers", engine.host(), e);
    let identity = registry.identity();
    // Every running service container on the engine, by registration ID.
    let mut running: HashMap<String, (Instance, Owner)> = HashMap::new();
    let filters = HashMap::from([("label".to_string(), vec![LABEL_SERVICE.to_string()])]);
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(err)?;
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        let info = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await;
        if let Ok(info) = info
            && let Some(instance) = registration(&info)
        {
            running.insert(instance.id.clone(), (instance, owner(&info, &identity)));
        }
    }
    let mut done = Reconciled::default();
    // Instances moved to another service in this pass: met again under the
    // new service (listed later), they are already settled.
    let mut moved: HashSet<String> = HashSet::new();
    for service in registry.services().await.map_err(reg)? {
        for instance in registry.instances(&service).await.map_err(reg)? {
            if !instance.id.starts_with(REGISTRATION_PREFIX) || moved.contains(&instance.id) {
                continue;
            }
            match running.remove(&instance.id) {
                None => {
                    registry
                        .deregister(&service, &instance.id)
                        .await
                        .map_err(reg)?;
                    tracing::info!(
                        "reconcile: {} no longer runs; deregistered from {service}",
                        instance.id
                    );
                    done.dropped += 1;
                }
                Some((current, Owner::This)) if !same_registration(&instance, &current) => {
                    // The container was restarted (a new port) or its name
                    // reused for another service since it was registered.
                    if current.name != service {
                        registry
                            .deregister(&service, &instance.id)
                            .await
                            .map_err(reg)?;
                        moved.insert(instance.id.clone());
                    }
                    registry.register(&current).await.map_err(reg)?;
                    tracing::info!(
                        "reconcile: {} in {service} was registered at {}:{}; registered it at {}:{} in {}",
                        instance.id,
                        instance.address,
                        instance.port,
                        current.address,
                        current.port,
                        current.name
                    );
                    done.registered += 1;
                }
                Some(_) => {}
            }
        }
    }
    for (instance, owner) in running.into_values() {
        match owner {
            Owner::This => {
                registry.register(&instance).await.map_err(reg)?;
                tracing::info!(
                    "reconcile: registered running {} in {}",
                    instance.id,
                    instance.name
                );
                done.registered += 1;
            }
            Owner::Other => tracing::debug!(
                "reconcile: {} belongs to another registry's catalog; not registered",
                instance.id
            ),
            Owner::Unlabelled => tracing::debug!(
                "reconcile: {} has no {LABEL_REGISTRY} label (an older runner ran it); not registered",
                instance.id
            ),
        }
    }
    Ok(done)
}

impl docker::Host for DockerCap {
    async fn pull(&mut self, image: String) -> Result<(), PluginError> {
        self.grant.image("pull", &image)?;
        let docker = self.engine.client().await?;
        let err = self.err("pull", &image);
        bounded("docker.pull", self.image_timeout(), async {
            let mut progress = docker.create_image(
                Some(CreateImageOptions {
                    from_image: Some(image.clone()),
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(step) = progress.next().await {
                step.map_err(&err)?;
            }
            Ok(())
        })
        .await
    }

    async fn build(
        &mut self,
        context_dir: String,
        dockerfile: Option<String>,
        tag: String,
        build_args: Vec<(String, String)>,
    ) -> Result<String, PluginError> {
        if !self.grant.build {
            return Err(denied(
                "docker",
                "building images is not granted",
                "--allow-build",
            ));
        }
        self.grant.image("build", &tag)?;
        if let Some(file) = &dockerfile {
            let path = std::path::Path::new(file);
            let inside = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if file.is_empty() || !inside {
                return Err(PluginError::InvalidConfig(format!(
                    "docker build: dockerfile \"{file}\" must be a relative path inside the context, without `..`"
                )));
            }
        }
        let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
        let (context, text) = self.build_context(&context_dir, &dockerfile).await?;
        // A build copies its base images into the new tag: each must be
        // granted as if the plugin ran or tagged it.
        if let Some(text) = text {
            let bases = super::build_context::base_images(&text).map_err(|e| {
                PluginError::InvalidConfig(format!("docker build {tag}: {dockerfile}: {e}"))
            })?;
            for base in bases {
                self.grant.image("build from", &base)?;
            }
        }
        let docker = self.engine.client().await?;
        let err = self.err("build", &tag);
        bounded("docker.build", self.image_timeout(), async {
            let memory = i32::try_from(self.grant.limits.memory_bytes).unwrap_or(i32::MAX);
            let options = BuildImageOptions {
                dockerfile,
                // RUN steps get the container limits (the API field is 32-bit).
                memory: Some(memory),
                memswap: Some(memory),
                t: Some(tag.clone()),
                rm: true,
                buildargs: Some(build_args.into_iter().collect()),
                labels: Some(HashMap::from([(
                    LABEL_MANAGED.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            };
            let mut output =
                docker.build_image(options, None, Some(bollard::body_full(context.into())));
            let mut log = String::new();
            while let Some(step) = output.next().await {
                let step = step.map_err(&err)?;
                if let Some(detail) = step.error_detail.and_then(|d| d.message) {
                    return Err(PluginError::Failed(format!(
                        "docker build {tag}: {detail}\n{log}"
                    )));
                }
                if let Some(line) = step.stream {
                    log.push_str(&line);
                    // Only the tail explains a failure; the host keeps a bounded one.
                    keep_tail(&mut log, MAX_BUILD_LOG, "[…]\n");
                }
            }
            let image = docker.inspect_image(&tag).await.map_err(&err)?;
            Ok(image.id.unwrap_or_default())
        })
        .await
    }

    async fn tag(&mut self, source: String, target: String) -> Result<(), PluginError> {
        self.grant.image("tag", &source)?;
        self.grant.image("tag", &target)?;
        let (repo, tag) = match target.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((r, t)) => (r.to_string(), t.to_string()),
            None => (target.clone(), "latest".to_string()),
        };
        let docker = self.engine.client().await?;
        bounded("docker.tag", self.timeout, async {
            let source_id = self.resolve_image("tag", &source).await?;
            docker
                .tag_image(
                    &source_id,
                    Some(TagImageOptions {
                        repo: Some(repo),
                        tag: Some(tag),
                    }),
                )
                .await
                .map_err(self.err("tag", &source))
        })
        .await
    }

    async fn push(&mut self, image: String) -> Result<(), PluginError> {
        if !self.grant.push {
            return Err(denied(
                "docker",
                "pushing images is not granted",
                "--allow-push",
            ));
        }
        self.grant.image("push", &image)?;
        let (name, tag) = match image.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((n, t)) => (n.to_string(), Some(t.to_string())),
            None => (image.clone(), None),
        };
        let docker = self.engine.client().await?;
        let err = self.err("push", &image);
        bounded("docker.push", self.image_timeout(), async {
            let mut progress = docker.push_image(
                &name,
                Some(PushImageOptions {
                    tag,
                    ..Default::default()
                }),
                None,
            );
            while let Some(step) = progress.next().await {
                let step = step.map_err(&err)?;
                if let Some(message) = step.error_detail.and_then(|d| d.message) {
                    return Err(PluginError::Failed(format!(
                        "docker push {image}: {message}"
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    async fn run(&mut self, spec: docker::RunSpec) -> Result<docker::Container, PluginError> {
        self.grant.container("run", &spec.name)?;
        self.grant.image("run", &spec.image)?;
        if let Some(service) = &spec.service {
            self.services.check("register", service)?;
            if spec.ports.is_empty() {
                return Err(PluginError::InvalidConfig(format!(
                    "docker run {}: registering it as service \"{service}\" needs a published port in `ports`",
                    spec.name
                )));
            }
        }
        if let Some((key, _)) = spec
            .labels
            .iter()
            .find(|(k, _)| k.to_ascii_lowercase().starts_with(RESERVED_LABELS))
        {
            return Err(PluginError::InvalidConfig(format!(
                "docker run {}: label \"{key}\" is reserved: labels starting with \"{RESERVED_LABELS}\" are set by runner alone \
                 (registration follows them); register through `service` instead",
                spec.name
            )));
        }
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        // Always set, empty when there is no service: the engine merges the
        // image's own labels into the container's, and an image carrying
        // `runner.service=payments` must not register anything.
        let (service, port) = match (&spec.service, spec.ports.first()) {
            (Some(service), Some(port)) => (service.clone(), port.to_string()),
            _ => (String::new(), String::new()),
        };
        labels.insert(LABEL_SERVICE.into(), service);
        labels.insert(LABEL_SERVICE_PORT.into(), port);
        labels.insert(LABEL_TAGS.into(), spec.tags.join(","));
        labels.insert(LABEL_REGISTRY.into(), self.registry.identity());
        // Published on loopback only, on a random host port each.
        let port_bindings = spec
            .ports
            .iter()
            .map(|p| {
                (
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        let restart = match spec.restart {
            docker::RestartPolicy::No => RestartPolicyNameEnum::NO,
            docker::RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            docker::RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
            docker::RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: spec.command.clone(),
            labels: Some(labels),
            exposed_ports: Some(spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            host_config: Some(HostConfig {
                port_bindings: Some(port_bindings),
                memory: i64::try_from(self.grant.limits.memory_bytes).ok(),
                // No swap beyond the memory limit.
                memory_swap: i64::try_from(self.grant.limits.memory_bytes).ok(),
                pids_limit: Some(i64::from(self.grant.limits.pids)),
                nano_cpus: self
                    .grant
                    .limits
                    .nano_cpus
                    .and_then(|n| i64::try_from(n).ok()),
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = self.engine.client().await?;
        let name = spec.name.clone();
        let info = bounded("docker.run", self.timeout, async {
            self.resolve_image("run", &spec.image).await?;
            let created = docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    body,
                )
                .await
                .map_err(self.err("create", &name))?;
            docker
                .start_container(&created.id, None::<StartContainerOptions>)
                .await
                .map_err(self.err("start", &name))?;
            self.inspect_raw(&created.id).await
        })
        .await?;
        self.register(&info).await?;
        Ok(to_wit(&info))
    }

    async fn start(&mut self, name: String) -> Result<docker::Container, PluginError> {
        self.grant.container("start", &name)?;
        let docker = self.engine.client().await?;
        let info = bounded("docker.start", self.timeout, async {
            let target = self.resolve("start", &name).await?;
            already_done(
                docker
                    .start_container(&target.id, None::<StartContainerOptions>)
                    .await,
            )
            .map_err(self.err("start", &name))?;
            self.inspect_raw(&target.id).await
        })
        .await?;
        self.register(&info).await?;
        Ok(to_wit(&info))
    }

    async fn stop(&mut self, name: String, timeout_secs: u32) -> Result<(), PluginError> {
        self.grant.container("stop", &name)?;
        let docker = self.engine.client().await?;
        let limit = self
            .timeout
            .max(Duration::from_secs(u64::from(timeout_secs) + 10));
        let info = bounded("docker.stop", limit, async {
            let target = self.resolve("stop", &name).await?;
            let options = StopContainerOptions {
                t: Some(i32::try_from(timeout_secs).unwrap_or(i32::MAX)),
                signal: None,
            };
            already_done(docker.stop_container(&target.id, Some(options)).await)
                .map_err(self.err("stop", &name))?;
            self.inspect_raw(&target.id).await
        })
        .await?;
        self.deregister(&info).await
    }

    async fn remove(&mut self, name: String, force: bool) -> Result<(), PluginError> {
        self.grant.container("remove", &name)?;
        let docker = self.engine.client().await?;
        let info = bounded("docker.remove", self.timeout, async {
            let Resolved { id, info } = self.resolve("remove", &name).await?;
            docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(self.err("remove", &name))?;
            Ok(info)
        })
        .await?;
        self.deregister(&info).await
    }

    async fn kill(&mut self, name: String, signal: String) -> Result<(), PluginError> {
        self.grant.container("kill", &name)?;
        let Resolved { id, .. } = self.resolve("kill", &name).await?;
        let docker = self.engine.client().await?;
        bounded("docker.kill", self.timeout, async {
            docker
                .kill_container(
                    &id,
                    Some(KillContainerOptions {
                        signal: signal.clone(),
                    }),
                )
                .await
                .map_err(self.err("kill", &name))
        })
        .await?;
        // A signal that ends the container ends its registration too.
        let info = self.inspect_raw(&id).await?;
        if !info.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            self.deregister(&info).await?;
        }
        Ok(())
    }

    async fn inspect(&mut self, name: String) -> Result<docker::Container, PluginError> {
        self.grant.container("inspect", &name)?;
        bounded("docker.inspect", self.timeout, async {
            self.resolve("inspect", &name)
                .await
                .map(|r| to_wit(&r.info))
        })
        .await
    }

    async fn list(
        &mut self,
        name_pattern: Option<String>,
        label: Option<String>,
    ) -> Result<Vec<docker::Container>, PluginError> {
        let pattern = name_pattern
            .as_deref()
            .map(glob_matcher)
            .transpose()
            .map_err(|e| PluginError::InvalidConfig(format!("docker list: {e}")))?;
        let docker = self.engine.client().await?;
        bounded("docker.list", self.timeout, async {
            let filters = label.map(|l| HashMap::from([("label".to_string(), vec![l])]));
            let summaries = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters,
                    ..Default::default()
                }))
                .await
                .map_err(self.err("list", "containers"))?;
            let mut containers = Vec::new();
            for summary in summaries {
                let Some(name) = summary
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                else {
                    continue;
                };
                let wanted = pattern.as_ref().is_none_or(|p| p.is_match(&name));
                let Some(id) = summary.id.as_deref() else {
                    continue;
                };
                if wanted && self.grant.containers.matches(&name) {
                    match self.inspect_raw(id).await {
                        Ok(info) => containers.push(to_wit(&info)),
                        // Removed between the list and the inspect.
                        Err(PluginError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(containers)
        })
        .await
    }

    async fn wait(&mut self, name: String, timeout_secs: u32) -> Result<i64, PluginError> {
        self.grant.container("wait", &name)?;
        let docker = self.engine.client().await?;
        let limit = Duration::from_secs(u64::from(timeout_secs));
        let waited = tokio::time::timeout(limit, async {
            let Resolved { id, .. } = self.resolve("wait", &name).await?;
            let mut stream = docker.wait_container(&id, None::<WaitContainerOptions>);
            match stream.next().await {
                Some(Ok(exit)) => Ok(exit.status_code),
                // bollard reports a non-zero exit as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(self.err("wait", &name)(e)),
                None => Err(PluginError::Failed(format!(
                    "docker: waiting for {name} ended without an exit code"
                ))),
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(PluginError::Timeout(format!(
                "docker: {name} still runs after {}",
                humantime::format_duration(limit)
            )))
        })
    }

    async fn logs(&mut self, name: String, tail: u32) -> Result<String, PluginError> {
        self.grant.container("logs", &name)?;
        let docker = self.engine.client().await?;
        bounded("docker.logs", self.timeout, async {
            let Resolved { id, .. } = self.resolve("logs", &name).await?;
            let mut stream = docker.logs(
                &id,
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            );
            let mut text = String::new();
            while let Some(chunk) = stream.next().await {
                text.push_str(&chunk.map_err(self.err("logs", &name))?.to_string());
                // A container can log gigabytes; the host holds a bounded tail.
                keep_tail(
                    &mut text,
                    MAX_LOGS_BYTES,
                    "[… earlier log lines truncated]\n",
                );
            }
            Ok(text)
        })
        .await
    }
}

/// The Docker grants as written.
#[derive(clap::Args, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerSpec {
    /// Allow running and managing containers whose names match PATTERN (`books-ms-*`).
    #[arg(long = "allow-container", value_name = "PATTERN")]
    #[serde(default)]
    pub containers: Vec<String>,

    /// Allow images matching PATTERN (`books-ms:*`) to be pulled, run, tagged.
    #[arg(long = "allow-image", value_name = "PATTERN")]
    #[serde(default)]
    pub images: Vec<String>,

    /// Allow building images (the context must be inside an --allow-dir).
    #[arg(long = "allow-build")]
    #[serde(default)]
    pub build: bool,

    /// Allow pushing granted images.
    #[arg(long = "allow-push")]
    #[serde(default)]
    pub push: bool,

    /// Limits of the containers the plugin runs, raising or lowering the
    /// defaults (memory=1GiB,pids=1024, no CPU limit): `memory=4GiB,pids=4096,cpus=2`.
    #[arg(long = "container-limits", value_name = "LIMITS")]
    #[serde(default)]
    pub container_limits: Option<String>,
}

impl GrantSpec for DockerSpec {
    fn merge(&mut self, other: Self) {
        self.containers.extend(other.containers);
        self.images.extend(other.images);
        self.build |= other.build;
        self.push |= other.push;
        if other.container_limits.is_some() {
            self.container_limits = other.container_limits;
        }
    }
}

impl Capability for DockerCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/docker"];
    const FLAG_HINT: &'static str =
        "--allow-container PATTERN, --allow-image PATTERN (--allow-build, --allow-push)";
    const TOML_HINT: &'static str =
        "grants.containers = [\"NAME-*\"] and/or grants.images = [\"IMAGE:*\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("docker.wit", include_str!("../../../wit/docker.wit"))];
    type Spec = DockerSpec;
    type Grant = DockerGrant;

    fn validate(spec: &DockerSpec, _: &mut ValidateContext<'_>) -> Result<DockerGrant, GrantError> {
        let limits = match spec.container_limits.as_deref() {
            Some(text) => ContainerLimits::parse(text)
                .map_err(|r| GrantError::invalid("--container-limits", text, r))?,
            None => ContainerLimits::default(),
        };
        DockerGrant::parse(&spec.containers, &spec.images, spec.build, spec.push)
            .map(|g| g.with_limits(limits))
            .map_err(|r| {
                GrantError::invalid(
                    "--allow-container/--allow-image",
                    [spec.containers.clone(), spec.images.clone()]
                        .concat()
                        .join(","),
                    r,
                )
            })
    }

    fn granted(grants: &Grants) -> bool {
        !grants.docker.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        let grants = cx.grants;
        Self {
            grant: grants.docker.clone(),
            services: grants.catalog.clone(),
            build_dirs: grants.dirs.granted(),
            guest_dirs: grants.dirs.0.clone(),
            engine: cx.host.docker.clone(),
            registry: cx.host.registry.clone(),
            timeout: cx.limits.host_call_timeout,
        }
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        docker::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_deny_ungranted_names_images_and_builds() {
        let g = DockerGrant::parse(&["books-ms-*".into()], &["books-ms:*".into()], false, false)
            .unwrap();
        assert!(g.container("run", "books-ms-blue").is_ok());
        let Err(PluginError::Denied(msg)) = g.container("run", "payments") else {
            panic!()
        };
        assert!(msg.contains("--allow-container payments"), "{msg}");
        assert!(g.image("run", "books-ms:v2").is_ok());
        assert!(g.image("run", "evil:latest").is_err());
        assert!(DockerGrant::default().is_empty());
    }

    #[test]
    fn container_limits_parse_with_finite_defaults() {
        let d = ContainerLimits::default();
        assert_eq!((d.memory_bytes, d.pids, d.nano_cpus), (1 << 30, 1024, None));
        let l = ContainerLimits::parse("memory=4GiB, pids=4096,cpus=1.5").unwrap();
        assert_eq!(l.memory_bytes, 4 << 30);
        assert_eq!(l.pids, 4096);
        assert_eq!(l.nano_cpus, Some(1_500_000_000));
        for bad in ["memory=1KiB", "pids=0", "cpus=-1", "swap=1", "memory"] {
            assert!(ContainerLimits::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ownership_follows_the_registry_label() {
        use bollard::models::ContainerConfig;
        let with = |label: Option<&str>| ContainerInspectResponse {
            config: Some(ContainerConfig {
                labels: Some(
                    label
                        .map(|l| HashMap::from([(LABEL_REGISTRY.to_string(), l.to_string())]))
                        .unwrap_or_default(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let me = "embedded:0123456789abcdef";
        assert_eq!(owner(&with(Some(me)), me), Owner::This);
        assert_eq!(
            owner(&with(Some("embedded:fedcba9876543210")), me),
            Owner::Other
        );
        assert_eq!(owner(&with(Some("")), me), Owner::Unlabelled);
        assert_eq!(owner(&with(None), me), Owner::Unlabelled);
    }

    #[test]
    fn a_registration_is_stale_when_its_port_or_tags_change_not_its_health() {
        let registered = Instance {
            id: "runner:books-ms-blue:8080".into(),
            name: "books-ms".into(),
            address: "127.0.0.1".into(),
            port: 32769,
            tags: vec!["v1".into(), "blue".into()],
            healthy: false,
        };
        let current = Instance {
            tags: vec!["blue".into(), "v1".into()],
            healthy: true,
            ..registered.clone()
        };
        assert!(same_registration(&registered, &current));
        for changed in [
            Instance {
                port: 32770,
                ..current.clone()
            },
            Instance {
                tags: vec!["v2".into()],
                ..current.clone()
            },
            Instance {
                name: "payments".into(),
                ..current.clone()
            },
        ] {
            assert!(!same_registration(&registered, &changed), "{changed:?}");
        }
    }

    #[test]
    fn engine_errors_are_typed() {
        let e = |status_code| bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "msg".into(),
        };
        assert!(matches!(
            engine_error("inspect", "x", "h", e(404)),
            PluginError::NotFound(_)
        ));
        assert!(matches!(
            engine_error("create", "x", "h", e(409)),
            PluginError::Conflict(_)
        ));
        assert!(matches!(
            engine_error("create", "x", "h", e(500)),
            PluginError::Failed(_)
        ));
        assert!(matches!(
            engine_error(
                "ping",
                "x",
                "h",
                bollard::errors::Error::RequestTimeoutError
            ),
            PluginError::Timeout(_)
        ));
    }
}
