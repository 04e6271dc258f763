//! Open the embedded registry on first use, so a stage that never touches
//! KV or the catalog creates no state directory and takes no lock.

use super::{
    Dependency, EmbeddedRegistry, Instance, KvEntry, LockAttempt, LockHolder, Registry,
    RegistryError, filelock,
};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub struct LazyRegistry {
    state_dir: PathBuf,
    /// Known without opening the store (the directory may not exist yet).
    identity: String,
    busy_timeout: Duration,
    // The outcome of the first open, error included: a broken state dir is
    // reported the same way on every call instead of retried per call.
    opened: OnceLock<Result<EmbeddedRegistry, String>>,
}

impl LazyRegistry {
    pub fn new(state_dir: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            identity: super::embedded::identity(&state_dir),
            state_dir,
            busy_timeout,
            opened: OnceLock::new(),
        }
    }

    fn get(&self) -> Result<&EmbeddedRegistry, RegistryError> {
        self.opened
            .get_or_init(|| {
                EmbeddedRegistry::open(&self.state_dir, self.busy_timeout)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| RegistryError::Unavailable(e.clone()))
    }
}

#[async_trait]
impl Registry for LazyRegistry {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError> {
        self.get()?.kv_get(key).await
    }
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError> {
        self.get()?.kv_put(key, value).await
    }
    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError> {
        self.get()?.kv_cas(key, value, expected).await
    }
    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError> {
        self.get()?.kv_delete(key).await
    }
    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError> {
        self.get()?.kv_list(prefix).await
    }
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.get()?.instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>, RegistryError> {
        self.get()?.services().await
    }
    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.get()?.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        self.get()?.deregister(service, id).await
    }
    async fn wait_for_change(
        &self,
        dep: &Dependency,
        index: u64,
        wait: Duration,
    ) -> Result<u64, RegistryError> {
        self.get()?.wait_for_change(dep, index, wait).await
    }
    // Locks are files beside the database: taking one does not open it.
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        filelock::try_lock(&self.state_dir, service, holder)
    }
    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        filelock::holder(&self.state_dir, service)
    }
    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        filelock::force_unlock(&self.state_dir, service)
    }
}
