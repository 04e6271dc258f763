//! What a plugin may do with the engine: the `docker` grant.

use crate::bindings::PluginError;
use crate::caps::denied;
use crate::caps::globs::Globs;
use crate::grants::InvalidGrant;
use crate::names;

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
    /// The runner file's hosts it may place on and act on (`--allow-docker-host`).
    pub hosts: Globs,
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
            hosts: Globs::default(),
        })
    }

    pub fn with_hosts(mut self, hosts: Globs) -> Self {
        self.hosts = hosts;
        self
    }

    /// Validate the host's name, then check the grant.
    pub(crate) fn host(&self, op: &str, host: &str) -> Result<(), PluginError> {
        names::host_name(host).map_err(|e| e.to_plugin_error("docker"))?;
        if self.hosts.matches(host) {
            Ok(())
        } else {
            Err(denied(
                "docker",
                format_args!("{op} on host \"{host}\" is not granted"),
                format_args!("--allow-docker-host {host}"),
            ))
        }
    }

    pub fn with_limits(mut self, limits: ContainerLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.images.is_empty() && !self.build && !self.push
    }

    /// Validate the name (Docker's rule), then check the grant.
    pub(crate) fn container(&self, op: &str, name: &str) -> Result<(), PluginError> {
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

    /// Validate a Swarm service's name (Swarm's rule), then check it against
    /// the container patterns: a service is the containers its tasks run.
    pub(crate) fn swarm_service(&self, op: &str, name: &str) -> Result<(), PluginError> {
        names::swarm_service_name(name).map_err(|e| e.to_plugin_error("swarm"))?;
        if self.containers.matches(name) {
            Ok(())
        } else {
            Err(denied(
                "swarm",
                format_args!("{op} of service \"{name}\" is not granted"),
                format_args!("--allow-container {name}"),
            ))
        }
    }

    /// Validate the reference (the distribution grammar), then check the grant.
    pub(crate) fn image(&self, op: &str, image: &str) -> Result<(), PluginError> {
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
}
