//! Docker Swarm as the engine: services and their tasks, in runner's own
//! types, as [`SwarmEngine`]. `bollard_swarm.rs` implements it for a Swarm
//! manager; `host_swarm.rs` is the WIT impl (grants, registration).
//!
//! A Swarm service is what a color is on a Swarm: `replicas` tasks, each
//! publishing its ports in host mode on a port its node picks, so every
//! task has its own address (node address + port) that a stage can test
//! before any traffic moves, and that the proxy lists after the switch.

use super::engine::{EngineError, PublishedPort};
use std::collections::HashMap;
use std::time::Duration;

/// A node of the Swarm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// Where its tasks' host-mode ports are reached (the node's status address).
    pub address: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `ready`, `down`, `unknown` or `disconnected`.
    pub state: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
}

/// A health check the engine runs in each task's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Exec form; exit 0 is healthy.
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// A service to create. Every field is already validated and granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
    /// The service's labels (runner's registration labels among them).
    pub labels: HashMap<String, String>,
    /// Its tasks' containers' labels (the plugin's own).
    pub container_labels: HashMap<String, String>,
    /// TCP container ports, each published in host mode on a port the node picks.
    pub ports: Vec<u16>,
    pub replicas: u32,
    pub health: Option<HealthCheck>,
    /// Per task, as a container's.
    pub memory_bytes: u64,
    pub pids: u32,
    pub nano_cpus: Option<u64>,
}

/// One task of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub slot: u32,
    pub node_id: String,
    /// The task's state word (`running`, `failed`, `pending`, …).
    pub state: String,
    pub desired_state: String,
    /// The status message, and its error when there is one.
    pub message: String,
    pub exit_code: Option<i64>,
    pub image: String,
    /// Host-mode ports, `host_ip` the node's address: one per container
    /// port (its IPv4 binding, which the node's address reaches), sorted by
    /// container port.
    pub ports: Vec<PublishedPort>,
    /// When the status last changed (RFC 3339), for newest-first order.
    pub updated_at: String,
}

impl TaskInfo {
    /// Its container's name, as Swarm names it: `SERVICE.SLOT.TASKID`.
    pub fn container_name(&self, service: &str) -> String {
        format!("{service}.{}.{}", self.slot, self.id)
    }

    /// Running, and meant to keep running.
    pub fn is_running(&self) -> bool {
        self.state == "running" && self.desired_state == "running"
    }
}

/// A service, with its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub replicas: u32,
    pub labels: HashMap<String, String>,
    /// The last update's state word; `None` before any update.
    pub update_state: Option<String>,
    pub update_message: String,
    /// Newest first.
    pub tasks: Vec<TaskInfo>,
}

/// How an update replaces the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateConfig {
    pub parallelism: u32,
    pub start_first: bool,
    pub monitor: Duration,
    /// Between batches.
    pub delay: Duration,
    pub rollback_on_failure: bool,
}

/// A rolling update: the new image and environment of every task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    pub image: String,
    pub env: Vec<(String, String)>,
    pub config: UpdateConfig,
}

/// A Swarm manager. Calls take the service's ID where the host resolved
/// the exact name first (`host_swarm.rs`): the engine also takes ID
/// prefixes.
#[async_trait::async_trait]
pub trait SwarmEngine: Send + Sync {
    /// The Swarm's nodes; [`EngineError::Unavailable`] when the engine is
    /// not a Swarm manager.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;

    /// Create a service; its ID.
    async fn create_service(&self, spec: ServiceSpec) -> Result<String, EngineError>;

    /// The service (by name or ID) with its tasks, at most `max_tasks`, newest first.
    async fn inspect_service(
        &self,
        name: &str,
        max_tasks: usize,
    ) -> Result<ServiceInfo, EngineError>;

    /// The services carrying `label` (`KEY` or `KEY=VALUE`), with their
    /// running tasks only.
    async fn list_services(&self, label: &str) -> Result<Vec<ServiceInfo>, EngineError>;

    async fn scale_service(&self, id: &str, replicas: u32) -> Result<(), EngineError>;

    async fn update_service(&self, id: &str, update: ServiceUpdate) -> Result<(), EngineError>;

    async fn remove_service(&self, id: &str) -> Result<(), EngineError>;

    /// The last `tail` lines of its tasks' output, at most `max_bytes`
    /// (bounded while read: the output is the plugin's).
    async fn service_logs(
        &self,
        id: &str,
        tail: u32,
        max_bytes: usize,
    ) -> Result<String, EngineError>;
}
