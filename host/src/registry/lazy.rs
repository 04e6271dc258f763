//! Open the embedded registry on first use, so a stage that never touches
//! KV or the catalog creates no state directory and takes no lock.

use super::filelock::FileLocks;
use super::{
    Catalog, Dependency, DeployLocks, EmbeddedRegistry, Instance, KvEntry, KvStore, LockAttempt,
    LockHolder, Registry, RegistryError, Watch, off_thread,
};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

pub struct LazyRegistry {
    state_dir: PathBuf,
    /// Known without opening the store (the directory may not exist yet).
    identity: String,
    busy_timeout: Duration,
    locks: FileLocks,
    // The outcome of the first open, error included: a broken state dir is
    // reported the same way on every call instead of retried per call.
    opened: OnceCell<Result<EmbeddedRegistry, RegistryError>>,
}

impl LazyRegistry {
    pub fn new(state_dir: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            identity: super::embedded::identity(&state_dir),
            locks: FileLocks::new(state_dir.clone()),
            state_dir,
            busy_timeout,
            opened: OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&EmbeddedRegistry, RegistryError> {
        self.opened
            .get_or_init(|| async {
                let (dir, timeout) = (self.state_dir.clone(), self.busy_timeout);
                // Opening may wait out the busy timeout: off the async workers.
                off_thread(&self.state_dir, move || {
                    EmbeddedRegistry::open(&dir, timeout)
                })
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// One debug line per write, target `runner::registry_writes`: what the
/// scale benchmark counts.
fn written(op: &'static str, what: &str) {
    tracing::debug!(target: "runner::registry_writes", op, what, "registry write");
}

#[async_trait]
impl KvStore for LazyRegistry {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError> {
        self.get().await?.kv_get(key).await
    }
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError> {
        written("kv_put", key);
        self.get().await?.kv_put(key, value).await
    }
    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError> {
        written("kv_cas", key);
        self.get().await?.kv_cas(key, value, expected).await
    }
    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError> {
        written("kv_delete", key);
        self.get().await?.kv_delete(key).await
    }
    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError> {
        self.get().await?.kv_list(prefix).await
    }
}

#[async_trait]
impl Catalog for LazyRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.get().await?.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>, RegistryError> {
        self.get().await?.services().await
    }
    async fn service_summaries(&self) -> Result<Vec<super::ServiceSummary>, RegistryError> {
        self.get().await?.service_summaries().await
    }
    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        written("register", &instance.id);
        self.get().await?.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        written("deregister", id);
        self.get().await?.deregister(service, id).await
    }
}

#[async_trait]
impl Watch for LazyRegistry {
    async fn wait_for_change(
        &self,
        dep: &Dependency,
        index: u64,
        wait: Duration,
    ) -> Result<u64, RegistryError> {
        self.get().await?.wait_for_change(dep, index, wait).await
    }
}

// Locks are files beside the database: taking one does not open it.
#[async_trait]
impl DeployLocks for LazyRegistry {
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        self.locks.try_lock(service, holder).await
    }
    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        self.locks.lock_holder(service).await
    }
    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        self.locks.force_unlock(service).await
    }
}

impl Registry for LazyRegistry {
    fn identity(&self) -> String {
        self.identity.clone()
    }
}
