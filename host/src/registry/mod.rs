//! The registry: a KV store with modify indexes, a service catalog, change
//! watches and deploy locks, one small trait each ([`KvStore`], [`Catalog`],
//! [`Watch`], [`DeployLocks`]) under the umbrella [`Registry`], so the
//! embedded store and Consul are interchangeable.

mod consul;
mod embedded;
mod filelock;
mod lazy;

pub use consul::ConsulRegistry;
pub use embedded::EmbeddedRegistry;
pub use lazy::LazyRegistry;

use async_trait::async_trait;

/// One piece of registry data a reader (a template) depends on; also what a
/// watcher waits on, one blocking query each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// Instances of a service (all of them; health is filtered by the reader).
    Service(String),
    /// One key.
    Key(String),
    /// Every key under a prefix.
    Prefix(String),
    /// The names of all services.
    Services,
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dependency::Service(s) => write!(f, "service \"{s}\""),
            Dependency::Key(k) => write!(f, "key \"{k}\""),
            Dependency::Prefix(p) => write!(f, "keys under \"{p}\""),
            Dependency::Services => write!(f, "services"),
        }
    }
}

/// One KV entry, with Consul's index semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One instance of a service in the catalog, with what Consul's health
/// endpoint says of it (consul-template's `service` fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    /// The instance's status, aggregated from its checks as Consul does.
    pub status: Health,
    /// The node (Consul agent, or Docker host) the instance runs on; empty
    /// when registering means the local node.
    #[serde(default)]
    pub node: String,
    /// The node's address.
    #[serde(default)]
    pub node_address: String,
    /// Service metadata (Consul's `ServiceMeta`).
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
    /// The instance's health checks; empty when registering means one check
    /// that has [`Instance::status`]. Backends fill them in when reading.
    #[serde(default)]
    pub checks: Vec<Check>,
}

impl Instance {
    /// Passing: what a plain `service "name"` lists and what plugins call healthy.
    pub fn healthy(&self) -> bool {
        self.status == Health::Passing
    }

    /// The checks a registry without its own reports for an instance: one
    /// service check with the instance's status, or Consul's maintenance-mode
    /// check (critical, with the ID that marks maintenance).
    pub fn synthesized_checks(&self) -> Vec<Check> {
        let (check_id, name, status) = match self.status {
            Health::Maintenance => (
                format!("{SERVICE_MAINTENANCE_PREFIX}{}", self.id),
                "Service Maintenance Mode".to_string(),
                Health::Critical,
            ),
            status => (
                format!("service:{}", self.id),
                format!("Service '{}' check", self.name),
                status,
            ),
        };
        vec![Check {
            node: self.node.clone(),
            check_id,
            name,
            status: status.as_str().to_string(),
            notes: String::new(),
            output: String::new(),
            service_id: self.id.clone(),
            service_name: self.name.clone(),
        }]
    }
}

/// The check ID prefix Consul gives a service's maintenance-mode check.
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
/// The check ID Consul gives a node's maintenance-mode check.
pub const NODE_MAINTENANCE: &str = "_node_maintenance";

/// An instance's health, as Consul aggregates it from the checks.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Health {
    pub const ALL: [Health; 4] = [
        Health::Passing,
        Health::Warning,
        Health::Critical,
        Health::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// Consul's `HealthChecks.AggregatedStatus`: maintenance wins, then
    /// critical, warning, passing; no checks is passing. A status Consul does
    /// not know counts as critical (Consul renders it as "").
    pub fn aggregate<'a>(checks: impl IntoIterator<Item = (&'a str, &'a str)>) -> Health {
        let mut worst = Health::Passing;
        for (check_id, status) in checks {
            let health = if check_id == NODE_MAINTENANCE
                || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
            {
                Health::Maintenance
            } else {
                match status {
                    "passing" => Health::Passing,
                    "warning" => Health::Warning,
                    _ => Health::Critical,
                }
            };
            worst = worst.max(health);
        }
        worst
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One health check of an instance (the fields of Consul's `HealthCheck`
/// that templates read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub node: String,
    pub check_id: String,
    pub name: String,
    /// passing, warning or critical (Consul's words, kept as given).
    pub status: String,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub service_name: String,
}

/// A service in the catalog: its name and its instances' tags, deduplicated
/// and sorted (consul-template's `services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The backend cannot be reached or opened (locked past the timeout, server down).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The backend answered but the operation failed.
    #[error("registry error: {0}")]
    Backend(String),
    /// The backend refused the caller's credentials (Consul ACL).
    #[error("registry denied: {0}")]
    Denied(String),
    /// The operation cannot be done as asked; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// The operation clashes with what is registered (an instance ID owned by
    /// another service).
    #[error("{0}")]
    Conflict(String),
}

/// The namespace of runner's own records (deploy history, paused runs, deploy
/// locks, and whatever later records deploy state): no plugin grant covers
/// it, `--allow-kv '*'` included, so a stage cannot forge or read them. It
/// cannot collide with a service's keys: service names start with a letter
/// or digit.
pub const RESERVED_PREFIX: &str = "_runner/";

/// Whether `key` (or a prefix) lies in runner's reserved namespace, or is
/// one of the places older runners kept their records (`<service>/runner/
/// history/...`, `<service>/runner/paused`): those are moved into the
/// namespace on first use, so no plugin may write there either, or a record
/// it planted would be moved in as runner's own.
pub fn is_reserved(key: &str) -> bool {
    if key.starts_with(RESERVED_PREFIX) || key == RESERVED_PREFIX.trim_end_matches('/') {
        return true;
    }
    let Some((_service, rest)) = key.split_once('/') else {
        return false;
    };
    rest.starts_with(LEGACY_HISTORY) || rest == LEGACY_PAUSED
}

