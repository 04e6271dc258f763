//! The runner file (`-f runner.toml`): what an operator sets up once for a
//! service: grants, proxies and hooks. Relative paths in it are relative to
//! the file, so a deployment directory can be moved or checked out anywhere.
//!
//! ```toml
//! [grants]
//! kv = ["books-ms/"]
//! proxies = ["nginx"]
//!
//! [proxies.nginx]
//! config_dir = "nginx/upstreams"
//! check = ["nginx", "-t", "-p", "nginx", "-c", "nginx.conf"]
//! reload = ["nginx", "-s", "reload", "-p", "nginx", "-c", "nginx.conf"]
//!
//! [hooks.pre-integration]
//! plugin = "plugins/integration-test.wasm"
//! config = { "check.health" = "GET /health 200" }
//! grants = { http = ["http://127.0.0.1:*"] }
//! limits = { deadline = "2m" }
//! ```

use crate::caps::docker::{DockerHost, HostSpec, HostSpecError, validate_hosts};
use crate::caps::proxy::{ProxyConfig, ProxySpec, ProxySpecError};
use crate::caps::{Grants, GrantsSpec};
use crate::grants::GrantError;
use crate::oci::keys::{KeyError, TrustedKey};
use crate::oci::resolve::Resolver;
use crate::plugin_ref::{self, PluginRef, PluginRefError, PluginSource};
use crate::runtime::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerFileSpec {
    /// The service a pipeline deploys (`runner run`).
    pub service: Option<String>,
    /// The stage `runner rollback` and `runner promote` run again (default: "deploy").
    pub deploy_stage: Option<String>,
    #[serde(default)]
    pub targets: TargetsSpec,
    /// The pipeline, in order (`runner run`); `runner exec` ignores it.
    #[serde(default)]
    pub stages: Vec<toml::Spanned<StageSpec>>,
    #[serde(default)]
    pub grants: GrantsSpec,
    /// Spanned, so a problem with one names its line.
    #[serde(default)]
    pub proxies: BTreeMap<String, Spanned<ProxySpec>>,
    #[serde(default)]
    pub hooks: BTreeMap<String, Spanned<HookSpec>>,
    /// Who may sign the registry plugins it runs.
    #[serde(default)]
    pub trust: Option<Spanned<TrustSpec>>,
    /// `[hosts.NAME]`: the Docker hosts containers are placed on.
    #[serde(default)]
    pub hosts: BTreeMap<String, Spanned<HostSpec>>,
}

/// `[trust]`: the public keys (PEM, relative to the file) whose cosign
/// signatures a registry plugin must carry. The operator's `--trust-key`
/// replaces them: a checkout's file is the checkout's word.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSpec {
    pub keys: Vec<std::path::PathBuf>,
}

impl RunnerFileSpec {
    /// Its `[trust] keys`, loaded (paths relative to `base`).
    pub fn trusted_keys(&self, base: &Path) -> Result<Vec<TrustedKey>, KeyError> {
        let Some(trust) = &self.trust else {
            return Ok(Vec::new());
        };
        trust
            .get_ref()
            .keys
            .iter()
            .map(|key| TrustedKey::load(&base.join(key)))
            .collect()
    }
}

/// Where a pipeline deploys; flags and environment variables win.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsSpec {
    /// Consul's address; without it the embedded registry is used.
    pub consul: Option<String>,
    /// The Docker engine (`unix:///var/run/docker.sock`, `tcp://127.0.0.1:2375`).
    pub docker: Option<String>,
}

/// One pipeline stage as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    /// A path (relative to the file) or a name looked up on the plugin path.
    pub plugin: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub grants: GrantsSpec,
    /// The stage's deadline (`10m`), as `limits.deadline`.
    pub timeout: Option<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// `[hooks.*]` run before the stage.
    #[serde(default)]
    pub before: Vec<String>,
    /// `[hooks.*]` run after the stage, whatever its outcome.
    #[serde(default)]
    pub after: Vec<String>,
}

/// A hook as written: a plugin with its own grants, limits and settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub plugin: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Settings a calling plugin may set or override (e.g. `base_url`); the
    /// caller may set no other: the operator's `config` is what the hook's
    /// grants were given for.
    #[serde(default)]
    pub overridable: Vec<String>,
    /// Spanned (so optional), so a problem with them names their own line.
    #[serde(default)]
    pub grants: Option<Spanned<GrantsSpec>>,
    #[serde(default)]
    pub limits: Option<Spanned<LimitsSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub memory: Option<String>,
    pub deadline: Option<String>,
    pub host_call_timeout: Option<String>,
    pub http_max_body: Option<String>,
}

