//! Replicas per color (issue 14, item 1) on the real engine behind nginx:
//! N containers of the new color, all healthy and tested before the switch,
//! every one registered and in the upstream, the old color's all stopped
//! (kept) after it; a rollback brings them all back; a failing replica
//! removes the whole candidate and the old color keeps serving; zero failed
//! requests across the switches; a change of replica count between deploys.

use crate::common::deployment::Deployment;
use crate::common::require_docker;

fn names(d: &Deployment, color: &str, n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("{}-{i}", d.name(color))).collect()
}

fn servers(d: &Deployment) -> usize {
    d.upstream_file().matches("server 127.0.0.1:").count()
}

/// `deploy` (or a rollback) under a bounded load through nginx: no failure.
fn under_load(d: &Deployment, args: &[&str]) {
    d.bluegreen_under_load(args, 1000, 0);
}

#[test]
fn replicas_switch_together_roll_back_together_and_fail_together() {
    require_docker!();
    let d = Deployment::start("replicas", false);
    let image = |tag: &str| format!("image={}:{tag}", d.service);
    let three = ["-c", "replicas=3", "-c", "health_timeout=5s"];

    let out = d
        .bluegreen(&[&["-c", &image("v1")][..], &three].concat())
        .expect_code(0);
    assert_eq!(out.output("ports").unwrap().split(',').count(), 3);
    assert_eq!(d.running(), names(&d, "blue", 3));
    assert_eq!(
        d.catalog(),
        vec![d.name("blue"); 3],
        "every replica registered"
    );
    assert_eq!(servers(&d), 3, "{}", d.upstream_file());
    assert_eq!(d.serving(), "v1");

    // v2: three green replicas; the blue ones stopped and kept.
    under_load(&d, &[&["-c", &image("v2")][..], &three].concat());
    assert_eq!(d.running(), names(&d, "green", 3));
    let stopped: Vec<String> = d
        .containers()
        .into_iter()
        .filter(|(_, running)| !running)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stopped, names(&d, "blue", 3));
    assert_eq!(d.catalog(), vec![d.name("green"); 3]);
    assert_eq!(servers(&d), 3);
    d.wait_serving("v2");

    // Rollback: all three blue replicas back, behind the proxy, green stopped.
    under_load(&d, &["-c", "action=rollback"]);
    assert_eq!(d.running(), names(&d, "blue", 3));
    assert_eq!(d.catalog(), vec![d.name("blue"); 3]);
    assert_eq!(servers(&d), 3);
    d.wait_serving("v1");

    // A candidate whose replicas never get healthy: all removed, blue serves.
    let out = d
        .bluegreen(&[&["-c", &image("badhealth")][..], &three].concat())
        .expect_code(1);
    assert!(
        out.stderr.contains("failed before the switch"),
        "{}",
        out.stderr
    );
    assert_eq!(d.running(), names(&d, "blue", 3));
    assert!(
        d.containers().iter().all(|(n, _)| !n.contains("-green")),
        "{:?}",
        d.containers()
    );
    assert_eq!(d.color(), "blue");
    d.wait_serving("v1");

    // Fewer replicas next time: one green container; every blue one stopped.
    under_load(&d, &["-c", &image("v3"), "-c", "health_timeout=5s"]);
    assert_eq!(d.running(), [d.name("green")]);
    assert_eq!(servers(&d), 1);
    assert_eq!(
        d.containers()
            .iter()
            .filter(|(_, running)| !running)
            .count(),
        3
    );
    d.wait_serving("v3");
}
