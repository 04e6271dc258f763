//! `journal`: what the running deploy of a service is doing, written before
//! each step with an external effect, so a deploy that dies is finished or
//! undone by the next runner (see `wit/journal.wit`).
//!
//! The entry lives at `_runner/<service>/journal`, in runner's reserved
//! namespace: no kv grant reaches it, so a plugin can only write its own
//! service's journal, through this interface, while it holds the deploy lock.

use super::{Capability, Grants, NoGrant, RunContext, ValidateContext, bounded, registry_error};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::journal;
use crate::grants::GrantError;
use crate::registry::{Registry, RegistryError, runner_key};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most details one entry holds, and bytes per key or value.
pub const MAX_DETAILS: usize = 32;
pub const MAX_DETAIL_BYTES: usize = 1024;
const MAX_STEP_CHARS: usize = 64;

/// Where a deploy is; decides what recovery does (see `wit/journal.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    BeforeSwitch,
    Switching,
    Finishing,
}

impl Phase {
    /// What recovery will do with a deploy that died in this phase.
    pub fn recovery(self) -> &'static str {
        match self {
            Phase::BeforeSwitch => "remove the candidate; proxy and color stay as they are",
            Phase::Switching => "switch back to the last known-good color and remove the candidate",
            Phase::Finishing => "finish the deploy: the candidate passed and stays",
        }
    }
}

/// One journal entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub phase: Phase,
    pub step: String,
    pub details: Vec<(String, String)>,
    pub holder: String,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl Entry {
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The key of `service`'s journal.
pub fn key(service: &str) -> String {
    runner_key(service, "journal")
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "the journal of {service} at {key} is not a journal entry ({source}); remove it with `runner kv delete {key}` once the service is checked by hand"
    )]
    Corrupt {
        service: String,
        key: String,
        source: serde_json::Error,
    },
}

/// The journal entry of `service`, if a deploy left one.
pub async fn read(registry: &dyn Registry, service: &str) -> Result<Option<Entry>, JournalError> {
    let key = key(service);
    let Some(stored) = registry.kv_get(&key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&stored.value)
        .map(Some)
        .map_err(|source| JournalError::Corrupt {
            service: service.to_string(),
            key,
            source,
        })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn check_step(step: &str) -> Result<(), PluginError> {
    let ok = !step.is_empty()
        && step.chars().count() <= MAX_STEP_CHARS
        && step
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PluginError::InvalidConfig(format!(
            "journal: step \"{}\" must be 1-{MAX_STEP_CHARS} characters of a-z, 0-9 and -",
            step.escape_debug()
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()
        )))
    }
}

