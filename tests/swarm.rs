//! Docker Swarm as the engine (issue 14, item 3) on a real two-node Swarm
//! of private engines, nginx in front, runner pointed at the manager.
//!
//! Blue-green: each color a Swarm service of three host-mode tasks over
//! both nodes, each registered at its node's address and tested before the
//! switch; zero failed requests across a deploy and a rollback (the old
//! color scaled to zero, then back up); a candidate failing its pre-tests,
//! and one whose tasks exit, removed, the old color serving. The rolling strategy: one service
//! updated task by task under load with zero failed requests; an update
//! whose new task fails its pre-tests, one whose new task is never
//! healthy, and one stuck (no node takes its new task), updated back to the
//! image that served; a rollback.

use crate::common::deployment::{Deployment, sh};
use crate::common::engines::{PrivateEngine, Swarm, require_engines};
use std::collections::BTreeSet;
use std::process::Command;

/// Both engines a Swarm, the deployment's images on both, and its runner
/// file pointed at the manager.
fn swarm_of_two(d: &Deployment, tags: &[&str]) -> (PrivateEngine, PrivateEngine) {
    let (a, b) = (PrivateEngine::start(), PrivateEngine::start());
    Swarm::init(&a, &[&b]);
    for engine in [&a, &b] {
        for tag in tags {
            engine.load_image(&format!("{}:{tag}", d.service));
        }
    }
    let path = d.work.join("runner.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[targets]\ndocker = \"{}\"\n", a.host()));
    std::fs::write(&path, text).unwrap();
    (a, b)
}

/// Running task containers of Swarm service `service` on `engine`.
fn tasks_on(engine: &PrivateEngine, service: &str) -> usize {
    engine
        .run(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])
        .lines()
        .count()
}

/// `replicas` of the service as the manager has it; `None` when it is gone.
fn replicas(manager: &PrivateEngine, service: &str) -> Option<u32> {
    let out = manager
        .docker()
        .args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}}",
            service,
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn image_of(manager: &PrivateEngine, service: &str) -> String {
    let image = manager.run(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        service,
    ]);
    image.split('@').next().unwrap().to_string()
}

fn upstream_servers(d: &Deployment) -> usize {
    d.upstream_file().matches("server 127.0.0.1:").count()
}

/// The main engine is no Swarm node: the test's Swarm is its own.
fn main_engine_untouched() {
    let state = sh(Command::new("docker").args(["info", "--format", "{{.Swarm.LocalNodeState}}"]));
    assert_eq!(state, "inactive");
}

