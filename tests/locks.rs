//! Deploy locks: one deploy of a service at a time, on both backends; a
//! waiting deploy fails naming the holder; a dead holder never leaves a stale
//! lock (the file lock dies with its process, a Consul session expires); Ctrl-C
//! and SIGTERM release it.

use crate::common::consul::ConsulServer;
use crate::common::{Env, Exec, Output, finish, plugin, run};
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICE: &str = "books-ms";

/// `runner exec --lock` of a stage that holds for `ms` milliseconds; start
/// it with `spawn`.
fn holder(env: &Env, consul: Option<&ConsulServer>, ms: u64) -> Exec {
    let mut cmd = env.exec(plugin("sandbox-probe"));
    cmd.lock()
        .service(SERVICE)
        .config("mode", "hold")
        .config("ms", ms);
    if let Some(c) = consul {
        cmd.env("CONSUL_HTTP_ADDR", c.url());
    }
    cmd
}

fn lock_status(env: &Env, consul: Option<&ConsulServer>) -> Output {
    let mut cmd = env.runner();
    cmd.args(["lock", "status", SERVICE]);
    if let Some(c) = consul {
        cmd.env("CONSUL_HTTP_ADDR", c.url());
    }
    run(&mut cmd)
}

/// Poll (bounded) until `lock status` says held (or free).
fn wait_for_lock(env: &Env, consul: Option<&ConsulServer>, held: bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lock_status(env, consul);
        if (out.code == 0) == held {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "lock never became {}: {}",
            if held { "held" } else { "free" },
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serialize(consul: Option<&ConsulServer>) {
    let env = Env::new();
    run(&mut env.probe("noop")).expect_code(0); // warm the artifact cache
    let a = holder(&env, consul, 800).spawn();
    let b = holder(&env, consul, 800).spawn();
    let (a, b) = (finish(a).expect_code(0), finish(b).expect_code(0));
    let span = |o: &Output| -> (u128, u128) {
        (
            o.output("start").unwrap().parse().unwrap(),
            o.output("end").unwrap().parse().unwrap(),
        )
    };
    let ((a0, a1), (b0, b1)) = (span(&a), span(&b));
    assert!(
        a1 <= b0 || b1 <= a0,
        "the two deploys overlapped: {a0}..{a1} and {b0}..{b1}"
    );
    let waited = format!("{}{}", a.stderr, b.stderr);
    assert!(
        waited.contains(&format!(
            "waiting for the deploy lock of {SERVICE}, held by"
        )),
        "{waited}"
    );
    lock_status(&env, consul)
        .expect_code(1)
        .stderr_has("nobody holds the deploy lock of books-ms");
}

#[test]
fn two_deploys_of_one_service_serialize() {
    serialize(None);
}

#[test]
fn two_deploys_of_one_service_serialize_on_consul() {
    let consul = ConsulServer::start(None);
    serialize(Some(&consul));
}

#[test]
fn a_waiting_deploy_gives_up_naming_the_holder() {
    let env = Env::new();
    let first = holder(&env, None, 20_000).spawn();
    let pid = first.id();
    let status = wait_for_lock(&env, None, true);
    assert!(
        status
            .stdout
            .contains(&format!("pid {pid} (stage sandbox-probe")),
        "{}",
        status.stdout
    );
    let mut second = holder(&env, None, 10);
    second.args(["--lock-wait", "300ms"]);
    finish(second.spawn())
        .expect_code(1)
        .stderr_has("the deploy lock of books-ms is still held after 300ms by")
        .stderr_has(&format!("pid {pid}"));
    run(env.runner().args(["lock", "release", SERVICE]))
        .expect_code(1)
        .stderr_has(&format!("kill {pid}"));
    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let env = Env::new();
    let mut first = holder(&env, None, 60_000).spawn();
    wait_for_lock(&env, None, true);
    first.kill().unwrap(); // SIGKILL: no chance to clean up
    first.wait().unwrap();
    wait_for_lock(&env, None, false);
    finish(holder(&env, None, 10).spawn()).expect_code(0);
}

#[test]
fn a_killed_holder_lock_expires_on_consul() {
    let consul = ConsulServer::start(None);
    consul.set_session_ttl(Duration::from_secs(1));
    let env = Env::new();
    let mut first = holder(&env, Some(&consul), 60_000).spawn();
    wait_for_lock(&env, Some(&consul), true);
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = holder(&env, Some(&consul), 10);
    second.args(["--lock-wait", "20s"]);
    finish(second.spawn()).expect_code(0);
}

#[test]
fn sigterm_ends_the_stage_and_releases_the_lock() {
    // Consul sessions here live 15 s: taking the lock right after proves the
    // interrupted holder released it, not the TTL.
    let consul = ConsulServer::start(None);
    let env = Env::new();
    let first = holder(&env, Some(&consul), 60_000).spawn();
    wait_for_lock(&env, Some(&consul), true);
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    finish(first)
        .expect_code(130)
        .stderr_has("interrupted by SIGTERM; the deploy lock was released");
    lock_status(&env, Some(&consul)).expect_code(1);
    let mut second = holder(&env, Some(&consul), 10);
    second.args(["--lock-wait", "2s"]);
    finish(second.spawn()).expect_code(0);
}