fn check_details(details: &[(String, String)]) -> Result<(), PluginError> {
    if details.len() > MAX_DETAILS {
        return Err(PluginError::InvalidConfig(format!(
            "journal: {} details, at most {MAX_DETAILS}",
            details.len()
        )));
    }
    if let Some((k, _)) = details
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_DETAIL_BYTES || v.len() > MAX_DETAIL_BYTES)
    {
        return Err(PluginError::InvalidConfig(format!(
            "journal: detail \"{}\" is empty or over {MAX_DETAIL_BYTES} bytes (key or value)",
            k.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

pub struct JournalCap {
    /// The service whose deploy lock this execution holds; `None` for hooks
    /// and unlocked runs, which have no journal.
    service: Option<String>,
    registry: Arc<dyn Registry>,
    timeout: Duration,
    started_ms: u64,
    /// The step written last, for the `STEP:done` crash point.
    last_step: Option<String>,
}

impl JournalCap {
    fn service(&self) -> Result<String, PluginError> {
        self.service.clone().ok_or_else(|| {
            PluginError::Denied(
                "journal: only a stage run for a service under its deploy lock has a journal; \
                 run it with --service NAME and Docker grants or --lock (hooks have none)"
                    .into(),
            )
        })
    }

    fn step_done(&mut self) {
        if let Some(previous) = self.last_step.take() {
            crate::faults::crash_point(&format!("{previous}:done"));
        }
    }
}

fn phase_from(phase: journal::Phase) -> Phase {
    match phase {
        journal::Phase::BeforeSwitch => Phase::BeforeSwitch,
        journal::Phase::Switching => Phase::Switching,
        journal::Phase::Finishing => Phase::Finishing,
    }
}

fn phase_to(phase: Phase) -> journal::Phase {
    match phase {
        Phase::BeforeSwitch => journal::Phase::BeforeSwitch,
        Phase::Switching => journal::Phase::Switching,
        Phase::Finishing => journal::Phase::Finishing,
    }
}

impl journal::Host for JournalCap {
    async fn write(
        &mut self,
        phase: journal::Phase,
        step: String,
        details: Vec<(String, String)>,
    ) -> Result<(), PluginError> {
        check_step(&step)?;
        check_details(&details)?;
        let service = self.service()?;
        self.step_done();
        let registry = self.registry.clone();
        let now = now_ms();
        if self.started_ms == 0 {
            self.started_ms = now;
        }
        let entry = Entry {
            phase: phase_from(phase),
            step: step.clone(),
            details,
            holder: format!(
                "{}@{} pid {}",
                crate::registry::this_user(),
                crate::registry::this_host(),
                std::process::id()
            ),
            started_ms: self.started_ms,
            updated_ms: now,
        };
        let value = serde_json::to_vec(&entry)
            .map_err(|e| PluginError::Failed(format!("journal: encoding the entry: {e}")))?;
        bounded("journal.write", self.timeout, async {
            registry
                .kv_put(&key(&service), &value)
                .await
                .map_err(|e| registry_error("journal", e))
        })
        .await?;
        tracing::debug!(target: "plugin", "journal: {service} at {step} ({phase:?})");
        crate::faults::crash_point(&step);
        self.last_step = Some(step);
        Ok(())
    }

    async fn read(&mut self) -> Result<Option<journal::Entry>, PluginError> {
        let service = self.service()?;
        let registry = self.registry.clone();
        let entry = bounded("journal.read", self.timeout, async {
            read(&*registry, &service).await.map_err(|e| match e {
                JournalError::Registry(e) => registry_error("journal", e),
                e @ JournalError::Corrupt { .. } => PluginError::Failed(format!("journal: {e}")),
            })
        })
        .await?;
        Ok(entry.map(|e| journal::Entry {
            phase: phase_to(e.phase),
            step: e.step,
            details: e.details,
            holder: e.holder,
            started_ms: e.started_ms,
            updated_ms: e.updated_ms,
        }))
    }

    async fn clear(&mut self) -> Result<(), PluginError> {
        let service = self.service()?;
        self.step_done();
        let registry = self.registry.clone();
        bounded("journal.clear", self.timeout, async {
            registry
                .kv_delete(&key(&service))
                .await
                .map(|_| ())
                .map_err(|e| registry_error("journal", e))
        })
        .await?;
        self.started_ms = 0;
        Ok(())
    }
}

impl Capability for JournalCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/journal"];
    const FLAG_HINT: &'static str = "no flag: a stage run for --service under its deploy lock";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("journal.wit", include_str!("../../../wit/journal.wit"))];
    type Spec = NoGrant;
    type Grant = ();

    fn validate(_: &NoGrant, _: &mut ValidateContext<'_>) -> Result<(), GrantError> {
        Ok(())
    }

    /// The deploy lock grants it, not the operator: never "uncovered".
    fn granted(_: &Grants) -> bool {
        true
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            service: cx.host.journal_service.clone(),
            registry: cx.host.registry.clone(),
            timeout: cx.limits.host_call_timeout,
            started_ms: 0,
            last_step: None,
        }
    }

    link_interfaces!(journal);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_details_are_bounded() {
        assert!(check_step("post-tests").is_ok());
        for bad in ["", "Switch", "a/b", "x\n", &"a".repeat(65)] {
            assert!(check_step(bad).is_err(), "{bad:?}");
        }
        let many: Vec<_> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_details(&many).is_err());
        assert!(check_details(&[("k".into(), "v".repeat(1025))]).is_err());
        assert!(check_details(&[(String::new(), "v".into())]).is_err());
        assert!(check_details(&[("known-good".into(), "green".into())]).is_ok());
    }

    #[test]
    fn entries_round_trip_as_json() {
        let entry = Entry {
            phase: Phase::Switching,
            step: "switch".into(),
            details: vec![("candidate".into(), "blue".into())],
            holder: "me@here pid 1".into(),
            started_ms: 1,
            updated_ms: 2,
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert!(text.contains("\"switching\""), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
        assert_eq!(entry.detail("candidate"), Some("blue"));
    }
}
