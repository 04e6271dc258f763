//! The `docker` capability's grant as written (flags and TOML keys), its
//! validation and its per-run preparation.

use super::{ContainerLimits, DockerCap, DockerGrant};
use crate::bindings::runner::plugin::{docker, swarm};
use crate::caps::{Capability, GrantSpec, Grants, RunContext, ValidateContext};
use crate::grants::GrantError;

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

    /// Allow placing and managing containers on the runner file's hosts whose
    /// names match PATTERN (`prod-*`); needed when the runner file names
    /// `[hosts.*]`, and only then.
    #[arg(long = "allow-docker-host", value_name = "PATTERN")]
    #[serde(default)]
    pub docker_hosts: Vec<String>,

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
        self.docker_hosts.extend(other.docker_hosts);
        self.build |= other.build;
        self.push |= other.push;
        if other.container_limits.is_some() {
            self.container_limits = other.container_limits;
        }
    }
}

impl Capability for DockerCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/docker", "runner:plugin/swarm"];
    const FLAG_HINT: &'static str =
        "--allow-container PATTERN, --allow-image PATTERN (--allow-build, --allow-push)";
    const TOML_HINT: &'static str =
        "grants.containers = [\"NAME-*\"] and/or grants.images = [\"IMAGE:*\"]";
    const WIT: &'static [(&'static str, &'static str)] = &[
        ("docker.wit", include_str!("../../../../wit/docker.wit")),
        ("swarm.wit", include_str!("../../../../wit/swarm.wit")),
    ];
    type Spec = DockerSpec;
    type Grant = DockerGrant;

    fn validate(spec: &DockerSpec, _: &mut ValidateContext<'_>) -> Result<DockerGrant, GrantError> {
        let limits = match spec.container_limits.as_deref() {
            Some(text) => ContainerLimits::parse(text)
                .map_err(|r| GrantError::invalid("--container-limits", text, r))?,
            None => ContainerLimits::default(),
        };
        let hosts = crate::caps::globs::Globs::parse(&spec.docker_hosts).map_err(|r| {
            GrantError::invalid("--allow-docker-host", spec.docker_hosts.join(","), r)
        })?;
        DockerGrant::parse(&spec.containers, &spec.images, spec.build, spec.push)
            .map(|g| g.with_limits(limits).with_hosts(hosts))
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

    link_interfaces!(docker, swarm);
}
