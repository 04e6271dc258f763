//! The pipeline file (`runner.toml`): the service, its targets, and an
//! ordered list of stages, each a plugin with its own config, grants, limits
//! and hooks. The same file holds the `[proxies.*]` and `[hooks.*]` that
//! `runner exec -f` uses.
//!
//! Loading checks everything that can be checked without running anything,
//! and every problem names the file, the line and the fix: unknown keys, bad
//! values, plugins that cannot be found, grants that do not parse, hooks and
//! proxies that are not defined, `${stage.key}` references to stages that do
//! not run earlier, and plugins whose imports their grants do not cover.

use crate::caps::{Grants, ImportUse};
use crate::conventions::DEFAULT_DEPLOY_STAGE;
use crate::plugin_ref::{PluginPath, PluginRef, PluginSource, Sources};
use crate::runfile::{RunnerFile, RunnerFileSpec};
use crate::runtime::{Limits, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::runfile::{StageSpec, TargetsSpec};

/// A validated stage.
#[derive(Debug, Clone)]
pub struct StageDef {
    pub name: String,
    pub plugin: PluginSource,
    /// As written: `${stage.key}` and `${env.NAME}` are filled in at run time.
    pub config: Vec<(String, String)>,
    pub grants: Grants,
    pub limits: Limits,
    pub before: Vec<String>,
    pub after: Vec<String>,
    /// Where the stage is defined, for messages.
    pub line: usize,
}

/// A validated pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    pub path: PathBuf,
    pub service: String,
    /// The stage `runner rollback` and `runner promote` run again.
    pub deploy_stage: Option<String>,
    pub consul: Option<String>,
    pub docker_host: Option<String>,
    pub runfile: RunnerFile,
    pub stages: Vec<StageDef>,
    /// Imports the grants do not cover: calls to them will be denied.
    pub warnings: Vec<FileProblem>,
}

/// One problem in a pipeline file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct FileProblem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<FileProblem> },
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Each `${...}` reference in `value`: (inside, is it well formed).
pub fn references(value: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                refs.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => {
                refs.push(after);
                break;
            }
        }
    }
    refs
}

/// Why a `${...}` reference cannot be filled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("unclosed \"${{\" in \"{0}\"")]
    Unclosed(String),
    #[error("environment variable {0} is not set; set it or write ${{env.{0}:-DEFAULT}}")]
    UnsetVariable(String),
    #[error(
        "${{{reference}}}: no earlier stage output \"{reference}\" (outputs so far: {})",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NoOutput {
        reference: String,
        known: Vec<String>,
    },
}

/// Fill in `${stage.key}` from `outputs` and `${env.NAME}` / `${env.NAME:-default}`
/// from the environment.
pub fn interpolate(
    value: &str,
    outputs: &BTreeMap<String, String>,
) -> Result<String, InterpolateError> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| InterpolateError::Unclosed(value.to_string()))?;
        out.push_str(&resolve_reference(&after[..end], outputs)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_reference(
    reference: &str,
    outputs: &BTreeMap<String, String>,
) -> Result<String, InterpolateError> {
    if let Some(var) = reference.strip_prefix("env.") {
        let (name, default) = match var.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (var, None),
        };
        return match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => Ok(v),
            (_, Some(d)) => Ok(d.to_string()),
            _ => Err(InterpolateError::UnsetVariable(name.to_string())),
        };
    }
    outputs
        .get(reference)
        .cloned()
        .ok_or_else(|| InterpolateError::NoOutput {
            reference: reference.to_string(),
            known: outputs.keys().cloned().collect(),
        })
}

