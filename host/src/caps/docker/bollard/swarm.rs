//! [`SwarmEngine`] for a Swarm manager, through bollard.

use super::{BollardEngine, engine_error};
use crate::caps::docker::engine::{EngineError, PublishedPort};
use crate::caps::docker::swarm::{
    NodeInfo, ServiceInfo, ServiceSpec, ServiceUpdate, SwarmEngine, TaskInfo, UpdateConfig,
};
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, HealthConfig, Limit,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListServicesOptions, ListTasksOptions, LogsOptions,
    UpdateServiceOptions,
};
use std::collections::HashMap;
use std::time::Duration;

/// How often a scale or update is retried when another writer changed the
/// service between our read and our write (Swarm's optimistic versions).
const VERSION_RETRIES: usize = 3;

fn nanos(d: Duration) -> Option<i64> {
    i64::try_from(d.as_nanos()).ok()
}

impl BollardEngine {
    /// A bollard error; 503 from a Swarm endpoint is "not a manager"
    /// (the engine says "This node is not a swarm manager").
    fn swarm_err(&self) -> impl Fn(bollard::errors::Error) -> EngineError + '_ {
        |e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 503, ..
            } => EngineError::NotSwarmManager {
                endpoint: self.host.clone(),
            },
            e => engine_error(&self.host, e),
        }
    }

    /// Node ID → its address.
    async fn node_addresses(&self) -> Result<HashMap<String, String>, EngineError> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.address))
            .collect())
    }

    async fn tasks_of(
        &self,
        service_id: &str,
        running_only: bool,
        addresses: &HashMap<String, String>,
    ) -> Result<Vec<TaskInfo>, EngineError> {
        let docker = self.client().await?;
        let mut filters = HashMap::from([("service".to_string(), vec![service_id.to_string()])]);
        if running_only {
            filters.insert("desired-state".into(), vec!["running".into()]);
        }
        let tasks = docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(self.swarm_err())?;
        let mut tasks: Vec<TaskInfo> = tasks
            .into_iter()
            // The filter takes ID prefixes and names: keep this service's own.
            .filter(|t| t.service_id.as_deref() == Some(service_id))
            .map(|t| task_info(t, addresses))
            .collect();
        tasks.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
        Ok(tasks)
    }

    /// Read the service, change its spec with `change`, write it back at the
    /// version read; again when another writer came between.
    async fn update_spec(
        &self,
        id: &str,
        change: impl Fn(&mut bollard::models::ServiceSpec),
    ) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let mut attempt = 0;
        loop {
            let service = docker
                .inspect_service(id, None::<InspectServiceOptions>)
                .await
                .map_err(self.swarm_err())?;
            let version = service
                .version
                .and_then(|v| v.index)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| {
                    EngineError::Failed(format!("service {id}: the engine gave no usable version"))
                })?;
            let mut spec = service.spec.unwrap_or_default();
            change(&mut spec);
            let options = UpdateServiceOptions {
                version,
                ..Default::default()
            };
            match docker.update_service(id, spec, options, None).await {
                Ok(_) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") && attempt < VERSION_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!("service {id} changed under us ({message}); again");
                }
                Err(e) => return Err(self.swarm_err()(e)),
            }
        }
    }
}

fn task_info(t: bollard::models::Task, addresses: &HashMap<String, String>) -> TaskInfo {
    let node_id = t.node_id.unwrap_or_default();
    let address = addresses.get(&node_id).cloned().unwrap_or_default();
    let status = t.status.unwrap_or_default();
    let message = match (status.message, status.err) {
        (Some(m), Some(e)) if !e.is_empty() => format!("{m}: {e}"),
        (Some(m), _) => m,
        (None, Some(e)) => e,
        (None, None) => String::new(),
    };
    let mut ports: Vec<PublishedPort> = status
        .port_status
        .and_then(|p| p.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(PublishedPort {
                container_port: u16::try_from(p.target_port?).ok()?,
                host_ip: address.clone(),
                host_port: u16::try_from(p.published_port?).ok()?,
            })
        })
        .collect();
    // A host-mode port is bound twice, IPv4 first, then IPv6, each on a
    // port of its own when the node has IPv6: the IPv4 one is what the
    // node's address reaches (the stable sort keeps it first).
    ports.sort_by_key(|p| p.container_port);
    ports.dedup_by_key(|p| p.container_port);
    TaskInfo {
        id: t.id.unwrap_or_default(),
        slot: t.slot.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        node_id,
        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        desired_state: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
        message,
        exit_code: status.container_status.and_then(|c| c.exit_code),
        image: t
            .spec
            .and_then(|s| s.container_spec)
            .and_then(|c| c.image)
            .map(|i| strip_digest(&i))
            .unwrap_or_default(),
        ports,
        updated_at: status.timestamp.unwrap_or_default(),
    }
}

