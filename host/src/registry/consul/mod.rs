//! The Consul backend: the same KV and catalog semantics as the embedded
//! registry, over Consul's HTTP API (`consul-http-api.md`), so runner drops
//! into the seeds' stack: same keys, same service names, same templates.
//!
//! Every request has a timeout; connection errors and 5xx answers are retried
//! a bounded number of times with backoff; a 403 (ACL) becomes `Denied`
//! naming the key or service (`http`). Deploy locks are sessions (`locks`).

mod http;
mod locks;

use super::{
    Catalog, Check, Dependency, Health, Instance, KvEntry, KvStore, Registry, RegistryError,
    ServiceSummary, Watch,
};
use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

use crate::names;

#[derive(Clone)]
pub struct ConsulRegistry {
    base: Url,
    token: Option<String>,
    client: reqwest::Client,
    /// Each request's limit (blocking queries get theirs on top of the wait).
    timeout: Duration,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("base", &self.base.as_str())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    key: String,
    value: Option<String>,
    #[serde(default)]
    session: Option<String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<std::collections::BTreeMap<String, String>>,
}

/// `/v1/agent/service/<id>`: which service an instance ID belongs to.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    service: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    node: String,
    #[serde(rename = "CheckID", default)]
    check_id: String,
    #[serde(default)]
    name: String,
    status: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    output: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    #[serde(default)]
    service_name: String,
}

impl From<HealthCheck> for Check {
    fn from(c: HealthCheck) -> Check {
        Check {
            node: c.node,
            check_id: c.check_id,
            name: c.name,
            status: c.status,
            notes: c.notes,
            output: c.output,
            service_id: c.service_id,
            service_name: c.service_name,
        }
    }
}

/// Consul's longest blocking wait; longer waits are cut to it by the server.
const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(600);

impl ConsulRegistry {
    /// `address` is Consul's HTTP address (`http://127.0.0.1:8500`); `timeout`
    /// bounds each request.
    pub fn new(
        address: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        // As Consul's own clients read CONSUL_HTTP_ADDR: without a scheme it
        // is http (https with CONSUL_HTTP_SSL=true), as Consul's docs write it.
        let address = if address.contains("://") {
            address.to_string()
        } else {
            let ssl = std::env::var("CONSUL_HTTP_SSL")
                .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
            format!("{}://{address}", if ssl { "https" } else { "http" })
        };
        let address = address.as_str();
        let base = Url::parse(address)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                RegistryError::Unavailable(format!(
                    "\"{address}\" is not a Consul address; give one like http://127.0.0.1:8500 (--consul or CONSUL_HTTP_ADDR)"
                ))
            })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            // Consul never redirects a valid request; following one would send
            // a write to a path other than the one checked.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RegistryError::Unavailable(format!("consul client: {e}")))?;
        Ok(Self {
            base,
            token,
            client,
            timeout,
        })
    }

    async fn raw_pair(&self, key: &str) -> Result<Option<KvPair>, RegistryError> {
        Self::valid_key(key)?;
        let what = format!("key \"{key}\"");
        let (status, body) = self
            .send(Method::GET, self.url(&Self::kv_path(key), &[]), None, &what)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let pairs: Vec<KvPair> = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Backend(format!("consul answer for {what}: {e}"))
                })?;
                Ok(pairs.into_iter().find(|p| p.key == key))
            }
            other => Err(Self::unexpected(&what, other, &body)),
        }
    }

    /// Each segment percent-encoded: the key that was checked is the key sent.
    fn kv_path(key: &str) -> String {
        format!(
            "/v1/kv/{}",
            names::path_segments(key.trim_start_matches('/'))
        )
    }

    /// Dot segments cannot be encoded away (URL parsers and Consul's Go
    /// server treat `%2e%2e` as `..`): refuse them, whoever asks.
    fn valid_key(key: &str) -> Result<(), RegistryError> {
        names::kv_prefix(key.trim_start_matches('/'))
            .map(|_| ())
            .map_err(|e| RegistryError::Refused(e.to_string()))
    }

    fn valid_service(service: &str) -> Result<(), RegistryError> {
        names::service_name(service)
            .map(|_| ())
            .map_err(|e| RegistryError::Refused(e.to_string()))
    }

    fn decode(pair: KvPair) -> Result<KvEntry, RegistryError> {
        let value = match pair.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| {
                    RegistryError::Backend(format!("consul value of {}: {e}", pair.key))
                })?,
            None => Vec::new(),
        };
        Ok(KvEntry {
            key: pair.key,
            value,
            create_index: pair.create_index,
            modify_index: pair.modify_index,
        })
    }

    /// The service an instance ID is registered under on this agent, if any.
    async fn instance_owner(&self, id: &str) -> Result<Option<String>, RegistryError> {
        names::instance_id(id).map_err(|e| RegistryError::Refused(e.to_string()))?;
        let what = format!("instance \"{id}\"");
        let url = self.url(
            &format!("/v1/agent/service/{}", names::path_segment(id)),
            &[],
        );
        let (status, body) = self.send(Method::GET, url, None, &what).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let service: AgentService = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Backend(format!("consul answer for {what}: {e}"))
                })?;
                Ok(Some(service.service))
            }
            other => Err(Self::unexpected(&what, other, &body)),
        }
    }
}

