//! End-to-end blue-green deploys on the real Docker engine and real nginx:
//! the seed's flow through `runner exec --plugin bluegreen.wasm`, including
//! both failure paths, rollback, reconciliation, and zero failed requests
//! through nginx during a switch.
//!
//! Everything a test creates carries its own label and service name, and is
//! removed when the test ends, even when it fails.

use crate::common;

use crate::common::deployment::{Deployment, keepalive_load, load, sh};
use crate::common::{Env, plugin, require_docker, run};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn blue_green_deploys_fail_safely_roll_back_and_switch_without_dropping_requests() {
    require_docker!();
    scenario(&Deployment::start("bgtest", false));
}

/// The same deploys with Consul (the API-faithful test server) as the registry.
#[test]
fn blue_green_with_the_consul_backend() {
    require_docker!();
    let d = Deployment::start("bgconsul", true);
    scenario(&d);
    assert!(
        !d.env.state_dir().exists(),
        "the embedded store was not used"
    );
}

/// The same deploys through HAProxy, switched through its runtime API.
#[test]
fn blue_green_with_the_haproxy_driver() {
    require_docker!();
    scenario(&Deployment::start_with_proxy("bghaproxy", false, "haproxy"));
}

/// 20 switches under keep-alive load (one connection reused, no retries)
/// and new-connection load at once: with HAProxy's runtime API no request
/// fails, because a switch closes no connection.
#[test]
fn haproxy_switches_lose_no_keepalive_request() {
    require_docker!();
    let d = Deployment::start_with_proxy("bgkeepalive", false, "haproxy");
    d.deploy("v1").expect_code(0);
    d.wait_serving("v1");
    let stop = AtomicBool::new(false);
    let (keepalive, fresh) = std::thread::scope(|scope| {
        let keepalive = scope.spawn(|| keepalive_load(d.port, &stop, 1000, 2_000_000));
        let fresh = scope.spawn(|| load(d.port, &stop, 1000, 2_000_000));
        for i in 0..20 {
            d.bluegreen(&[
                "-c",
                &format!(
                    "image={}:{}",
                    d.service,
                    if i % 2 == 0 { "v2" } else { "v1" }
                ),
                "-c",
                "post_hook=none",
            ])
            .expect_code(0);
        }
        stop.store(true, Ordering::SeqCst);
        (keepalive.join().unwrap(), fresh.join().unwrap())
    });
    for (kind, (sent, failures, versions)) in [("keep-alive", keepalive), ("new-connection", fresh)]
    {
        assert!(
            failures.is_empty(),
            "{kind}: {} of {sent} requests failed over 20 switches: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(
            versions.contains(&"v1".to_string()) && versions.contains(&"v2".to_string()),
            "{kind}: the load did not span the switches: {versions:?}"
        );
    }
}

