//! The registry: a KV store with modify indexes and a service catalog, behind
//! one trait so the embedded store and Consul are interchangeable.

mod consul;
mod embedded;
mod lazy;

pub use consul::ConsulRegistry;
pub use embedded::EmbeddedRegistry;
pub use lazy::LazyRegistry;

use async_trait::async_trait;

/// One KV entry, with Consul's index semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One instance of a service in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub healthy: bool,
}

#[derive(Debug, thiserror::Error)]
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
}

/// KV + catalog operations every backend provides.
#[async_trait]
pub trait Registry: Send + Sync {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError>;
    /// Unconditional write; returns the new modify index.
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError>;
    /// Write only if the key's modify index is `expected` (0: only if absent).
    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError>;
    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError>;
    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError>;

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError>;
    async fn services(&self) -> Result<Vec<String>, RegistryError>;
    async fn register(&self, instance: &Instance) -> Result<(), RegistryError>;
    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError>;
}
