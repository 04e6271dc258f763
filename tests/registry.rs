//! The registry contract every backend keeps (`registry/contract.rs`), and
//! the embedded registry across processes: persistence, CAS, concurrency,
//! its lock files, and the catalog data templates render from.

use crate::common;

#[path = "registry/contract.rs"]
pub(crate) mod contract;

use crate::common::{Env, run};
use runner::registry::{Catalog, DeployLocks, EmbeddedRegistry, Instance, LockAttempt, LockHolder};
use std::time::Duration;

#[test]
fn kv_persists_across_processes() {
    let env = Env::new();
    run(env.runner().args(["kv", "put", "books-ms/color", "blue"])).expect_code(0);
    let out = run(env.probe("kv-get").args([
        "--allow-kv",
        "books-ms/",
        "--config",
        "key=books-ms/color",
    ]))
    .expect_code(0);
    assert_eq!(out.output("value").as_deref(), Some("blue"));
    run(env.probe("kv-put").args([
        "--allow-kv",
        "books-ms/",
        "--config",
        "key=books-ms/color",
        "--config",
        "value=green",
    ]))
    .expect_code(0);
    let out = run(env.runner().args(["kv", "get", "books-ms/color"])).expect_code(0);
    assert_eq!(out.stdout, "green\n");
    let out = run(env.runner().args(["kv", "list", "books-ms/"])).expect_code(0);
    assert_eq!(out.stdout, "books-ms/color\tgreen\n");
    run(env.runner().args(["kv", "get", "books-ms/none"]))
        .expect_code(1)
        .stderr_has("does not exist");
}

#[test]
fn cas_conflicts_are_reported() {
    let env = Env::new();
    run(env.runner().args(["kv", "put", "app/k", "1"])).expect_code(0);
    let detailed = run(env.runner().args(["kv", "get", "--detailed", "app/k"]))
        .expect_code(0)
        .stdout;
    let index: u64 = detailed
        .lines()
        .find_map(|l| l.strip_prefix("modify_index\t"))
        .unwrap()
        .parse()
        .unwrap();

    let cas = |expected: u64| {
        let out = run(env
            .probe("cas")
            .args(["--allow-kv", "app/", "-c", "key=app/k", "-c", "value=2"])
            .args(["-c", &format!("index={expected}")]))
        .expect_code(0);
        out.output("swapped")
    };
    assert_eq!(cas(index + 7).as_deref(), Some("false"));
    assert_eq!(run(env.runner().args(["kv", "get", "app/k"])).stdout, "1\n");
    assert_eq!(cas(index).as_deref(), Some("true"));

    run(env
        .runner()
        .args(["kv", "put", "--cas", &index.to_string(), "app/k", "3"]))
    .expect_code(1)
    .stderr_has("was not written: its modify index is not");
    assert_eq!(run(env.runner().args(["kv", "get", "app/k"])).stdout, "2\n");
}

#[test]
fn two_processes_incrementing_at_once_lose_nothing() {
    let env = Env::new();
    let per_process = 150;
    let spawn = || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("runner"));
        cmd.current_dir(env.path())
            .env("RUNNER_STATE_DIR", env.state_dir())
            .env("RUNNER_CACHE_DIR", env.cache_dir())
            .args([
                "exec",
                "--allow-kv",
                "counter/",
                "-c",
                "mode=cas-increment",
                "-c",
                "key=counter/n",
            ])
            .args(["-c", &format!("n={per_process}")])
            .arg("--plugin")
            .arg(common::plugin("sandbox-probe"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    // Warm the artifact cache so both processes spend their time writing.
    run(&mut env.probe("noop")).expect_code(0);
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(env.runner().args(["kv", "get", "counter/n"])).expect_code(0);
    assert_eq!(out.stdout.trim(), (2 * per_process).to_string());
}

/// Register the seed's `books-ms-blue` instance (port 32769) in `env`'s state.
async fn register_blue(env: &Env, address: &str, tags: &[&str], healthy: bool) {
    let registry = EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(5)).unwrap();
    registry
        .register(&Instance {
            id: "prod:books-ms-blue:8080".into(),
            name: "books-ms-blue".into(),
            address: address.into(),
            port: 32769,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status: if healthy {
                runner::registry::Health::Passing
            } else {
                runner::registry::Health::Critical
            },
            ..Instance::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn catalog_list_shows_registered_instances() {
    let env = Env::new();
    register_blue(&env, "127.0.0.1", &["v1"], true).await;
    let out = run(env.runner().args(["catalog", "list"])).expect_code(0);
    assert!(
        out.stdout
            .contains("books-ms-blue\tprod:books-ms-blue:8080\t127.0.0.1:32769\tpassing\tv1"),
        "{}",
        out.stdout
    );
}

/// The seed's upstream template, rendered by a plugin from catalog data the
/// registry holds, byte for byte as consul-template writes it.
#[tokio::test]
async fn seed_template_renders_from_the_catalog_through_a_plugin() {
    let env = Env::new();
    register_blue(&env, "10.100.198.201", &[], false).await;
    let out_dir = env.path().join("upstreams");
    std::fs::create_dir(&out_dir).unwrap();
    let seed = "upstream books-ms {\n {{range service \"books-ms-blue\" \"any\"}}\n server {{.Address}}:{{.Port}};\n {{end}}\n}\n";
    let dest = out_dir.join("books-ms.conf");
    let mut cmd = env.probe("template");
    cmd.args(["--allow-template-out"]).arg(&out_dir);
    cmd.args([
        "-c",
        &format!("text={seed}"),
        "-c",
        &format!("dest={}", dest.display()),
    ]);

    // The template reads the catalog: without the service grant it is denied.
    run(&mut cmd)
        .expect_code(1)
        .stderr_has("grant it with --allow-service books-ms-blue");
    cmd.args(["--allow-service", "books-ms-*"]);
    run(&mut cmd).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "upstream books-ms {\n \n server 10.100.198.201:32769;\n \n}\n"
    );
}

/// The embedded store's deploy locks are OS file locks in the state
/// directory: held while the holder lives, and never broken from outside
/// (the holder is a live process; `force_unlock` says how to stop it).
#[tokio::test]
async fn embedded_locks_are_files_that_cannot_be_broken() {
    let env = Env::new();
    let registry = EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(5)).unwrap();
    let holder = contract::holder();
    let LockAttempt::Acquired(guard) = registry.try_lock("books-ms", &holder).await.unwrap() else {
        panic!("a free lock is taken")
    };
    let file = env.state_dir().join("locks/books-ms.lock");
    let on_disk: LockHolder = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk, holder, "the holder is written into the lock file");
    let refused = registry.force_unlock("books-ms").await.unwrap_err();
    assert!(
        refused.to_string().contains("a file lock cannot be broken")
            && refused.to_string().contains("kill 4242"),
        "{refused}"
    );
    guard.release().await.unwrap();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"",
        "released: no stale holder"
    );
    assert!(!registry.force_unlock("books-ms").await.unwrap());
}

