//! Pipelines: `runner validate` on broken files (each message asserted, with
//! its line), outputs flowing into later stages, stage hooks, the JSON event
//! stream, and the example pipeline end to end on the real Docker engine, a
//! real local registry and nginx: build → unit tests in a container → push →
//! blue-green with integration hooks → push the tests image; then status,
//! history, a manual promotion gate, promote and rollback.

use crate::common;

use crate::common::{
    Env, Output, RunnerFile, Stage, free_port, plugin, repo, require_docker, run, unique,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn plugins_dir() -> PathBuf {
    plugin("sandbox-probe").parent().unwrap().to_path_buf()
}

/// `runner.toml` with `text` in a fresh env, its `plugins/` the built plugins.
fn pipeline_file(env: &Env, text: &str) -> PathBuf {
    let file = env.path().join("runner.toml");
    std::fs::write(&file, text).unwrap();
    let link = env.path().join("plugins");
    if !link.exists() {
        std::os::unix::fs::symlink(plugins_dir(), link).unwrap();
    }
    file
}

fn validate(env: &Env, text: &str) -> Output {
    let file = pipeline_file(env, text);
    let mut cmd = env.runner();
    cmd.arg("validate").arg(file);
    run(&mut cmd)
}

/// A probe stage in `mode`, granted everything the probe imports (kv,
/// http, template, docker).
fn probe_stage(name: &str, mode: &str) -> Stage {
    Stage::new(name, "sandbox-probe")
        .config("mode", mode)
        .grant("kv", ["svc/"])
        .grant("http", ["http://127.0.0.1:9"])
        .grant("containers", ["svc-none"])
}

/// The example pipeline validates from a clean checkout: the directories its
/// environment creates later (nginx's config dir, reports, build contexts)
/// are warnings, not errors.
#[test]
fn the_example_pipeline_validates_before_its_environment_exists() {
    let env = Env::new();
    let copy = env.path().join("example");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        repo().join("examples/pipeline/runner.toml"),
        copy.join("runner.toml"),
    )
    .unwrap();
    let plugins = plugin("build").parent().unwrap().to_path_buf();
    let out = run(env
        .runner()
        .arg("validate")
        .arg("--plugin-path")
        .arg(&plugins)
        .arg(copy.join("runner.toml")))
    .expect_code(0)
    .stderr_has("[proxies.nginx]: config_dir")
    .stderr_has("does not exist yet");
    assert!(out.stdout.contains("valid"), "{}", out.stdout);
    // `--strict` turns the warnings into errors.
    run(env
        .runner()
        .args(["validate", "--strict", "--plugin-path"])
        .arg(&plugins)
        .arg(copy.join("runner.toml")))
    .expect_code(2);
}

