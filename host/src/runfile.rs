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

use crate::caps::proxy::{ProxyConfig, ProxySpec};
use crate::caps::{Grants, GrantsSpec};
use crate::grants::GrantError;
use crate::runtime::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[serde(default)]
    pub proxies: BTreeMap<String, ProxySpec>,
    #[serde(default)]
    pub hooks: BTreeMap<String, HookSpec>,
}

/// Where a pipeline deploys; flags and environment variables win.
#[derive(Debug, Default, Deserialize)]
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
    #[serde(default)]
    pub grants: GrantsSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
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
    pub plugin: PathBuf,
    pub config: Vec<(String, String)>,
    /// Settings a caller may set (`overridable`); everything else is the operator's.
    pub overridable: Vec<String>,
    pub grants: Grants,
    pub limits: Limits,
}

/// The validated runner file.
#[derive(Debug, Default)]
pub struct RunnerFile {
    /// `[grants]`, paths already relative to the file.
    pub grants: GrantsSpec,
    pub proxies: Vec<ProxyConfig>,
    pub hooks: Vec<HookDef>,
    /// Problems that do not stop a run, e.g. a proxy config directory a
    /// later step creates (`[proxies.NAME]: ...`).
    pub warnings: Vec<String>,
}

fn invalid(path: &Path, message: impl Into<String>) -> GrantError {
    GrantError::ParseFile {
        path: path.into(),
        message: message.into(),
    }
}

impl LimitsSpec {
    pub fn resolve(&self, defaults: Limits) -> Result<Limits, String> {
        let duration = |v: &Option<String>, d: Duration| match v {
            Some(t) => humantime::parse_duration(t).map_err(|e| format!("\"{t}\": {e}")),
            None => Ok(d),
        };
        Ok(Limits {
            memory_bytes: match &self.memory {
                Some(m) => m
                    .parse::<bytesize::ByteSize>()
                    .map_err(|e| format!("memory \"{m}\": {e}"))?
                    .as_u64(),
                None => defaults.memory_bytes,
            },
            deadline: duration(&self.deadline, defaults.deadline)?,
            host_call_timeout: duration(&self.host_call_timeout, defaults.host_call_timeout)?,
            http_max_body: match &self.http_max_body {
                Some(m) => m
                    .parse::<bytesize::ByteSize>()
                    .map_err(|e| format!("http_max_body \"{m}\": {e}"))?
                    .as_u64(),
                None => defaults.http_max_body,
            },
        })
    }
}

impl RunnerFile {
    pub fn load(path: &Path) -> Result<Self, GrantError> {
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
        Self::from_spec(spec, base).map_err(|m| invalid(path, m))
    }

    pub fn from_spec(spec: RunnerFileSpec, base: &Path) -> Result<Self, String> {
        Self::from_spec_with(spec, base, &|plugin| {
            let path = base.join(plugin);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("plugin {} does not exist", path.display()))
            }
        })
    }

    /// As `from_spec`, finding hook plugins with `resolve_plugin`.
    pub fn from_spec_with(
        spec: RunnerFileSpec,
        base: &Path,
        resolve_plugin: &dyn Fn(&str) -> Result<PathBuf, String>,
    ) -> Result<Self, String> {
        let mut proxies = Vec::new();
        let mut warnings = Vec::new();
        for (name, p) in &spec.proxies {
            let (proxy, warning) = p
                .validate(name, base)
                .map_err(|e| format!("[proxies.{name}]: {e}"))?;
            proxies.push(proxy);
            warnings.extend(warning.map(|w| format!("[proxies.{name}]: {w}")));
        }
        let names: Vec<String> = spec.hooks.keys().cloned().collect();
        let mut hooks = Vec::new();
        for (name, hook) in &spec.hooks {
            let mut grants = hook.grants.clone();
            grants.rebase(base);
            let grants = grants
                .validate_with(&proxies, &names)
                .map_err(|e| format!("[hooks.{name}.grants]: {e}"))?;
            warnings.extend(grants.missing_dirs.iter().map(|d| {
                format!(
                    "[hooks.{name}.grants]: {} does not exist yet; it must exist before the hook runs",
                    d.display()
                )
            }));
            let plugin =
                resolve_plugin(&hook.plugin).map_err(|e| format!("[hooks.{name}]: {e}"))?;
            hooks.push(HookDef {
                name: name.clone(),
                plugin,
                config: hook.config.clone().into_iter().collect(),
                overridable: hook.overridable.clone(),
                grants,
                limits: hook
                    .limits
                    .resolve(Limits::default())
                    .map_err(|e| format!("[hooks.{name}.limits]: {e}"))?,
            });
        }
        let mut grants = spec.grants;
        grants.rebase(base);
        Ok(Self {
            grants,
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
        let rf = RunnerFile::load(&file).unwrap();
        assert_eq!(rf.hooks[0].plugin, dir.path().join("hook.wasm"));
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
        let err = RunnerFile::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("missing.wasm") && err.contains("does not exist"),
            "{err}"
        );
        std::fs::write(&file, "[proxy.nginx]\n").unwrap();
        assert!(
            RunnerFile::load(&file)
                .unwrap_err()
                .to_string()
                .contains("proxy")
        );
    }
}
