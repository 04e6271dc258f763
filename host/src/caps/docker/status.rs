//! The engine as the commands see it: the containers `runner status` lists,
//! and [`reconcile`], which makes the catalog true to the engine.

use super::engine::{ContainerEngine, HostInfo, ListFilter};
use super::registration::{
    LABEL_REGISTRY, LABEL_SERVICE, Owner, is_host_instance_id, owner, registration,
    same_registration, task_registration,
};
use crate::bindings::PluginError;
use crate::caps::registry_error;
use crate::registry::{Instance, Registry};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};

/// Container inspects of one reconcile in flight at once.
const RECONCILE_INSPECTS_AT_ONCE: usize = 8;

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
    engine: &dyn ContainerEngine,
    prefix: &str,
) -> Result<Vec<ContainerStatus>, PluginError> {
    let filter = ListFilter {
        all: true,
        name_prefix: Some(prefix.to_string()),
        ..Default::default()
    };
    let summaries = engine
        .list(filter)
        .await
        .map_err(|e| e.to_plugin_error("list", "containers"))?;
    let mut list: Vec<ContainerStatus> = summaries
        .into_iter()
        .map(|c| ContainerStatus {
            name: c.name,
            state: c.state,
            image: c.image,
            ports: c.ports,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

/// One host's containers, as `runner status` shows them.
#[derive(Debug, Clone)]
pub struct HostContainers {
    /// `None` for a lone engine.
    pub host: Option<HostInfo>,
    /// Where its engine listens.
    pub engine: String,
    /// Its containers, or why it did not answer.
    pub containers: Result<Vec<ContainerStatus>, PluginError>,
}

/// [`containers_named`] on each named host on its own (a host that does
/// not answer is reported, not fatal), or on the lone engine.
pub async fn containers_by_host(engine: &dyn ContainerEngine, prefix: &str) -> Vec<HostContainers> {
    let members = engine.members();
    if members.is_empty() {
        return vec![HostContainers {
            host: None,
            engine: engine.host().to_string(),
            containers: containers_named(engine, prefix).await,
        }];
    }
    let per_host = members.into_iter().map(|(host, member)| async move {
        let answered = tokio::time::timeout(STATUS_HOST_TIMEOUT, async {
            member
                .connect()
                .await
                .map_err(|e| e.to_plugin_error("list", "containers"))?;
            containers_named(&*member, prefix).await
        })
        .await;
        let containers = answered.unwrap_or_else(|_| {
            Err(PluginError::Timeout(format!(
                "no answer within {}",
                humantime::format_duration(STATUS_HOST_TIMEOUT)
            )))
        });
        let containers = containers.map(|list| {
            // Reached at the host's address, as the fleet reports them.
            list.into_iter()
                .map(|mut c| {
                    super::fleet::at_address(&mut c.ports, &host.address);
                    c
                })
                .collect()
        });
        HostContainers {
            engine: member.host().to_string(),
            host: Some(host),
            containers,
        }
    });
    futures_util::future::join_all(per_host).await
}

/// How long `status` waits for one host.
const STATUS_HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    engine: &dyn ContainerEngine,
    registry: &dyn Registry,
) -> Result<Reconciled, PluginError> {
    let err = |e: super::EngineError| e.to_plugin_error("list", "containers");
    engine.connect().await.map_err(err)?;
    let reg = |e| registry_error("docker reconcile", e);
    let identity = registry.identity();
    let policy = engine.address_policy();
    // Every running service container on the engine, by registration ID.
    let mut running: HashMap<String, (Instance, Owner)> = HashMap::new();
    let filter = ListFilter {
        all: false,
        label: Some(LABEL_SERVICE.to_string()),
        name_prefix: None,
    };
    let listed = engine.list(filter).await.map_err(err)?;
    // Side by side, a few at a time: one round trip per container otherwise.
    let inspected: Vec<_> = futures_util::stream::iter(listed.iter().filter(|c| !c.id.is_empty()))
        .map(|summary| engine.inspect(&summary.id))
        .buffered(RECONCILE_INSPECTS_AT_ONCE)
        .collect()
        .await;
    for info in inspected.into_iter().flatten() {
        if let Some(instance) = registration(&info, &policy) {
            running.insert(
                instance.id.clone(),
                (instance, owner(&info.labels, &identity)),
            );
        }
    }
    // And every running task of a Swarm service registered through runner.
    if let Some(swarm) = engine.swarm() {
        match swarm.list_services(LABEL_SERVICE).await {
            Ok(services) => {
                for service in &services {
                    for task in &service.tasks {
                        if let Some(instance) = task_registration(service, task) {
                            let owner = owner(&service.labels, &identity);
                            running.insert(instance.id.clone(), (instance, owner));
                        }
                    }
                }
            }
            Err(super::EngineError::NotSwarmManager { .. }) => {}
            // Not knowing the tasks, reconcile would drop their instances.
            Err(e) => return Err(e.to_plugin_error("list", "Swarm services")),
        }
    }
    let mut done = Reconciled::default();
    // Instances moved to another service in this pass: met again under the
    // new service (listed later), they are already settled.
    let mut moved: HashSet<String> = HashSet::new();
    for service in registry.services().await.map_err(reg)? {
        for instance in registry.instances(&service).await.map_err(reg)? {
            if !is_host_instance_id(&instance.id) || moved.contains(&instance.id) {
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
