//! Crash safety: runner is killed (SIGKILL, through the test-only
//! `RUNNER_TEST_CRASH_AT` hook: deterministic, not timing-based) at every
//! step of a blue-green deploy, on both registry backends, with a release
//! that passes and one that fails its post-integration tests. Whatever runs
//! next for the service (`action=recover`, the next deploy, a rollback)
//! must converge: exactly one color serving, and the stored color, the
//! upstream file, what nginx serves, the running containers and the
//! catalog all agreeing, with the journal cleared and the lock free. A
//! steady load through nginx runs throughout and must lose nothing, except
//! while a release that fails its post-tests was live before the crash.

use crate::common;

use crate::common::deployment::{Deployment, load};
use crate::common::require_docker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where a crash leaves the service after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The version serving before the killed deploy.
    Old,
    /// The killed deploy's release (it had passed everything).
    New,
}

/// Every crash point of a deploy, with the outcome recovery must reach.
const POINTS: &[(&str, After)] = &[
    ("prepare", After::Old),
    ("prepare:done", After::Old),
    ("start", After::Old),
    ("health", After::Old),
    ("pre-tests", After::Old),
    ("pre-tests:done", After::Old),
    ("switch", After::Old),
    ("proxy:staged", After::Old),
    ("proxy:linked", After::Old),
    ("proxy:live", After::Old),
    ("proxy:checked", After::Old),
    ("proxy:reloaded", After::Old),
    ("switch:done", After::Old),
    ("color", After::Old),
    ("color:done", After::Old),
    ("post-tests", After::Old),
    // The post-tests passed but the deploy died before saying so: recovery
    // cannot know they passed, so it goes back (conservative).
    ("post-tests:done", After::Old),
    ("stop-old", After::New),
    ("stop-old:done", After::New),
];

fn other(color: &str) -> &'static str {
    if color == "blue" { "green" } else { "blue" }
}

/// What serves now: (color, version).
struct Serving {
    color: String,
    version: String,
}

fn assert_converged(d: &Deployment, expect: &Serving, context: &str) {
    let status = d.status();
    assert!(
        !status.contains("interrupted deploy"),
        "{context}: the journal was not cleared:\n{status}"
    );
    assert!(status.contains("lock        free"), "{context}:\n{status}");
    assert_eq!(d.color(), expect.color, "{context}: stored color");
    d.wait_serving(&expect.version);
    let name = d.name(&expect.color);
    assert_eq!(
        d.running(),
        [name.as_str()],
        "{context}: running containers"
    );
    assert_eq!(d.catalog(), [name.as_str()], "{context}: catalog");
    let port = common::deployment::sh(
        std::process::Command::new("docker").args(["port", &name, "8080/tcp"]),
    );
    let port = port
        .lines()
        .next()
        .unwrap_or_default()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        d.upstream_file().contains(&format!("127.0.0.1:{port}")),
        "{context}: the upstream file does not name {name} (port {port}):\n{}",
        d.upstream_file()
    );
    let leftovers: Vec<String> = std::fs::read_dir(d.work.join("nginx/upstreams"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".runner-") && n != ".runner-proxy.lock")
        .collect();
    assert!(leftovers.is_empty(), "{context}: {leftovers:?}");
}

fn matrix(d: &Deployment) {
    // Baseline: blue v1, then green v2 (blue kept for rollback).
    d.deploy("v1").expect_code(0);
    d.deploy("v2").expect_code(0);
    let mut now = Serving {
        color: "green".into(),
        version: "v2".into(),
    };
    assert_converged(d, &now, "baseline");
    let releases = ["v1", "v3", "v2"];
    let mut cases: Vec<(&str, After, &str)> = POINTS
        .iter()
        .enumerate()
        .map(|(i, (point, after))| (*point, *after, releases[i % releases.len()]))
        .collect();
    // The release that fails behind the proxy, killed while it is live.
    cases.push(("post-tests", After::Old, "badpost"));
    for (i, (point, after, tag)) in cases.into_iter().enumerate() {
        let context = format!("crash at {point} deploying {tag}");
        let stop = AtomicBool::new(false);
        let (killed, recovered, (sent, failures, _)) = std::thread::scope(|scope| {
            let load = scope.spawn(|| load(d.port, &stop, 50, 100_000));
            let killed = d.bluegreen_with(
                &[
                    "-c",
                    &format!("image={}:{tag}", d.service),
                    "-c",
                    "health_timeout=5s",
                ],
                &[("RUNNER_TEST_CRASH_AT", point)],
            );
            let status = d.status();
            // Recovery: mostly `action=recover`; every third case the next
            // deploy of the same release recovers first, then deploys.
            let recovered = if i % 3 == 2 && tag != "badpost" {
                d.deploy(tag)
            } else {
                d.bluegreen(&["-c", "action=recover"])
            };
            stop.store(true, Ordering::SeqCst);
            ((killed, status), recovered, load.join().unwrap())
        });
        let (killed, status_after_kill) = killed;
        assert_eq!(
            killed.signal,
            Some(9),
            "{context}: runner was not killed (exit {}):\n{}",
            killed.code,
            killed.stderr
        );
        assert!(
            status_after_kill.contains("interrupted deploy")
                || point.ends_with(":done") && point.starts_with("prepare"),
            "{context}: status does not show the interrupted deploy:\n{status_after_kill}"
        );
        let recovered = recovered.expect_code(0);
        assert!(
            recovered.stderr.contains("recovering"),
            "{context}: nothing was recovered:\n{}",
            recovered.stderr
        );
        let redeployed = i % 3 == 2 && tag != "badpost";
        now = match after {
            After::Old => now,
            After::New => Serving {
                color: other(&now.color).to_string(),
                version: tag.to_string(),
            },
        };
        if redeployed {
            // Recovered, then deployed for real into the other color.
            now = Serving {
                color: other(&now.color).to_string(),
                version: tag.to_string(),
            };
        }
        assert_converged(d, &now, &context);
        let live_failure = tag == "badpost";
        if !live_failure {
            assert!(
                failures.is_empty(),
                "{context}: {} of {sent} requests failed: {:?}",
                failures.len(),
                &failures[..failures.len().min(5)]
            );
        }
    }
    // Nothing is left for recovery after the last case.
    let status = d.status();
    assert!(!status.contains("interrupted"), "{status}");
}

