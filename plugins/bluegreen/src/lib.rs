//! The blue-green stage: the seed's flow (seed 001), as a sandboxed plugin,
//! crash-safe through the host's deploy journal.
//!
//! deploy: read `<service>/color` → run `<service>-<next>` beside the old
//! color → wait for its health path → pre-integration hook against its own
//! address → switch the proxy to it (one atomic, verified step) → write the
//! color (CAS) → post-integration hook through the proxy → after the drain
//! delay, stop (not remove) the old color, so a rollback is instant, and
//! record it as `<service>/previous`.
//!
//! Before each step with an external effect the stage writes the journal
//! (`journal.rs`): the step, the last known-good color and the candidate. A
//! deploy that dies is finished or undone by the next run of this stage for
//! the service, whatever its action, or by `action=recover`:
//! - before the switch: the candidate is removed; proxy and color untouched;
//! - after the switch, before the post-integration tests passed: back to the
//!   last known-good color (proxy, color), the candidate removed;
//! - after them: finished (the old color stopped and kept for rollback).
//!
//! A candidate that fails (exits, never healthy, fails a test, the switch
//! fails) is removed, with its exit code and last log lines in the error.
//!
//! rollback (`action=rollback`): start the color `<service>/previous` names
//! (the last version that passed and served before the current one, never
//! a candidate that did not), wait for its health, switch the proxy to it,
//! restore the color, stop the current. While a candidate waits for
//! promotion, rollback removes it instead.
//!
//! promotion (`promotion=manual`, Argo's `autoPromotionEnabled: false`): the
//! deploy stops after the pre-integration tests with output `paused`, the
//! new color running but not serving; `action=promote` then switches to it
//! (post-integration tests, drain, old color stopped).
//!
//! Config: `image` (required for deploy), `container_port` (8080),
//! `health_path` (/health), `health_timeout` (60s), `env.NAME=VALUE`,
//! `label.KEY=VALUE` (container labels),
//! `stop_timeout` (10s), `drain` (2s), `restart` (unless-stopped), `proxy`
//! (nginx), `upstream` (the upstream or HAProxy backend, default: the
//! service), `upstream_file` (`<service>.conf`, a file name in the proxy's
//! config dir), `upstream_template` (a template file; `{color}` in the path
//! is replaced; default: the seed's upstream template), `proxy_url` (base
//! URL through the proxy, for the post hook), `pre_hook` / `post_hook` (hook
//! names, default `pre-integration` / `post-integration`; `none` skips),
//! `logs_tail` (20), `replicas` (1: containers per color; more are
//! `<service>-<color>-1..N`, started together, each healthy and tested
//! before the switch, all behind the proxy after it, all stopped after the
//! next switch and all started again by a rollback), `hosts` (on a runner
//! file's named hosts: the hosts to place the replicas on, round-robin,
//! comma-separated; default: runner spreads them over the granted hosts).
//! A replica is reached at its host's address: health checks, tests and the
//! upstream use it (127.0.0.1 on a single engine).
//!
//! `engine=swarm` (runner's engine a Swarm manager): each color is a Swarm
//! service `<service>-<color>` of `replicas` tasks publishing in host mode;
//! the same flow, the old color scaled to zero after the switch and scaled
//! back up by a rollback (`swarm.rs`). `strategy=rolling` instead updates
//! one service in place with Swarm's start-first rolling update, tested
//! task by task and through the proxy (`rolling.rs`).
//!
//! Grants: `--allow-kv <service>/`, `--allow-service '<service>-*'`,
//! `--allow-container '<service>-*'`, `--allow-image ...`, `--allow-http
//! 'http://127.0.0.1:*'`, `--allow-proxy NAME`, `--allow-hook NAME`; the
//! journal needs the deploy lock (`--service` with Docker grants).

mod deploy;
mod journal;
mod rolling;
mod steps;
mod swarm;

use runner_sdk::{Config, Context, Error, Guest, Outcome, config, docker};
use std::time::Duration;

struct BlueGreen;

pub(crate) const COLORS: [&str; 2] = ["blue", "green"];

pub(crate) fn other(color: &str) -> &'static str {
    if color == "blue" { "green" } else { "blue" }
}

