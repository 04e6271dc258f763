//! `template`: consul-template compatible rendering from catalog and KV data
//! into granted directories.

mod data;
mod encoding;
mod engine;
mod funcs;
mod math;
mod output;
mod watch;

pub use engine::{
    DataSource, Dependency, MAX_TEMPLATE_BYTES, RenderError, RenderErrorOrDenied, Snapshot,
    render as render_text,
};
pub use output::{FileError, GrantedDir, open_dir_inside, read_inside_limited, write_if_changed};
pub use watch::{Rendered, TemplateJob, TemplateJobError, WatchTiming};

use super::catalog::ServiceGrant;
use super::kv::KvGrant;
use super::{
    Capability, GrantSpec, Grants, RunContext, ValidateContext, bounded, denied, registry_error,
};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::template;
use crate::grants::GrantError;
use crate::registry::Registry;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct TemplateCap {
    kv: KvGrant,
    services: ServiceGrant,
    /// Where template files may be read from (`--allow-dir`, any mode, and output dirs).
    sources: Vec<GrantedDir>,
    /// Where rendered files may be written (`--allow-template-out`).
    outputs: Vec<GrantedDir>,
    /// Output dirs only the operator's templates may render into (proxy config).
    operator_only: Vec<GrantedDir>,
    /// Read-only `--allow-dir`s: where the operator's templates are.
    operator_sources: Vec<GrantedDir>,
    /// Directories the plugin can write (rw `--allow-dir`s, template outputs):
    /// a file under one is the plugin's, even inside a read-only grant.
    plugin_writable: Vec<GrantedDir>,
    /// The `--allow-dir` grants with the paths the plugin sees them at.
    guest_dirs: Vec<super::dirs::DirGrant>,
    registry: Arc<dyn Registry>,
    timeout: Duration,
    /// The environment variables templates may read (`env`), read once at
    /// the start of the run.
    env: std::collections::BTreeMap<String, String>,
}

impl TemplateCap {
    fn source_text(&self, source: template::Source) -> Result<String, PluginError> {
        match source {
            template::Source::Inline(text) => Ok(text),
            template::Source::File(path) => {
                // As the plugin sees it (`/templates/x.ctmpl`), or a host path.
                let host = self
                    .guest_dirs
                    .iter()
                    .find_map(|d| d.host_path(&path))
                    .unwrap_or_else(|| path.into());
                output::read_inside_limited(&self.sources, &host, MAX_TEMPLATE_BYTES as u64)
                    .map_err(|e| file_error(e, "--allow-dir DIR"))
            }
        }
    }

    /// The text of an operator's template for `destination`, a proxy's config
    /// directory: a file in a read-only `--allow-dir`, never inline text or a
    /// file the plugin could have written.
    fn operator_template(
        &self,
        source: template::Source,
        destination: &str,
        dir: &GrantedDir,
    ) -> Result<String, PluginError> {
        let raw = || {
            denied(
                "template",
                format_args!(
                    "\"{destination}\" is a proxy's config, which only the operator's templates \
                     (files in a read-only --allow-dir) may render"
                ),
                format_args!(
                    "--allow-template-out {} to let this plugin write raw proxy config",
                    dir.path().display()
                ),
            )
        };
        match source {
            template::Source::Inline(_) => Err(raw()),
            template::Source::File(path) => {
                let host = self
                    .guest_dirs
                    .iter()
                    .find_map(|d| d.host_path(&path))
                    .unwrap_or_else(|| path.into());
                let writable = std::fs::canonicalize(&host)
                    .map(|c| self.plugin_writable.iter().any(|d| d.contains(&c)))
                    .unwrap_or(false);
                if writable {
                    return Err(raw());
                }
                output::read_inside_limited(
                    &self.operator_sources,
                    &host,
                    MAX_TEMPLATE_BYTES as u64,
                )
                .map_err(|e| match e {
                    FileError::NotGranted { .. } => raw(),
                    e => file_error(e, "--allow-dir DIR"),
                })
            }
        }
    }

    pub(crate) async fn render(&self, text: &str) -> Result<String, PluginError> {
        bounded("template.render", self.timeout, async {
            render_text(text, self).await.map_err(|e| match e {
                RenderErrorOrDenied::Fetch(e) => e,
                // The host's fault, not the template's.
                RenderErrorOrDenied::Render(
                    e @ (RenderError::Panicked(_) | RenderError::Thread(_)),
                ) => PluginError::Failed(format!("template: {e}")),
                RenderErrorOrDenied::Render(e) => {
                    PluginError::InvalidConfig(format!("template: {e}"))
                }
            })
        })
        .await
    }
}