#[test]
fn every_crash_point_converges_with_the_embedded_registry() {
    require_docker!();
    let d = Deployment::start("crash", false);
    matrix(&d);
}

#[test]
fn every_crash_point_converges_with_the_consul_backend() {
    require_docker!();
    let d = Deployment::start("crashconsul", true);
    // A killed runner's lock session expires after its TTL: shorten it so
    // the next runner does not wait 15 s for every crash.
    if let Some(consul) = &d.consul {
        consul.set_session_ttl(Duration::from_secs(3));
    }
    matrix(&d);
}

/// Killed before the switch, then `rollback`: it does not move forward to
/// the dead deploy's untested candidate; the good version keeps serving.
#[test]
fn rollback_after_a_crash_never_moves_forward() {
    require_docker!();
    let d = Deployment::start("crashrb", false);
    d.deploy("v1").expect_code(0);
    d.deploy("v2").expect_code(0);
    d.bluegreen_with(
        &["-c", &format!("image={}:v3", d.service)],
        &[("RUNNER_TEST_CRASH_AT", "pre-tests")],
    );
    let out = d.bluegreen(&["-c", "action=rollback"]);
    // Recovery removed the candidate (and with it the version kept for
    // rollback, which the dead deploy had replaced): nothing to roll back to.
    out.expect_code(1)
        .stderr_has("recovering")
        .stderr_has("has no version to roll back to");
    assert_converged(
        &d,
        &Serving {
            color: "green".into(),
            version: "v2".into(),
        },
        "rollback after a crash",
    );
}

/// `runner status` names an interrupted deploy and what recovery will do;
/// `runner recover` (the pipeline's deploy stage with `action=recover`)
/// does it, and the history records it.
#[test]
fn runner_recover_undoes_a_deploy_killed_during_its_post_tests() {
    require_docker!();
    let d = Deployment::start("crashcmd", false);
    d.deploy("v1").expect_code(0);
    d.deploy("v2").expect_code(0);
    // A pipeline file around the same runner file: one deploy stage, with
    // the runner file's grants as its own.
    let runfile = std::fs::read_to_string(d.work.join("runner.toml"))
        .unwrap()
        .replace("[grants]", "[stages.grants]");
    let pipeline = format!(
        r#"service = "{service}"

[[stages]]
name = "deploy"
plugin = "plugins/bluegreen.wasm"
config = {{ image = "{service}:v2", proxy_url = "http://127.0.0.1:{port}", upstream_template = "templates/nginx-upstreams-{{color}}.ctmpl", restart = "no", drain = "1s", "label.{label_key}" = "{label_value}" }}

{runfile}"#,
        service = d.service,
        port = d.port,
        label_key = d.label.split_once('=').unwrap().0,
        label_value = d.label.split_once('=').unwrap().1,
    );
    std::fs::write(d.work.join("pipeline.toml"), pipeline).unwrap();
    let killed = d.bluegreen_with(
        &["-c", &format!("image={}:badpost", d.service)],
        &[("RUNNER_TEST_CRASH_AT", "post-tests")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.stderr);
    // The failing release is live until recovery.
    let status = common::run(
        d.runner()
            .args(["status", &d.service, "-f", "pipeline.toml"]),
    )
    .expect_code(0)
    .stdout;
    assert!(
        status.contains("interrupted deploy at step post-tests")
            && status.contains("switch back to the last known-good color"),
        "{status}"
    );
    common::run(
        d.runner()
            .args(["recover", &d.service, "-f", "pipeline.toml"]),
    )
    .expect_code(0)
    .stderr_has("switched back to green");
    assert_converged(
        &d,
        &Serving {
            color: "green".into(),
            version: "v2".into(),
        },
        "runner recover",
    );
    let history = common::run(d.runner().args(["history", &d.service]))
        .expect_code(0)
        .stdout;
    assert!(history.contains("recover"), "{history}");
    // Nothing left: recovering again says so.
    let again = common::run(
        d.runner()
            .args(["recover", &d.service, "-f", "pipeline.toml"]),
    )
    .expect_code(0);
    assert!(
        format!("{}{}", again.stdout, again.stderr).contains("nothing to recover"),
        "{}\n{}",
        again.stdout,
        again.stderr
    );
}
