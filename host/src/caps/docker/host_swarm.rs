//! The `swarm` WIT interface: Swarm services under the docker grants. Every
//! call validates what the plugin passed, checks the grant, resolves the
//! service by its exact name, then asks the [`SwarmEngine`].

use super::DockerCap;
use super::registration::{
    RESERVED_LABELS, runner_labels, swarm_instance_prefix, swarm_registration, task_registration,
};
use super::swarm::{
    HealthCheck, NodeInfo, ServiceInfo, ServiceSpec, ServiceUpdate, SwarmEngine, TaskInfo,
    UpdateConfig,
};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::{docker, swarm};
use crate::caps::{bounded, denied, registry_error};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Most tasks one service runs through runner (as `run-all`'s specs).
pub(super) const MAX_REPLICAS: u32 = 32;
/// Most ports a service publishes.
const MAX_PORTS: usize = 16;
/// Most tasks `inspect` returns (the engine keeps finished ones too).
const MAX_TASKS: usize = 128;
/// Most arguments of a health check's command.
const MAX_HEALTH_ARGS: usize = 64;
/// Longest health-check interval, timeout, start period, and update monitor.
const MAX_PERIOD: Duration = Duration::from_secs(3600);

fn port_bindings(ports: &[super::PublishedPort]) -> Vec<docker::PortBinding> {
    ports
        .iter()
        .map(|p| docker::PortBinding {
            container_port: p.container_port,
            host_ip: p.host_ip.clone(),
            host_port: p.host_port,
        })
        .collect()
}

fn task_to_wit(t: &TaskInfo) -> swarm::Task {
    swarm::Task {
        id: t.id.clone(),
        slot: t.slot,
        node_id: t.node_id.clone(),
        state: t.state.clone(),
        desired_state: t.desired_state.clone(),
        message: t.message.clone(),
        exit_code: t.exit_code,
        image: t.image.clone(),
        ports: port_bindings(&t.ports),
    }
}

fn service_to_wit(s: &ServiceInfo) -> swarm::Service {
    let mut labels: Vec<(String, String)> = s.labels.clone().into_iter().collect();
    labels.sort();
    swarm::Service {
        id: s.id.clone(),
        name: s.name.clone(),
        image: s.image.clone(),
        replicas: s.replicas,
        labels,
        update_state: s.update_state.clone(),
        update_message: s.update_message.clone(),
        tasks: s.tasks.iter().map(task_to_wit).collect(),
    }
}

fn node_to_wit(n: NodeInfo) -> swarm::Node {
    swarm::Node {
        id: n.id,
        hostname: n.hostname,
        address: n.address,
        role: n.role,
        state: n.state,
        availability: n.availability,
    }
}

fn invalid(op: &str, name: &str, what: impl std::fmt::Display) -> PluginError {
    PluginError::InvalidConfig(format!("swarm {op} {name}: {what}"))
}

fn period(op: &str, name: &str, what: &str, ms: u32) -> Result<Duration, PluginError> {
    let d = Duration::from_millis(u64::from(ms));
    if d > MAX_PERIOD {
        return Err(invalid(
            op,
            name,
            format_args!("{what} of {ms} ms is longer than an hour"),
        ));
    }
    Ok(d)
}

fn replicas(op: &str, name: &str, n: u32) -> Result<u32, PluginError> {
    if n > MAX_REPLICAS {
        return Err(invalid(
            op,
            name,
            format_args!("{n} replicas; at most {MAX_REPLICAS}"),
        ));
    }
    Ok(n)
}

impl DockerCap {
    /// The engine as a Swarm manager, or why not.
    fn swarm_engine(&self, op: &str, name: &str) -> Result<&dyn SwarmEngine, PluginError> {
        self.engine.swarm().ok_or_else(|| {
            PluginError::Unavailable(format!(
                "swarm {op} {name}: runner drives named hosts here ([hosts] in the runner file); \
                 Swarm services need runner's one engine to be a Swarm manager ([targets] docker, or --docker-host)"
            ))
        })
    }

    /// A granted image a Swarm may run: a tag or digest is required, so
    /// nothing is taken for an image ID on a node.
    fn swarm_image(&self, op: &str, image: &str) -> Result<(), PluginError> {
        self.grant.image(op, image)?;
        let last = image.rsplit('/').next().unwrap_or(image);
        let name = last.split([':', '@']).next().unwrap_or(last);
        if !(last.contains(':') || last.contains('@')) || name == "sha256" {
            return Err(invalid(
                op,
                image,
                "Swarm images need a tag or digest (books-ms:v2, books-ms@sha256:…): each node resolves the reference itself",
            ));
        }
        Ok(())
    }

    /// The service named exactly `name`; acting on one that registers
    /// under a catalog service needs that service granted.
    async fn resolve_service(
        &self,
        op: &str,
        name: &str,
        catalog: bool,
    ) -> Result<ServiceInfo, PluginError> {
        let engine = self.swarm_engine(op, name)?;
        let info = engine
            .inspect_service(name, MAX_TASKS)
            .await
            .map_err(Self::swarm_err(op, name))?;
        if info.name != name || info.id.is_empty() {
            return Err(PluginError::NotFound(format!(
                "swarm {op} {name}: no service has that name"
            )));
        }
        if catalog
            && let Some((service, _, _)) = swarm_registration(&info.labels)
            && !self.services.allows(&service)
        {
            return Err(denied(
                "swarm",
                format_args!(
                    "{op} of service \"{name}\" changes the catalog of service \"{service}\", which is not granted"
                ),
                format_args!("--allow-service {service}"),
            ));
        }
        Ok(info)
    }

    fn swarm_err(op: &str, target: &str) -> impl Fn(super::EngineError) -> PluginError {
        let (op, target) = (op.to_string(), target.to_string());
        move |e| e.to_plugin_error_of("swarm", &op, &target)
    }

    /// Make the catalog true to `info`'s tasks: register the running ones
    /// (those of `only`, when given), deregister the rest of this
    /// service's; the tasks registered.
    async fn sync_tasks(
        &self,
        info: &ServiceInfo,
        only: Option<&HashSet<String>>,
    ) -> Result<Vec<TaskInfo>, PluginError> {
        let running: Vec<TaskInfo> = info
            .tasks
            .iter()
            .filter(|t| t.is_running() && only.is_none_or(|ids| ids.contains(&t.id)))
            .cloned()
            .collect();
        let Some((service, _, _)) = swarm_registration(&info.labels) else {
            return Ok(running);
        };
        self.services.check("register", &service)?;
        let reg = |e| registry_error("swarm registration", e);
        let mut current = HashSet::new();
        for task in &running {
            if let Some(instance) = task_registration(info, task) {
                current.insert(instance.id.clone());
                self.registry.register(&instance).await.map_err(reg)?;
                tracing::info!(
                    "registered task {} of {} as {service} at {}:{}",
                    task.id,
                    info.name,
                    instance.address,
                    instance.port
                );
            }
        }
        self.deregister_tasks(info, &current).await?;
        Ok(running)
    }

    /// Deregister `info`'s task instances other than `keep`.
    async fn deregister_tasks(
        &self,
        info: &ServiceInfo,
        keep: &HashSet<String>,
    ) -> Result<(), PluginError> {
        let Some((service, _, _)) = swarm_registration(&info.labels) else {
            return Ok(());
        };
        let reg = |e| registry_error("swarm registration", e);
        let prefix = swarm_instance_prefix(&info.name);
        for instance in self.registry.instances(&service).await.map_err(reg)? {
            if instance.id.starts_with(&prefix) && !keep.contains(&instance.id) {
                self.registry
                    .deregister(&service, &instance.id)
                    .await
                    .map_err(reg)?;
                tracing::info!("deregistered {} from {service}", instance.id);
            }
        }
        Ok(())
    }

    fn service_spec(&self, spec: swarm::ServiceSpec) -> Result<ServiceSpec, PluginError> {
        let (op, name) = ("create", spec.name.as_str());
        self.grant.swarm_service(op, name)?;
        self.swarm_image(op, &spec.image)?;
        let replicas = replicas(op, name, spec.replicas)?;
        if spec.ports.len() > MAX_PORTS {
            return Err(invalid(
                op,
                name,
                format_args!("{} ports; at most {MAX_PORTS}", spec.ports.len()),
            ));
        }
        if let Some(service) = &spec.service {
            self.services.check("register", service)?;
            if spec.ports.is_empty() {
                return Err(invalid(
                    op,
                    name,
                    format_args!(
                        "registering it as service \"{service}\" needs a published port in `ports`"
                    ),
                ));
            }
        }
        if let Some((key, _)) = spec
            .labels
            .iter()
            .find(|(k, _)| k.to_ascii_lowercase().starts_with(RESERVED_LABELS))
        {
            return Err(invalid(
                op,
                name,
                format_args!(
                    "label \"{key}\" is reserved: labels starting with \"{RESERVED_LABELS}\" are set by runner alone; register through `service` instead"
                ),
            ));
        }
        let health = match spec.health_check {
            None => None,
            Some(h) => {
                if h.command.is_empty() || h.command.len() > MAX_HEALTH_ARGS {
                    return Err(invalid(
                        op,
                        name,
                        format_args!(
                            "a health check's command takes 1 to {MAX_HEALTH_ARGS} arguments"
                        ),
                    ));
                }
                Some(HealthCheck {
                    command: h.command,
                    interval: period(op, name, "health-check interval", h.interval_ms)?
                        .max(Duration::from_millis(100)),
                    timeout: period(op, name, "health-check timeout", h.timeout_ms)?
                        .max(Duration::from_millis(100)),
                    retries: h.retries.clamp(1, 100),
                    start_period: period(op, name, "health-check start period", h.start_period_ms)?,
                })
            }
        };
        let container_labels: HashMap<String, String> = spec.labels.into_iter().collect();
        let mut labels = container_labels.clone();
        let service = spec.service.as_deref().zip(spec.ports.first().copied());
        labels.extend(runner_labels(service, &spec.tags, self.registry.identity()));
        let limits = self.grant.limits;
        Ok(ServiceSpec {
            name: spec.name,
            image: spec.image,
            env: spec.env,
            command: spec.command,
            labels,
            container_labels,
            ports: spec.ports,
            replicas,
            health,
            memory_bytes: limits.memory_bytes,
            pids: limits.pids,
            nano_cpus: limits.nano_cpus,
        })
    }
}

impl swarm::Host for DockerCap {
    async fn nodes(&mut self) -> Result<Vec<swarm::Node>, PluginError> {
        if self.grant.is_empty() {
            return Err(denied(
                "swarm",
                "listing the Swarm's nodes needs a docker grant",
                "--allow-container PATTERN",
            ));
        }
        let engine = self.swarm_engine("nodes", "")?;
        self.connect("nodes", "").await?;
        bounded("swarm.nodes", self.timeout, async {
            let nodes = engine.nodes().await.map_err(Self::swarm_err("nodes", ""))?;
            Ok(nodes.into_iter().map(node_to_wit).collect())
        })
        .await
    }

    async fn create(&mut self, spec: swarm::ServiceSpec) -> Result<swarm::Service, PluginError> {
        let name = spec.name.clone();
        let spec = self.service_spec(spec)?;
        let engine = self.swarm_engine("create", &name)?;
        self.connect("create", &name).await?;
        bounded("swarm.create", self.timeout, async {
            let id = engine
                .create_service(spec)
                .await
                .map_err(Self::swarm_err("create", &name))?;
            let info = engine
                .inspect_service(&id, MAX_TASKS)
                .await
                .map_err(Self::swarm_err("create", &name))?;
            Ok(service_to_wit(&info))
        })
        .await
    }

    async fn inspect(&mut self, name: String) -> Result<swarm::Service, PluginError> {
        self.grant.swarm_service("inspect", &name)?;
        self.connect("inspect", &name).await?;
        bounded("swarm.inspect", self.timeout, async {
            let info = self.resolve_service("inspect", &name, false).await?;
            Ok(service_to_wit(&info))
        })
        .await
    }

    async fn scale(&mut self, name: String, n: u32) -> Result<(), PluginError> {
        self.grant.swarm_service("scale", &name)?;
        let n = replicas("scale", &name, n)?;
        self.connect("scale", &name).await?;
        bounded("swarm.scale", self.timeout, async {
            let info = self.resolve_service("scale", &name, true).await?;
            let engine = self.swarm_engine("scale", &name)?;
            engine
                .scale_service(&info.id, n)
                .await
                .map_err(Self::swarm_err("scale", &name))?;
            if n == 0 {
                self.deregister_tasks(&info, &HashSet::new()).await?;
            }
            Ok(())
        })
        .await
    }

    async fn update(
        &mut self,
        name: String,
        image: String,
        env: Vec<(String, String)>,
        config: swarm::UpdateConfig,
    ) -> Result<(), PluginError> {
        self.grant.swarm_service("update", &name)?;
        self.swarm_image("update", &image)?;
        if !(1..=MAX_REPLICAS).contains(&config.parallelism) {
            return Err(invalid(
                "update",
                &name,
                format_args!("parallelism must be 1 to {MAX_REPLICAS}"),
            ));
        }
        let update = ServiceUpdate {
            image,
            env,
            config: UpdateConfig {
                parallelism: config.parallelism,
                start_first: config.start_first,
                monitor: period("update", &name, "monitor", config.monitor_ms)?,
                delay: period("update", &name, "delay", config.delay_ms)?,
                rollback_on_failure: config.rollback_on_failure,
            },
        };
        self.connect("update", &name).await?;
        bounded("swarm.update", self.timeout, async {
            let info = self.resolve_service("update", &name, true).await?;
            let engine = self.swarm_engine("update", &name)?;
            engine
                .update_service(&info.id, update)
                .await
                .map_err(Self::swarm_err("update", &name))
        })
        .await
    }

    async fn remove(&mut self, name: String) -> Result<(), PluginError> {
        self.grant.swarm_service("remove", &name)?;
        self.connect("remove", &name).await?;
        bounded("swarm.remove", self.timeout, async {
            let info = match self.resolve_service("remove", &name, true).await {
                Ok(info) => info,
                Err(PluginError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let engine = self.swarm_engine("remove", &name)?;
            match engine.remove_service(&info.id).await {
                Ok(()) | Err(super::EngineError::NotFound(_)) => {}
                Err(e) => return Err(Self::swarm_err("remove", &name)(e)),
            }
            self.deregister_tasks(&info, &HashSet::new()).await
        })
        .await
    }

    async fn register(
        &mut self,
        name: String,
        tasks: Option<Vec<String>>,
    ) -> Result<Vec<swarm::Task>, PluginError> {
        self.grant.swarm_service("register", &name)?;
        if tasks.as_ref().is_some_and(|t| t.len() > MAX_TASKS) {
            return Err(invalid(
                "register",
                &name,
                format_args!("more than {MAX_TASKS} task IDs"),
            ));
        }
        // IDs are only compared with the engine's: nothing else is done with them.
        let only: Option<HashSet<String>> = tasks.map(|t| t.into_iter().collect());
        self.connect("register", &name).await?;
        bounded("swarm.register", self.timeout, async {
            let info = self.resolve_service("register", &name, true).await?;
            let running = self.sync_tasks(&info, only.as_ref()).await?;
            Ok(running.iter().map(task_to_wit).collect())
        })
        .await
    }

    async fn logs(&mut self, name: String, tail: u32) -> Result<String, PluginError> {
        self.grant.swarm_service("logs", &name)?;
        self.connect("logs", &name).await?;
        bounded("swarm.logs", self.timeout, async {
            let info = self.resolve_service("logs", &name, false).await?;
            let engine = self.swarm_engine("logs", &name)?;
            engine
                .service_logs(&info.id, tail, super::MAX_LOGS_BYTES)
                .await
                .map_err(Self::swarm_err("logs", &name))
        })
        .await
    }
}
