//! `kv`: the registry's key/value store, limited to granted key prefixes.

use super::{Capability, Grants, RunContext, ValidateContext, bounded, denied, registry_error};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::kv;
use crate::grants::{GrantError, InvalidGrant};
use crate::names;
use crate::registry::{self, KvEntry, Registry};
use std::sync::Arc;
use std::time::Duration;

/// Key prefixes a plugin may read and write (`--allow-kv`). `*` grants every key.
///
/// Grants match at `/` boundaries: `books-ms/` covers the keys under it, and
/// `books-ms` covers the key `books-ms` and the keys under `books-ms/`, never
/// `books-msX/`. A raw string prefix must be asked for explicitly with a
/// trailing `*` (`books-ms*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvGrant {
    prefixes: Vec<String>,
}

impl KvGrant {
    pub fn parse(prefixes: &[String]) -> Result<Self, InvalidGrant> {
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

    /// Whether `key` is a valid key inside the grant. runner's own records
    /// (`_runner/`) are outside every grant, `*` included.
    pub fn allows_key(&self, key: &str) -> bool {
        names::kv_key(key).is_ok()
            && !registry::is_reserved(key)
            && self.prefixes.iter().any(|p| covers(p, key))
    }

    /// Listing `prefix` is allowed when every key it can return is granted
    /// (reserved keys it would return are filtered out by [`KvGrant::visible`]).
    pub fn allows_prefix(&self, prefix: &str) -> bool {
        names::kv_prefix(prefix).is_ok()
            && !registry::is_reserved(prefix)
            && self.prefixes.iter().any(|p| covers(p, prefix))
    }

    /// Whether a listed entry may be shown to the plugin: a listed prefix
    /// can return keys the grant does not cover (`books-ms` lists
    /// `books-msX/`, `""` lists runner's records), so each is checked.
    pub fn visible(&self, key: &str) -> bool {
        self.allows_key(key)
    }

    /// Validate `key`, then check it against the reserved namespace and the grant.
    pub fn check(&self, op: &str, key: &str) -> Result<(), PluginError> {
        names::kv_key(key).map_err(|e| e.to_plugin_error("kv"))?;
        if registry::is_reserved(key) {
            return Err(reserved(op, key));
        }
        if self.allows_key(key) {
            Ok(())
        } else {
            Err(self.deny(op, key))
        }
    }

    /// As [`KvGrant::check`], for a prefix to list.
    pub fn check_prefix(&self, op: &str, prefix: &str) -> Result<(), PluginError> {
        names::kv_prefix(prefix).map_err(|e| e.to_plugin_error("kv"))?;
        if registry::is_reserved(prefix) {
            return Err(reserved(op, prefix));
        }
        if self.allows_prefix(prefix) {
            Ok(())
        } else {
            Err(self.deny(op, prefix))
        }
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

/// Whether the grant `pattern` covers `key` (or a prefix to list).
fn covers(pattern: &str, key: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(raw) = pattern.strip_suffix('*') {
        return key.starts_with(raw);
    }
    if pattern.ends_with('/') {
        return key.starts_with(pattern);
    }
    key == pattern
        || key
            .strip_prefix(pattern)
            .is_some_and(|r| r.starts_with('/'))
}

fn reserved(op: &str, key: &str) -> PluginError {
    PluginError::Denied(format!(
        "kv: {op} of key \"{key}\" is refused: keys under {} are reserved for runner's own records \
         (deploy history, paused runs, locks) and no grant covers them",
        registry::RESERVED_PREFIX
    ))
}

/// Largest value a plugin may write: Consul's own limit (512 KiB), so a
/// store behaves the same on both backends and a grant cannot fill it with
/// a few writes.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

fn check_value(key: &str, value: &[u8]) -> Result<(), PluginError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(PluginError::InvalidConfig(format!(
            "kv: the value for \"{key}\" is {} bytes, over the {} KiB limit of a value",
            value.len(),
            MAX_VALUE_BYTES >> 10
        )));
    }
    Ok(())
}

pub struct KvCap {
    grant: KvGrant,
    registry: Arc<dyn Registry>,
    timeout: Duration,
}

impl KvCap {
    fn check(&self, op: &str, key: &str) -> Result<(), PluginError> {
        self.grant.check(op, key)
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
        check_value(&key, &value)?;
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
        check_value(&key, &value)?;
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
        self.grant.check_prefix("list", &prefix)?;
        bounded("kv.list", self.timeout, async {
            let entries = self
                .registry
                .kv_list(&prefix)
                .await
                .map_err(|e| registry_error("kv", e))?;
            Ok(entries
                .into_iter()
                .filter(|e| self.grant.visible(&e.key))
                .map(to_wit)
                .collect())
        })
        .await
    }
}

list_grant_spec! {
    /// Allow KV keys under PREFIX (`books-ms/`), or `*` for all.
    KvSpec { kv: "allow-kv", "PREFIX" }
}

impl Capability for KvCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/kv"];
    const FLAG_HINT: &'static str = "--allow-kv PREFIX";
    const TOML_HINT: &'static str = "grants.kv = [\"PREFIX/\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("kv.wit", include_str!("../../../wit/kv.wit"))];
    type Spec = KvSpec;
    type Grant = KvGrant;