#[test]
fn a_swarm_deploy_switches_rolls_back_and_fails_safe_under_load() {
    require_engines!();
    let d = Deployment::start("swarm", false);
    d.build_image("dies", "v7", "dies");
    let (a, b) = swarm_of_two(&d, &["v1", "v2", "badbooks", "exits", "dies"]);
    let three = [
        "-c",
        "engine=swarm",
        "-c",
        "replicas=3",
        "-c",
        "health_timeout=60s",
    ];
    let image = |tag: &str| format!("image={}:{tag}", d.service);
    let (blue, green) = (d.name("blue"), d.name("green"));

    let out = d
        .bluegreen(&[&["-c", &image("v1")][..], &three].concat())
        .expect_code(0);
    // Three tasks over both nodes, each at its own address, all registered.
    assert_eq!(replicas(&a, &blue), Some(3));
    let (on_a, on_b) = (tasks_on(&a, &blue), tasks_on(&b, &blue));
    assert_eq!(on_a + on_b, 3, "{on_a} + {on_b}");
    assert!(
        on_a >= 1 && on_b >= 1,
        "spread over both nodes: {on_a} {on_b}"
    );
    let addresses = out.output("addresses").unwrap();
    let addresses: BTreeSet<&str> = addresses.split(',').collect();
    assert_eq!(addresses.len(), 3, "{addresses:?}");
    // Each node's ports come from its own block (the harness's port_range).
    let (first, _) = crate::common::engines::port_range(0);
    for at in &addresses {
        let port: u16 = at.rsplit(':').next().unwrap().parse().unwrap();
        assert!(port >= first, "{at}: a port of a private engine's block");
    }
    assert_eq!(d.catalog(), vec![blue.clone(); 3]);
    assert_eq!(upstream_servers(&d), 3, "{}", d.upstream_file());
    assert_eq!(d.serving(), "v1");
    assert!(d.containers().is_empty(), "nothing on the main engine");

    // v2 under load: green's tasks serve, blue scaled to zero (its spec kept).
    d.bluegreen_under_load(&[&["-c", &image("v2")][..], &three].concat(), 300, 0);
    d.wait_serving("v2");
    assert_eq!(d.color(), "green");
    assert_eq!(
        (replicas(&a, &green), replicas(&a, &blue)),
        (Some(3), Some(0))
    );
    assert_eq!(d.catalog(), vec![green.clone(); 3]);
    assert_eq!(upstream_servers(&d), 3, "{}", d.upstream_file());

    // Rollback under load: blue scaled back up, green to zero.
    d.bluegreen_under_load(&[&["-c", "action=rollback"][..], &three].concat(), 300, 0);
    d.wait_serving("v1");
    assert_eq!(d.color(), "blue");
    assert_eq!(
        (replicas(&a, &blue), replicas(&a, &green)),
        (Some(3), Some(0))
    );
    assert_eq!(d.catalog(), vec![blue.clone(); 3]);

    // A candidate whose tasks fail the pre-integration tests: removed, blue serves.
    let out = d.bluegreen_under_load(&[&["-c", &image("badbooks")][..], &three].concat(), 300, 1);
    assert!(
        out.stderr.contains("failed before the switch"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("Tasks of {green}")),
        "{}",
        out.stderr
    );
    assert_eq!(
        replicas(&a, &green),
        None,
        "the candidate's service is removed"
    );
    assert_eq!(d.color(), "blue");
    assert_eq!(d.catalog(), vec![blue.clone(); 3]);
    d.wait_serving("v1");

    // A candidate whose tasks exit: failed at the first failed task (Swarm
    // would restart it forever), removed, blue serves: no request fails.
    let out = d.bluegreen_under_load(&[&["-c", &image("exits")][..], &three].concat(), 300, 1);
    assert!(out.stderr.contains("exit code 3"), "{}", out.stderr);
    assert_eq!(replicas(&a, &green), None);
    assert_eq!(d.color(), "blue");
    d.wait_serving("v1");

    // A candidate whose tasks run, never get healthy, and exit after 10 s:
    // the health wait fails when the task ends (naming its exit code), not
    // at the 60 s health timeout; removed, blue serves.
    let out = d.bluegreen_under_load(&[&["-c", &image("dies")][..], &three].concat(), 300, 1);
    let health_wait = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        health_wait.contains("no task serves") || health_wait.contains("before answering"),
        "{}",
        out.stderr
    );
    assert!(health_wait.contains("exit code 4"), "{}", out.stderr);
    assert!(!out.stderr.contains("did not answer"), "{}", out.stderr);
    assert_eq!(replicas(&a, &green), None);
    assert_eq!(d.color(), "blue");
    d.wait_serving("v1");
    main_engine_untouched();
}

