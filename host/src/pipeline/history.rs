//! Deploy history, kept in the registry backend so every runner sharing a
//! Consul (or a state directory) sees the same history:
//! `_runner/<service>/history/<id>`. A pipeline paused at a promotion gate
//! also leaves `_runner/<service>/paused`: where to resume. Both live in
//! runner's reserved namespace, which no plugin grant covers, so a stage
//! cannot forge a deploy or inject outputs into a paused run.
//!
//! Older runners kept these records beside the service's own keys
//! (`<service>/runner/...`), inside the prefix a deploy stage is granted.
//! They are moved on first use, once per service (a marker records it), and
//! no plugin grant covers those old places any more (`registry::is_reserved`),
//! so nothing a stage writes there under this runner is ever taken for a record.

use super::report::StageSummary;
use crate::registry::{self, Registry, RegistryError, runner_key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One run of a pipeline (or a rollback, or a promotion).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Milliseconds since the epoch at the start, zero-padded: sorts by time.
    pub id: String,
    /// `run`, `rollback` or `promote`.
    pub kind: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub user: String,
    pub host: String,
    /// What was deployed (the deploy stage's image), if known.
    pub version: String,
    /// The color serving afterwards, if the deploy stage said.
    pub color: String,
    /// succeeded, failed or paused.
    pub outcome: String,
    pub duration_ms: u64,
    pub stages: Vec<StageSummary>,
}

/// Where a paused pipeline continues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paused {
    /// The run that paused.
    pub record: String,
    /// The stage that paused (it runs again with `action=promote`).
    pub stage: String,
    /// Outputs of the stages before and including it.
    pub outputs: BTreeMap<String, String>,
}

fn prefix(service: &str) -> String {
    runner_key(service, "history/")
}

fn paused_key(service: &str) -> String {
    runner_key(service, "paused")
}

/// Move records from where runners before the reserved namespace kept them.
async fn migrate(registry: &dyn Registry, service: &str) -> Result<(), RegistryError> {
    let marker = runner_key(service, "migrated");
    if registry.kv_get(&marker).await?.is_some() {
        return Ok(());
    }
    let legacy = format!("{service}/{}", registry::LEGACY_HISTORY);
    let old = registry.kv_list(&legacy).await?;
    let moved = old.len();
    for entry in old {
        let id = &entry.key[legacy.len()..];
        registry
            .kv_put(&format!("{}{id}", prefix(service)), &entry.value)
            .await?;
        registry.kv_delete(&entry.key).await?;
    }
    if let Some(paused) = registry
        .kv_get(&format!("{service}/{}", registry::LEGACY_PAUSED))
        .await?
    {
        registry.kv_put(&paused_key(service), &paused.value).await?;
        registry.kv_delete(&paused.key).await?;
    }
    registry.kv_put(&marker, b"1").await?;
    if moved > 0 {
        tracing::info!(
            "moved {moved} deploy records of {service} into {}",
            prefix(service)
        );
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Backend(format!("encoding: {e}")))
}

pub async fn record(
    registry: &dyn Registry,
    service: &str,
    record: &DeployRecord,
) -> Result<(), RegistryError> {
    migrate(registry, service).await?;
    registry
        .kv_put(
            &format!("{}{}", prefix(service), record.id),
            &encode(record)?,
        )
        .await
        .map(|_| ())
}

/// The last `limit` records, newest first.
pub async fn list(
    registry: &dyn Registry,
    service: &str,
    limit: usize,
) -> Result<Vec<DeployRecord>, RegistryError> {
    migrate(registry, service).await?;
    let mut records: Vec<DeployRecord> = registry
        .kv_list(&prefix(service))
        .await?
        .into_iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    records.sort_by(|a, b| b.id.cmp(&a.id));
    records.truncate(limit);
    Ok(records)
}

pub async fn set_paused(
    registry: &dyn Registry,
    service: &str,
    paused: Option<&Paused>,
) -> Result<(), RegistryError> {
    migrate(registry, service).await?;
    match paused {
        Some(p) => registry
            .kv_put(&paused_key(service), &encode(p)?)
            .await
            .map(|_| ()),
        None => registry.kv_delete(&paused_key(service)).await.map(|_| ()),
    }
}

pub async fn paused(
    registry: &dyn Registry,
    service: &str,
) -> Result<Option<Paused>, RegistryError> {
    migrate(registry, service).await?;
    Ok(registry
        .kv_get(&paused_key(service))
        .await?
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{EmbeddedRegistry, KvStore};
    use std::time::Duration;

    #[tokio::test]
    async fn legacy_records_move_once_into_the_reserved_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let reg = EmbeddedRegistry::open(dir.path(), Duration::from_secs(5)).unwrap();
        // Records as an older runner left them, at the old places.
        let plant = |id: &'static str| {
            let reg = &reg;
            async move {
                let record = serde_json::json!({"id": id, "kind": "run", "started_at": "",
                    "user": "u", "host": "h", "version": "v1", "color": "blue",
                    "outcome": "succeeded", "duration_ms": 1, "stages": []});
                let paused = serde_json::json!({"record": id, "stage": "deploy", "outputs": {}});
                let history = format!("books-ms/runner/history/{id}");
                reg.kv_put(&history, record.to_string().as_bytes())
                    .await
                    .unwrap();
                let paused = paused.to_string();
                reg.kv_put("books-ms/runner/paused", paused.as_bytes())
                    .await
                    .unwrap();
            }
        };
        plant("001").await;
        let records = list(&reg, "books-ms", 10).await.unwrap();
        assert_eq!(records.len(), 1);
        let moved = reg.kv_get("_runner/books-ms/history/001").await.unwrap();
        assert!(moved.is_some());
        let left = reg.kv_get("books-ms/runner/history/001").await.unwrap();
        assert!(left.is_none());
        assert_eq!(
            paused(&reg, "books-ms").await.unwrap().unwrap().record,
            "001"
        );
        // A record planted at the old place after the move is never read.
        plant("999").await;
        let records = list(&reg, "books-ms", 10).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "001");
        assert_eq!(
            paused(&reg, "books-ms").await.unwrap().unwrap().record,
            "001"
        );
    }
}
