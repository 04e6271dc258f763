//! Deploy locks on Consul: a session with a TTL, renewed while held, and a
//! KV acquire on the service's lock key; a crashed holder's session expires
//! and releases the lock (behavior "release").

use super::ConsulRegistry;
use crate::names;
use crate::registry::{DeployLocks, LockAttempt, LockGuard, LockHolder, RegistryError};
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use std::time::Duration;

/// How long a lock outlives a holder that stops renewing (crashed, cut off).
const LOCK_TTL: Duration = Duration::from_secs(15);

struct ConsulLock {
    consul: ConsulRegistry,
    key: String,
    session: String,
    renewal: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl LockGuard for ConsulLock {
    async fn release(self: Box<Self>) -> Result<(), RegistryError> {
        self.renewal.abort();
        let url = self.consul.url(
            &ConsulRegistry::kv_path(&self.key),
            &[("release", self.session.clone())],
        );
        let released = self
            .consul
            .send(Method::PUT, url, Some(Vec::new()), &self.key)
            .await;
        // Destroying the session releases the lock too, whatever happened above.
        self.consul
            .session_put(
                &format!("/v1/session/destroy/{}", names::path_segment(&self.session)),
                None,
            )
            .await?;
        released.map(|_| ())
    }
}

impl ConsulRegistry {
    /// In runner's reserved namespace: no plugin's KV grant covers it.
    fn lock_key(service: &str) -> String {
        crate::registry::runner_key(service, "lock")
    }

    async fn session_put(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, RegistryError> {
        let (status, bytes) = self
            .send(Method::PUT, self.url(path, &[]), body, "a lock session")
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("a lock session", status, &bytes));
        }
        Ok(bytes)
    }
}

#[async_trait]
impl DeployLocks for ConsulRegistry {
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        let key = Self::lock_key(service);
        let body = serde_json::json!({
            "Name": format!("runner deploy lock of {service}"),
            "TTL": format!("{}s", LOCK_TTL.as_secs()),
            "Behavior": "release",
            "LockDelay": "0s",
        });
        let created = self
            .session_put("/v1/session/create", Some(body.to_string().into_bytes()))
            .await?;
        let session = serde_json::from_slice::<serde_json::Value>(&created)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_string))
            .ok_or_else(|| {
                RegistryError::Backend("consul session create: no ID in the answer".into())
            })?;
        let meta = serde_json::to_vec(holder).map_err(|e| RegistryError::Backend(e.to_string()))?;
        let url = self.url(&Self::kv_path(&key), &[("acquire", session.clone())]);
        let (status, answer) = self
            .send(Method::PUT, url, Some(meta), &format!("key \"{key}\""))
            .await?;
        if Self::boolean(&key, status, &answer)? {
            let consul = self.clone();
            let id = session.clone();
            // Renew well inside the TTL; if this process dies, the TTL frees the lock.
            let renewal = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LOCK_TTL / 3).await;
                    if let Err(e) = consul
                        .session_put(
                            &format!("/v1/session/renew/{}", names::path_segment(&id)),
                            None,
                        )
                        .await
                    {
                        tracing::warn!("cannot renew the deploy lock session: {e}");
                    }
                }
            });
            return Ok(LockAttempt::Acquired(Box::new(ConsulLock {
                consul: self.clone(),
                key,
                session,
                renewal,
            })));
        }
        self.session_put(
            &format!("/v1/session/destroy/{}", names::path_segment(&session)),
            None,
        )
        .await?;
        Ok(LockAttempt::Held(self.lock_holder(service).await?))
    }

    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        let Some(pair) = self.raw_pair(&Self::lock_key(service)).await? else {
            return Ok(None);
        };
        if pair.session.as_deref().unwrap_or_default().is_empty() {
            return Ok(None);
        }
        let entry = Self::decode(pair)?;
        Ok(serde_json::from_slice(&entry.value).ok())
    }

    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        let pair = self.raw_pair(&Self::lock_key(service)).await?;
        match pair.and_then(|p| p.session).filter(|s| !s.is_empty()) {
            None => Ok(false),
            Some(session) => {
                self.session_put(
                    &format!("/v1/session/destroy/{}", names::path_segment(&session)),
                    None,
                )
                .await?;
                Ok(true)
            }
        }
    }
}