/// A validated hook.
#[derive(Debug, Clone)]
pub struct HookDef {
    pub name: String,
    pub plugin: PluginSource,
    pub config: Vec<(String, String)>,
    /// Settings a caller may set (`overridable`); everything else is the operator's.
    pub overridable: Vec<String>,
    pub grants: Grants,
    pub limits: Limits,
    /// The limits as written, to tell what the hook set from what it inherits.
    pub limits_spec: LimitsSpec,
}

impl HookDef {
    /// The hook's limits when run by a caller with `caller`'s: what its
    /// `limits` table sets, else runner's defaults, except the bounds on host
    /// calls (`host_call_timeout`, `http_max_body`), which it inherits from
    /// the caller (`runner exec --http-max-body 1MiB` holds its hooks to it).
    pub fn limits_under(&self, caller: &Limits) -> Limits {
        let mut limits = self.limits;
        if self.limits_spec.host_call_timeout.is_none() {
            limits.host_call_timeout = caller.host_call_timeout;
        }
        if self.limits_spec.http_max_body.is_none() {
            limits.http_max_body = caller.http_max_body;
        }
        limits
    }
}

/// The validated runner file.
#[derive(Debug, Default)]
pub struct RunnerFile {
    /// `[grants]`, paths already relative to the file.
    pub grants: GrantsSpec,
    /// `[hosts.*]`, in the file's order: empty for a single engine.
    pub hosts: Vec<DockerHost>,
    /// `[targets]`: the registry and the one engine, when the file names
    /// them (a flag or its environment variable wins).
    pub targets: TargetsSpec,
    pub proxies: Vec<ProxyConfig>,
    pub hooks: Vec<HookDef>,
    /// Problems that do not stop a run, e.g. a proxy config directory a
    /// later step creates (`[proxies.NAME]: ...`).
    pub warnings: Vec<RunfileWarning>,
}

/// A problem in the runner file that does not stop a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}: {message}")]
pub struct RunfileWarning {
    /// The table it is about, as written in the file (`[proxies.nginx]`).
    pub table: String,
    /// Where that table is in the file (byte offsets).
    pub span: Range<usize>,
    pub message: String,
}

/// Why `limits` do not parse.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("\"{value}\": {source}")]
    Duration {
        value: String,
        source: humantime::DurationError,
    },
    #[error("memory \"{value}\": {reason}")]
    Memory { value: String, reason: String },
    #[error("http_max_body \"{value}\": {reason}")]
    HttpMaxBody { value: String, reason: String },
}

/// Why a runner file's `[proxies.*]` or `[hooks.*]` is refused; `span`
/// locates the table in the file.
#[derive(Debug, thiserror::Error)]
pub enum RunfileError {
    #[error("{source}")]
    Host {
        span: Range<usize>,
        source: HostSpecError,
    },
    #[error(
        "[targets] docker and [hosts.*] both name engines: keep [hosts.*] (a single engine is one [hosts.NAME])"
    )]
    TargetsAndHosts { span: Range<usize> },
    #[error("[proxies.{name}]: {source}")]
    Proxy {
        name: String,
        span: Range<usize>,
        source: ProxySpecError,
    },
    #[error("[hooks.{name}.grants]: {source}")]
    HookGrants {
        name: String,
        span: Range<usize>,
        source: GrantError,
    },
    #[error("[hooks.{name}]: {source}")]
    HookPlugin {
        name: String,
        span: Range<usize>,
        source: PluginRefError,
    },
    #[error("[hooks.{name}.limits]: {source}")]
    HookLimits {
        name: String,
        span: Range<usize>,
        source: LimitsError,
    },
}