/// Where runners before the reserved namespace kept history and paused runs,
/// under `<service>/`.
pub const LEGACY_HISTORY: &str = "runner/history/";
pub const LEGACY_PAUSED: &str = "runner/paused";

/// The key of one of runner's own records about `service`: `_runner/<service>/<record>`.
pub fn runner_key(service: &str, record: &str) -> String {
    format!("{RESERVED_PREFIX}{service}/{record}")
}

/// Most bytes (keys and values) one listing returns: a prefix can hold any
/// number of keys, and a listing is held in memory whole.
pub const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn list_too_large(prefix: &str) -> RegistryError {
    RegistryError::Refused(format!(
        "the keys under \"{prefix}\" hold more than {} MiB; list a narrower prefix",
        MAX_LIST_BYTES >> 20
    ))
}

/// This machine's name, for lock holders and deploy records.
pub fn this_host() -> String {
    whoami::fallible::hostname().unwrap_or_else(|_| "unknown".into())
}

/// The user running runner, for lock holders and deploy records.
pub fn this_user() -> String {
    whoami::fallible::username().unwrap_or_else(|_| "unknown".into())
}

/// Who holds a deploy lock: shown to whoever waits for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockHolder {
    pub host: String,
    pub pid: u32,
    pub user: String,
    /// The runner version holding it.
    pub version: String,
    /// The stage (plugin) that holds it.
    pub stage: String,
    /// RFC 3339 UTC.
    pub started_at: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} pid {} (stage {}, runner {}, since {})",
            self.user, self.host, self.pid, self.stage, self.version, self.started_at
        )
    }
}

/// A held deploy lock; released by `release`, or by the backend when the
/// holder dies (file lock) or stops renewing (Consul session TTL).
#[async_trait]
pub trait LockGuard: Send + Sync {
    async fn release(self: Box<Self>) -> Result<(), RegistryError>;
}

pub enum LockAttempt {
    Acquired(Box<dyn LockGuard>),
    /// Someone else holds it (when the backend can tell who).
    Held(Option<LockHolder>),
}

/// The key-value store, with Consul's index semantics.
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError>;
    /// Unconditional write; returns the new modify index.
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError>;
    /// Write only if the key's modify index is `expected` (0: only if absent).
    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError>;
    /// Returns whether the key existed.
    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError>;
    /// Every key under `prefix`, sorted by key, at most [`MAX_LIST_BYTES`].
    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError>;
}

/// The service catalog.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Instances of `service`, sorted by ID, healthy or not.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError>;
    /// The names of all registered services, sorted.
    async fn services(&self) -> Result<Vec<String>, RegistryError>;
    /// Every service with its tags, sorted by name, as the catalog lists them
    /// (Consul's own `consul` service included, which [`Catalog::services`]
    /// leaves out).
    async fn service_summaries(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        let mut summaries = Vec::new();
        for name in self.services().await? {
            let mut tags: Vec<String> = self
                .instances(&name)
                .await?
                .into_iter()
                .flat_map(|i| i.tags)
                .collect();
            tags.sort();
            tags.dedup();
            summaries.push(ServiceSummary { name, tags });
        }
        Ok(summaries)
    }
    /// Register (or replace) an instance; an ID another service owns is a
    /// [`RegistryError::Conflict`].
    async fn register(&self, instance: &Instance) -> Result<(), RegistryError>;
    /// Returns whether `service` had an instance `id`.
    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError>;
}

/// Change notification for what templates read.
#[async_trait]
pub trait Watch: Send + Sync {
    /// Wait until `dep` may have changed since `index` (0, or a value this
    /// returned before), or until `wait` passes; returns the current index.
    /// Consul answers with a blocking query; the embedded store polls its
    /// write counter. Returns may be spurious: readers compare data, and an
    /// index lower than `index` means the backend's index was reset.
    async fn wait_for_change(
        &self,
        dep: &Dependency,
        index: u64,
        wait: std::time::Duration,
    ) -> Result<u64, RegistryError>;
}

/// One deploy of a service at a time.
#[async_trait]
pub trait DeployLocks: Send + Sync {
    /// Try once to take the deploy lock of `service`.
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError>;
    /// The current holder of `service`'s deploy lock, if any.
    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError>;
    /// Break `service`'s lock (an operator's decision); returns whether one was held.
    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError>;
}

/// A whole backend: KV, catalog, watches and deploy locks over one store, so
/// the embedded store and Consul are interchangeable behind `Arc<dyn Registry>`.
pub trait Registry: KvStore + Catalog + Watch + DeployLocks {
    /// The network address clients reach the backend at, if it has one:
    /// plugins' HTTP grants never open it.
    fn endpoint(&self) -> Option<String> {
        None
    }

    /// Which catalog this is, the same in every process that opens it: the
    /// embedded store's is derived from its state directory's canonical path
    /// (`embedded:<hash>`), Consul's is its normalized address
    /// (`consul:http://127.0.0.1:8500`). Runner labels every container it
    /// runs with it, so `reconcile` adopts only this registry's containers
    /// when several registries (state directories, Consuls) share an engine.
    fn identity(&self) -> String;
}

/// Run blocking work (SQLite, lock files) on tokio's blocking pool, so a
/// busy wait never stalls the async workers; a panic there becomes an error
/// for the caller, not the host's. `what` names the store for the message.
pub(crate) async fn off_thread<T: Send + 'static>(
    what: &std::path::Path,
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        let how = if e.is_panic() {
            "panicked"
        } else {
            "was cancelled"
        };
        Err(RegistryError::Backend(format!(
            "{}: the registry call {how}",
            what.display()
        )))
    })
}
