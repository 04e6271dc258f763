//! Registrator-style registration (seed 002): the labels runner puts on a
//! container it runs for a service, the catalog instance they describe, and
//! whose catalog a container belongs to.

use super::engine::{ContainerInfo, PublishedPort};
use super::swarm::{ServiceInfo, TaskInfo};
use crate::bindings::PluginError;
use crate::caps::catalog::ServiceGrant;
use crate::caps::registry_error;
use crate::registry::{Instance, Registry};
use std::collections::HashMap;

/// Labels runner puts on every container it runs. Every `runner.` label is
/// the host's alone: a plugin that could set them could register its
/// container under any service.
pub const LABEL_MANAGED: &str = "runner.managed";
pub(super) const RESERVED_LABELS: &str = "runner.";
pub(super) const LABEL_SERVICE: &str = "runner.service";
pub(super) const LABEL_SERVICE_PORT: &str = "runner.service-port";
pub(super) const LABEL_TAGS: &str = "runner.service-tags";
/// The identity of the registry whose catalog the container belongs to
/// ([`Registry::identity`]): `reconcile` adopts only its own registry's
/// containers, so registries sharing an engine keep apart.
pub const LABEL_REGISTRY: &str = "runner.registry";
/// Catalog ids of instances runner registered: `runner:<container>:<port>`.
pub(crate) const REGISTRATION_PREFIX: &str = "runner:";

/// Whether `id` is one the host gives the containers it registers: neither
/// a plugin nor the operator may write one (reconcile keeps them true to
/// the engine, and another writer could block or shadow a container).
pub(crate) fn is_host_instance_id(id: &str) -> bool {
    id.starts_with(REGISTRATION_PREFIX)
}

/// The address a container's instance is registered at, with its
/// published host port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AddressPolicy {
    /// `127.0.0.1`: the engine runs on this machine and containers publish
    /// on loopback only.
    #[default]
    Loopback,
    /// A fixed address, e.g. the engine host's for an engine elsewhere.
    Fixed(String),
    /// The address the engine reports the port published at: a fleet
    /// reports each container's at its own host's address.
    Published,
}

impl AddressPolicy {
    /// The address of a container whose port is published at `binding`.
    pub fn address<'a>(&'a self, binding: &'a PublishedPort) -> &'a str {
        match self {
            Self::Loopback => "127.0.0.1",
            Self::Fixed(address) => address,
            Self::Published => &binding.host_ip,
        }
    }
}

/// The labels of a container run for `service` (published `port`), or of
/// one run for no service: always set, empty then, because the engine
/// merges the image's own labels into the container's, and an image
/// carrying `runner.service=payments` must not register anything.
pub(super) fn runner_labels(
    service: Option<(&str, u16)>,
    tags: &[String],
    registry_identity: String,
) -> [(String, String); 5] {
    let (service, port) = service
        .map(|(s, p)| (s.to_string(), p.to_string()))
        .unwrap_or_default();
    [
        (LABEL_MANAGED.into(), "true".into()),
        (LABEL_SERVICE.into(), service),
        (LABEL_SERVICE_PORT.into(), port),
        (LABEL_TAGS.into(), tags.join(",")),
        (LABEL_REGISTRY.into(), registry_identity),
    ]
}

/// The service a container was run for, by runner (`runner.managed`).
pub(super) fn registered_service(info: &ContainerInfo) -> Option<String> {
    if info.labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
        return None;
    }
    info.labels
        .get(LABEL_SERVICE)
        .filter(|s| !s.is_empty())
        .cloned()
}

fn registration_id(container: &str, container_port: &str) -> String {
    format!("{REGISTRATION_PREFIX}{container}:{container_port}")
}

/// The catalog instance for a running container that was run for a service.
pub(super) fn registration(info: &ContainerInfo, policy: &AddressPolicy) -> Option<Instance> {
    // Runner sets all its labels on the containers it runs, so an image's own
    // `runner.*` labels never count.
    let service = registered_service(info)?;
    let port = info.labels.get(LABEL_SERVICE_PORT)?;
    crate::names::service_name(&service).ok()?;
    let container_port: u16 = port.parse().ok()?;
    let binding = info
        .ports
        .iter()
        .find(|p| p.container_port == container_port)?;
    info.running.then(|| Instance {
        id: registration_id(&info.name, port),
        name: service.clone(),
        address: policy.address(binding).to_string(),
        port: binding.host_port,
        tags: label_tags(&info.labels),
        ..Instance::default()
    })
}

/// Register the container if it was run for a service, and only under a
/// service the stage could register itself.
pub(super) async fn register(
    registry: &dyn Registry,
    services: &ServiceGrant,
    policy: &AddressPolicy,
    info: &ContainerInfo,
) -> Result<(), PluginError> {
    if let Some(instance) = registration(info, policy) {
        services.check("register", &instance.name)?;
        registry
            .register(&instance)
            .await
            .map_err(|e| registry_error("docker registration", e))?;
        tracing::info!(
            "registered {} as {} at {}:{}",
            info.name,
            instance.name,
            instance.address,
            instance.port
        );
    }
    Ok(())
}

