//! The Consul backend against the API-faithful test server
//! (`tests/common/consul.rs`; no real Consul can be installed here): what
//! plugins and commands get through Consul, and what only Consul does (ACL
//! tokens, health checks, sessions, index resets). The registry contract
//! both backends keep runs in `registry/contract.rs`.

use crate::common::consul::ConsulServer;
use crate::common::{Env, plugin, run};
use runner::registry::{Catalog, Dependency, DeployLocks, Instance, KvStore, LockAttempt, Watch};
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
    server
        .registry()
        .register(&Instance {
            id: "prod:books-ms-blue:8080".into(),
            name: "books-ms-blue".into(),
            address: "10.100.198.201".into(),
            port: 32769,
            tags: vec![],
            ..Instance::default()
        })
        .await
        .unwrap();
}

/// Consul's health comes from the instance's check, not from what was
/// registered: a failing check marks the instance unhealthy.
#[tokio::test]
async fn health_follows_the_service_check() {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    let consul = server.registry();
    assert!(consul.instances("books-ms-blue").await.unwrap()[0].healthy());
    server.set_check("prod:books-ms-blue:8080", "critical");
    assert!(!consul.instances("books-ms-blue").await.unwrap()[0].healthy());
}

/// A Consul lock is a session: an operator can break a held one (its
/// session destroyed), unlike the embedded store's file lock.
#[tokio::test]
async fn force_unlock_breaks_a_held_lock() {
    let server = ConsulServer::start(None);
    let consul = server.registry();
    let holder = crate::registry::contract::holder();
    let LockAttempt::Acquired(_held) = consul.try_lock("books-ms", &holder).await.unwrap() else {
        panic!("a free lock is taken")
    };
    assert!(consul.force_unlock("books-ms").await.unwrap());
    assert_eq!(consul.lock_holder("books-ms").await.unwrap(), None);
    let LockAttempt::Acquired(next) = consul.try_lock("books-ms", &holder).await.unwrap() else {
        panic!("a broken lock is free")
    };
    next.release().await.unwrap();
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

/// A Consul server with the seed's blue instance, an env, and the seed's
/// upstream template.
async fn seed_blue_setup() -> (ConsulServer, Env, std::path::PathBuf) {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bluegreen/templates/nginx-upstreams-blue.ctmpl");
    (server, Env::new(), seed)
}

/// `runner template render` as `consul-template -template "in:out:cmd" -once`:
/// the seed's own .ctmpl file renders from Consul data byte for byte, and the
/// command runs only when the output changed.
#[tokio::test]
async fn template_render_command_renders_seed_files_and_runs_the_command_on_change() {
    let (server, env, seed) = seed_blue_setup().await;
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

/// The command line a consul-template user types: single-dash long flags,
/// `-consul-addr` without a scheme (as Consul's docs write addresses), and
/// `-dry`, which prints what would be written and writes nothing.
#[tokio::test]
async fn template_render_takes_consul_template_flags() {
    let (server, env, seed) = seed_blue_setup().await;
    let dest = env.path().join("books-ms.conf");
    let address = server.url().trim_start_matches("http://").to_string();
    let mut cmd = env.runner();
    cmd.env_remove("CONSUL_HTTP_ADDR")
        .args([
            "template",
            "render",
            "-consul-addr",
            &address,
            "-dry",
            "-once",
        ])
        .arg("-template")
        .arg(format!("{}:{}:exit 7", seed.display(), dest.display()));
    run(&mut cmd).expect_code(0).stdout_has(&format!(
        "> {}\nupstream books-ms {{\n \n server 10.100.198.201:32769;\n \n}}\n",
        dest.display()
    ));
    assert!(!dest.exists(), "-dry writes nothing and runs no command");
}

/// Blocking queries beyond the contract (`registry/contract.rs`): a health
/// change wakes a service's query, and after a restore the index comes back
/// lower, which tells the caller to reset.
#[tokio::test]
async fn blocking_queries_wake_on_health_and_see_an_index_reset() {
    let server = ConsulServer::start(None);
    register_seed_blue(&server).await;
    let consul = server.registry();
    consul.kv_put("app/color", b"blue").await.unwrap();

    let service = Dependency::Service("books-ms-blue".into());
    let from = server.index();
    let watch = consul.wait_for_change(&service, from, Duration::from_secs(60));
    let flip = async { server.set_check("prod:books-ms-blue:8080", "critical") };
    let (woke, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(watch, flip) })
            .await
            .expect("a health change did not wake the query");
    let woke = woke.unwrap();
    assert!(woke > from, "{from} then {woke}");

    let before = server.index();
    server.reset_index(1);
    server.put("app/color", "red");
    let after = consul
        .wait_for_change(
            &Dependency::Key("app/color".into()),
            before,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(after < before, "the index went back: {before} then {after}");
}
