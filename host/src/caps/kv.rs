//! `kv`: the registry's key/value store, limited to granted key prefixes.

use super::{HostServices, bounded, denied, registry_error};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::kv;
use crate::registry::{KvEntry, Registry};
use std::sync::Arc;
use std::time::Duration;

/// Key prefixes a plugin may read and write (`--allow-kv`). `*` grants every key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvGrant {
    prefixes: Vec<String>,
}

impl KvGrant {
    pub fn parse(prefixes: &[String]) -> Result<Self, String> {
        for p in prefixes {
            if p.is_empty() {
                return Err(
                    "an empty prefix would grant every key; write `*` if that is meant".into(),
                );
            }
        }
        Ok(Self {
            prefixes: prefixes.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn allows_key(&self, key: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| p == "*" || key.starts_with(p.as_str()))
    }

    /// Listing `prefix` is allowed when every key it can return is granted.
    pub fn allows_prefix(&self, prefix: &str) -> bool {
        self.allows_key(prefix)
    }

    /// The denial for `key`, suggesting the narrowest useful grant.
    pub fn deny(&self, op: &str, key: &str) -> PluginError {
        let suggestion = match key.find('/') {
            Some(i) => &key[..=i],
            None => key,
        };
        let granted = if self.prefixes.is_empty() {
            "no KV prefix is granted".to_string()
        } else {
            format!("granted prefixes: {}", self.prefixes.join(", "))
        };
        denied(
            "kv",
            format_args!("{op} of key \"{key}\" is outside the grant ({granted})"),
            format_args!("--allow-kv {suggestion}"),
        )
    }
}

pub struct KvCap {
    grant: KvGrant,
    registry: Arc<dyn Registry>,
    timeout: Duration,
}

impl KvCap {
    pub fn new(grant: KvGrant, services: &HostServices) -> Self {
        Self {
            grant,
            registry: services.registry.clone(),
            timeout: services.host_call_timeout,
        }
    }

    fn check(&self, op: &str, key: &str) -> Result<(), PluginError> {
        if self.grant.allows_key(key) {
            Ok(())
        } else {
            Err(self.grant.deny(op, key))
        }
    }
}

fn to_wit(e: KvEntry) -> kv::Entry {
    kv::Entry {
        key: e.key,
        value: e.value,
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

impl kv::Host for KvCap {
    async fn get(&mut self, key: String) -> Result<Option<kv::Entry>, PluginError> {
        self.check("get", &key)?;
        bounded("kv.get", self.timeout, async {
            let entry = self
                .registry
                .kv_get(&key)
                .await
                .map_err(|e| registry_error("kv", e))?;
            Ok(entry.map(to_wit))
        })
        .await
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<u64, PluginError> {
        self.check("put", &key)?;
        bounded("kv.put", self.timeout, async {
            self.registry
                .kv_put(&key, &value)
                .await
                .map_err(|e| registry_error("kv", e))
        })
        .await
    }

    async fn cas(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected_index: u64,
    ) -> Result<bool, PluginError> {
        self.check("cas", &key)?;
        bounded("kv.cas", self.timeout, async {
            self.registry
                .kv_cas(&key, &value, expected_index)
                .await
                .map_err(|e| registry_error("kv", e))
        })
        .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, PluginError> {
        self.check("delete", &key)?;
        bounded("kv.delete", self.timeout, async {
            self.registry
                .kv_delete(&key)
                .await
                .map_err(|e| registry_error("kv", e))
        })
        .await
    }

    async fn list(&mut self, prefix: String) -> Result<Vec<kv::Entry>, PluginError> {
        if !self.grant.allows_prefix(&prefix) {
            return Err(self.grant.deny("list", &prefix));
        }
        bounded("kv.list", self.timeout, async {
            let entries = self
                .registry
                .kv_list(&prefix)
                .await
                .map_err(|e| registry_error("kv", e))?;
            Ok(entries.into_iter().map(to_wit).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(p: &[&str]) -> KvGrant {
        KvGrant::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn prefixes_bound_keys_and_lists() {
        let g = grant(&["books-ms/"]);
        assert!(g.allows_key("books-ms/color"));
        assert!(!g.allows_key("books-ms"));
        assert!(!g.allows_key("other/color"));
        assert!(g.allows_prefix("books-ms/"));
        assert!(!g.allows_prefix("books"));
        assert!(grant(&["*"]).allows_key("anything"));
        assert!(!KvGrant::default().allows_key("x"));
    }

    #[test]
    fn empty_prefix_is_rejected() {
        assert!(KvGrant::parse(&["".to_string()]).is_err());
    }

    #[test]
    fn denial_names_capability_and_fix() {
        let msg = match grant(&["a/"]).deny("get", "books-ms/color") {
            PluginError::Denied(m) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("kv:"), "{msg}");
        assert!(msg.contains("--allow-kv books-ms/"), "{msg}");
    }
}