pub(super) async fn deregister(
    registry: &dyn Registry,
    info: &ContainerInfo,
) -> Result<(), PluginError> {
    if let (Some(service), Some(port)) = (
        registered_service(info),
        info.labels.get(LABEL_SERVICE_PORT),
    ) {
        let id = registration_id(&info.name, port);
        if registry
            .deregister(&service, &id)
            .await
            .map_err(|e| registry_error("docker registration", e))?
        {
            tracing::info!("deregistered {id} from {service}");
        }
    }
    Ok(())
}

/// The registration tags a container or service carries (comma-separated).
fn label_tags(labels: &HashMap<String, String>) -> Vec<String> {
    labels
        .get(LABEL_TAGS)
        .map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The catalog service a Swarm service's tasks register under, and the
/// container port registered, from its labels (as a container's).
pub(super) fn swarm_registration(
    labels: &HashMap<String, String>,
) -> Option<(String, u16, Vec<String>)> {
    if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
        return None;
    }
    let service = labels.get(LABEL_SERVICE).filter(|s| !s.is_empty())?;
    crate::names::service_name(service).ok()?;
    let port = labels.get(LABEL_SERVICE_PORT)?.parse().ok()?;
    Some((service.clone(), port, label_tags(labels)))
}

/// The registration ID prefix of every task of Swarm service `name`: its
/// tasks' container names are `NAME.SLOT.TASKID`.
pub(super) fn swarm_instance_prefix(name: &str) -> String {
    format!("{REGISTRATION_PREFIX}{name}.")
}

/// The instance of a running task of `service` (registered as its
/// containers are: node address, published port, the service's tags).
pub(super) fn task_registration(service: &ServiceInfo, task: &TaskInfo) -> Option<Instance> {
    let (name, container_port, tags) = swarm_registration(&service.labels)?;
    if !task.is_running() {
        return None;
    }
    let binding = task
        .ports
        .iter()
        .find(|p| p.container_port == container_port)?;
    if binding.host_ip.is_empty() {
        return None;
    }
    Some(Instance {
        id: registration_id(
            &task.container_name(&service.name),
            &container_port.to_string(),
        ),
        name,
        address: binding.host_ip.clone(),
        port: binding.host_port,
        tags,
        ..Instance::default()
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// Labelled with this registry's identity.
    This,
    /// Labelled with another registry's (another state directory or Consul
    /// on the same engine).
    Other,
    /// No registry label: run by a runner older than the label.
    Unlabelled,
}

/// Whose catalog a running service container belongs to.
pub(super) fn owner(labels: &HashMap<String, String>, identity: &str) -> Owner {
    match labels.get(LABEL_REGISTRY).map(String::as_str) {
        None | Some("") => Owner::Unlabelled,
        Some(label) if label == identity => Owner::This,
        Some(_) => Owner::Other,
    }
}

/// Whether `registered` says what `current` (from the engine) says: service,
/// address, port and tags. Health is the backend's (Consul's checks), not
/// the container's.
pub(super) fn same_registration(registered: &Instance, current: &Instance) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_follows_the_registry_label() {
        let with = |label: Option<&str>| {
            label
                .map(|l| HashMap::from([(LABEL_REGISTRY.to_string(), l.to_string())]))
                .unwrap_or_default()
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
            status: crate::registry::Health::Critical,
            ..Instance::default()
        };
        let current = Instance {
            tags: vec!["blue".into(), "v1".into()],
            status: crate::registry::Health::Passing,
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
    fn the_address_policy_decides_the_registered_address() {
        let info = ContainerInfo {
            name: "books-ms-blue".into(),
            running: true,
            labels: runner_labels(Some(("books-ms", 8080)), &["v1".into()], "id".into())
                .into_iter()
                .collect(),
            ports: vec![PublishedPort {
                container_port: 8080,
                host_ip: "127.0.0.1".into(),
                host_port: 32769,
            }],
            ..Default::default()
        };
        let loopback = registration(&info, &AddressPolicy::default()).unwrap();
        assert_eq!(
            (
                loopback.id.as_str(),
                loopback.address.as_str(),
                loopback.port
            ),
            ("runner:books-ms-blue:8080", "127.0.0.1", 32769)
        );
        assert_eq!(loopback.tags, vec!["v1".to_string()]);
        let fixed = registration(&info, &AddressPolicy::Fixed("10.0.0.7".into())).unwrap();
        assert_eq!(fixed.address, "10.0.0.7");
        // Stopped, or run for no service: nothing to register.
        let stopped = ContainerInfo {
            running: false,
            ..info.clone()
        };
        assert!(registration(&stopped, &AddressPolicy::default()).is_none());
        let unmanaged = ContainerInfo {
            labels: runner_labels(None, &[], "id".into()).into_iter().collect(),
            ..info
        };
        assert!(registration(&unmanaged, &AddressPolicy::default()).is_none());
    }
}