impl RunfileError {
    /// Where in the file the table the problem is about is (byte offsets).
    pub fn span(&self) -> Range<usize> {
        match self {
            RunfileError::Proxy { span, .. }
            | RunfileError::Host { span, .. }
            | RunfileError::TargetsAndHosts { span }
            | RunfileError::HookGrants { span, .. }
            | RunfileError::HookPlugin { span, .. }
            | RunfileError::HookLimits { span, .. } => span.clone(),
        }
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> GrantError {
    GrantError::ParseFile {
        path: path.into(),
        message: message.into(),
    }
}

impl LimitsSpec {
    pub fn resolve(&self, defaults: Limits) -> Result<Limits, LimitsError> {
        let duration = |v: &Option<String>, d: Duration| match v {
            Some(t) => humantime::parse_duration(t).map_err(|source| LimitsError::Duration {
                value: t.clone(),
                source,
            }),
            None => Ok(d),
        };
        Ok(Limits {
            memory_bytes: match &self.memory {
                Some(m) => m
                    .parse::<bytesize::ByteSize>()
                    .map_err(|reason| LimitsError::Memory {
                        value: m.clone(),
                        reason,
                    })?
                    .as_u64(),
                None => defaults.memory_bytes,
            },
            deadline: duration(&self.deadline, defaults.deadline)?,
            host_call_timeout: duration(&self.host_call_timeout, defaults.host_call_timeout)?,
            http_max_body: match &self.http_max_body {
                Some(m) => m
                    .parse::<bytesize::ByteSize>()
                    .map_err(|reason| LimitsError::HttpMaxBody {
                        value: m.clone(),
                        reason,
                    })?
                    .as_u64(),
                None => defaults.http_max_body,
            },
        })
    }
}

impl RunnerFile {
    /// The runner file at `path`; its hooks' registry plugins resolve
    /// through `registry`, which takes the file's `[trust] keys`.
    pub fn load(path: &Path, registry: &Resolver) -> Result<Self, GrantError> {
        let text = std::fs::read_to_string(path).map_err(|source| GrantError::ReadFile {
            path: path.into(),
            source,
        })?;
        let spec: RunnerFileSpec =
            toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if registry.uses_file_keys() {
            registry.set_file_keys(
                spec.trusted_keys(base)
                    .map_err(|e| invalid(path, e.to_string()))?,
            );
        }
        Self::from_spec_with(spec, base, &|plugin| {
            plugin_ref::resolve_in(plugin, base, registry)
        })
        .map_err(|e| invalid(path, e.to_string()))
    }

    /// As `from_spec`, finding hook plugins with `resolve_plugin`.
    pub fn from_spec_with(
        spec: RunnerFileSpec,
        base: &Path,
        resolve_plugin: &dyn Fn(&PluginRef) -> Result<PluginSource, PluginRefError>,
    ) -> Result<Self, RunfileError> {
        let mut ordered: Vec<_> = spec.hosts.iter().collect();
        ordered.sort_by_key(|(_, h)| h.span().start);
        let hosts = validate_hosts(ordered.iter().map(|(n, h)| (*n, h.get_ref())), base).map_err(
            |source| RunfileError::Host {
                span: spec.hosts.get(&source.name).map_or(0..0, Spanned::span),
                source,
            },
        )?;
        if let (Some(first), Some(_)) = (spec.hosts.values().next(), &spec.targets.docker) {
            return Err(RunfileError::TargetsAndHosts { span: first.span() });
        }
        let mut proxies = Vec::new();
        let mut warnings = Vec::new();
        for (name, p) in &spec.proxies {
            let (proxy, warning) =
                p.get_ref()
                    .validate(name, base)
                    .map_err(|source| RunfileError::Proxy {
                        name: name.clone(),
                        span: p.span(),
                        source,
                    })?;
            proxies.push(proxy);
            warnings.extend(warning.map(|message| RunfileWarning {
                table: format!("[proxies.{name}]"),
                span: p.span(),
                message,
            }));
        }
        let names: Vec<String> = spec.hooks.keys().cloned().collect();
        let mut hooks = Vec::new();
        for (name, spanned) in &spec.hooks {
            let hook = spanned.get_ref();
            // Inline tables are spanned by the hook's own table.
            let grants_span = hook.grants.as_ref().map_or(spanned.span(), Spanned::span);
            let limits_span = hook.limits.as_ref().map_or(spanned.span(), Spanned::span);
            let mut grants = hook
                .grants
                .as_ref()
                .map(|g| g.get_ref().clone())
                .unwrap_or_default();
            grants.rebase(base);
            let grants = grants.validate_with(&proxies, &names).map_err(|source| {
                RunfileError::HookGrants {
                    name: name.clone(),
                    span: grants_span.clone(),
                    source,
                }
            })?;
            warnings.extend(grants.missing_dirs.iter().map(|d| RunfileWarning {
                table: format!("[hooks.{name}.grants]"),
                span: grants_span.clone(),
                message: format!(
                    "{} does not exist yet; it must exist before the hook runs",
                    d.display()
                ),
            }));
            let plugin = PluginRef::parse(&hook.plugin)
                .and_then(|plugin| resolve_plugin(&plugin))
                .map_err(|source| RunfileError::HookPlugin {
                    name: name.clone(),
                    span: spanned.span(),
                    source,
                })?;
            let limits_spec = hook
                .limits
                .as_ref()
                .map(|l| l.get_ref().clone())
                .unwrap_or_default();
            let limits = limits_spec.resolve(Limits::default()).map_err(|source| {
                RunfileError::HookLimits {
                    name: name.clone(),
                    span: limits_span,
                    source,
                }
            })?;
            hooks.push(HookDef {
                name: name.clone(),
                plugin,
                config: hook.config.clone().into_iter().collect(),
                overridable: hook.overridable.clone(),
                grants,
                limits,
                limits_spec,
            });
        }
        let mut grants = spec.grants;
        grants.rebase(base);
        Ok(Self {
            grants,
            hosts,
            targets: spec.targets.clone(),
            proxies,
            hooks,
            warnings,
        })
    }

    pub fn hook_names(&self) -> Vec<String> {
        self.hooks.iter().map(|h| h.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook's host-call bounds are its caller's unless its `limits` set
    /// them: `runner exec --http-max-body 1KiB` holds its hooks to 1 KiB.
    #[test]
    fn hooks_inherit_the_callers_host_call_bounds_unless_they_set_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.wasm"), b"").unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(
            &file,
            r#"
            [hooks.plain]
            plugin = "hook.wasm"
            [hooks.own]
            plugin = "hook.wasm"
            limits = { http_max_body = "2MiB", deadline = "1m" }
            "#,
        )
        .unwrap();
        let rf = RunnerFile::load(&file, &Resolver::new(Default::default(), None)).unwrap();
        let caller = Limits {
            host_call_timeout: Duration::from_secs(5),
            http_max_body: 1024,
            memory_bytes: 1 << 30,
            ..Limits::default()
        };
        let hook = |name: &str| rf.hooks.iter().find(|h| h.name == name).unwrap();
        let plain = hook("plain").limits_under(&caller);
        assert_eq!(
            (plain.host_call_timeout, plain.http_max_body),
            (Duration::from_secs(5), 1024)
        );
        assert_eq!(plain.memory_bytes, Limits::default().memory_bytes);
        let own = hook("own").limits_under(&caller);
        assert_eq!(own.http_max_body, 2 * 1024 * 1024);
        assert_eq!(own.host_call_timeout, Duration::from_secs(5));
        assert_eq!(own.deadline, Duration::from_secs(60));
    }

    #[test]
    fn paths_are_relative_to_the_file_and_grants_resolve_definitions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("nginx/upstreams")).unwrap();
        std::fs::write(dir.path().join("hook.wasm"), b"").unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(
            &file,
            r#"
            [grants]
            kv = ["books-ms/"]
            proxies = ["nginx"]
            hooks = ["pre"]

            [proxies.nginx]
            config_dir = "nginx/upstreams"
            reload = ["true"]

            [hooks.pre]
            plugin = "hook.wasm"
            config = { "check.health" = "GET /health 200" }
            grants = { http = ["http://127.0.0.1:*"] }
            limits = { deadline = "2m" }
            "#,
        )
        .unwrap();
        let rf = RunnerFile::load(&file, &Resolver::new(Default::default(), None)).unwrap();
        assert_eq!(rf.hooks[0].plugin.path(), dir.path().join("hook.wasm"));
        assert_eq!(rf.hooks[0].limits.deadline, Duration::from_secs(120));
        let grants = rf
            .grants
            .validate_with(&rf.proxies, &rf.hook_names())
            .unwrap();
        assert_eq!(grants.proxy.len(), 1);
        let (outputs, operator_only) = crate::caps::template::TemplateGrant::outputs(&grants);
        assert_eq!(operator_only.len(), 1);
        assert!(outputs[0].contains(&dir.path().join("nginx/upstreams").canonicalize().unwrap()));

        let undefined = GrantsSpec {
            proxy: crate::caps::proxy::ProxyGrantSpec {
                proxies: vec!["haproxy".into()],
            },
            ..Default::default()
        };
        let err = undefined
            .validate_with(&rf.proxies, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[proxies.haproxy]"), "{err}");
    }

    #[test]
    fn unknown_keys_and_missing_plugins_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(&file, "[hooks.pre]\nplugin = \"missing.wasm\"\n").unwrap();
        let err = RunnerFile::load(&file, &Resolver::new(Default::default(), None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.wasm") && err.contains("does not exist"),
            "{err}"
        );
        std::fs::write(&file, "[proxy.nginx]\n").unwrap();
        assert!(
            RunnerFile::load(&file, &Resolver::new(Default::default(), None))
                .unwrap_err()
                .to_string()
                .contains("proxy")
        );
    }
}