fn scenario(d: &Deployment) {
    let (blue, green) = (d.name("blue"), d.name("green"));

    // First deploy: blue serves v1.
    let out = d.deploy("v1").expect_code(0);
    assert_eq!(out.output("color").as_deref(), Some("blue"));
    assert_eq!(d.serving(), "v1");
    assert_eq!(d.color(), "blue");
    assert_eq!(d.catalog(), [blue.as_str()]);

    // Second deploy, under a steady bounded load through nginx: zero failures.
    d.wait_serving("v1");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (deployed, (sent, failures, versions)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(d.port, &stop, 2000, 50_000));
        let out = d.deploy("v2");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, load.join().unwrap())
    });
    deployed.expect_code(0);
    assert!(sent >= 2000, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the switch: {:?}\nnginx error log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        d.proxy_errors()
    );
    assert!(
        versions.contains(&"v1".to_string()) && versions.contains(&"v2".to_string()),
        "the load did not span the switch: {versions:?}"
    );
    assert_eq!(d.serving(), "v2");
    assert_eq!(d.color(), "green");
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)],
        "blue stopped, not removed"
    );
    assert_eq!(
        d.catalog(),
        [green.as_str()],
        "only the running instance is listed"
    );

    // Rollback: the stopped blue comes back and serves v1.
    d.bluegreen(&["-c", "action=rollback"]).expect_code(0);
    assert_eq!(d.serving(), "v1");
    assert_eq!(d.color(), "blue");
    assert_eq!(
        d.containers(),
        [(blue.clone(), true), (green.clone(), false)]
    );
    assert_eq!(d.catalog(), [blue.as_str()]);

    // And forward again to v2 on green.
    d.deploy("v2").expect_code(0);
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );

    // A version failing its health check is never switched to.
    d.deploy("badhealth")
        .expect_code(1)
        .stderr_has(&format!("{blue} did not answer"))
        .stderr_has("proxy and color untouched")
        .stderr_has(&format!("{blue} removed"))
        .stderr_has("Last log lines of")
        .stderr_has("books-service v3 listening");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(
        d.containers(),
        [(green.clone(), true)],
        "the failed container is removed"
    );
    assert_eq!(d.catalog(), [green.as_str()]);

    // Healthy but failing the pre-integration tests: stopped, never switched,
    // the failed check named.
    d.deploy("badbooks")
        .expect_code(1)
        .stderr_has("1 of 2 checks failed: books (GET /api/v1/books")
        .stderr_has("expected status 200, got 500")
        .stderr_has("proxy and color untouched")
        .stderr_has("books-service v5 listening");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(d.containers(), [(green.clone(), true)]);

    // A version failing only behind the proxy: switched, tested, switched
    // back at the first wrong answer (the post-tests retry only connection
    // errors), so it serves clients for well under a second.
    let failed = d
        .deploy("badpost")
        .expect_code(1)
        .stderr_has("1 of 1 checks failed: books (GET /api/v1/books")
        .stderr_has(&format!(
            "failed after the switch; switched back to green ({blue} served clients for"
        ))
        .stderr_has(&format!("color restored, {blue} removed"));
    let served_ms: u64 = failed
        .stderr
        .split("served clients for ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the time the failing release served");
    assert!(
        served_ms < 1000,
        "the failing release served for {served_ms} ms"
    );
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(d.containers(), [(green.clone(), true)]);

    // The version kept for rollback was replaced by releases that failed:
    // rollback refuses to bring back a candidate that never passed.
    d.bluegreen(&["-c", "action=rollback"])
        .expect_code(1)
        .stderr_has("has no version to roll back to");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );

    // A candidate that exits at once: its exit code and last log lines, removed.
    d.deploy("exits")
        .expect_code(1)
        .stderr_has("exit code 3")
        .stderr_has("BROKEN=exit, exiting with code 3")
        .stderr_has(&format!("{blue} removed"));
    assert_eq!(d.containers(), [(green.clone(), true)]);
    assert_eq!(d.catalog(), [green.as_str()]);
    assert_eq!(d.catalog(), [green.as_str()]);

    if let Some(consul) = &d.consul {
        consul_outage_keeps_the_old_color_serving(d, consul);
    }

    // A container stopped behind runner's back leaves the catalog at the next run.
    sh(Command::new("docker").args(["stop", "-t", "1", &green]));
    let mut reconcile = d.env.exec(plugin("sandbox-probe"));
    reconcile.current_dir(&d.work);
    if let Some(consul) = &d.consul {
        reconcile.env("CONSUL_HTTP_ADDR", consul.url());
    }
    reconcile
        .config("mode", "noop")
        .allow_container(&format!("{}-*", d.service));
    run(&mut reconcile)
        .expect_code(0)
        .stderr_has("no longer runs; deregistered");
    assert!(d.catalog().is_empty(), "{:?}", d.catalog());
}

/// Consul dies mid-deploy, right after the new color registered: the stage
/// fails as `unavailable`, nginx keeps serving the old color without one
/// failed request, and once Consul is back the stored color is still the old
/// one; once Consul is back, recovery removes what is left of the candidate.
/// (Runs green on v2; leaves only green.)
fn consul_outage_keeps_the_old_color_serving(
    d: &Deployment,
    consul: &common::consul::ConsulServer,
) {
    let (blue, green) = (d.name("blue"), d.name("green"));
    let registering_blue = format!("\"{blue}\"");
    consul.go_down_after(move |method, path, body| {
        method == "PUT"
            && path == "/v1/agent/service/register"
            && String::from_utf8_lossy(body).contains(&registering_blue)
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (deployed, (sent, failures, versions)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(d.port, &stop, 500, 50_000));
        let out = d.deploy("v1");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, load.join().unwrap())
    });
    assert!(
        consul.is_down(),
        "Consul never went down: blue was never registered\n{}",
        deployed.stderr
    );
    consul.set_down(false);
    deployed
        .expect_code(1)
        .stderr_has(&format!(
            "{blue} failed before the switch; proxy and color untouched"
        ))
        .stderr_has("unavailable")
        .stderr_has(&format!("runner recover {}", d.service));
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed while Consul was down: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(versions, ["v2"], "only the old color served");
    // Consul is back: the journal says the deploy died before the switch,
    // so recovery removes what is left of the candidate.
    d.bluegreen(&["-c", "action=recover"])
        .expect_code(0)
        .stderr_has("recovering");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(d.containers(), [(green.clone(), true)]);
    assert_eq!(d.catalog(), [green.as_str()]);
}

#[test]
fn docker_grants_are_enforced() {
    let env = Env::new();
    let probe = plugin("bluegreen");
    // No container grant: the first Docker call is denied, naming the flag.
    env.exec(&probe)
        .service("nogrant")
        .lock()
        .allow_kv("nogrant/")
        .config("image", "nogrant:v1")
        .config("pre_hook", "none")
        .config("post_hook", "none")
        .run()
        .expect_code(1)
        .stderr_has("denied: docker:")
        .stderr_has("--allow-container nogrant-blue");
    // Without the deploy lock there is no journal, so no crash-safe deploy.
    env.exec(&probe)
        .service("nogrant")
        .config("image", "nogrant:v1")
        .run()
        .expect_code(1)
        .stderr_has("denied: journal:")
        .stderr_has("deploy lock");
}