#[async_trait]
impl KvStore for ConsulRegistry {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError> {
        self.raw_pair(key).await?.map(Self::decode).transpose()
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError> {
        Self::valid_key(key)?;
        let what = format!("key \"{key}\"");
        let (status, body) = self
            .send(
                Method::PUT,
                self.url(&Self::kv_path(key), &[]),
                Some(value.to_vec()),
                &what,
            )
            .await?;
        if !Self::boolean(&what, status, &body)? {
            return Err(RegistryError::Backend(format!(
                "consul did not write {what}"
            )));
        }
        // Consul's PUT answers only true/false: read the new index back.
        Ok(self.kv_get(key).await?.map(|e| e.modify_index).unwrap_or(0))
    }

    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError> {
        Self::valid_key(key)?;
        let what = format!("key \"{key}\"");
        let url = self.url(&Self::kv_path(key), &[("cas", expected.to_string())]);
        let (status, body) = self
            .send(Method::PUT, url, Some(value.to_vec()), &what)
            .await?;
        Self::boolean(&what, status, &body)
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError> {
        let what = format!("key \"{key}\"");
        // Consul's DELETE answers true either way: delete with CAS on the
        // index just read, so "existed" is exact even under concurrent writes.
        loop {
            let Some(entry) = self.kv_get(key).await? else {
                return Ok(false);
            };
            let url = self.url(
                &Self::kv_path(key),
                &[("cas", entry.modify_index.to_string())],
            );
            let (status, body) = self.send(Method::DELETE, url, None, &what).await?;
            if Self::boolean(&what, status, &body)? {
                return Ok(true);
            }
        }
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError> {
        Self::valid_key(prefix)?;
        let what = format!("keys under \"{prefix}\"");
        let url = self.url(&Self::kv_path(prefix), &[("recurse", String::new())]);
        let (status, body) = self.send(Method::GET, url, None, &what).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            StatusCode::OK => {
                let pairs: Vec<KvPair> = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Backend(format!("consul answer for {what}: {e}"))
                })?;
                let mut entries = pairs
                    .into_iter()
                    .filter(|p| p.key.starts_with(prefix))
                    .map(Self::decode)
                    .collect::<Result<Vec<_>, _>>()?;
                let bytes: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
                if bytes > super::MAX_LIST_BYTES {
                    return Err(super::list_too_large(prefix));
                }
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(entries)
            }
            other => Err(Self::unexpected(&what, other, &body)),
        }
    }
}

#[async_trait]
impl Catalog for ConsulRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        let what = format!("service \"{service}\"");
        Self::valid_service(service)?;
        let url = self.url(
            &format!("/v1/health/service/{}", names::path_segment(service)),
            &[],
        );
        let (status, body) = self.send(Method::GET, url, None, &what).await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected(&what, status, &body));
        }
        let entries: Vec<HealthEntry> = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Backend(format!("consul answer for {what}: {e}")))?;
        let mut instances: Vec<Instance> = entries
            .into_iter()
            .map(|e| Instance {
                id: e.service.id,
                name: e.service.service,
                // An empty service address means the node's address (Consul's rule).
                address: if e.service.address.is_empty() {
                    e.node.address.clone()
                } else {
                    e.service.address
                },
                port: e.service.port,
                tags: e.service.tags.unwrap_or_default(),
                status: Health::aggregate(
                    e.checks
                        .iter()
                        .map(|c| (c.check_id.as_str(), c.status.as_str())),
                ),
                node: e.node.node,
                node_address: e.node.address,
                meta: e.service.meta.unwrap_or_default(),
                checks: e.checks.into_iter().map(Check::from).collect(),
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn services(&self) -> Result<Vec<String>, RegistryError> {
        let (status, body) = self
            .send(
                Method::GET,
                self.url("/v1/catalog/services", &[]),
                None,
                "the service list",
            )
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("the service list", status, &body));
        }
        let services: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Backend(format!("consul service list: {e}")))?;
        // Consul lists itself; it is not a deployable service.
        Ok(services.into_keys().filter(|s| s != "consul").collect())
    }

    async fn service_summaries(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        let what = "the service list";
        let url = self.url("/v1/catalog/services", &[]);
        let (status, body) = self.send(Method::GET, url, None, what).await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected(what, status, &body));
        }
        let services: std::collections::BTreeMap<String, Option<Vec<String>>> =
            serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Backend(format!("consul service list: {e}")))?;
        Ok(services
            .into_iter()
            .map(|(name, tags)| {
                let mut tags = tags.unwrap_or_default();
                tags.sort();
                tags.dedup();
                ServiceSummary { name, tags }
            })
            .collect())
    }

    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        let what = format!("service \"{}\"", instance.name);
        Self::valid_service(&instance.name)?;
        // Consul's instance IDs are unique per agent: registering an ID that
        // another service uses would replace that service's instance.
        if let Some(owner) = self.instance_owner(&instance.id).await?
            && owner != instance.name
        {
            return Err(RegistryError::Conflict(format!(
                "instance ID \"{}\" belongs to service \"{owner}\"; pick another ID",
                instance.id
            )));
        }
        // A TCP check on the published port, as Registrator's default.
        let body = serde_json::json!({
            "ID": instance.id,
            "Name": instance.name,
            "Tags": instance.tags,
            "Address": instance.address,
            "Port": instance.port,
            "Meta": instance.meta,
            "Check": {
                "TCP": format!("{}:{}", instance.address, instance.port),
                "Interval": "10s",
                "Timeout": "2s",
                "DeregisterCriticalServiceAfter": "1m",
            },
        });
        let url = self.url("/v1/agent/service/register", &[]);
        let (status, response) = self
            .send(Method::PUT, url, Some(body.to_string().into_bytes()), &what)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected(&what, status, &response));
        }
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        // Consul deregisters by ID alone, on this agent: act only on an ID
        // this agent holds for this service.
        let existed = self.instance_owner(id).await?.as_deref() == Some(service);
        if !existed {
            return Ok(false);
        }
        let what = format!("instance \"{id}\" of service \"{service}\"");
        let url = self.url(
            &format!("/v1/agent/service/deregister/{}", names::path_segment(id)),
            &[],
        );
        let (status, body) = self.send(Method::PUT, url, None, &what).await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected(&what, status, &body));
        }
        Ok(true)
    }
}

