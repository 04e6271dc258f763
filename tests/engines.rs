//! The private-engine harness itself (`common::engines`), on this machine:
//! two extra Docker engines beside the main one, each running a container
//! of an image copied from the main engine and answering on 127.0.0.1;
//! then the two as a real two-node Swarm whose host-mode tasks spread over
//! both nodes, each reachable on its own 127.0.0.1 port. Afterwards the
//! main engine and `docker0` are untouched. Multi-host and Swarm tests
//! build on this harness.

use crate::common::engines::{PrivateEngine, Swarm, require_engines};
use crate::common::{docker_remove, repo, unique};
use std::process::Command;
use std::time::{Duration, Instant};

/// GET http://127.0.0.1:PORT/health until it answers, within a deadline.
fn answers(port: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{port}/health"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn private_engines_and_a_two_node_swarm_leave_the_main_engine_alone() {
    require_engines!();
    let label = format!("runner-test=engines-{}", unique());
    let image = format!("runner-test-engines-{}:v1", unique());
    let built = Command::new(repo().join("examples/books-service/build-image"))
        .args([&image, "v1", ""])
        .env("IMAGE_LABELS", &label)
        .status()
        .unwrap();
    assert!(built.success());

    {
        let (a, b) = (PrivateEngine::start(), PrivateEngine::start());
        for engine in [&a, &b] {
            engine.load_image(&image);
            let id = engine.run(&["run", "-d", "-p", "127.0.0.1::8080", &image]);
            let port = engine.run(&["port", &id, "8080"]);
            let port = port.rsplit(':').next().unwrap().to_string();
            assert!(
                answers(&port),
                "a container on a private engine answers on 127.0.0.1:{port}"
            );
        }
        // Neither engine sees the other's containers, nor the main engine's.
        assert_eq!(a.run(&["ps", "-q"]).lines().count(), 1);
        assert_eq!(b.run(&["ps", "-q"]).lines().count(), 1);
        a.run(&["rm", "-f", &a.run(&["ps", "-q"])]);
        b.run(&["rm", "-f", &b.run(&["ps", "-q"])]);

        Swarm::init(&a, &[&b]);
        a.run(&[
            "service",
            "create",
            "--detach",
            "--name",
            "svc",
            "--replicas",
            "2",
            "--publish",
            "mode=host,target=8080",
            &image,
        ]);
        // Each task on its own node, each on its own 127.0.0.1 port.
        let deadline = Instant::now() + Duration::from_secs(90);
        let ports = loop {
            let ports: Vec<String> = [&a, &b]
                .iter()
                .filter_map(|e| {
                    let id = e.run(&[
                        "ps",
                        "-q",
                        "--filter",
                        "label=com.docker.swarm.service.name=svc",
                    ]);
                    (!id.is_empty()).then(|| e.run(&["port", id.lines().next().unwrap(), "8080"]))
                })
                .filter_map(|p| {
                    p.lines()
                        .next()
                        .and_then(|l| l.rsplit(':').next())
                        .map(String::from)
                })
                .collect();
            if ports.len() == 2 {
                break ports;
            }
            assert!(
                Instant::now() < deadline,
                "two Swarm tasks, one per node: {ports:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        for port in &ports {
            assert!(answers(port), "a Swarm task answers on 127.0.0.1:{port}");
        }
        let nodes = a.run(&["node", "ls", "--format", "{{.Status}} {{.Availability}}"]);
        assert_eq!(nodes.lines().count(), 2, "{nodes}");
    }

    // The main engine: no Swarm, the same containers, docker0 still there.
    let swarm = Command::new("docker")
        .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&swarm.stdout).trim(), "inactive");
    let on_main = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("ancestor={image}")])
        .output()
        .unwrap()
        .stdout;
    assert!(
        on_main.is_empty(),
        "a container of the test ran on the main engine"
    );
    assert!(std::path::Path::new("/sys/class/net/docker0").exists());
    docker_remove(&format!("label={label}"), &format!("label={label}"));
}
