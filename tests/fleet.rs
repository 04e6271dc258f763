//! Several Docker hosts (issue 14, item 2) on real engines: two private
//! engines as the runner file's `[hosts.a]` and `[hosts.b]`, nginx in front.
//! Three replicas spread over both, every one registered at its host's
//! address and behind the proxy; zero failed requests across a deploy and a
//! rollback; a candidate that fails is removed from both hosts; `status`
//! shows each host; a host whose engine stops answering mid-deploy fails the
//! deploy safe (old color serving, color unchanged, what is left named) and
//! the next deploy, with the host back, goes through.

use crate::common::deployment::{Deployment, load};
use crate::common::engines::{PrivateEngine, require_engines};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The deployment's runner file with the two engines as hosts `a` and `b`,
/// the stage granted both; `timeout`: each host's call timeout.
fn add_hosts(d: &Deployment, a: &PrivateEngine, b: &PrivateEngine, timeout: &str) {
    let path = d.work.join("runner.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut text = text.replacen("[grants]\n", "[grants]\ndocker_hosts = [\"a\", \"b\"]\n", 1);
    for (name, engine) in [("a", a), ("b", b)] {
        text.push_str(&format!(
            "\n[hosts.{name}]\ndocker = \"{}\"\naddress = \"127.0.0.1\"\ntimeout = \"{timeout}\"\n",
            engine.host()
        ));
    }
    std::fs::write(&path, text).unwrap();
}

/// Names of the deployment's containers on `engine`, with `running`.
fn on(engine: &PrivateEngine, d: &Deployment, running: bool) -> Vec<String> {
    let mut args = vec!["ps", "--format", "{{.Names}}", "--filter"];
    let filter = format!("name=^{}-", d.service);
    args.push(&filter);
    if !running {
        args.push("-a");
    }
    let mut names: Vec<String> = engine.run(&args).lines().map(str::to_string).collect();
    names.sort();
    names
}

fn load_images(d: &Deployment, engines: &[&PrivateEngine], tags: &[&str]) {
    for engine in engines {
        for tag in tags {
            engine.load_image(&format!("{}:{tag}", d.service));
        }
    }
}

/// `args` under a bounded load through nginx: the exit code; no failed request.
fn under_load(d: &Deployment, args: &[&str], code: i32) -> crate::common::Output {
    d.bluegreen_under_load(args, 500, code)
}

fn upstream_servers(d: &Deployment) -> usize {
    d.upstream_file().matches("server 127.0.0.1:").count()
}

#[test]
fn three_replicas_on_two_hosts_switch_roll_back_and_fail_together() {
    require_engines!();
    let d = Deployment::start("fleet", false);
    let (a, b) = (PrivateEngine::start(), PrivateEngine::start());
    load_images(&d, &[&a, &b], &["v1", "v2", "badhealth"]);
    add_hosts(&d, &a, &b, "10s");
    let three = ["-c", "replicas=3", "-c", "health_timeout=10s"];
    let image = |tag: &str| format!("image={}:{tag}", d.service);

    let out = d
        .bluegreen(&[&["-c", &image("v1")][..], &three].concat())
        .expect_code(0);
    // Spread: two on one host, one on the other (which replica goes where
    // depends on which start is placed first); nothing on the main engine.
    let blue = |i: u32| format!("{}-blue-{i}", d.service);
    let (blue_a, blue_b) = (on(&a, &d, true), on(&b, &d, true));
    assert_eq!(
        (blue_a.len(), blue_b.len()),
        (2, 1),
        "{blue_a:?} {blue_b:?}"
    );
    assert!((1..=3).all(|i| blue_a.contains(&blue(i)) || blue_b.contains(&blue(i))));
    assert!(d.containers().is_empty(), "{:?}", d.containers());
    assert!(
        out.stderr.contains(&format!("{} on b", blue_b[0])),
        "{}",
        out.stderr
    );
    assert_eq!(out.output("addresses").unwrap().split(',').count(), 3);
    assert_eq!(
        d.catalog(),
        vec![d.name("blue"); 3],
        "every replica registered"
    );
    assert_eq!(upstream_servers(&d), 3, "{}", d.upstream_file());
    assert_eq!(d.serving(), "v1");

    // v2 on both hosts under load; blue stopped (kept) on both.
    under_load(&d, &[&["-c", &image("v2")][..], &three].concat(), 0);
    // Spread again, by the service first, then by all a host runs: with
    // blue's two on a, green puts two on b and one on a.
    let (green_a, green_b) = (on(&a, &d, true), on(&b, &d, true));
    assert_eq!(
        (green_a.len(), green_b.len()),
        (1, 2),
        "{green_a:?} {green_b:?}"
    );
    assert!(
        green_a
            .iter()
            .chain(&green_b)
            .all(|n| n.contains("-green-"))
    );
    let mut kept = blue_a.clone();
    kept.extend(green_a.clone());
    kept.sort();
    assert_eq!(on(&a, &d, false), kept, "blue stopped and kept on a");
    assert_eq!(d.catalog(), vec![d.name("green"); 3]);
    d.wait_serving("v2");

    // `status` shows each host and its containers.
    let runner_file = std::fs::read_to_string(d.work.join("runner.toml")).unwrap();
    std::fs::write(
        d.work.join("pipeline.toml"),
        format!(
            "service = \"{}\"\n{runner_file}\n[[stages]]\nname = \"deploy\"\nplugin = \"plugins/bluegreen.wasm\"\n",
            d.service
        ),
    )
    .unwrap();
    let status = d
        .runner()
        .args(["status", &d.service, "-f", "pipeline.toml"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let host_a = status.find("  host a (at 127.0.0.1").expect(&status);
    let host_b = status.find("  host b (at 127.0.0.1").expect(&status);
    assert!(status[host_a..host_b].contains(&green_a[0]), "{status}");
    assert!(status[host_b..].contains(&green_b[0]), "{status}");

    // Rollback across the hosts: every blue replica started again.
    under_load(&d, &["-c", "action=rollback"], 0);
    assert_eq!(on(&a, &d, true), blue_a);
    assert_eq!(on(&b, &d, true), blue_b);
    d.wait_serving("v1");

    // A candidate never healthy: removed from both hosts, blue serves.
    let out = under_load(
        &d,
        &[
            "-c",
            &image("badhealth"),
            "-c",
            "replicas=3",
            "-c",
            "health_timeout=2s",
        ],
        1,
    );
    assert!(
        out.stderr.contains("failed before the switch"),
        "{}",
        out.stderr
    );
    assert_eq!(
        on(&a, &d, false)
            .iter()
            .filter(|n| n.contains("-green"))
            .count(),
        0
    );
    assert_eq!(
        on(&b, &d, false)
            .iter()
            .filter(|n| n.contains("-green"))
            .count(),
        0
    );
    assert_eq!(d.color(), "blue");
    d.wait_serving("v1");
}

#[test]
fn a_host_that_stops_answering_mid_deploy_leaves_the_old_color_serving() {
    require_engines!();
    let d = Deployment::start("hostdown", false);
    let (a, b) = (PrivateEngine::start(), PrivateEngine::start());
    load_images(&d, &[&a, &b], &["v1", "v2"]);
    add_hosts(&d, &a, &b, "3s");
    let image = |tag: &str| format!("image={}:{tag}", d.service);
    // Replica 1 on b: the first health check meets b.
    let base = [
        "-c",
        "replicas=2",
        "-c",
        "hosts=b,a",
        "-c",
        "health_timeout=20s",
    ];
    d.bluegreen(&[&["-c", &image("v1")][..], &base].concat())
        .expect_code(0);
    d.wait_serving("v1");

    // v2 starts slowly; once its replica is on b, b's engine stops answering.
    let stop = AtomicBool::new(false);
    let (out, (sent, failures, _)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(d.port, &stop, 500, 50_000));
        let deploy = scope.spawn(|| {
            d.bluegreen(
                &[
                    &["-c", &image("v2"), "-c", "env.HEALTHY_AFTER_MS=60000"][..],
                    &base,
                ]
                .concat(),
            )
        });
        let green = format!("{}-green-1", d.service);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !on(&b, &d, false).contains(&green) {
            assert!(Instant::now() < deadline, "green never reached host b");
            std::thread::sleep(Duration::from_millis(50));
        }
        b.pause();
        let out = deploy.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        (out, load.join().unwrap())
    });
    let out = out.expect_code(1);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed while b was down: {:?}\nnginx error log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        d.proxy_errors()
    );
    // The host is named, and what is left behind on it.
    assert!(out.stderr.contains("host b: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("failed before the switch"),
        "{}",
        out.stderr
    );
    assert_eq!(d.serving(), "v1");
    b.resume();
    assert_eq!(d.color(), "blue");
    // a's replica of the candidate is gone; b's is the one the journal keeps.
    assert!(on(&a, &d, false).iter().all(|n| !n.contains("-green")));

    // With b back, the next deploy removes what was left and goes through.
    under_load(&d, &[&["-c", &image("v2")][..], &base].concat(), 0);
    d.wait_serving("v2");
    assert_eq!(on(&b, &d, true), [format!("{}-green-1", d.service)]);
    assert_eq!(on(&a, &d, true), [format!("{}-green-2", d.service)]);
    assert_eq!(d.color(), "green");
}

/// An engine on `tcp://` with TLS verified both ways, as Docker's
/// `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` have it: a runner file's
/// `[hosts.NAME]` with `tls_verify` and `cert_path`, and the one engine of
/// `DOCKER_HOST` with the docker CLI's environment. Certificates of another
/// CA are refused before anything starts, the error naming the files.
#[test]
fn an_engine_over_tls_is_verified_both_ways() {
    require_engines!();
    let e = PrivateEngine::start_tls();
    let strangers = e.dir().join("strangers");
    let ca = crate::common::engines::test_ca(&strangers.join("ca"));
    crate::common::engines::issue(&ca, &strangers.join("client"), "clientAuth", "");
    std::fs::copy(ca.join("ca.pem"), strangers.join("client/ca.pem")).unwrap();

    // [hosts.secure]: two replicas over TLS, deployed under load.
    let d = Deployment::start("tls", false);
    load_images(&d, &[&e], &["v1", "v2"]);
    let path = d.work.join("runner.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let host = |cert_path: &std::path::Path| {
        let text = text.replacen("[grants]\n", "[grants]\ndocker_hosts = [\"secure\"]\n", 1);
        let table = format!(
            "\n[hosts.secure]\ndocker = \"{}\"\ntls_verify = true\ncert_path = \"{}\"\naddress = \"127.0.0.1\"\n",
            e.tls_host(),
            cert_path.display()
        );
        std::fs::write(&path, text + &table).unwrap();
    };
    host(&e.cert_path());
    let image = |tag: &str| format!("image={}:{tag}", d.service);
    d.bluegreen(&["-c", &image("v1"), "-c", "replicas=2"])
        .expect_code(0);
    d.wait_serving("v1");
    under_load(&d, &["-c", &image("v2"), "-c", "replicas=2"], 0);
    d.wait_serving("v2");
    assert_eq!(
        on(&e, &d, true),
        [
            format!("{}-green-1", d.service),
            format!("{}-green-2", d.service)
        ]
    );

    // Another CA's certificates: the engine is refused, nothing moves.
    host(&strangers.join("client"));
    let out = d.bluegreen(&["-c", &image("v1"), "-c", "replicas=2"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&e.tls_host()) && out.stderr.contains("TLS with"),
        "{}",
        out.stderr
    );
    assert_eq!(d.color(), "green");
    assert_eq!(d.serving(), "v2");

    // DOCKER_HOST with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI.
    let one = Deployment::start("tlsenv", false);
    load_images(&one, &[&e], &["v1"]);
    let tls_env = |cert_path: &std::path::Path| {
        [
            ("DOCKER_HOST", e.tls_host()),
            ("DOCKER_TLS_VERIFY", "1".to_string()),
            ("DOCKER_CERT_PATH", cert_path.display().to_string()),
        ]
    };
    let run = |cert_path: &std::path::Path| {
        let envs = tls_env(cert_path);
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        one.bluegreen_with(&["-c", &format!("image={}:v1", one.service)], &envs)
    };
    let out = run(&strangers.join("client"));
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("TLS with"), "{}", out.stderr);
    assert!(on(&e, &one, false).is_empty(), "nothing started");
    run(&e.cert_path()).expect_code(0);
    one.wait_serving("v1");
    assert_eq!(on(&e, &one, true), [format!("{}-blue", one.service)]);
}
