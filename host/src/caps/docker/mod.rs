//! `docker`: a container engine, limited to granted container names and
//! images, plus the registration service.
//!
//! - `grant.rs`: what a plugin may do ([`DockerGrant`], [`ContainerLimits`]);
//! - `host.rs`: the WIT impl: the grant check, then the engine;
//! - `engine.rs`: the [`ContainerEngine`] trait in runner's own types, its
//!   [`EngineError`] (mapped to the WIT error in one place) and the shared
//!   [`DockerEngine`] handle;
//! - `bollard.rs`: the Docker engine through bollard (the only bollard user);
//! - `hosts.rs`: a runner file's `[hosts.NAME]`, validated, made a fleet;
//! - `fleet.rs`: several named hosts as one engine (placement, where each
//!   container runs, one image everywhere, bounded calls naming the host);
//! - `registration.rs`: labels, registration and ownership;
//! - `status.rs`: `runner status`'s container list and [`reconcile`];
//! - `build_context.rs`: a build context packed from a granted directory;
//! - `swarm.rs`: Docker Swarm services and tasks ([`SwarmEngine`]), which
//!   `bollard/swarm.rs` implements and `host_swarm.rs` serves as the
//!   `swarm` WIT interface, under the same grants;
//! - `fake.rs`: an in-memory engine for tests.
//!
//! Registration is third-party, as Registrator does it (seed 002): when a
//! plugin runs a container for a service, the host registers the instance
//! (the engine's [`AddressPolicy`], 127.0.0.1 by default, and the published
//! host port) and deregisters it when the container is stopped or removed
//! through runner. [`reconcile`] at the start of a run drops instances whose
//! container stopped behind runner's back.
//!
//! Another engine implements [`ContainerEngine`] in one new file and is
//! handed to [`DockerEngine::from_engine`], as [`FleetEngine`] is.

mod bollard;
mod build_context;
mod engine;
pub mod fake;
mod fleet;
mod grant;
mod host;
mod host_swarm;
mod hosts;
mod registration;
mod spec;
mod status;
mod swarm;
#[cfg(test)]
mod swarm_tests;
#[cfg(test)]
mod tests;

pub use self::bollard::BollardEngine;
pub use engine::{
    BuildSpec, ContainerEngine, ContainerInfo, ContainerSpec, ContainerSummary, DockerEngine,
    EngineError, HostInfo, ImageInfo, ListFilter, PublishedPort, Restart,
};
pub use fleet::{FleetEngine, FleetHost};
pub use grant::{ContainerLimits, DockerGrant};
pub use hosts::{DockerHost, HostSpec, HostSpecError, fleet, validate_hosts};
pub use registration::{AddressPolicy, LABEL_MANAGED, LABEL_REGISTRY};
pub(crate) use registration::{REGISTRATION_PREFIX, is_host_instance_id};
pub use spec::DockerSpec;
pub use status::{
    ContainerStatus, HostContainers, Reconciled, containers_by_host, containers_named, reconcile,
};
pub use swarm::{
    HealthCheck, NodeInfo, ServiceInfo, ServiceSpec, ServiceUpdate, SwarmEngine, TaskInfo,
    UpdateConfig,
};

use super::denied;
use super::template::{FileError, GrantedDir, open_dir_inside};
use crate::bindings::PluginError;
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Most container log text `logs` returns (the newest part is kept).
const MAX_LOGS_BYTES: usize = 4 * 1024 * 1024;

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

/// A container resolved by exact name: act on `id`.
struct Resolved {
    id: String,
    info: ContainerInfo,
}