    fn validate(spec: &KvSpec, _: &mut ValidateContext<'_>) -> Result<KvGrant, GrantError> {
        KvGrant::parse(&spec.kv)
            .map_err(|r| GrantError::invalid("--allow-kv", spec.kv.join(","), r))
    }

    fn granted(grants: &Grants) -> bool {
        !grants.kv.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            grant: cx.grants.kv.clone(),
            registry: cx.host.registry.clone(),
            timeout: cx.limits.host_call_timeout,
        }
    }

    link_interfaces!(kv);
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
        // Without a trailing '/', a grant still stops at a segment boundary.
        let bare = grant(&["books-ms"]);
        assert!(bare.allows_key("books-ms"));
        assert!(bare.allows_key("books-ms/color"));
        assert!(!bare.allows_key("books-msX/color"));
        assert!(grant(&["books-ms*"]).allows_key("books-msX/color"));
        assert!(!KvGrant::default().allows_key("x"));
    }

    #[test]
    fn reserved_records_are_outside_every_grant() {
        let all = grant(&["*"]);
        assert!(!all.allows_key("_runner/books-ms/paused"));
        assert!(!all.allows_prefix("_runner/"));
        assert!(all.allows_prefix(""));
        assert!(!all.visible("_runner/books-ms/history/1"));
        // Where older runners kept records is reserved too: they are moved in on first use.
        assert!(!all.allows_key("books-ms/runner/history/1"));
        assert!(!all.allows_key("books-ms/runner/paused"));
        assert!(all.allows_key("books-ms/runner/other"));
        let Err(PluginError::Denied(msg)) = all.check("put", "_runner/books-ms/paused") else {
            panic!()
        };
        assert!(msg.contains("reserved"), "{msg}");
    }

    #[test]
    fn invalid_keys_are_refused_before_the_grant() {
        let g = grant(&["books-ms/"]);
        assert!(!g.allows_key("books-ms/../other/secret"));
        let Err(PluginError::InvalidConfig(msg)) = g.check("put", "books-ms/../other/secret")
        else {
            panic!()
        };
        assert!(msg.starts_with("kv: key"), "{msg}");
        assert!(matches!(
            grant(&["*"]).check_prefix("list", "a//"),
            Err(PluginError::InvalidConfig(_))
        ));
    }

    #[test]
    fn values_are_bounded() {
        assert!(check_value("a/b", &vec![0; MAX_VALUE_BYTES]).is_ok());
        let Err(PluginError::InvalidConfig(msg)) =
            check_value("a/b", &vec![0; MAX_VALUE_BYTES + 1])
        else {
            panic!()
        };
        assert!(msg.contains("512 KiB"), "{msg}");
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