#[test]
fn validate_names_the_file_line_and_fix() {
    let env = Env::new();
    // The line numbers below are this layout's: stage at 3, plugin at 5.
    let ok = RunnerFile::new()
        .service("svc")
        .stage(probe_stage("one", "noop"))
        .text();
    let valid = validate(&env, &ok).expect_code(0).stdout;
    assert!(valid.contains("valid; service svc, 1 stages"), "{valid}");

    // Imports the grants do not cover: a warning, an error with --strict.
    let uncovered = RunnerFile::new()
        .service("svc")
        .stage(Stage::new("one", "sandbox-probe").config("mode", "noop"))
        .text();
    let warning = "runner.toml:3: stage \"one\": its plugin imports runner:plugin/kv but the stage grants nothing for it, so calls to it will be denied; if it uses it, add grants.kv = [\"PREFIX/\"]";
    validate(&env, &uncovered)
        .expect_code(0)
        .stderr_has(&format!("warning: {}", env.path().join(warning).display()));
    let file = pipeline_file(&env, &uncovered);
    run(env.runner().args(["validate", "--strict"]).arg(file))
        .expect_code(2)
        .stderr_has(warning);

    let cases: Vec<(String, &str)> = vec![
        (
            ok.replace("plugin = ", "plugn = "),
            "runner.toml:5: unknown field `plugn`, expected one of `name`, `plugin`",
        ),
        (
            ok.replace("\"sandbox-probe\"", "\"nope\""),
            "runner.toml:3: stage \"one\": plugin \"nope\" not found as nope.wasm in",
        ),
        (
            ok.replace("svc-none", "svc-[unclosed"),
            "runner.toml:3: stage \"one\": grants: invalid --allow-container/--allow-image grant \"svc-[unclosed\"",
        ),
        (
            ok.replace("mode = \"noop\"", "mode = \"${two.color}\""),
            "stage \"one\": config mode: \"${two.color}\" refers to stage \"two\", which does not run before this one",
        ),
        (
            ok.replace("[[stages]]\n", "[[stages]]\nbefore = [\"notify\"]\n"),
            "stage \"one\": hook \"notify\" is not defined; add a [hooks.notify] table with its plugin",
        ),
        (
            ok.replace("service = \"svc\"", ""),
            "runner.toml:1: no service: add `service = \"NAME\"`",
        ),
        (
            format!("{ok}\n{}", &ok[ok.find("[[stages]]").unwrap()..]),
            "stage \"one\": another stage has this name",
        ),
        (
            ok.replace("config = ", "timeout = \"soon\"\nconfig = "),
            "stage \"one\": limits: \"soon\"",
        ),
    ];
    for (text, expected) in cases {
        let out = validate(&env, &text).expect_code(2);
        assert!(
            out.stderr.contains(expected),
            "expected {expected:?} in:\n{}\nfor file:\n{text}",
            out.stderr
        );
    }
}

/// A JSON event line, parsed.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn outputs_flow_to_later_stages_hooks_run_and_json_events_tell_it_all() {
    let env = Env::new();
    std::fs::create_dir(env.path().join("marks")).unwrap();
    // Hooks name their plugin by path or by name on the plugin path.
    let mark = |plugin: &str, path: &str| {
        Stage::hook(plugin)
            .config("mode", "write-file")
            .config("path", path)
            .grant("dirs", ["marks:/marks:rw"])
    };
    let pipeline = RunnerFile::new()
        .service("svc")
        .stage(
            probe_stage("first", "echo")
                .config("color", "green")
                .set("before", ["mark-before"])
                .set("after", ["mark-after"]),
        )
        .stage(
            probe_stage("second", "echo")
                .config("got", "${first.color}")
                .config("home", "${env.PIPELINE_TEST_UNSET:-none}"),
        )
        .stage(probe_stage("third", "panic"))
        .stage(probe_stage("fourth", "noop"))
        .hook(
            "mark-before",
            mark("plugins/sandbox-probe.wasm", "/marks/before"),
        )
        .hook("mark-after", mark("sandbox-probe", "/marks/after"));
    let file = pipeline_file(&env, &pipeline.text());
    // Run from a directory of its own: paths resolve from the file, not the
    // working directory.
    let elsewhere = env.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut cmd = env.runner();
    cmd.current_dir(&elsewhere)
        .arg("run")
        .arg(&file)
        .arg("--json");
    let out = run(&mut cmd).expect_code(3);
    let events = json_lines(&out.stdout);
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["stage"].as_str().unwrap_or(""),
            )
        })
        .filter(|(k, _)| *k != "log" && *k != "progress")
        .collect();
    assert_eq!(
        kinds,
        [
            ("pipeline_started", ""),
            ("stage_started", "first"),
            ("stage_finished", "first"),
            ("stage_started", "second"),
            ("stage_finished", "second"),
            ("stage_started", "third"),
            ("stage_finished", "third"),
            ("pipeline_finished", ""),
        ]
    );
    let finished = |stage: &str| {
        events
            .iter()
            .find(|e| e["event"] == "stage_finished" && e["stage"] == stage)
            .unwrap()
            .clone()
    };
    assert_eq!(finished("first")["outputs"]["color"], "green");
    let second = finished("second");
    assert_eq!(second["outputs"]["got"], "green", "{second}");
    assert_eq!(second["outputs"]["home"], "none");
    assert_eq!(
        second["outputs"]["first.color"], "green",
        "inputs: {second}"
    );
    let third = finished("third");
    assert_eq!(third["outcome"], "failed");
    assert!(
        third["message"]
            .as_str()
            .unwrap()
            .contains("plugin sandbox-probe trapped"),
        "{third}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["outcome"], "failed");
    let summary: Vec<(&str, &str)> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("first", "succeeded"),
            ("second", "succeeded"),
            ("third", "failed"),
            ("fourth", "skipped")
        ]
    );
    assert!(events.iter().all(|e| e["time"].is_string()));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "log" && e["stage"] == "third"),
        "the failing plugin's own output arrives as log events"
    );
    for mark in ["before", "after"] {
        assert_eq!(
            std::fs::read_to_string(env.path().join("marks").join(mark)).unwrap(),
            "written",
            "the {mark} hook ran"
        );
    }

    // The run is in the history, failed.
    let mut history = env.runner();
    history.args(["history", "svc", "--json"]);
    let records = json_lines(&run(&mut history).expect_code(0).stdout);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "failed");
    assert_eq!(records[0]["kind"], "run");

    // status works without the pipeline file, from the registry alone.
    let status = run(env.runner().current_dir(&elsewhere).args(["status", "svc"]))
        .expect_code(0)
        .stdout;
    assert!(
        status.contains("(no runner.toml: proxy not shown)"),
        "{status}"
    );
    assert!(status.contains("lock        free"), "{status}");
    assert!(status.contains(" run       "), "{status}");
    assert!(status.contains("failed"), "{status}");
}

