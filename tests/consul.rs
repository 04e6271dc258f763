//! The Consul backend against the API-faithful test server
//! (`tests/common/consul.rs`; no real Consul can be installed here): the same
//! KV, catalog and template behaviour plugins get from the embedded registry.

use crate::common::consul::ConsulServer;
use crate::common::{Env, plugin, run};
use runner::registry::{ConsulRegistry, Dependency, Instance, Registry};
use std::time::Duration;

/// A scratch env, and a function pointing a runner command at `url`.
fn consul_env(
    url: String,
) -> (
    Env,
    impl Fn(&mut assert_cmd::Command) -> &mut assert_cmd::Command,
) {
    (Env::new(), move |cmd: &mut assert_cmd::Command| {
        cmd.env("CONSUL_HTTP_ADDR", &url)
    })
}

/// Register the seed's books-ms-blue instance (10.100.198.201:32769) in `server`.
async fn register_seed_blue(server: &ConsulServer) {
    let consul = ConsulRegistry::new(&server.url(), None, Duration::from_secs(5)).unwrap();
    consul
        .register(&Instance {
            id: "prod:books-ms-blue:8080".into(),
            name: "books-ms-blue".into(),
            address: "10.100.198.201".into(),
            port: 32769,
            tags: vec![],
            healthy: true,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn kv_round_trips_binary_values_with_increasing_indexes_and_cas() {
    let server = ConsulServer::start(None);
    let consul = ConsulRegistry::new(&server.url(), None, Duration::from_secs(5)).unwrap();
    assert_eq!(consul.kv_get("app/bin").await.unwrap(), None);
    let bytes = vec![0u8, 255, 10, 13, 34, 92];
    let i1 = consul.kv_put("app/bin", &bytes).await.unwrap();
    let i2 = consul.kv_put("app/bin", &bytes).await.unwrap();
    assert!(i2 > i1, "{i1} then {i2}");
    let e = consul.kv_get("app/bin").await.unwrap().unwrap();
    assert_eq!(
        (e.value.clone(), e.create_index, e.modify_index),
        (bytes, i1, i2)
    );

    assert!(
        !consul.kv_cas("app/bin", b"x", i1).await.unwrap(),
        "stale index"
    );
    assert!(consul.kv_cas("app/bin", b"x", i2).await.unwrap());
    assert!(!consul.kv_cas("app/new", b"x", 7).await.unwrap());
    assert!(
        consul.kv_cas("app/new", b"y", 0).await.unwrap(),
        "0 creates"
    );
    assert!(
        !consul.kv_cas("app/new", b"z", 0).await.unwrap(),
        "0 only creates"
    );

    consul.kv_put("other/k", b"v").await.unwrap();
    let keys: Vec<String> = consul
        .kv_list("app/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["app/bin", "app/new"]);
    assert!(consul.kv_delete("app/new").await.unwrap());
    assert!(!consul.kv_delete("app/new").await.unwrap());
    assert!(consul.kv_list("none/").await.unwrap().is_empty());
}

#[tokio::test]
async fn catalog_health_and_registration() {
    let server = ConsulServer::start(None);
    let consul = ConsulRegistry::new(&server.url(), None, Duration::from_secs(5)).unwrap();
    let blue = Instance {
        id: "runner:books-ms-blue:8080".into(),
        name: "books-ms-blue".into(),
        address: "127.0.0.1".into(),
        port: 32769,
        tags: vec!["v1".into()],
        healthy: true,
    };
    consul.register(&blue).await.unwrap();
    assert_eq!(
        consul.services().await.unwrap(),
        ["books-ms-blue"],
        "consul itself is not listed"
    );
    assert_eq!(
        consul.instances("books-ms-blue").await.unwrap(),
        vec![blue.clone()]
    );
    server.set_check(&blue.id, "critical");
    assert!(!consul.instances("books-ms-blue").await.unwrap()[0].healthy);
    assert!(consul.deregister("books-ms-blue", &blue.id).await.unwrap());
    assert!(!consul.deregister("books-ms-blue", &blue.id).await.unwrap());
    assert!(consul.instances("books-ms-blue").await.unwrap().is_empty());
}

#[test]
fn plugins_see_the_same_kv_through_consul() {
    let server = ConsulServer::start(None);
    let (env, with_consul) = consul_env(server.url());
    for expected in ["blue", "green", "blue"] {
        let out = run(with_consul(
            env.runner()
                .arg("exec")
                .arg("--plugin")
                .arg(plugin("color"))
                .args([
                    "--service",
                    "books-ms",
                    "--allow-kv",
                    "books-ms/",
                    "-c",
                    "commit=true",
                ]),
        ))
        .expect_code(0);
        assert_eq!(out.output("next").as_deref(), Some(expected));
        let stored = run(with_consul(env.runner().args([
            "kv",
            "get",
            "books-ms/color",
        ])))
        .expect_code(0);
        assert_eq!(stored.stdout.trim(), expected);
    }
    assert!(
        !env.state_dir().exists(),
        "the embedded store was not touched"
    );
}

#[tokio::test]
async fn seed_template_renders_from_consul_byte_for_byte() {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    server.set_check("prod:books-ms-blue:8080", "critical");
    let (env, with_consul) = consul_env(server.url());
    let out_dir = env.path().join("upstreams");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("books-ms.conf");
    let seed = "upstream books-ms {\n {{range service \"books-ms-blue\" \"any\"}}\n server {{.Address}}:{{.Port}};\n {{end}}\n}\n";
    let mut cmd = env.probe("template").command();
    cmd.args(["--allow-service", "books-ms-*", "--allow-template-out"])
        .arg(&out_dir);
    cmd.args([
        "-c",
        &format!("text={seed}"),
        "-c",
        &format!("dest={}", dest.display()),
    ]);
    run(with_consul(&mut cmd)).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "upstream books-ms {\n \n server 10.100.198.201:32769;\n \n}\n",
        "\"any\" includes the critical instance"
    );
    let healthy_only = "{{range service \"books-ms-blue\"}}{{.Port}}{{end}}";
    let mut cmd = env.probe("template").command();
    cmd.args(["--allow-service", "books-ms-*", "--allow-template-out"])
        .arg(&out_dir);
    cmd.args([
        "-c",
        &format!("text={healthy_only}"),
        "-c",
        &format!("dest={}", out_dir.join("healthy").display()),
    ]);
    run(with_consul(&mut cmd)).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("healthy")).unwrap(),
        "",
        "critical instances are not healthy"
    );
}

#[test]
fn acl_denial_and_outages_reach_the_plugin_as_typed_errors() {
    let server = ConsulServer::start(Some("s3cret"));
    let (env, with_consul) = consul_env(server.url());
    let get = |token: Option<&str>| {
        let mut cmd = env.probe("kv-get").command();
        cmd.args(["--allow-kv", "books-ms/", "-c", "key=books-ms/color"]);
        with_consul(&mut cmd);
        if let Some(t) = token {
            cmd.env("CONSUL_HTTP_TOKEN", t);
        }
        run(&mut cmd)
    };
    get(Some("wrong")).expect_code(1).stderr_has(
        "denied: kv: consul ACL denied access to key \"books-ms/color\"; check the token",
    );
    get(Some("s3cret")).expect_code(0);

    // Transient 500s are retried; persistent ones become `unavailable`.
    server.fail_next(2);
    get(Some("s3cret")).expect_code(0);
    server.fail_next(100);
    get(Some("s3cret"))
        .expect_code(1)
        .stderr_has("unavailable: kv:")
        .stderr_has("500");

    // A slow Consul: the plugin gets `timeout` within the host-call timeout.
    server.set_delay(Duration::from_millis(1500));
    let mut slow = env.probe("kv-get").command();
    slow.args([
        "--allow-kv",
        "books-ms/",
        "-c",
        "key=books-ms/color",
        "--host-call-timeout",
        "300ms",
    ]);
    slow.env("CONSUL_HTTP_TOKEN", "s3cret");
    run(with_consul(&mut slow))
        .expect_code(1)
        .stderr_has("timeout: kv.get did not finish within the host-call timeout (300ms)");
    server.set_delay(Duration::ZERO);

    // Consul down.
    let url = server.url();
    drop(server);
    let mut cmd = env.probe("kv-get").command();
    cmd.args(["--allow-kv", "books-ms/", "-c", "key=books-ms/color"])
        .env("CONSUL_HTTP_ADDR", &url);
    run(&mut cmd).expect_code(1).stderr_has("unavailable: kv:");
}

/// `runner template render` as `consul-template -template "in:out:cmd" -once`:
/// the seed's own .ctmpl file renders from Consul data byte for byte, and the
/// command runs only when the output changed.
#[tokio::test]
async fn template_render_command_renders_seed_files_and_runs_the_command_on_change() {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    let env = Env::new();
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bluegreen/templates/nginx-upstreams-blue.ctmpl");
    let dest = env.path().join("books-ms.conf");
    let marker = env.path().join("reloads");
    let render = || {
        let mut cmd = env.runner();
        cmd.env("CONSUL_HTTP_ADDR", server.url())
            .args(["template", "render"])
            .arg(&seed)
            .arg(&dest)
            .args(["--exec", &format!("echo reload >> {}", marker.display())]);
        run(&mut cmd)
    };
    render().expect_code(0).stderr_has("written");
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "upstream books-ms {\n \n server 10.100.198.201:32769;\n \n}\n"
    );
    render().expect_code(0).stderr_has("unchanged");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "reload\n",
        "the command ran once, on the change"
    );

    let mut failing = env.runner();
    failing
        .env("CONSUL_HTTP_ADDR", server.url())
        .args(["template", "render"])
        .arg(&seed)
        .arg(env.path().join("other.conf"));
    failing.args(["--exec", "exit 3"]);
    run(&mut failing)
        .expect_code(1)
        .stderr_has("`exit 3` exited with exit status: 3");
}