pub(crate) struct Settings {
    pub(crate) service: String,
    pub(crate) image: Option<String>,
    pub(crate) container_port: u16,
    pub(crate) health_path: String,
    pub(crate) health_timeout: Duration,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) stop_timeout: u32,
    pub(crate) drain: Duration,
    pub(crate) restart: docker::RestartPolicy,
    pub(crate) proxy: String,
    /// The upstream (or HAProxy backend) name.
    pub(crate) upstream: String,
    pub(crate) upstream_file: Option<String>,
    pub(crate) upstream_template: Option<String>,
    pub(crate) proxy_url: Option<String>,
    pub(crate) pre_hook: Option<String>,
    pub(crate) post_hook: Option<String>,
    pub(crate) logs_tail: u32,
    /// `promotion=manual`: stop after the pre-integration tests until promoted.
    pub(crate) manual_promotion: bool,
    /// Containers per color (`replicas`): one is `<service>-<color>`, more
    /// are `<service>-<color>-1` .. `-N`, all registered as `<service>-<color>`.
    pub(crate) replicas: u32,
    /// `hosts`: the named hosts to pin the replicas to, round-robin; empty:
    /// placed by the host.
    pub(crate) hosts: Vec<String>,
    /// `engine=swarm`: each color is a Swarm service of `replicas` tasks.
    pub(crate) swarm: bool,
    /// `strategy=rolling` (Swarm only): one service, updated task by task.
    pub(crate) rolling: bool,
    /// `health_cmd`: a health check Swarm runs in each task (exec form,
    /// comma-separated); a rolling update waits for it.
    pub(crate) health_cmd: Option<Vec<String>>,
    /// `update_timeout`: how long a rolling update may take before runner
    /// calls it stuck and reverts it.
    pub(crate) update_timeout: Duration,
    /// `update_monitor`: how long Swarm watches each new task for failure.
    pub(crate) update_monitor: Duration,
    /// `update_delay`: how long Swarm waits between tasks, the time runner
    /// has to test each new task before the next old one stops.
    pub(crate) update_delay: Duration,
}

/// Most replicas per color one stage runs (each is started, health-checked
/// and tested in turn by this plugin).
pub(crate) const MAX_REPLICAS: u64 = 32;

fn hook_setting(cfg: &Config<'_>, key: &str, default: &str) -> Option<String> {
    match cfg.get_or(key, default) {
        "" | "none" => None,
        name => Some(name.to_string()),
    }
}

impl Settings {
    pub(crate) fn from(ctx: &Context) -> Result<Self, Error> {
        let cfg = config(ctx);
        if ctx.service.is_empty() {
            return Err(Error::InvalidConfig(
                "no service given; pass --service NAME".into(),
            ));
        }
        let restart = match cfg.get_or("restart", "unless-stopped") {
            "no" => docker::RestartPolicy::No,
            "on-failure" => docker::RestartPolicy::OnFailure,
            "unless-stopped" => docker::RestartPolicy::UnlessStopped,
            "always" => docker::RestartPolicy::Always,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "setting `restart` must be no, on-failure, unless-stopped or always, got \"{other}\""
                )));
            }
        };
        let port = cfg.u64("container_port", 8080)?;
        let replicas = cfg.u64("replicas", 1)?;
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(Error::InvalidConfig(format!(
                "setting `replicas` must be 1 to {MAX_REPLICAS}, got {replicas}"
            )));
        }
        let swarm = match cfg.get_or("engine", "containers") {
            "containers" => false,
            "swarm" => true,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "setting `engine` must be containers or swarm, got \"{other}\""
                )));
            }
        };
        let rolling = match cfg.get_or("strategy", "bluegreen") {
            "bluegreen" => false,
            "rolling" if swarm => true,
            "rolling" => {
                return Err(Error::InvalidConfig(
                    "strategy=rolling is Swarm's rolling update: it needs engine=swarm".into(),
                ));
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "setting `strategy` must be bluegreen or rolling, got \"{other}\""
                )));
            }
        };
        if rolling && replicas < 2 {
            return Err(Error::InvalidConfig(
                "strategy=rolling needs replicas=2 or more: start-first stops a task's predecessor as soon as the new one is healthy, \
                 before runner has tested it, so one replica would leave nothing serving; use strategy=bluegreen for one"
                    .into(),
            ));
        }
        if swarm && !cfg.get_or("hosts", "").is_empty() {
            return Err(Error::InvalidConfig(
                "setting `hosts` places containers on a runner file's named hosts; with engine=swarm the Swarm places the tasks: drop `hosts`".into(),
            ));
        }
        let health_cmd = cfg.get("health_cmd").map(|c| {
            c.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        if health_cmd.as_ref().is_some_and(|c| c.is_empty() || !swarm) {
            return Err(Error::InvalidConfig(
                "setting `health_cmd` is a Swarm task's health check (engine=swarm), a command and its arguments, comma-separated".into(),
            ));
        }
        Ok(Settings {
            swarm,
            rolling,
            health_cmd,
            update_timeout: cfg.duration("update_timeout", Duration::from_secs(300))?,
            update_monitor: cfg.duration("update_monitor", Duration::from_secs(5))?,
            update_delay: cfg.duration("update_delay", Duration::from_secs(10))?,
            service: ctx.service.clone(),
            image: cfg.get("image").map(str::to_string),
            container_port: u16::try_from(port).map_err(|_| {
                Error::InvalidConfig(format!("setting `container_port` {port} is not a port"))
            })?,
            health_path: cfg.get_or("health_path", "/health").to_string(),
            health_timeout: cfg.duration("health_timeout", Duration::from_secs(60))?,
            env: cfg
                .with_prefix("env")
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: cfg
                .with_prefix("label")
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stop_timeout: cfg
                .duration("stop_timeout", Duration::from_secs(10))?
                .as_secs() as u32,
            drain: cfg.duration("drain", Duration::from_secs(2))?,
            restart,
            proxy: cfg.get_or("proxy", "nginx").to_string(),
            upstream: cfg.get_or("upstream", &ctx.service).to_string(),
            upstream_file: cfg.get("upstream_file").map(str::to_string),
            upstream_template: cfg.get("upstream_template").map(str::to_string),
            proxy_url: cfg.get("proxy_url").map(str::to_string),
            pre_hook: hook_setting(&cfg, "pre_hook", "pre-integration"),
            post_hook: hook_setting(&cfg, "post_hook", "post-integration"),
            logs_tail: cfg.u64("logs_tail", 20)? as u32,
            manual_promotion: match cfg.get_or("promotion", "auto") {
                "auto" => false,
                "manual" => true,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "setting `promotion` must be auto or manual, got \"{other}\""
                    )));
                }
            },
            replicas: replicas as u32,
            hosts: cfg
                .get_or("hosts", "")
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    pub(crate) fn container(&self, color: &str) -> String {
        format!("{}-{color}", self.service)
    }

    pub(crate) fn color_key(&self) -> String {
        format!("{}/color", self.service)
    }

    /// The color holding the version to roll back to: the one that served
    /// before the current one and passed everything. Cleared when a deploy
    /// replaces that container.
    pub(crate) fn previous_key(&self) -> String {
        format!("{}/previous", self.service)
    }

    /// The color waiting for promotion, while one does.
    pub(crate) fn promotion_key(&self) -> String {
        format!("{}/promotion", self.service)
    }
}