/// The example pipeline in its own working copy, service name, ports and
/// registry; everything it made is removed on drop.
struct Example {
    env: Env,
    work: PathBuf,
    service: String,
    proxy_port: u16,
    registry_port: u16,
}

impl Example {
    fn start() -> Self {
        let env = Env::new();
        let work = env.path().join("work");
        let example = Self {
            service: format!("pl{}", unique()),
            proxy_port: free_port(),
            registry_port: free_port(),
            work,
            env,
        };
        let status = Command::new(repo().join("examples/pipeline/env"))
            .arg("up")
            .arg(&example.work)
            .arg(example.proxy_port.to_string())
            .arg(example.registry_port.to_string())
            .arg(plugins_dir())
            .arg(&example.service)
            .status()
            .unwrap();
        assert!(status.success(), "examples/pipeline/env up failed");
        example
    }

    fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    /// A runner command in the working copy, set up as the CI would.
    fn runner(&self, version: &str) -> assert_cmd::Command {
        let mut cmd = self.env.runner();
        cmd.current_dir(&self.work)
            .env("CI", "true")
            .env("REGISTRY", self.registry())
            .env("PROXY_PORT", self.proxy_port.to_string())
            .env("VERSION", version)
            .env_remove("PROMOTION")
            .env_remove("CONSUL_HTTP_ADDR");
        cmd
    }

    fn serving(&self) -> String {
        let url = format!("http://127.0.0.1:{}/api/v1/books", self.proxy_port);
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", &url])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["version"].as_str().unwrap_or_default().to_string()
    }

    /// Tags of `repo` in the local registry.
    fn tags(&self, repo: &str) -> Vec<String> {
        let url = format!("http://{}/v2/{repo}/tags/list", self.registry());
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", &url])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut tags: Vec<String> = doc["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("examples/pipeline/env"))
            .arg("down")
            .arg(&self.work)
            .status();
        common::docker_remove(
            &format!("name=^/{}-", self.service),
            &format!("reference=*/{}*", self.service),
        );
    }
}

