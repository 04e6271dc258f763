//! Deploy history, kept in the registry backend beside the service's own
//! keys (`<service>/runner/history/<id>`), so every runner sharing a Consul
//! (or a state directory) sees the same history. A pipeline paused at a
//! promotion gate also leaves `<service>/runner/paused`: where to resume.

use super::report::StageSummary;
use crate::registry::{Registry, RegistryError};
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
    format!("{service}/runner/history/")
}

fn paused_key(service: &str) -> String {
    format!("{service}/runner/paused")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Backend(format!("encoding: {e}")))
}

pub async fn record(
    registry: &dyn Registry,
    service: &str,
    record: &DeployRecord,
) -> Result<(), RegistryError> {
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
    Ok(registry
        .kv_get(&paused_key(service))
        .await?
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}