#[test]
fn a_rolling_update_replaces_tasks_under_load_and_reverts_a_failing_a_slow_or_a_stuck_one() {
    require_engines!();
    let d = Deployment::start("rolling", false);
    // An image whose health check never passes within the test: an update
    // to it never completes.
    let slow = format!("{}:slow", d.service);
    let context = d.env.path().join("slow");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}:v2\nENV HEALTHY_AFTER_MS=600000\n", d.service),
    )
    .unwrap();
    sh(Command::new("docker").args([
        "build",
        "-q",
        "--label",
        &d.label,
        "-t",
        &slow,
        context.to_str().unwrap(),
    ]));
    let (a, _b) = swarm_of_two(&d, &["v1", "v2", "badbooks", "slow"]);
    let rolling = |tag: &str, timeout: &str| {
        let mut exec = d.stage(&d.service);
        exec.config("proxy_url", format!("http://127.0.0.1:{}", d.port))
            .config(
                "upstream_template",
                "templates/nginx-upstreams-{color}.ctmpl",
            )
            .config("engine", "swarm")
            .config("strategy", "rolling")
            .config("replicas", "2")
            .config("health_cmd", "/books-service,probe")
            .config("health_timeout", "60s")
            .config("update_monitor", "1s")
            .config("update_timeout", timeout)
            .config("image", format!("{}:{tag}", d.service));
        exec
    };
    let blue = d.name("blue");

    // The first deploy creates the service (as blue-green does).
    rolling("v1", "2m").run().expect_code(0);
    d.wait_serving("v1");
    assert_eq!(replicas(&a, &blue), Some(2));

    // v2 rolled in, task by task, under load: not one failed request.
    let under_load = |tag: &str, timeout: &str, code: i32| {
        d.wait_serving(&d.serving());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (out, (sent, failures, _)) = std::thread::scope(|scope| {
            let load = scope.spawn(|| crate::common::deployment::load(d.port, &stop, 300, 50_000));
            let out = rolling(tag, timeout).run();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (out, load.join().unwrap())
        });
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}\n{}\nnginx error log:\n{}",
            failures.len(),
            &failures[..failures.len().min(5)],
            out.stderr,
            d.proxy_errors()
        );
        out.expect_code(code)
    };
    let out = under_load("v2", "2m", 0);
    assert!(out.stderr.contains("rolled"), "{}", out.stderr);
    d.wait_serving("v2");
    assert_eq!(image_of(&a, &blue), format!("{}:v2", d.service));
    assert_eq!(d.color(), "blue", "a rolling update keeps the color");
    assert_eq!(upstream_servers(&d), 2, "{}", d.upstream_file());

    // A new task failing its pre-tests: updated back to v2.
    let out = under_load("badbooks", "2m", 1);
    assert!(
        out.stderr.contains("updated back to") && out.stderr.contains(":v2"),
        "{}",
        out.stderr
    );
    assert_eq!(image_of(&a, &blue), format!("{}:v2", d.service));
    d.wait_serving("v2");

    // A task running but never healthy: never reported done, updated back
    // while the other old task still serves.
    let out = under_load("slow", "2m", 1);
    assert!(
        out.stderr.contains("was not healthy within") && out.stderr.contains("updated back to"),
        "{}",
        out.stderr
    );
    assert_eq!(image_of(&a, &blue), format!("{}:v2", d.service));
    d.wait_serving("v2");

    // A new task no node will take (both paused: running tasks stay, no new
    // one is placed). Swarm says `updating` forever, as with a host-mode
    // port already in use; runner calls it stuck at `update_timeout`, never
    // done, and updates back (which needs no new task: the old ones match).
    let nodes = a.run(&["node", "ls", "-q"]);
    let availability = |to: &str| {
        for node in nodes.lines() {
            a.run(&["node", "update", "--availability", to, node]);
        }
    };
    availability("pause");
    let out = under_load("v1", "20s", 1);
    availability("active");
    assert!(
        out.stderr.contains("is stuck: still updating after 20s")
            && out.stderr.contains("pending")
            && out.stderr.contains("updated back to"),
        "{}",
        out.stderr
    );
    assert_eq!(image_of(&a, &blue), format!("{}:v2", d.service));
    assert_eq!(upstream_servers(&d), 2, "{}", d.upstream_file());
    d.wait_serving("v2");

    // Rollback: to v1, the image before the last finished update.
    let mut back = rolling("v2", "2m");
    back.config("action", "rollback");
    back.run().expect_code(0);
    d.wait_serving("v1");
    assert_eq!(image_of(&a, &blue), format!("{}:v1", d.service));
    main_engine_untouched();
}