/// Lines of the plain (CI) output start with an RFC 3339 timestamp.
fn timestamped(line: &str) -> bool {
    line.len() > 20
        && line.as_bytes()[4] == b'-'
        && line.as_bytes()[10] == b'T'
        && line[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn the_example_pipeline_deploys_from_source_through_a_local_registry() {
    require_docker!();
    let x = Example::start();
    let svc = x.service.clone();
    let junit = x.env.path().join("junit.xml");

    // v1: the whole pipeline, plain CI output.
    let started = Instant::now();
    let out = run(x
        .runner("v1")
        .args(["run", "runner.toml", "--junit"])
        .arg(&junit))
    .expect_code(0);
    let took = started.elapsed();
    for stage in [
        "build",
        "build-tests",
        "unit-tests",
        "push",
        "deploy",
        "push-tests",
    ] {
        assert!(
            out.stderr.contains(&format!("▶ {stage} (")),
            "{stage} did not start:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .lines()
            .filter(|l| l.contains('▶'))
            .all(timestamped),
        "plain lines carry timestamps:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pipeline succeeded in"),
        "{}",
        out.stderr
    );
    assert_eq!(x.serving(), "v1");
    assert_eq!(x.tags(&svc), ["v1"], "the image was pushed");
    assert_eq!(
        x.tags(&format!("{svc}-tests")),
        ["v1"],
        "the tests image was pushed"
    );
    eprintln!("the v1 pipeline took {took:?}");

    // The JUnit file: both integration suites, merged and valid.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(
        (root.attribute("tests"), root.attribute("failures")),
        (Some("3"), Some("0"))
    );
    let suites: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    assert_eq!(suites, ["pre-integration", "post-integration"]);

    // v2 with --json: every stage finishes, in order, with outputs.
    let out = run(x.runner("v2").args(["run", "--json"])).expect_code(0);
    let events = json_lines(&out.stdout);
    let finished: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "stage_finished")
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        finished,
        [
            "build",
            "build-tests",
            "unit-tests",
            "push",
            "deploy",
            "push-tests"
        ]
    );
    let deploy = events
        .iter()
        .find(|e| e["event"] == "stage_finished" && e["stage"] == "deploy")
        .unwrap();
    assert_eq!(deploy["outputs"]["color"], "green");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["stage"] == "push"),
        "push reports progress"
    );
    assert_eq!(x.serving(), "v2");

    // status: the color, both containers, what nginx points at, the deploys.
    let status = run(x.runner("v2").args(["status", &svc]))
        .expect_code(0)
        .stdout;
    assert!(status.contains("color       green"), "{status}");
    assert!(
        status.contains(&format!("{svc}-green")) && status.contains(&format!("{svc}-blue")),
        "{status}"
    );
    assert!(
        status.contains("proxy       nginx → 127.0.0.1:"),
        "{status}"
    );
    assert!(status.contains("lock        free"), "{status}");

    // v3 behind a manual promotion gate: deployed and tested, not serving.
    let out = run(x.runner("v3").env("PROMOTION", "manual").arg("run")).expect_code(0);
    assert!(out.stderr.contains("pipeline paused"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("runner promote {svc}")),
        "{}",
        out.stderr
    );
    assert_eq!(x.serving(), "v2", "a paused deploy does not switch");
    assert_eq!(
        x.tags(&format!("{svc}-tests")),
        ["v1", "v2"],
        "push-tests skipped"
    );
    let status = run(x.runner("v3").args(["status", &svc]))
        .expect_code(0)
        .stdout;
    assert!(
        status.contains("promotion   waiting at stage deploy"),
        "{status}"
    );

    // promote: the candidate serves, and the rest of the pipeline runs.
    run(x.runner("v3").args(["promote", &svc])).expect_code(0);
    assert_eq!(x.serving(), "v3");
    assert_eq!(x.tags(&format!("{svc}-tests")), ["v1", "v2", "v3"]);

    // rollback: the previous color back, through the deploy stage.
    run(x.runner("v3").args(["rollback", &svc])).expect_code(0);
    assert_eq!(x.serving(), "v2");
    let status = run(x.runner("v3").args(["status", &svc]))
        .expect_code(0)
        .stdout;
    assert!(status.contains("color       green"), "{status}");
    assert!(!status.contains("promotion"), "{status}");

    // history: newest first, each kind, version and outcome.
    let records = json_lines(
        &run(x.runner("v3").args(["history", &svc, "--json"]))
            .expect_code(0)
            .stdout,
    );
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["color"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("rollback", "green", "succeeded"),
            ("promote", "blue", "succeeded"),
            ("run", "green", "paused"),
            ("run", "green", "succeeded"),
            ("run", "blue", "succeeded"),
        ]
    );
    assert_eq!(
        records[3]["version"],
        format!("{}/{svc}:v2", x.registry()),
        "the version deployed"
    );

    // The unit-test stage fails with the container's status and log lines.
    x.env
        .exec(plugin("container-test"))
        .current_dir(&x.work)
        .service(&svc)
        .config("image", format!("{}/{svc}-tests:v1", x.registry()))
        .config("command", "/books-service-tests --no-such-flag")
        .allow_container(&format!("{svc}-*"))
        .allow_image(&format!("*/{svc}-tests:*"))
        .run()
        .expect_code(1)
        .stderr_has("exited with status 101")
        .stderr_has("Last log lines of")
        .stderr_has("no-such-flag");
}