impl Pipeline {
    /// Parse and check `path`; with `runtime`, also load every plugin and
    /// check its imports against its grants.
    pub fn load(
        path: &Path,
        sources: &Sources,
        runtime: Option<&Runtime>,
    ) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.into(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let problem = |line: usize, message: String| FileProblem {
            file: path.into(),
            line,
            message,
        };
        let mut spec: RunnerFileSpec =
            toml::from_str(&text).map_err(|e| PipelineError::Invalid {
                problems: vec![problem(
                    e.span().map(|s| line_of(&text, s.start)).unwrap_or(1),
                    e.message().trim().to_string(),
                )],
            })?;
        let plugin_path = PluginPath::new(sources, base);
        // Trust first: every registry plugin below is checked against it.
        let file_keys = match sources.registry.uses_file_keys() {
            true => spec.trusted_keys(base),
            false => Ok(Vec::new()),
        };
        match file_keys {
            Ok(keys) => sources.registry.set_file_keys(keys),
            Err(e) => {
                let line = spec
                    .trust
                    .as_ref()
                    .map(|t| line_of(&text, t.span().start))
                    .unwrap_or(1);
                return Err(PipelineError::Invalid {
                    problems: vec![problem(line, format!("[trust]: {e}"))],
                });
            }
        }
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        let service = spec.service.clone().unwrap_or_default();
        if service.is_empty() {
            problems.push(problem(
                1,
                "no service: add `service = \"NAME\"` at the top (the service this pipeline deploys)".into(),
            ));
        }
        if spec.stages.is_empty() {
            problems.push(problem(
                line_of(&text, text.len()),
                "no stages: add at least one [[stages]] with a name and a plugin".into(),
            ));
        }
        let stage_specs = std::mem::take(&mut spec.stages);
        let deploy_stage = spec.deploy_stage.take();
        // The runner file checks [targets] against [hosts.*]; the pipeline keeps them.
        let targets = TargetsSpec {
            consul: spec.targets.consul.take(),
            docker: spec.targets.docker.clone(),
        };
        let runfile =
            match RunnerFile::from_spec_with(spec, base, &|p| plugin_path.resolve(p, base)) {
                Ok(r) => r,
                Err(e) => {
                    return Err(PipelineError::Invalid {
                        problems: vec![problem(line_of(&text, e.span().start), e.to_string())],
                    });
                }
            };
        let hook_names = runfile.hook_names();
        for warning in &runfile.warnings {
            warnings.push(problem(
                line_of(&text, warning.span.start),
                warning.to_string(),
            ));
        }

        let mut stages: Vec<StageDef> = Vec::new();
        let mut descriptions: std::collections::BTreeMap<String, crate::describe::Description> =
            Default::default();
        for spanned in &stage_specs {
            let line = line_of(&text, spanned.span().start);
            let stage = spanned.get_ref();
            let name = &stage.name;
            let mut at = |message: String| {
                problems.push(problem(line, format!("stage \"{name}\": {message}")))
            };
            if name.is_empty() || name.contains(['.', ' ', '$', '{', '}']) {
                at("a stage name must be non-empty, without '.', spaces, '$' or braces".into());
            }
            if stages.iter().any(|s| &s.name == name) {
                at("another stage has this name; stage names must be unique".into());
            }
            let plugin = match PluginRef::parse(&stage.plugin)
                .and_then(|plugin| plugin_path.resolve(&plugin, base))
            {
                Ok(p) => p,
                Err(e) => {
                    at(e.to_string());
                    PluginSource::File(PathBuf::new())
                }
            };
            let mut grants = stage.grants.clone();
            grants.rebase(base);
            let grants = match grants.validate_with(&runfile.proxies, &hook_names) {
                Ok(g) => {
                    for dir in &g.missing_dirs {
                        warnings.push(problem(
                            line,
                            format!(
                                "stage \"{name}\": {} does not exist yet; it must exist before the stage runs",
                                dir.display()
                            ),
                        ));
                    }
                    Some(g)
                }
                Err(e) => {
                    at(format!("grants: {e}"));
                    None
                }
            };
            let mut limits_spec = stage.limits.clone();
            if let Some(timeout) = &stage.timeout {
                if limits_spec.deadline.is_some() {
                    at("give either `timeout` or `limits.deadline`, not both".into());
                }
                limits_spec.deadline = Some(timeout.clone());
            }
            let limits = limits_spec.resolve(Limits::default()).unwrap_or_else(|e| {
                at(format!("limits: {e}"));
                Limits::default()
            });
            for hook in stage.before.iter().chain(&stage.after) {
                if !hook_names.contains(hook) {
                    at(format!(
                        "hook \"{hook}\" is not defined; add a [hooks.{hook}] table with its plugin"
                    ));
                }
            }
            for (key, value) in &stage.config {
                for reference in references(value) {
                    if reference.starts_with("env.") {
                        continue;
                    }
                    let Some((from, _)) = reference.split_once('.') else {
                        at(format!(
                            "config {key}: \"${{{reference}}}\" is not a reference; write ${{STAGE.OUTPUT}} or ${{env.NAME}}"
                        ));
                        continue;
                    };
                    if !stages.iter().any(|s| s.name == from) {
                        at(format!(
                            "config {key}: \"${{{reference}}}\" refers to stage \"{from}\", which does not run before this one"
                        ));
                    }
                }
            }
            // With grants that do not parse, what they would cover is moot.
            if let (Some(runtime), true, Some(grants)) = (runtime, plugin.path().is_file(), &grants)
            {
                match runtime.load_source(&plugin) {
                    Ok(loaded) => {
                        // A warning, not an error: some toolchains
                        // (componentize-py) import every interface of the
                        // world whether the plugin calls it or not.
                        for missing in uncovered_imports(&loaded.imports(runtime.engine()), grants)
                        {
                            warnings.push(problem(line, format!("stage \"{name}\": {missing}")));
                        }
                        // What it declares: its settings, typed, and outputs.
                        match crate::oci::resolve::block_on(runtime.describe(&loaded)) {
                            Ok(Ok(Some(described))) => {
                                let config = stage
                                    .config
                                    .iter()
                                    .map(|(k, v)| (k.as_str(), v.as_str()));
                                for message in described.check_config(config) {
                                    at(message);
                                }
                                descriptions.insert(name.clone(), described);
                            }
                            Ok(Ok(None)) => warnings.push(problem(
                                line,
                                format!(
                                    "stage \"{name}\": its plugin does not describe its settings \
                                     (built against the plain `stage` world), so they are not checked"
                                ),
                            )),
                            Ok(Err(fault)) => at(format!("describing itself failed: {fault}")),
                            Err(e) => at(e.to_string()),
                        }
                    }
                    Err(e) => at(e.to_string()),
                }
            }
            // `${stage.key}`: the earlier stage, when it describes itself,
            // must declare that output.
            for (key, value) in &stage.config {
                for reference in references(value) {
                    let Some((from, output)) = reference.split_once('.') else {
                        continue;
                    };
                    if let Some(described) = descriptions.get(from)
                        && !described.outputs_key(output)
                    {
                        let declared: Vec<&str> =
                            described.outputs.iter().map(|o| o.name.as_str()).collect();
                        at(format!(
                            "config {key}: \"${{{reference}}}\": stage \"{from}\" never outputs \"{output}\" (it declares: {})",
                            if declared.is_empty() {
                                "none".to_string()
                            } else {
                                declared.join(", ")
                            }
                        ));
                    }
                }
            }
            stages.push(StageDef {
                name: name.clone(),
                plugin,
                config: stage.config.clone().into_iter().collect(),
                grants: grants.unwrap_or_default(),
                limits,
                before: stage.before.clone(),
                after: stage.after.clone(),
                line,
            });
        }
        if let Some(deploy) = &deploy_stage
            && !stages.iter().any(|s| &s.name == deploy)
        {
            let line = text
                .find("deploy_stage")
                .map(|o| line_of(&text, o))
                .unwrap_or(1);
            problems.push(problem(
                line,
                format!("deploy_stage \"{deploy}\" is not one of the stages"),
            ));
        }
        // Under --locked, lock entries nothing used are a stale lock.
        if problems.is_empty()
            && let Err(e) = sources.registry.check_stale()
        {
            problems.push(problem(1, e.to_string()));
        }
        if !problems.is_empty() {
            return Err(PipelineError::Invalid { problems });
        }
        let deploy_stage = deploy_stage.or_else(|| {
            stages
                .iter()
                .any(|s| s.name == DEFAULT_DEPLOY_STAGE)
                .then(|| DEFAULT_DEPLOY_STAGE.into())
        });
        Ok(Self {
            path: path.into(),
            service,
            deploy_stage,
            consul: targets.consul,
            docker_host: targets.docker,
            runfile,
            stages,
            warnings,
        })
    }