impl DockerCap {
    /// Image operations (pull, build, push) move megabytes: allow them longer.
    fn image_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(600))
    }

    fn err(op: &str, target: &str) -> impl Fn(EngineError) -> PluginError {
        let (op, target) = (op.to_string(), target.to_string());
        move |e| e.to_plugin_error(&op, &target)
    }

    /// Connect before a call is bounded by the host-call timeout.
    async fn connect(&self, op: &str, target: &str) -> Result<(), PluginError> {
        self.engine.connect().await.map_err(Self::err(op, target))
    }

    async fn inspect_raw(&self, name: &str) -> Result<ContainerInfo, PluginError> {
        self.engine
            .inspect(name)
            .await
            .map_err(Self::err("inspect", name))
    }

    /// The container named exactly `name`, resolved once; every operation
    /// then acts on its ID. The engine also resolves IDs and ID prefixes, so
    /// a granted-looking name could otherwise reach another container.
    /// A container run for a service may be acted on only with that service
    /// granted (`--allow-service`): acting on it changes the catalog.
    async fn resolve(&self, op: &str, name: &str) -> Result<Resolved, PluginError> {
        let info = self.inspect_raw(name).await?;
        if info.name != name {
            return Err(PluginError::NotFound(format!(
                "docker {op} {name}: no container has that name"
            )));
        }
        if let Some(service) = registration::registered_service(&info)
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
        if !info.host.is_empty() && !self.grant.hosts.matches(&info.host) {
            return Err(denied(
                "docker",
                format_args!(
                    "{op} of container \"{name}\" acts on host \"{}\", which is not granted",
                    info.host
                ),
                format_args!("--allow-docker-host {}", info.host),
            ));
        }
        if info.id.is_empty() {
            return Err(PluginError::Failed(format!(
                "docker {op} {name}: the engine gave no container ID"
            )));
        }
        Ok(Resolved {
            id: info.id.clone(),
            info,
        })
    }

    /// The hosts container `name` may be placed on: `pinned` (validated,
    /// known, granted), else every granted host; none for a single engine.
    fn placement(&self, name: &str, pinned: Option<&str>) -> Result<Vec<String>, PluginError> {
        let hosts = self.engine.hosts();
        if let Some(host) = pinned {
            crate::names::host_name(host).map_err(|e| e.to_plugin_error("docker"))?;
            if hosts.is_empty() {
                return Err(PluginError::InvalidConfig(format!(
                    "docker run {name}: placed on host \"{host}\", but runner drives a single engine here \
                     (no [hosts] in the runner file): place it without a host"
                )));
            }
            self.grant.host("run", host)?;
            if !hosts.iter().any(|h| h.name == host) {
                let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                return Err(PluginError::NotFound(format!(
                    "docker run {name}: no host is named \"{host}\" (the hosts are {})",
                    known.join(", ")
                )));
            }
            return Ok(vec![host.to_string()]);
        }
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let granted: Vec<String> = hosts
            .iter()
            .filter(|h| self.grant.hosts.matches(&h.name))
            .map(|h| h.name.clone())
            .collect();
        if granted.is_empty() {
            let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(denied(
                "docker",
                format_args!(
                    "run of container \"{name}\": no host is granted (the hosts are {})",
                    known.join(", ")
                ),
                format_args!("--allow-docker-host {}", known[0]),
            ));
        }
        Ok(granted)
    }

    /// Register the container if it was run for a service.
    async fn register(&self, info: &ContainerInfo) -> Result<(), PluginError> {
        let policy = self.engine.address_policy();
        registration::register(&*self.registry, &self.services, &policy, info).await
    }

    async fn deregister(&self, info: &ContainerInfo) -> Result<(), PluginError> {
        registration::deregister(&*self.registry, info).await
    }

    /// The ID of the local image named exactly `reference`. The engine also
    /// takes IDs and ID prefixes where a name is expected (`3f2a`,
    /// `sha256:…`), which a pattern such as `*` would match; only a name the
    /// image really carries counts.
    async fn resolve_image(&self, op: &str, reference: &str) -> Result<String, PluginError> {
        let image = self
            .engine
            .inspect_image(reference)
            .await
            .map_err(Self::err(op, reference))?;
        let named = if reference.contains('@') {
            image.repo_digests.iter().any(|d| d == reference)
        } else {
            let last = reference.rsplit('/').next().unwrap_or(reference);
            let tagged = if last.contains(':') {
                reference.to_string()
            } else {
                format!("{reference}:latest")
            };
            image.repo_tags.contains(&tagged)
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
        let dir = open_dir_inside(&self.build_dirs, &host).map_err(|e| match e {
            FileError::NotGranted { .. } => denied(
                "docker",
                format_args!("build context \"{context_dir}\" is outside the granted directories"),
                format_args!("--allow-dir {context_dir}"),
            ),
            FileError::NotFound(_) => {
                PluginError::NotFound(format!("docker build: context \"{context_dir}\": {e}"))
            }
            e => PluginError::Denied(format!("docker build: context \"{context_dir}\": {e}")),
        })?;
        let dockerfile = dockerfile.to_string();
        tokio::task::spawn_blocking(move || {
            let text = build_context::read_dockerfile(&dir, &dockerfile)?;
            let packed = build_context::pack(&dir, build_context::MAX_CONTEXT_BYTES)?;
            Ok::<_, build_context::ContextError>((packed, text))
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
