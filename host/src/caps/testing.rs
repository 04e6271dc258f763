//! An in-process harness for host calls: a capability's run state under
//! given grants, over an in-memory registry and the fake container engine,
//! called directly (no Wasm, no Docker, no files), as Spin's
//! `factors-test` builds one factor's instance state.
//!
//! ```ignore
//! let host = TestHost::new();
//! let grants = TestHost::grants(GrantsSpec { kv: KvSpec { kv: vec!["app/".into()] }, ..Default::default() });
//! let mut kv: KvCap = host.prepare(&grants);
//! kv::Host::put(&mut kv, "app/color".into(), b"blue".to_vec()).await?;
//! ```

use super::docker::DockerEngine;
use super::docker::fake::FakeEngine;
use super::{Capability, Grants, GrantsSpec, HostServices, RunContext};
use crate::registry::{EmbeddedRegistry, Registry};
use crate::runtime::Limits;
use std::sync::Arc;
use std::time::Duration;

/// The shared host of one test: registry, engine and limits.
pub(crate) struct TestHost {
    pub services: HostServices,
    pub registry: Arc<dyn Registry>,
    pub engine: Arc<FakeEngine>,
    pub limits: Limits,
}

impl TestHost {
    /// An in-memory registry and an empty fake engine.
    pub fn new() -> Self {
        Self::with_engine(FakeEngine::new())
    }

    pub fn with_engine(engine: FakeEngine) -> Self {
        let registry: Arc<dyn Registry> = Arc::new(
            EmbeddedRegistry::in_memory(Duration::from_secs(5)).expect("in-memory registry"),
        );
        let engine = Arc::new(engine);
        Self {
            services: HostServices {
                registry: registry.clone(),
                docker: DockerEngine::from_engine(engine.clone()),
                hooks: None,
                journal_service: None,
            },
            registry,
            engine,
            limits: Limits {
                host_call_timeout: Duration::from_secs(10),
                http_max_body: 1 << 20,
                ..Limits::default()
            },
        }
    }

    /// Validated grants from a spec with no proxies or hooks defined.
    pub fn grants(spec: GrantsSpec) -> Grants {
        spec.validate_with(&[], &[]).expect("valid grants")
    }

    /// One capability's run state under `grants`.
    pub fn prepare<C: Capability>(&self, grants: &Grants) -> C {
        C::prepare(&RunContext {
            plugin: "test",
            grants,
            host: &self.services,
            limits: &self.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::PluginError;
    use crate::bindings::runner::plugin::kv::Host as _;
    use crate::caps::kv::{KvCap, KvSpec};

    #[tokio::test]
    async fn a_capability_runs_in_process_under_its_grant() {
        let host = TestHost::new();
        let grants = TestHost::grants(GrantsSpec {
            kv: KvSpec {
                kv: vec!["app/".into()],
            },
            ..Default::default()
        });
        let mut kv: KvCap = host.prepare(&grants);
        kv.put("app/color".into(), b"blue".to_vec()).await.unwrap();
        let stored = host.registry.kv_get("app/color").await.unwrap().unwrap();
        assert_eq!(stored.value, b"blue");
        let denied = kv.put("other/x".into(), vec![]).await.unwrap_err();
        assert!(matches!(denied, PluginError::Denied(m) if m.contains("--allow-kv")));
    }
}