/// Swarm pins a tag to its digest (`books-ms:v2@sha256:…`) when it can:
/// the reference as it was named.
fn strip_digest(image: &str) -> String {
    match image.split_once('@') {
        Some((named, _)) if named.contains(':') => named.to_string(),
        _ => image.to_string(),
    }
}

fn service_info(s: bollard::models::Service, tasks: Vec<TaskInfo>) -> ServiceInfo {
    let spec = s.spec.unwrap_or_default();
    let update = s.update_status.unwrap_or_default();
    ServiceInfo {
        id: s.id.unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        image: spec
            .task_template
            .and_then(|t| t.container_spec)
            .and_then(|c| c.image)
            .map(|i| strip_digest(&i))
            .unwrap_or_default(),
        replicas: spec
            .mode
            .and_then(|m| m.replicated)
            .and_then(|r| r.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        labels: spec.labels.unwrap_or_default(),
        update_state: update
            .state
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty()),
        update_message: update.message.unwrap_or_default(),
        tasks,
    }
}

fn update_config(c: &UpdateConfig) -> ServiceSpecUpdateConfig {
    ServiceSpecUpdateConfig {
        parallelism: Some(i64::from(c.parallelism.max(1))),
        delay: nanos(c.delay),
        failure_action: Some(if c.rollback_on_failure {
            ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK
        } else {
            ServiceSpecUpdateConfigFailureActionEnum::PAUSE
        }),
        monitor: nanos(c.monitor),
        // One failed task fails the update.
        max_failure_ratio: Some(0.0),
        order: Some(if c.start_first {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
        }),
    }
}

fn rollback_config(c: &UpdateConfig) -> ServiceSpecRollbackConfig {
    ServiceSpecRollbackConfig {
        parallelism: Some(i64::from(c.parallelism.max(1))),
        delay: Some(0),
        failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
        monitor: nanos(c.monitor),
        max_failure_ratio: Some(0.0),
        order: Some(if c.start_first {
            ServiceSpecRollbackConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
        }),
    }
}

