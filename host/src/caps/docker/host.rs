//! The `docker` WIT interface: every call checks the grant, then asks the
//! [`ContainerEngine`](super::ContainerEngine).

use super::engine::{BuildSpec, ContainerInfo, ContainerSpec, ListFilter, Restart};
use super::registration::{LABEL_MANAGED, RESERVED_LABELS, runner_labels};
use super::{DockerCap, MAX_LOGS_BYTES, Resolved, build_context};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::docker;
use crate::caps::globs::glob_matcher;
use crate::caps::{bounded, denied};
use std::collections::HashMap;
use std::time::Duration;

/// Where a container's ports are published: loopback only.
const PUBLISH_IP: &str = "127.0.0.1";

fn to_wit(info: &ContainerInfo) -> docker::Container {
    let mut labels: Vec<(String, String)> = info.labels.clone().into_iter().collect();
    labels.sort();
    docker::Container {
        id: info.id.clone(),
        name: info.name.clone(),
        image: info.image.clone(),
        state: info.state.clone(),
        running: info.running,
        exit_code: if info.running { None } else { info.exit_code },
        health: info.health.clone().filter(|s| !s.is_empty() && s != "none"),
        ports: info
            .ports
            .iter()
            .map(|p| docker::PortBinding {
                container_port: p.container_port,
                host_ip: p.host_ip.clone(),
                host_port: p.host_port,
            })
            .collect(),
        labels,
    }
}

/// `repo:tag` split at the tag's colon (not a registry port's); `None`
/// when there is no tag.
fn split_tag(image: &str) -> (String, Option<String>) {
    match image.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((r, t)) => (r.to_string(), Some(t.to_string())),
        None => (image.to_string(), None),
    }
}

/// `one` for each of `items`, side by side, a few at a time; at most
/// [`MAX_RUN_ALL`] (more: one `invalid-config` result, nothing done).
async fn bounded_all<T, O, F, Fut>(op: &str, items: Vec<T>, one: F) -> Vec<Result<O, PluginError>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<O, PluginError>>,
{
    if items.len() > MAX_RUN_ALL {
        let refused = PluginError::InvalidConfig(format!(
            "docker {op}: {} entries, at most {MAX_RUN_ALL} in one call",
            items.len()
        ));
        // One result, not one per entry: a refused call allocates nothing per entry.
        return vec![Err(refused)];
    }
    use futures_util::StreamExt;
    futures_util::stream::iter(items)
        .map(one)
        .buffered(RUN_ALL_AT_ONCE)
        .collect()
        .await
}

/// Most specs one `run-all` takes, and how many of them start at once.
const MAX_RUN_ALL: usize = 32;
const RUN_ALL_AT_ONCE: usize = 8;