impl TemplateCap {
    /// The text for a proxy's config file in `dir`: the operator's template
    /// unless the operator let this plugin write raw proxy config there
    /// (`--allow-template-out DIR`), rendered; nothing is written.
    pub(crate) async fn render_for_proxy(
        &self,
        source: template::Source,
        destination: &Path,
        dir: &GrantedDir,
    ) -> Result<String, PluginError> {
        let raw_allowed = self.outputs.iter().any(|d| d.same_dir(dir))
            && !self.operator_only.iter().any(|d| d.same_dir(dir));
        let text = if raw_allowed {
            self.source_text(source)?
        } else {
            self.operator_template(source, &destination.display().to_string(), dir)?
        };
        TemplateCap::render(self, &text).await
    }
}

fn file_error(e: FileError, grant: &str) -> PluginError {
    match e {
        FileError::NotFound(_) => PluginError::NotFound(format!("template: {e}")),
        FileError::Io { .. } | FileError::TooLarge { .. } => {
            PluginError::Failed(format!("template: {e}"))
        }
        FileError::NotGranted { ref path, .. } => {
            let dir = path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            denied("template", &e, grant.replace("DIR", &dir))
        }
        FileError::ParentComponent(_) | FileError::Escapes(_) => {
            PluginError::Denied(format!("template: {e}"))
        }
    }
}

/// Fetch one dependency from the registry, unchecked (callers check grants).
async fn fetch_from(
    registry: &dyn Registry,
    dep: &Dependency,
    into: &mut Snapshot,
) -> Result<(), PluginError> {
    let reg = |e| registry_error("template", e);
    match dep {
        Dependency::Service(name) => {
            into.services
                .insert(name.clone(), registry.instances(name).await.map_err(reg)?);
        }
        Dependency::Key(key) => {
            let value = registry.kv_get(key).await.map_err(reg)?.map(|e| e.value);
            into.keys.insert(key.clone(), value);
        }
        Dependency::Prefix(prefix) => {
            into.prefixes
                .insert(prefix.clone(), registry.kv_list(prefix).await.map_err(reg)?);
        }
        Dependency::Services => {
            into.service_summaries = Some(registry.service_summaries().await.map_err(reg)?)
        }
    }
    Ok(())
}

/// Template data comes from the registry under the plugin's own grants: a
/// template cannot read what the plugin could not read directly.
impl DataSource for TemplateCap {
    fn granted_env(&self) -> std::collections::BTreeMap<String, String> {
        self.env.clone()
    }

    async fn fetch(&self, dep: &Dependency, into: &mut Snapshot) -> Result<(), PluginError> {
        // The same checks, in the same order, as reading directly: the name
        // is validated, then the grant (runner's records are outside it).
        match dep {
            Dependency::Service(name) => self.services.check("template read", name)?,
            Dependency::Key(key) => self.kv.check("template read", key)?,
            Dependency::Prefix(prefix) => self.kv.check_prefix("template list", prefix)?,
            Dependency::Services => {}
        }
        fetch_from(&*self.registry, dep, into).await?;
        if let Some(summaries) = into.service_summaries.as_mut() {
            summaries.retain(|s| self.services.allows(&s.name));
        }
        if let Dependency::Prefix(prefix) = dep
            && let Some(entries) = into.prefixes.get_mut(prefix)
        {
            entries.retain(|e| self.kv.visible(&e.key));
        }
        Ok(())
    }
}

/// The operator's own rendering (`runner template render`): everything in the
/// registry is visible, as it is to consul-template with the operator's token.
pub struct RegistrySource<'a>(pub &'a dyn Registry);

impl DataSource for RegistrySource<'_> {
    async fn fetch(&self, dep: &Dependency, into: &mut Snapshot) -> Result<(), PluginError> {
        fetch_from(self.0, dep, into).await
    }
}

impl template::Host for TemplateCap {
    async fn render(
        &mut self,
        source: template::Source,
        destination: String,
    ) -> Result<template::Rendered, PluginError> {
        // Check the destination before doing any work.
        if self.outputs.is_empty() {
            return Err(denied(
                "template",
                format_args!("writing \"{destination}\" needs a template output directory"),
                "--allow-template-out DIR",
            ));
        }
        let dest = Path::new(&destination);
        // A proxy's config dir holds runner's own switch files (`.NAME.runner-prev`,
        // the switch lock): no template writes a dot file there.
        if self.operator_only.iter().any(|d| d.holds(dest))
            && dest
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            return Err(PluginError::InvalidConfig(format!(
                "template: \"{destination}\" is a hidden file in a proxy's config directory, where runner keeps its switch files; render to a plain name"
            )));
        }
        let text = match self.operator_only.iter().find(|d| d.holds(dest)) {
            Some(dir) => self.operator_template(source, &destination, dir)?,
            None => self.source_text(source)?,
        };
        let content = TemplateCap::render(self, &text).await?;
        let changed =
            output::write_if_changed(&self.outputs, Path::new(&destination), content.as_bytes())
                .map_err(|e| file_error(e, "--allow-template-out DIR"))?;
        if changed {
            tracing::info!(target: "plugin", "template: wrote {destination}");
        } else {
            tracing::debug!(target: "plugin", "template: {destination} unchanged");
        }
        Ok(template::Rendered {
            destination,
            changed,
            content,
        })
    }

    async fn render_string(&mut self, source: template::Source) -> Result<String, PluginError> {
        let text = self.source_text(source)?;
        TemplateCap::render(self, &text).await
    }
}