fn env_list(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn create_spec(spec: ServiceSpec) -> bollard::models::ServiceSpec {
    let health = spec.health.map(|h| HealthConfig {
        test: Some(
            std::iter::once("CMD".to_string())
                .chain(h.command)
                .collect(),
        ),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: Some(i64::from(h.retries)),
        start_period: nanos(h.start_period),
        ..Default::default()
    });
    bollard::models::ServiceSpec {
        name: Some(spec.name),
        labels: Some(spec.labels),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(spec.replicas)),
            }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(spec.image),
                env: Some(env_list(&spec.env)),
                args: spec.command,
                labels: Some(spec.container_labels),
                health_check: health,
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: spec.nano_cpus.and_then(|n| i64::try_from(n).ok()),
                    memory_bytes: i64::try_from(spec.memory_bytes).ok(),
                    pids: Some(i64::from(spec.pids)),
                }),
                ..Default::default()
            }),
            // A task that exits is replaced (Swarm's default), after a pause.
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: nanos(Duration::from_secs(1)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            ports: Some(
                spec.ports
                    .iter()
                    .map(|p| EndpointPortConfig {
                        target_port: Some(i64::from(*p)),
                        // No published port: each task's node picks one.
                        publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl SwarmEngine for BollardEngine {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let docker = self.client().await?;
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(self.swarm_err())?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let spec = n.spec.unwrap_or_default();
                let status = n.status.unwrap_or_default();
                NodeInfo {
                    id: n.id.unwrap_or_default(),
                    hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                    address: status.addr.unwrap_or_default(),
                    role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn create_service(&self, spec: ServiceSpec) -> Result<String, EngineError> {
        let docker = self.client().await?;
        let created = docker
            .create_service(create_spec(spec), None)
            .await
            .map_err(self.swarm_err())?;
        created
            .id
            .ok_or_else(|| EngineError::Failed("the engine gave no service ID".into()))
    }

    async fn inspect_service(
        &self,
        name: &str,
        max_tasks: usize,
    ) -> Result<ServiceInfo, EngineError> {
        let docker = self.client().await?;
        let service = docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .map_err(self.swarm_err())?;
        let id = service.id.clone().unwrap_or_default();
        let addresses = self.node_addresses().await?;
        let mut tasks = self.tasks_of(&id, false, &addresses).await?;
        tasks.truncate(max_tasks);
        Ok(service_info(service, tasks))
    }

    async fn list_services(&self, label: &str) -> Result<Vec<ServiceInfo>, EngineError> {
        let docker = self.client().await?;
        let services = docker
            .list_services(Some(ListServicesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![label.to_string()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(self.swarm_err())?;
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let addresses = self.node_addresses().await?;
        let mut found = Vec::with_capacity(services.len());
        for service in services {
            let id = service.id.clone().unwrap_or_default();
            let tasks = self.tasks_of(&id, true, &addresses).await?;
            found.push(service_info(service, tasks));
        }
        Ok(found)
    }

    async fn scale_service(&self, id: &str, replicas: u32) -> Result<(), EngineError> {
        self.update_spec(id, |spec| {
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::from(replicas)),
                }),
                ..Default::default()
            });
        })
        .await
    }

    async fn update_service(&self, id: &str, update: ServiceUpdate) -> Result<(), EngineError> {
        self.update_spec(id, |spec| {
            let task = spec.task_template.get_or_insert_with(Default::default);
            let container = task.container_spec.get_or_insert_with(Default::default);
            container.image = Some(update.image.clone());
            container.env = Some(env_list(&update.env));
            spec.update_config = Some(update_config(&update.config));
            spec.rollback_config = Some(rollback_config(&update.config));
        })
        .await
    }

    async fn remove_service(&self, id: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        docker.delete_service(id).await.map_err(self.swarm_err())
    }

    async fn service_logs(
        &self,
        id: &str,
        tail: u32,
        max_bytes: usize,
    ) -> Result<String, EngineError> {
        let docker = self.client().await?;
        let stream = docker.service_logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        super::bounded_logs(Box::pin(stream), max_bytes, self.swarm_err()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_digest_is_shown_as_the_reference_named() {
        assert_eq!(strip_digest("books-ms:v2@sha256:abc"), "books-ms:v2");
        assert_eq!(strip_digest("books-ms@sha256:abc"), "books-ms@sha256:abc");
        assert_eq!(strip_digest("books-ms:v2"), "books-ms:v2");
    }

    #[test]
    fn a_task_is_reached_on_its_ipv4_binding_at_its_nodes_address() {
        // As Docker 20.10 reports a host-mode port bound twice: the IPv4
        // binding first, the IPv6 one on another port.
        let port = |published| EndpointPortConfig {
            target_port: Some(8080),
            published_port: Some(published),
            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            ..Default::default()
        };
        let task = bollard::models::Task {
            id: Some("t1".into()),
            node_id: Some("n1".into()),
            slot: Some(3),
            status: Some(bollard::models::TaskStatus {
                port_status: Some(bollard::models::PortStatus {
                    ports: Some(vec![port(32780), port(32778)]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let addresses = HashMap::from([("n1".to_string(), "10.0.0.7".to_string())]);
        let info = task_info(task, &addresses);
        assert_eq!(
            info.ports,
            vec![PublishedPort {
                container_port: 8080,
                host_ip: "10.0.0.7".into(),
                host_port: 32780
            }]
        );
        assert_eq!(info.container_name("books-ms-blue"), "books-ms-blue.3.t1");
    }

    #[test]
    fn services_publish_in_host_mode_on_ports_the_node_picks() {
        let spec = create_spec(ServiceSpec {
            name: "books-ms-blue".into(),
            image: "books-ms:v1".into(),
            env: vec![("VERSION".into(), "v1".into())],
            command: None,
            labels: HashMap::new(),
            container_labels: HashMap::new(),
            ports: vec![8080],
            replicas: 3,
            health: None,
            memory_bytes: 1 << 30,
            pids: 1024,
            nano_cpus: None,
        });
        let ports = spec.endpoint_spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(ports[0].published_port, None);
        let task = spec.task_template.unwrap();
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(
            (limits.memory_bytes, limits.pids),
            (Some(1 << 30), Some(1024))
        );
        let container = task.container_spec.unwrap();
        assert!(container.mounts.is_none() && container.privileges.is_none());
    }
}