/// `[targets] consul` puts the run (its lock and history) in Consul (the
/// API-faithful test server), not in the embedded store.
#[test]
fn a_pipeline_targeting_consul_keeps_its_history_there() {
    let consul = common::consul::ConsulServer::start(None);
    let env = Env::new();
    let file = pipeline_file(
        &env,
        &RunnerFile::new()
            .service("svc")
            .target("consul", &consul.url())
            .stage(probe_stage("only", "echo"))
            .text(),
    );
    run(env
        .runner()
        .env_remove("CONSUL_HTTP_ADDR")
        .env("CI", "true")
        .arg("run")
        .arg(&file))
    .expect_code(0)
    .stderr_has("pipeline succeeded");
    let records = json_lines(
        &run(env
            .runner()
            .env("CONSUL_HTTP_ADDR", consul.url())
            .args(["history", "svc", "--json"]))
        .expect_code(0)
        .stdout,
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "succeeded");
    assert!(!env.state_dir().exists(), "the embedded store was not used");
}

/// On a terminal (no `CI`): a ✓ line per stage and the summary, no
/// timestamps. `script` gives the run a pseudo-terminal.
#[test]
fn a_terminal_gets_live_stage_lines_and_a_summary() {
    let env = Env::new();
    let file = pipeline_file(
        &env,
        &RunnerFile::new()
            .service("svc")
            .stage(probe_stage("one", "noop"))
            .stage(probe_stage("two", "noop"))
            .text(),
    );
    let runner = assert_cmd::cargo::cargo_bin("runner");
    let command = format!("{} run {}", runner.display(), file.display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("CI")
        .env("RUNNER_STATE_DIR", env.state_dir())
        .env("RUNNER_CACHE_DIR", env.cache_dir())
        .env("TERM", "xterm")
        .output()
        .expect("script (util-linux) runs the command on a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in ["✓ one", "✓ two", "pipeline succeeded in"] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(
        !text.lines().any(timestamped),
        "no timestamps on a terminal:\n{text}"
    );
    assert!(
        !text.contains("one succeeded in"),
        "the terminal display, not CI lines:\n{text}"
    );
}

/// A stage's `limits` bound the host calls its capabilities make, for that
/// stage alone: the stage limited to 1 KiB of HTTP body fails on the 4 KiB
/// answer the stage before it (the default, 10 MiB) read fine.
#[test]
fn a_stages_limits_bound_its_own_host_calls() {
    let env = Env::new();
    let server = common::HttpServer::start(|_, _| (200, vec![], "x".repeat(4096)));
    let url = server.url();
    let stage = |name: &str, limits: &str| {
        format!(
            "[[stages]]\nname = \"{name}\"\nplugin = \"integration-test\"\n\
             config = {{ base_url = \"{url}\", \"check.big\" = \"GET /big 200\", retry_for = \"0s\" }}\n\
             grants = {{ http = [\"{url}\"] }}\n{limits}\n"
        )
    };
    let text = format!(
        "service = \"limits-{}\"\n\n{}\n{}",
        unique(),
        stage("roomy", ""),
        stage("tight", "limits = { http_max_body = \"1KiB\" }"),
    );
    let file = pipeline_file(&env, &text);
    let out = run(env.runner().arg("run").arg(&file)).expect_code(1);
    let out = out.stderr_has("stage tight failed");
    assert!(
        out.stderr.contains("exceeds the 1.0 KiB cap")
            && out.stderr.contains("the stage's limits.http_max_body"),
        "the failure names the stage's own cap and how to raise it: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("stage roomy failed"),
        "the default limit holds for the other stage: {}",
        out.stderr
    );
}