impl DockerCap {
    /// `run`: the grant checks, then create (on `pinned`, or a host the
    /// fleet picks), start, inspect and register.
    async fn run_one(
        &self,
        pinned: Option<String>,
        spec: docker::RunSpec,
        images: Option<&HashMap<String, Result<(), PluginError>>>,
    ) -> Result<ContainerInfo, PluginError> {
        self.grant.container("run", &spec.name)?;
        self.grant.image("run", &spec.image)?;
        let hosts = self.placement(&spec.name, pinned.as_deref())?;
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
        let service = spec.service.as_deref().zip(spec.ports.first().copied());
        labels.extend(runner_labels(service, &spec.tags, self.registry.identity()));
        let limits = self.grant.limits;
        let create = ContainerSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            env: spec.env,
            command: spec.command,
            labels,
            // Published on loopback only, on a random host port each.
            ports: spec.ports,
            publish_ip: PUBLISH_IP.to_string(),
            memory_bytes: limits.memory_bytes,
            pids: limits.pids,
            nano_cpus: limits.nano_cpus,
            restart: match spec.restart {
                docker::RestartPolicy::No => Restart::No,
                docker::RestartPolicy::OnFailure => Restart::OnFailure,
                docker::RestartPolicy::UnlessStopped => Restart::UnlessStopped,
                docker::RestartPolicy::Always => Restart::Always,
            },
            hosts,
        };
        let name = spec.name;
        self.connect("run", &name).await?;
        let info = bounded("docker.run", self.timeout, async {
            // Checked once per image for a whole run-all (on every host of a fleet).
            match images.and_then(|checked| checked.get(&spec.image)) {
                Some(checked) => checked.clone()?,
                None => {
                    self.resolve_image("run", &spec.image).await?;
                }
            }
            let id = self
                .engine
                .create(create)
                .await
                .map_err(Self::err("create", &name))?;
            self.engine
                .start(&id)
                .await
                .map_err(Self::err("start", &name))?;
            self.inspect_raw(&id).await
        })
        .await?;
        self.register(&info).await?;
        Ok(info)
    }

    async fn stop_one(&self, name: String, timeout_secs: u32) -> Result<(), PluginError> {
        self.grant.container("stop", &name)?;
        self.connect("stop", &name).await?;
        let limit = self
            .timeout
            .max(Duration::from_secs(u64::from(timeout_secs) + 10));
        let info = bounded("docker.stop", limit, async {
            let target = self.resolve("stop", &name).await?;
            self.engine
                .stop(&target.id, timeout_secs)
                .await
                .map_err(Self::err("stop", &name))?;
            self.inspect_raw(&target.id).await
        })
        .await?;
        self.deregister(&info).await
    }

    async fn remove_one(&self, name: String, force: bool) -> Result<(), PluginError> {
        self.grant.container("remove", &name)?;
        self.connect("remove", &name).await?;
        let info = bounded("docker.remove", self.timeout, async {
            let Resolved { id, info } = self.resolve("remove", &name).await?;
            self.engine
                .remove(&id, force)
                .await
                .map_err(Self::err("remove", &name))?;
            Ok(info)
        })
        .await?;
        self.deregister(&info).await
    }

    /// `run-all` and `run-placed`: side by side, a few at a time, bounded.
    async fn run_many(
        &self,
        op: &str,
        specs: Vec<(Option<String>, docker::RunSpec)>,
    ) -> Vec<Result<ContainerInfo, PluginError>> {
        // Each granted image is checked once, up front; the starts then reach
        // placement in order (spreading is deterministic).
        let mut images: HashMap<String, Result<(), PluginError>> = HashMap::new();
        if specs.len() <= MAX_RUN_ALL {
            for (_, spec) in &specs {
                if images.contains_key(&spec.image) || self.grant.image("run", &spec.image).is_err()
                {
                    continue;
                }
                let checked = match self.connect("run", &spec.name).await {
                    Ok(()) => {
                        bounded("docker.run", self.timeout, async {
                            self.resolve_image("run", &spec.image).await.map(|_| ())
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                images.insert(spec.image.clone(), checked);
            }
        }
        let images = &images;
        bounded_all(op, specs, |(host, spec)| {
            self.run_one(host, spec, Some(images))
        })
        .await
    }
}

impl docker::Host for DockerCap {
    async fn pull(&mut self, image: String) -> Result<(), PluginError> {
        self.grant.image("pull", &image)?;
        self.connect("pull", &image).await?;
        bounded("docker.pull", self.image_timeout(), async {
            self.engine
                .pull(&image)
                .await
                .map_err(Self::err("pull", &image))
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
            let bases = build_context::base_images(&text).map_err(|e| {
                PluginError::InvalidConfig(format!("docker build {tag}: {dockerfile}: {e}"))
            })?;
            for base in bases {
                self.grant.image("build from", &base)?;
            }
        }
        self.connect("build", &tag).await?;
        let err = Self::err("build", &tag);
        bounded("docker.build", self.image_timeout(), async {
            let spec = BuildSpec {
                dockerfile,
                tag: tag.clone(),
                build_args,
                labels: HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]),
                // RUN steps get the container limits.
                memory_bytes: self.grant.limits.memory_bytes,
            };
            self.engine.build(spec, context).await.map_err(&err)?;
            let image = self.engine.inspect_image(&tag).await.map_err(&err)?;
            Ok(image.id.unwrap_or_default())
        })
        .await
    }

    async fn tag(&mut self, source: String, target: String) -> Result<(), PluginError> {
        self.grant.image("tag", &source)?;
        self.grant.image("tag", &target)?;
        let (repo, tag) = split_tag(&target);
        let tag = tag.unwrap_or_else(|| "latest".to_string());
        self.connect("tag", &source).await?;
        bounded("docker.tag", self.timeout, async {
            let source_id = self.resolve_image("tag", &source).await?;
            self.engine
                .tag(&source_id, &repo, &tag)
                .await
                .map_err(Self::err("tag", &source))
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
        let (name, tag) = split_tag(&image);
        self.connect("push", &image).await?;
        bounded("docker.push", self.image_timeout(), async {
            self.engine
                .push(&name, tag.as_deref())
                .await
                .map_err(Self::err("push", &image))
        })
        .await
    }

    async fn run(&mut self, spec: docker::RunSpec) -> Result<docker::Container, PluginError> {
        self.run_one(None, spec, None)
            .await
            .map(|info| to_wit(&info))
    }

    async fn run_all(
        &mut self,
        specs: Vec<docker::RunSpec>,
    ) -> Vec<Result<docker::Container, PluginError>> {
        let specs = specs.into_iter().map(|spec| (None, spec)).collect();
        let started = self.run_many("run-all", specs).await;
        started
            .into_iter()
            .map(|r| r.map(|info| to_wit(&info)))
            .collect()
    }

    async fn hosts(&mut self) -> Result<Vec<docker::HostInfo>, PluginError> {
        Ok(self
            .engine
            .hosts()
            .into_iter()
            .filter(|h| self.grant.hosts.matches(&h.name))
            .map(|h| docker::HostInfo {
                name: h.name,
                address: h.address,
            })
            .collect())
    }

    async fn run_placed(
        &mut self,
        specs: Vec<(Option<String>, docker::RunSpec)>,
    ) -> Vec<Result<docker::Placed, PluginError>> {
        let started = self.run_many("run-placed", specs).await;
        started
            .into_iter()
            .map(|r| {
                r.map(|info| docker::Placed {
                    host: info.host.clone(),
                    container: to_wit(&info),
                })
            })
            .collect()
    }

    async fn start(&mut self, name: String) -> Result<docker::Container, PluginError> {
        self.grant.container("start", &name)?;
        self.connect("start", &name).await?;
        let info = bounded("docker.start", self.timeout, async {
            let target = self.resolve("start", &name).await?;
            self.engine
                .start(&target.id)
                .await
                .map_err(Self::err("start", &name))?;
            self.inspect_raw(&target.id).await
        })
        .await?;
        self.register(&info).await?;
        Ok(to_wit(&info))
    }

    async fn stop(&mut self, name: String, timeout_secs: u32) -> Result<(), PluginError> {
        self.stop_one(name, timeout_secs).await
    }

    async fn remove(&mut self, name: String, force: bool) -> Result<(), PluginError> {
        self.remove_one(name, force).await
    }

    async fn stop_all(
        &mut self,
        names: Vec<String>,
        timeout_secs: u32,
    ) -> Vec<Result<(), PluginError>> {
        let this = &*self;
        bounded_all("stop-all", names, |name| this.stop_one(name, timeout_secs)).await
    }

    async fn remove_all(
        &mut self,
        names: Vec<String>,
        force: bool,
    ) -> Vec<Result<(), PluginError>> {
        let this = &*self;
        bounded_all("remove-all", names, |name| this.remove_one(name, force)).await
    }

    async fn kill(&mut self, name: String, signal: String) -> Result<(), PluginError> {
        self.grant.container("kill", &name)?;
        let Resolved { id, .. } = self.resolve("kill", &name).await?;
        bounded("docker.kill", self.timeout, async {
            self.engine
                .kill(&id, &signal)
                .await
                .map_err(Self::err("kill", &name))
        })
        .await?;
        // A signal that ends the container ends its registration too.
        let info = self.inspect_raw(&id).await?;
        if !info.running {
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
        self.connect("list", "containers").await?;
        bounded("docker.list", self.timeout, async {
            let filter = ListFilter {
                all: true,
                label,
                name_prefix: None,
            };
            let summaries = self
                .engine
                .list(filter)
                .await
                .map_err(Self::err("list", "containers"))?;
            let mut containers = Vec::new();
            for summary in summaries {
                if summary.name.is_empty() || summary.id.is_empty() {
                    continue;
                }
                let wanted = pattern.as_ref().is_none_or(|p| p.is_match(&summary.name))
                    && (summary.host.is_empty() || self.grant.hosts.matches(&summary.host));
                if wanted && self.grant.containers.matches(&summary.name) {
                    match self.inspect_raw(&summary.id).await {
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
        self.connect("wait", &name).await?;
        let limit = Duration::from_secs(u64::from(timeout_secs));
        let waited = tokio::time::timeout(limit, async {
            let Resolved { id, .. } = self.resolve("wait", &name).await?;
            match self.engine.wait(&id).await {
                Ok(Some(code)) => Ok(code),
                Ok(None) => Err(PluginError::Failed(format!(
                    "docker: waiting for {name} ended without an exit code"
                ))),
                Err(e) => Err(e.to_plugin_error("wait", &name)),
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
        self.connect("logs", &name).await?;
        bounded("docker.logs", self.timeout, async {
            let Resolved { id, .. } = self.resolve("logs", &name).await?;
            self.engine
                .logs(&id, tail, MAX_LOGS_BYTES)
                .await
                .map_err(Self::err("logs", &name))
        })
        .await
    }
}
