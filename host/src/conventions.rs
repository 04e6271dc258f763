//! Deployment conventions: the names the host and the stock plugins agree on
//! outside the WIT contract (settings, outputs, registry keys, proxy files).
//!
//! Each says who writes it and who reads it. The plugins are built apart
//! from the host (they cannot import this module), so a name changed here
//! must be changed in the plugin named beside it too.

/// The stage a pipeline rolls back, promotes and recovers when the runner
/// file names none (`deploy_stage`). Written by the operator as a stage name;
/// read by `pipeline::file`.
pub const DEFAULT_DEPLOY_STAGE: &str = "deploy";

/// Setting naming the image a stage deploys. Written by the operator (or
/// taken from `${build.image}`); read by the host as the deployed version
/// in the history, and by the build, push and bluegreen plugins.
pub const IMAGE: &str = "image";

/// Setting naming the JUnit report a plugin writes, as a guest path. Written
/// by the operator; read by the test plugins (to write it) and by
/// `stage::run_plugin` (to merge it for `runner run --junit`).
pub const REPORT: &str = "report";

/// Setting the host adds to the deploy stage's config when it runs it again
/// (see [`RunKind::action`]). Read by the bluegreen plugin.
pub const ACTION: &str = "action";

/// Output a stage sets, non-empty, to stop the pipeline at a promotion gate
/// (its value says why). Written by bluegreen with `promotion = "manual"`;
/// read by `pipeline::execute`.
pub const PAUSED: &str = "paused";

/// Output of the deploy stage: the color serving after it. Written by
/// bluegreen; read by the host into the deploy history.
pub const COLOR: &str = "color";

/// How later stages see `key` of `stage`'s outputs (as inputs and in
/// `${stage.key}`). Written by `pipeline::execute`; read by the stages after.
pub fn stage_output(stage: &str, key: &str) -> String {
    format!("{stage}.{key}")
}

/// The registry key holding the color of `service` that serves now.
/// Written by bluegreen; read by `runner status`.
pub fn color_key(service: &str) -> String {
    format!("{service}/{COLOR}")
}

/// The registry key holding the color of `service` that served before the
/// last switch (what a rollback starts again). Written and read by bluegreen.
pub fn previous_key(service: &str) -> String {
    format!("{service}/previous")
}

/// The prefix of the names of `service`'s containers (`<service>-<color>`).
/// Used by bluegreen to name them; read by `runner status` to list them.
pub fn container_prefix(service: &str) -> String {
    format!("{service}-")
}

/// Whether `file_name` in a proxy's `config_dir` is one of `service`'s
/// upstream files (bluegreen's template renders `<service>...conf`). Read by
/// `runner status`.
pub fn is_upstream_file(file_name: &str, service: &str) -> bool {
    file_name.starts_with(service)
}

/// The servers an nginx upstream file sends traffic to: its `server ADDR;`
/// lines, as `ADDR`. Written by the template bluegreen renders; read by
/// `runner status`.
pub fn upstream_servers(config: &str) -> impl Iterator<Item = String> + '_ {
    config.lines().filter_map(|line| {
        line.trim()
            .strip_prefix("server ")
            .map(|server| server.trim_end_matches(';').trim().to_string())
    })
}

/// Config keys the host sets for a pipeline's `before`/`after` hooks.
pub mod hook {
    /// The stage the hook runs around.
    pub const STAGE: &str = "stage";
    /// [`BEFORE`] or [`AFTER`].
    pub const PHASE: &str = "phase";
    /// After the stage: [`SUCCEEDED`] or [`FAILED`].
    pub const OUTCOME: &str = "outcome";
    pub const BEFORE: &str = "before";
    pub const AFTER: &str = "after";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
}

/// What a run of (part of) a pipeline is: recorded as the history's `kind`;
/// all but a plain run give the deploy stage an [`ACTION`] setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `runner run`: every stage.
    Run,
    /// `runner rollback`: the deploy stage alone, `action=rollback`.
    Rollback,
    /// `runner promote`: from the paused stage on, `action=promote`.
    Promote,
    /// `runner recover`: the deploy stage alone, `action=recover`.
    Recover,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::Rollback => "rollback",
            RunKind::Promote => "promote",
            RunKind::Recover => "recover",
        }
    }

    /// The setting the first stage run gets, if any (`action=<kind>`).
    pub fn action(self) -> Option<(String, String)> {
        match self {
            RunKind::Run => None,
            kind => Some((ACTION.to_string(), kind.as_str().to_string())),
        }
    }

    /// Whether the run is the deploy stage alone, without the outputs of the
    /// stages before it (so settings referring to them are left out).
    pub fn deploy_stage_only(self) -> bool {
        matches!(self, RunKind::Rollback | RunKind::Recover)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_servers_are_the_server_lines() {
        let conf = "upstream books-ms {\n \n server 10.0.0.1:32769;\n server 10.0.0.2:1 ;\n}\n";
        let servers: Vec<String> = upstream_servers(conf).collect();
        assert_eq!(servers, ["10.0.0.1:32769", "10.0.0.2:1"]);
    }

    #[test]
    fn run_kinds_name_their_action() {
        assert_eq!(RunKind::Run.action(), None);
        assert_eq!(
            RunKind::Rollback.action(),
            Some(("action".into(), "rollback".into()))
        );
        assert!(RunKind::Recover.deploy_stage_only());
        assert!(!RunKind::Promote.deploy_stage_only());
    }
}