/// `runner catalog register|deregister` put instances into the catalog
/// without a plugin, as `consul services register` does; templates render
/// from them (a critical instance is left out, as Consul's health filter does).
#[test]
fn the_catalog_is_written_from_the_command_line() {
    let env = Env::new();
    // Before anything is registered there is no registry: a render says so.
    let tmpl0 = env.path().join("empty.ctmpl");
    std::fs::write(&tmpl0, "{{range service \"x\"}}{{.Address}}{{end}}").unwrap();
    let mut first = env.runner();
    first
        .env_remove("CONSUL_HTTP_ADDR")
        .args(["template", "render"])
        .arg(&tmpl0)
        .arg("-");
    run(&mut first)
        .expect_code(0)
        .stderr_has("no registry configured: rendering from a new, empty embedded registry");
    let catalog = |args: &[&str]| {
        let mut cmd = env.runner();
        cmd.arg("catalog").args(args);
        run(&mut cmd)
    };
    catalog(&[
        "register",
        "books-ms",
        "127.0.0.1:8081",
        "--id",
        "b1",
        "--tag",
        "blue",
    ])
    .expect_code(0);
    catalog(&[
        "register",
        "books-ms",
        "[::1]:8082",
        "--id",
        "b2",
        "--critical",
    ])
    .expect_code(0);
    catalog(&["list", "books-ms"])
        .expect_code(0)
        .stdout_has("books-ms\tb1\t127.0.0.1:8081\tpassing\tblue")
        .stdout_has("books-ms\tb2\t::1:8082\tcritical\t");

    let tmpl = env.path().join("up.ctmpl");
    std::fs::write(
        &tmpl,
        "{{range service \"books-ms\"}}server {{.Address}}:{{.Port}};\n{{end}}",
    )
    .unwrap();
    // A destination whose directories do not exist yet: created, as
    // consul-template creates them.
    let out = env.path().join("conf.d/upstreams/up.conf");
    let mut render = env.runner();
    render.args(["template", "render"]).arg(&tmpl).arg(&out);
    run(&mut render).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "server 127.0.0.1:8081;\n"
    );

    catalog(&["deregister", "books-ms", "b1"]).expect_code(0);
    catalog(&["deregister", "books-ms", "b1"])
        .expect_code(1)
        .stderr_has("service books-ms has no instance \"b1\"");
    catalog(&["register", "books-ms", "127.0.0.1"])
        .expect_code(2)
        .stderr_has("is not HOST:PORT");
    catalog(&["register", "books-ms", "127.0.0.1:80", "--id", "runner:x"])
        .expect_code(2)
        .stderr_has("which runner keeps for the containers it runs");
    catalog(&["register", "books/ms", "127.0.0.1:80"])
        .expect_code(2)
        .stderr_has("books/ms");
    catalog(&["register", "db", "127.0.0.1:5432", "--status", "healthy"])
        .expect_code(2)
        .stderr_has("use passing, warning, critical or maintenance");
    catalog(&["register", "db", "127.0.0.1:5432", "--meta", "=x"])
        .expect_code(2)
        .stderr_has("is not KEY=VALUE");
    catalog(&["register", "db", "127.0.0.1:5432", "--node", "a/b"])
        .expect_code(2)
        .stderr_has("--node \"a/b\" is not a node name");
    // Consul's agent decides the node and the status: refused, not dropped.
    let mut consul = env.runner();
    consul.args([
        "--consul",
        "http://127.0.0.1:9",
        "catalog",
        "register",
        "db",
    ]);
    consul.args(["127.0.0.1:5432", "--status", "warning"]);
    run(&mut consul)
        .expect_code(2)
        .stderr_has("are the embedded registry's");
    // What templates read of an instance: its node, metadata and status.
    catalog(&[
        "register",
        "db",
        "127.0.0.1:5432",
        "--node",
        "db-host",
        "--node-address",
        "127.0.0.9",
        "--meta",
        "role=primary",
        "--status",
        "warning",
    ])
    .expect_code(0);
    std::fs::write(
        &tmpl,
        "{{range service \"db|warning\"}}{{.Node}} {{.NodeAddress}} {{.ServiceMeta.role}} {{.Status}} {{range .Checks}}{{.CheckID}}={{.Status}}{{end}}{{end}}",
    )
    .unwrap();
    let mut render = env.runner();
    render.args(["template", "render"]).arg(&tmpl).arg(&out);
    run(&mut render).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "db-host 127.0.0.9 primary warning service:db=warning"
    );
}
