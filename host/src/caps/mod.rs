//! One module per capability a plugin can be granted.
//!
//! Every capability has the same small shape (as wasmtime-wasi's): a grant
//! type validated once when the plugin is loaded, per-run state, the host
//! trait impl generated from `wit/`, and a grant check at the top of every
//! call. The runtime only sees [`Capabilities`] and [`add_to_linker`].

pub mod catalog;
pub mod docker;
mod globs;
pub mod hooks;
pub mod http;
pub mod journal;
pub mod kv;
pub mod log;
pub mod proxy;
pub mod template;

use crate::bindings::PluginError;
use crate::grants::Grants;
use crate::registry::{Registry, RegistryError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};

/// What every capability needs from the host, shared across runs.
#[derive(Clone)]
pub struct HostServices {
    pub registry: Arc<dyn Registry>,
    /// The Docker engine (connected on first use).
    pub docker: docker::DockerEngine,
    /// Runs `[hooks.*]`; `None` inside a hook (hooks do not nest).
    pub hooks: Option<Arc<dyn hooks::HookRunner>>,
    /// Upper bound on every awaited host call (registry, HTTP).
    pub host_call_timeout: Duration,
    /// Largest HTTP response body a plugin may receive.
    pub http_max_body: u64,
    /// The service whose deploy lock this execution holds: its stage may
    /// write the service's journal. `None` for hooks and unlocked runs.
    pub journal_service: Option<String>,
}

/// The per-run state of every capability, built from one plugin's grants.
pub struct Capabilities {
    pub log: log::LogCap,
    pub kv: kv::KvCap,
    pub catalog: catalog::CatalogCap,
    pub http: http::HttpCap,
    pub template: template::TemplateCap,
    pub docker: docker::DockerCap,
    pub proxy: proxy::ProxyCap,
    pub hooks: hooks::HooksCap,
    pub journal: journal::JournalCap,
}

impl Capabilities {
    pub fn new(plugin: &str, grants: &Grants, services: &HostServices) -> Self {
        let plugin: Arc<str> = Arc::from(plugin);
        Self {
            log: log::LogCap::new(plugin.clone()),
            kv: kv::KvCap::new(grants.kv.clone(), services),
            catalog: catalog::CatalogCap::new(grants.services.clone(), services),
            http: http::HttpCap::new(grants.http.clone(), services),
            template: template::TemplateCap::new(grants, services),
            docker: docker::DockerCap::new(grants, services),
            proxy: proxy::ProxyCap::new(grants, services),
            hooks: hooks::HooksCap::new(grants.hooks.clone(), services.hooks.clone()),
            journal: journal::JournalCap::new(services),
        }
    }
}

/// Access to the capabilities inside a store's data.
pub trait CapabilitiesView: Send {
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// Link every capability interface of the `stage` world.
pub fn add_to_linker<T: CapabilitiesView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use crate::bindings::runner::plugin as wit;
    wit::types::add_to_linker::<T, HasSelf<log::LogCap>>(linker, |t| &mut t.capabilities().log)?;
    wit::log::add_to_linker::<T, HasSelf<log::LogCap>>(linker, |t| &mut t.capabilities().log)?;
    wit::kv::add_to_linker::<T, HasSelf<kv::KvCap>>(linker, |t| &mut t.capabilities().kv)?;
    wit::catalog::add_to_linker::<T, HasSelf<catalog::CatalogCap>>(linker, |t| {
        &mut t.capabilities().catalog
    })?;
    wit::http::add_to_linker::<T, HasSelf<http::HttpCap>>(linker, |t| &mut t.capabilities().http)?;
    wit::template::add_to_linker::<T, HasSelf<template::TemplateCap>>(linker, |t| {
        &mut t.capabilities().template
    })?;
    wit::docker::add_to_linker::<T, HasSelf<docker::DockerCap>>(linker, |t| {
        &mut t.capabilities().docker
    })?;
    wit::proxy::add_to_linker::<T, HasSelf<proxy::ProxyCap>>(linker, |t| {
        &mut t.capabilities().proxy
    })?;
    wit::hooks::add_to_linker::<T, HasSelf<hooks::HooksCap>>(linker, |t| {
        &mut t.capabilities().hooks
    })?;
    wit::journal::add_to_linker::<T, HasSelf<journal::JournalCap>>(linker, |t| {
        &mut t.capabilities().journal
    })?;
    Ok(())
}

/// The `denied` error every capability returns: names the capability, what
/// was refused, and the grant that would allow it.
pub(crate) fn denied(
    capability: &str,
    what: impl std::fmt::Display,
    grant: impl std::fmt::Display,
) -> PluginError {
    PluginError::Denied(format!("{capability}: {what}; grant it with {grant}"))
}

pub(crate) fn registry_error(capability: &str, e: RegistryError) -> PluginError {
    match e {
        RegistryError::Unavailable(m) => PluginError::Unavailable(format!("{capability}: {m}")),
        RegistryError::Backend(m) | RegistryError::Refused(m) => {
            PluginError::Failed(format!("{capability}: {m}"))
        }
        RegistryError::Denied(m) => PluginError::Denied(format!("{capability}: {m}")),
        RegistryError::Conflict(m) => PluginError::Conflict(format!("{capability}: {m}")),
    }
}

/// Bound an awaited host call by the host-call timeout: epoch deadlines only
/// fire inside guest code, so a call stuck on I/O needs its own limit.
pub(crate) async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(PluginError::Timeout(format!(
            "{what} did not finish within the host-call timeout ({}); raise it with --host-call-timeout",
            humantime::format_duration(limit)
        ))),
    }
}