#[async_trait]
impl Watch for ConsulRegistry {
    async fn wait_for_change(
        &self,
        dep: &Dependency,
        index: u64,
        wait: Duration,
    ) -> Result<u64, RegistryError> {
        let wait = wait.min(MAX_BLOCKING_WAIT);
        let mut query = vec![
            ("index", index.to_string()),
            ("wait", format!("{}ms", wait.as_millis().max(1))),
        ];
        let path = match dep {
            Dependency::Key(key) => {
                Self::valid_key(key)?;
                Self::kv_path(key)
            }
            Dependency::Prefix(prefix) => {
                Self::valid_key(prefix)?;
                query.push(("recurse", String::new()));
                Self::kv_path(prefix)
            }
            Dependency::Service(service) => {
                Self::valid_service(service)?;
                format!("/v1/health/service/{}", names::path_segment(service))
            }
            Dependency::Services => "/v1/catalog/services".to_string(),
        };
        let what = dep.to_string();
        // Consul may hold the answer up to wait/16 past `wait` (jitter).
        let timeout = wait + wait / 16 + self.timeout;
        let answer = self
            .send_with(
                Method::GET,
                self.url(&path, &query),
                None,
                &what,
                Some(timeout),
            )
            .await?;
        match (answer.status, answer.index) {
            (StatusCode::OK | StatusCode::NOT_FOUND, Some(index)) => Ok(index),
            (StatusCode::OK | StatusCode::NOT_FOUND, None) => Err(RegistryError::Backend(format!(
                "consul answered the blocking query for {what} without X-Consul-Index"
            ))),
            (other, _) => Err(Self::unexpected(&what, other, &answer.body)),
        }
    }
}

impl Registry for ConsulRegistry {
    fn endpoint(&self) -> Option<String> {
        Some(self.base.to_string())
    }

    /// `consul:` and the address's origin: scheme, host and port as the URL
    /// parser normalizes them (lowercase, default port dropped), without
    /// credentials or a path (requests replace the path anyway).
    fn identity(&self) -> String {
        format!("consul:{}", self.base.origin().ascii_serialization())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spellings of one Consul address share an identity; credentials and
    /// paths never reach the label.
    #[test]
    fn identity_is_the_normalized_origin() {
        let id = |address: &str| {
            ConsulRegistry::new(address, None, Duration::from_secs(1))
                .unwrap()
                .identity()
        };
        assert_eq!(id("http://127.0.0.1:8500"), "consul:http://127.0.0.1:8500");
        assert_eq!(id("HTTP://127.0.0.1:8500/"), "consul:http://127.0.0.1:8500");
        assert_eq!(
            id("http://user:secret@Consul.Example:8500/v1/?x=1"),
            "consul:http://consul.example:8500"
        );
        assert_eq!(
            id("https://consul.example:443"),
            "consul:https://consul.example"
        );
        assert_ne!(id("http://127.0.0.1:8500"), id("http://127.0.0.1:8501"));
        // CONSUL_HTTP_ADDR as Consul's docs write it: no scheme is http.
        assert_eq!(id("127.0.0.1:8500"), "consul:http://127.0.0.1:8500");
        assert_eq!(id("localhost:8500"), "consul:http://localhost:8500");
        assert!(ConsulRegistry::new("ftp://x:1", None, Duration::from_secs(1)).is_err());
    }
}
