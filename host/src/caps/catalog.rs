//! `catalog`: instances of services, limited to granted service names.

use super::globs::Globs;
use super::{Capability, Grants, RunContext, ValidateContext, bounded, denied, registry_error};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::catalog;
use crate::grants::{GrantError, InvalidGrant};
use crate::names;
use crate::registry::{Health, Instance, Registry};
use std::sync::Arc;
use std::time::Duration;

/// Service names a plugin may read and register (`--allow-service`, globs).
#[derive(Debug, Clone, Default)]
pub struct ServiceGrant(Globs);

impl ServiceGrant {
    pub fn parse(patterns: &[String]) -> Result<Self, InvalidGrant> {
        Globs::parse(patterns).map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `service` is a valid service name the grant covers.
    pub fn allows(&self, service: &str) -> bool {
        names::service_name(service).is_ok() && self.0.matches(service)
    }

    /// Validate the name, then check the grant.
    pub fn check(&self, op: &str, service: &str) -> Result<(), PluginError> {
        names::service_name(service).map_err(|e| e.to_plugin_error("catalog"))?;
        if self.0.matches(service) {
            Ok(())
        } else {
            Err(self.deny(op, service))
        }
    }

    pub fn deny(&self, op: &str, service: &str) -> PluginError {
        denied(
            "catalog",
            format_args!("{op} of service \"{service}\" is not granted"),
            format_args!("--allow-service {service}"),
        )
    }
}

pub struct CatalogCap {
    grant: ServiceGrant,
    registry: Arc<dyn Registry>,
    timeout: Duration,
}

impl CatalogCap {
    fn check(&self, op: &str, service: &str) -> Result<(), PluginError> {
        self.grant.check(op, service)
    }
}

/// An instance ID a plugin may use: valid, and not one of the IDs the host
/// gives the containers it registers (`runner:…`), which a plugin could
/// otherwise take first and so block or shadow another service's container.
fn plugin_instance_id(id: &str) -> Result<(), PluginError> {
    names::instance_id(id).map_err(|e| e.to_plugin_error("catalog"))?;
    if crate::caps::docker::is_host_instance_id(id) {
        return Err(PluginError::InvalidConfig(format!(
            "catalog: instance ID \"{id}\" is reserved: IDs starting with \"{}\" are the host's, \
             for the containers it registers",
            crate::caps::docker::REGISTRATION_PREFIX
        )));
    }
    Ok(())
}

pub(crate) fn to_wit(i: Instance) -> catalog::Instance {
    let healthy = i.healthy();
    catalog::Instance {
        id: i.id,
        name: i.name,
        address: i.address,
        port: i.port,
        healthy,
        tags: i.tags,
    }
}

impl catalog::Host for CatalogCap {
    async fn instances(
        &mut self,
        service: String,
        healthy_only: bool,
    ) -> Result<Vec<catalog::Instance>, PluginError> {
        self.check("read", &service)?;
        bounded("catalog.instances", self.timeout, async {
            let all = self
                .registry
                .instances(&service)
                .await
                .map_err(|e| registry_error("catalog", e))?;
            Ok(all
                .into_iter()
                .filter(|i| i.healthy() || !healthy_only)
                .map(to_wit)
                .collect())
        })
        .await
    }

    async fn services(&mut self) -> Result<Vec<String>, PluginError> {
        bounded("catalog.services", self.timeout, async {
            let names = self
                .registry
                .services()
                .await
                .map_err(|e| registry_error("catalog", e))?;
            Ok(names.into_iter().filter(|n| self.grant.allows(n)).collect())
        })
        .await
    }

    async fn register(&mut self, instance: catalog::Instance) -> Result<(), PluginError> {
        self.check("register", &instance.name)?;
        plugin_instance_id(&instance.id)?;
        let instance = Instance {
            id: instance.id,
            name: instance.name,
            address: instance.address,
            port: instance.port,
            tags: instance.tags,
            status: if instance.healthy {
                Health::Passing
            } else {
                Health::Critical
            },
            ..Instance::default()
        };
        bounded("catalog.register", self.timeout, async {
            self.registry
                .register(&instance)
                .await
                .map_err(|e| registry_error("catalog", e))
        })
        .await
    }

    async fn deregister(&mut self, service: String, id: String) -> Result<bool, PluginError> {
        self.check("deregister", &service)?;
        plugin_instance_id(&id)?;
        bounded("catalog.deregister", self.timeout, async {
            self.registry
                .deregister(&service, &id)
                .await
                .map_err(|e| registry_error("catalog", e))
        })
        .await
    }
}

list_grant_spec! {
    /// Allow catalog access to services matching PATTERN (`books-ms-*`).
    CatalogSpec { services: "allow-service", "PATTERN" }
}

impl Capability for CatalogCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/catalog"];
    const FLAG_HINT: &'static str = "--allow-service PATTERN";
    const TOML_HINT: &'static str = "grants.services = [\"NAME-*\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("catalog.wit", include_str!("../../../wit/catalog.wit"))];
    type Spec = CatalogSpec;
    type Grant = ServiceGrant;

    fn validate(
        spec: &CatalogSpec,
        _: &mut ValidateContext<'_>,
    ) -> Result<ServiceGrant, GrantError> {
        ServiceGrant::parse(&spec.services)
            .map_err(|r| GrantError::invalid("--allow-service", spec.services.join(","), r))
    }

    fn granted(grants: &Grants) -> bool {
        !grants.catalog.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            grant: cx.grants.catalog.clone(),
            registry: cx.host.registry.clone(),
            timeout: cx.limits.host_call_timeout,
        }
    }

    link_interfaces!(catalog);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_service_names() {
        let g = ServiceGrant::parse(&["books-ms-*".to_string()]).unwrap();
        assert!(g.allows("books-ms-blue"));
        assert!(!g.allows("payments-blue"));
        assert!(!ServiceGrant::default().allows("books-ms-blue"));
        assert!(ServiceGrant::parse(&["[".to_string()]).is_err());
    }
}