    pub fn stage(&self, name: &str) -> Option<&StageDef> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// What each runner interface a plugin imports needs granted, and the fix
/// (from the capability list, [`crate::caps::IMPORTS`]).
fn uncovered_imports(imports: &[String], grants: &Grants) -> Vec<String> {
    let mut problems = Vec::new();
    for import in imports {
        let iface = import.split('@').next().unwrap_or(import);
        let Some(ImportUse::Capability(cap)) = crate::caps::import_use(iface) else {
            continue;
        };
        if !cap.toml_hint.is_empty() && !(cap.granted)(grants) {
            problems.push(format!(
                "its plugin imports {iface} but the stage grants nothing for it, so calls to it will be denied; if it uses it, add {}",
                cap.toml_hint
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_fills_outputs_and_environment() {
        let outputs = BTreeMap::from([("build.image".to_string(), "app:v1".to_string())]);
        assert_eq!(
            interpolate("run ${build.image} now", &outputs).unwrap(),
            "run app:v1 now"
        );
        assert_eq!(
            interpolate("${env.RUNNER_SURELY_UNSET:-dflt}", &outputs).unwrap(),
            "dflt"
        );
        let err = interpolate("${env.RUNNER_SURELY_UNSET}", &outputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RUNNER_SURELY_UNSET is not set"), "{err}");
        let err = interpolate("${push.image}", &outputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outputs so far: build.image"), "{err}");
        assert_eq!(references("a ${x.y} b ${env.Z:-1}"), ["x.y", "env.Z:-1"]);
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }

    /// Load `toml` as `runner.toml` in a new directory holding `plugin.wasm`.
    fn load_text(toml: &str) -> (tempfile::TempDir, Result<Pipeline, PipelineError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plugin.wasm"), b"").unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(&file, toml).unwrap();
        let loaded = Pipeline::load(&file, &Sources::dirs(&[]), None);
        (dir, loaded)
    }

    #[test]
    fn runner_file_problems_name_the_line_of_their_table() {
        let (_dir, loaded) = load_text(
            "service = \"s\"\n\
             [[stages]]\nname = \"deploy\"\nplugin = \"plugin.wasm\"\n\
             \n[proxies.nginx]\ndriver = \"nope\"\n",
        );
        let Err(PipelineError::Invalid { problems }) = loaded else {
            panic!("an unknown driver loads");
        };
        assert_eq!(problems[0].line, 6, "{problems:?}");
        assert!(
            problems[0]
                .message
                .starts_with("[proxies.nginx]: driver \"nope\" is not known"),
            "{problems:?}"
        );

        let (_dir, loaded) = load_text(
            "service = \"s\"\n\
             [[stages]]\nname = \"deploy\"\nplugin = \"plugin.wasm\"\n\
             [hooks.h]\nplugin = \"plugin.wasm\"\n\
             [hooks.h.grants]\ndirs = [\"missing:/m\"]\n",
        );
        let warnings = loaded.expect("a missing directory is a warning").warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].line, 7, "{warnings:?}");
        assert!(
            warnings[0].message.starts_with("[hooks.h.grants]: "),
            "{warnings:?}"
        );
    }
}