/// Blocking queries (`?index=&wait=`): index 0 answers at once; a query at
/// the current index waits its wait out and answers the same index; a write
/// (or a health change, for a service) wakes it early; after a restore the
/// index comes back lower, which tells the caller to reset.
#[tokio::test]
async fn blocking_queries_wake_on_change_and_time_out() {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    let consul = std::sync::Arc::new(
        ConsulRegistry::new(&server.url(), None, Duration::from_secs(5)).unwrap(),
    );
    consul.kv_put("app/color", b"blue").await.unwrap();
    let key = Dependency::Key("app/color".into());

    let now = consul
        .wait_for_change(&key, 0, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(now, server.index());

    let asked = std::time::Instant::now();
    let same = consul
        .wait_for_change(&key, now, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(same, now, "nothing changed");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "answered after {:?}, before its wait ended",
        asked.elapsed()
    );

    // Woken by a write long before its 60 s wait ends (whether the write
    // lands before or after the query arrives, the answer is the new index).
    for (dep, change) in [
        (key.clone(), "write"),
        (Dependency::Service("books-ms-blue".into()), "health"),
    ] {
        let from = server.index();
        let waiting = tokio::spawn({
            let (consul, dep) = (consul.clone(), dep.clone());
            async move {
                consul
                    .wait_for_change(&dep, from, Duration::from_secs(60))
                    .await
            }
        });
        match change {
            "write" => server.put("app/color", "green"),
            _ => server.set_check("prod:books-ms-blue:8080", "critical"),
        }
        let woke = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("a {change} did not wake the query on {dep}"))
            .unwrap()
            .unwrap();
        assert!(woke > from, "{change}: {from} then {woke}");
    }

    let before = server.index();
    server.reset_index(1);
    server.put("app/color", "red");
    let after = consul
        .wait_for_change(&key, before, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(after < before, "the index went back: {before} then {after}");
}