/// `--allow-template-out` and `--allow-template-env` as written.
#[derive(clap::Args, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateSpec {
    /// Allow templates to render files into DIR.
    #[arg(long = "allow-template-out", value_name = "DIR")]
    #[serde(default)]
    pub template_out: Vec<String>,
    /// Allow templates to read environment variable NAME with `env "NAME"`
    /// (no other variable is readable).
    #[arg(long = "allow-template-env", value_name = "NAME")]
    #[serde(default)]
    pub template_env: Vec<String>,
}

impl GrantSpec for TemplateSpec {
    fn merge(&mut self, other: Self) {
        self.template_out.extend(other.template_out);
        self.template_env.extend(other.template_env);
    }

    fn rebase(&mut self, base: &Path) {
        for d in &mut self.template_out {
            if Path::new(d.as_str()).is_relative() {
                *d = base.join(d.as_str()).display().to_string();
            }
        }
    }
}

/// The validated `--allow-template-out` directories and
/// `--allow-template-env` names.
#[derive(Debug, Clone, Default)]
pub struct TemplateGrant {
    pub outputs: Vec<GrantedDir>,
    pub env: Vec<String>,
}

/// An environment variable's name as POSIX shells take it:
/// `[A-Za-z_][A-Za-z0-9_]*`.
fn env_name(name: &str) -> Result<&str, String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err("not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)".to_string())
    }
}

impl TemplateGrant {
    /// Where templates may render, and which of those only the operator's
    /// templates may: a granted proxy's config directory is a template output
    /// (rendering the proxy's config is what the proxy grant is for) but,
    /// unless the operator also granted it with `--allow-template-out`, only
    /// for templates from read-only `--allow-dir`s, never text the plugin
    /// wrote, which could add any directive to the proxy's config.
    pub fn outputs(grants: &Grants) -> (Vec<GrantedDir>, Vec<GrantedDir>) {
        let mut outputs = grants.template.outputs.clone();
        let mut operator_only = Vec::new();
        for dir in grants.proxy.iter().filter_map(|p| p.config_dir.as_ref()) {
            if !outputs.iter().any(|d| d.same_dir(dir)) {
                outputs.push(dir.clone());
                operator_only.push(dir.clone());
            }
        }
        (outputs, operator_only)
    }
}

impl Capability for TemplateCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/template"];
    const FLAG_HINT: &'static str = "--allow-template-out DIR (data: --allow-service, --allow-kv)";
    const TOML_HINT: &'static str =
        "grants.template_out = [\"DIR\"] (or a proxy, kv or services for its data)";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("template.wit", include_str!("../../../../wit/template.wit"))];
    type Spec = TemplateSpec;
    type Grant = TemplateGrant;

    fn validate(
        spec: &TemplateSpec,
        cx: &mut ValidateContext<'_>,
    ) -> Result<TemplateGrant, GrantError> {
        let outputs = spec
            .template_out
            .iter()
            .map(|d| {
                cx.existing_dir(Path::new(d))
                    .map_err(|r| GrantError::invalid("--allow-template-out", d, r))
            })
            .collect::<Result<_, _>>()?;
        let env = spec
            .template_env
            .iter()
            .map(|name| {
                env_name(name)
                    .map(str::to_string)
                    .map_err(|r| GrantError::invalid("--allow-template-env", name, r))
            })
            .collect::<Result<_, _>>()?;
        Ok(TemplateGrant { outputs, env })
    }

    fn granted(grants: &Grants) -> bool {
        !TemplateGrant::outputs(grants).0.is_empty()
            || !grants.template.env.is_empty()
            || !grants.kv.is_empty()
            || !grants.catalog.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        let grants = cx.grants;
        let (outputs, operator_only) = TemplateGrant::outputs(grants);
        let mut sources = grants.dirs.granted();
        sources.extend(outputs.iter().cloned());
        Self {
            kv: grants.kv.clone(),
            services: grants.catalog.clone(),
            sources,
            operator_only,
            operator_sources: grants
                .dirs
                .iter()
                .filter(|d| !d.writable)
                .map(|d| d.granted.clone())
                .collect(),
            plugin_writable: grants
                .dirs
                .iter()
                .filter(|d| d.writable)
                .map(|d| d.granted.clone())
                .chain(outputs.iter().cloned())
                .collect(),
            outputs,
            guest_dirs: grants.dirs.0.clone(),
            registry: cx.host.registry.clone(),
            timeout: cx.limits.host_call_timeout,
            // Granted but unset reads as empty, as consul-template's env.
            env: grants
                .template
                .env
                .iter()
                .map(|name| (name.clone(), std::env::var(name).unwrap_or_default()))
                .collect(),
        }
    }

    link_interfaces!(template);
}