impl Guest for BlueGreen {
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Blue-green deploy: run the next color, test it, switch the proxy, keep the old one for rollback")
            .setting(runner_sdk::setting("action", runner_sdk::SettingKind::Text, "deploy, promote, rollback or recover").default("deploy"))
            .setting(runner_sdk::setting("image", runner_sdk::SettingKind::Text, "the image to deploy (a rollback reuses the previous color's)"))
            .setting(runner_sdk::setting("container_port", runner_sdk::SettingKind::Integer, "the port the service listens on in its container").default("8080"))
            .setting(runner_sdk::setting("health_path", runner_sdk::SettingKind::Text, "the path polled until the new color is healthy").default("/health"))
            .setting(runner_sdk::setting("health_timeout", runner_sdk::SettingKind::Duration, "how long the new color may take to become healthy").default("60s"))
            .setting(runner_sdk::setting("env.*", runner_sdk::SettingKind::Text, "an environment variable of the service's container (env.NAME)"))
            .setting(runner_sdk::setting("label.*", runner_sdk::SettingKind::Text, "a label of the service's container (label.NAME)"))
            .setting(runner_sdk::setting("stop_timeout", runner_sdk::SettingKind::Duration, "how long the old color may take to stop").default("10s"))
            .setting(runner_sdk::setting("drain", runner_sdk::SettingKind::Duration, "how long the old color keeps serving after the switch").default("2s"))
            .setting(runner_sdk::setting("restart", runner_sdk::SettingKind::Text, "the containers' restart policy: no, on-failure, unless-stopped or always").default("unless-stopped"))
            .setting(runner_sdk::setting("proxy", runner_sdk::SettingKind::Text, "the granted proxy to switch").default("nginx"))
            .setting(runner_sdk::setting("upstream", runner_sdk::SettingKind::Text, "the proxy's upstream [default: the service's name]"))
            .setting(runner_sdk::setting("upstream_file", runner_sdk::SettingKind::Text, "the upstream file the proxy includes (files driver)"))
            .setting(runner_sdk::setting("upstream_template", runner_sdk::SettingKind::Text, "a template rendered into the upstream file ({color} is replaced)"))
            .setting(runner_sdk::setting("proxy_url", runner_sdk::SettingKind::Url, "the proxy's address, for the post-switch checks"))
            .setting(runner_sdk::setting("pre_hook", runner_sdk::SettingKind::Text, "the hook that tests the new color before the switch (none: no hook)").default("pre-integration"))
            .setting(runner_sdk::setting("post_hook", runner_sdk::SettingKind::Text, "the hook that tests through the proxy after the switch (none: no hook)").default("post-integration"))
            .setting(runner_sdk::setting("logs_tail", runner_sdk::SettingKind::Integer, "log lines of a failed container shown in the error").default("20"))
            .setting(runner_sdk::setting("replicas", runner_sdk::SettingKind::Integer, "containers per color, all healthy and tested before the switch, all behind the proxy after it").default("1"))
            .setting(runner_sdk::setting("hosts", runner_sdk::SettingKind::Text, "named hosts to place the replicas on, round-robin (comma-separated) [default: spread by runner]"))
            .setting(runner_sdk::setting("engine", runner_sdk::SettingKind::Text, "containers, or swarm: each color a Swarm service of `replicas` tasks (runner's engine must be a Swarm manager)").default("containers"))
            .setting(runner_sdk::setting("strategy", runner_sdk::SettingKind::Text, "bluegreen, or rolling (engine=swarm): Swarm's start-first rolling update, health-gated, rolled back on failure").default("bluegreen"))
            .setting(runner_sdk::setting("health_cmd", runner_sdk::SettingKind::Text, "engine=swarm: a health check Swarm runs in each task, comma-separated (e.g. /app,probe)"))
            .setting(runner_sdk::setting("update_timeout", runner_sdk::SettingKind::Duration, "strategy=rolling: how long the update may take before runner calls it stuck and reverts it").default("5m"))
            .setting(runner_sdk::setting("update_monitor", runner_sdk::SettingKind::Duration, "strategy=rolling: how long Swarm watches each new task for failure").default("5s"))
            .setting(runner_sdk::setting("update_delay", runner_sdk::SettingKind::Duration, "strategy=rolling: how long Swarm waits between tasks: the time runner has to test each new one before the next old one stops").default("10s"))
            .setting(runner_sdk::setting("promotion", runner_sdk::SettingKind::Text, "auto, or manual: stop after the pre-switch tests until `runner promote`").default("auto"))
            .output("color", "the color now serving")
            .output("previous", "the color kept for rollback")
            .output("container", "the new color's containers (comma-separated)")
            .output("port", "the new color's (first) published port")
            .output("ports", "the new color's published ports (comma-separated)")
            .output("addresses", "the new color's ADDRESS:PORTs (comma-separated)")
            .output("candidate", "the color waiting for promotion (promotion=manual)")
            .output("paused", "true when the deploy stopped at its promotion gate")
            .output("recovered", "true when an interrupted deploy was finished or undone")
            .output("prepare_ms", "time to remove the color's previous containers (part of start_ms)")
            .output("start_ms", "time to start the new color")
            .output("healthy_ms", "time until it was healthy")
            .output("switch_ms", "time to switch the proxy")
            .output("finish_ms", "time to stop the old color (kept for rollback) and record it")
    }
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let settings = Settings::from(&ctx)?;
        let action = config(&ctx).get_or("action", "deploy");
        if !matches!(action, "deploy" | "rollback" | "promote" | "recover") {
            return Err(Error::InvalidConfig(format!(
                "setting `action` must be deploy, promote, rollback or recover, got \"{action}\""
            )));
        }
        if settings.swarm {
            swarm::preflight()?;
        }
        if settings.rolling {
            return match action {
                "deploy" => rolling::deploy(&settings),
                "rollback" => rolling::rollback(&settings),
                other => Err(Error::InvalidConfig(format!(
                    "action={other} is blue-green's; strategy=rolling deploys and rolls back"
                ))),
            };
        }
        // Whatever the action: first finish or undo a deploy that died.
        let recovered = journal::recover(&settings)?;
        match action {
            "deploy" => deploy::deploy(&settings),
            "rollback" => deploy::rollback(&settings),
            "promote" => deploy::promote(&settings),
            _ => Ok(match recovered {
                Some(message) => runner_sdk::outcome(message).with_output("recovered", "true"),
                None => runner_sdk::outcome(format!(
                    "nothing to recover: the last deploy of {} finished",
                    settings.service
                ))
                .with_output("recovered", "false"),
            }
            .with_output("color", steps::read_color(&settings)?.0)),
        }
    }
}

runner_sdk::export!(BlueGreen);
