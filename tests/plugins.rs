//! The shipped plugins, run by `runner exec` as users run them: the Rust
//! integration-test stage and the Python color stage.

use crate::common;

use crate::common::{Env, Exec, HttpServer, plugin, run};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

fn books_service() -> HttpServer {
    HttpServer::start(|method, url| match (method, url) {
        ("GET", "/health") => (200, vec![], "ok".into()),
        ("GET", "/api/v1/books") => (
            200,
            vec![],
            r#"[{"_id":1,"title":"Continuous Deployment"}]"#.into(),
        ),
        ("GET", "/broken") => (500, vec![], "boom".into()),
        _ => (404, vec![], "not found".into()),
    })
}

fn integration_test(env: &Env, server: &HttpServer) -> Exec {
    let mut cmd = env.exec(plugin("integration-test"));
    cmd.allow_http(&server.url())
        .config("base_url", server.url());
    cmd
}

/// (tests, failures, [(name, failed)]) from a JUnit report, validating its shape.
fn junit(path: &std::path::Path) -> (u32, u32, Vec<(String, bool)>) {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("report is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suite = root
        .children()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a testsuite");
    let attr = |n: &str| {
        suite
            .attribute(n)
            .unwrap_or_else(|| panic!("testsuite@{n}"))
            .parse::<u32>()
            .unwrap()
    };
    let cases = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            (
                c.attribute("name").unwrap().to_string(),
                c.children().any(|f| f.has_tag_name("failure")),
            )
        })
        .collect();
    (attr("tests"), attr("failures"), cases)
}

#[test]
fn integration_test_passes_against_a_healthy_service_and_writes_junit() {
    let env = Env::new();
    let server = books_service();
    let reports = env.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let out = run(integration_test(&env, &server)
        .allow_dir(format!("{}:/reports:rw", reports.display()))
        .args([
            "-c",
            "check.health=GET /health 200",
            "-c",
            "check.books=GET /api/v1/books 200 \"Continuous Deployment\"",
        ])
        .args(["-c", "report=/reports/junit.xml"]))
    .expect_code(0)
    .stderr_has("2 checks passed");
    assert_eq!(out.output("passed").as_deref(), Some("2"));
    let (tests, failures, cases) = junit(&reports.join("junit.xml"));
    assert_eq!((tests, failures), (2, 0));
    assert_eq!(
        cases,
        vec![("health".to_string(), false), ("books".to_string(), false)]
    );
}

#[test]
fn integration_test_fails_naming_the_check_and_reports_it() {
    let env = Env::new();
    let server = books_service();
    let reports = env.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    run(integration_test(&env, &server)
        .allow_dir(format!("{}:/reports:rw", reports.display()))
        .args([
            "-c",
            "check.health=GET /health 200",
            "-c",
            "check.broken=GET /broken 200",
            "-c",
            "check.title=GET /api/v1/books 200 nope",
        ])
        .args([
            "-c",
            "retry_for=300ms",
            "-c",
            "interval=50ms",
            "-c",
            "report=/reports/junit.xml",
        ]))
    .expect_code(1)
    .stderr_has("2 of 3 checks failed")
    .stderr_has("broken (GET /broken")
    .stderr_has("expected status 200, got 500")
    .stderr_has("title (GET /api/v1/books")
    .stderr_has("does not contain \"nope\"");
    let (tests, failures, cases) = junit(&reports.join("junit.xml"));
    assert_eq!((tests, failures), (3, 2));
    assert_eq!(
        cases,
        vec![
            ("health".to_string(), false),
            ("broken".to_string(), true),
            ("title".to_string(), true)
        ]
    );
}

#[test]
fn integration_test_retries_until_the_service_is_up() {
    let env = Env::new();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    // Fails its first three health checks, as a container still starting would.
    let server = HttpServer::start(move |_, _| {
        if counter.fetch_add(1, Ordering::SeqCst) < 3 {
            (503, vec![], "starting".into())
        } else {
            (200, vec![], "ok".into())
        }
    });
    run(integration_test(&env, &server).args([
        "-c",
        "check.health=GET /health 200",
        "-c",
        "interval=20ms",
        "-c",
        "retry_for=20s",
    ]))
    .expect_code(0);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// The requests `server` saw, by path, from a handler counting them.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A service whose books endpoint answers 500 and whose `/slow` answers only
/// after `slow` (past the request timeout the tests set: no response).
fn failing_service(slow: std::time::Duration) -> (HttpServer, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let server = HttpServer::start(move |_, url| {
        log.lock().unwrap().push(url.to_string());
        match url {
            "/slow" => {
                std::thread::sleep(slow);
                (200, vec![], "late".into())
            }
            _ => (500, vec![], "boom".into()),
        }
    });
    (server, seen)
}

fn count(seen: &Seen, path: &str) -> usize {
    seen.lock().unwrap().iter().filter(|p| *p == path).count()
}

/// Behind the proxy the service already serves users: with
/// `retry=connection` the first wrong answer fails the stage, where the
/// default `retry=any` keeps asking until `retry_for`.
#[test]
fn integration_test_with_retry_connection_fails_at_the_first_wrong_answer() {
    let env = Env::new();
    let (server, seen) = failing_service(std::time::Duration::ZERO);
    // A `retry_for` far longer than the test: only not retrying ends it soon.
    run(integration_test(&env, &server).args([
        "-c",
        "check.books=GET /api/v1/books 200",
        "-c",
        "retry=connection",
        "-c",
        "retry_for=60s",
        "-c",
        "interval=20ms",
    ]))
    .expect_code(1)
    .stderr_has("1 of 1 checks failed: books (GET /api/v1/books")
    .stderr_has("expected status 200, got 500 after 1 attempt(s) (not retried: retry=connection)");
    assert_eq!(
        count(&seen, "/api/v1/books"),
        1,
        "{:?}",
        seen.lock().unwrap()
    );

    // The default retries the same answer.
    seen.lock().unwrap().clear();
    run(integration_test(&env, &server).args([
        "-c",
        "check.books=GET /api/v1/books 200",
        "-c",
        "retry_for=300ms",
        "-c",
        "interval=20ms",
    ]))
    .expect_code(1)
    .stderr_has("expected status 200, got 500");
    assert!(
        count(&seen, "/api/v1/books") > 1,
        "retry=any did not retry: {:?}",
        seen.lock().unwrap()
    );
}

/// `retry=connection` still retries a request that got no response (nothing
/// listens yet, or no answer in time); once a check has been answered
/// wrongly, the checks after it get one attempt each.
#[test]
fn integration_test_with_retry_connection_retries_only_missing_responses() {
    let env = Env::new();
    // Nothing listens on the port: refused on every attempt, retried.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let out = run(env
        .exec(plugin("integration-test"))
        .allow_http(&closed)
        .config("base_url", &closed)
        .args([
            "-c",
            "check.health=GET /health 200",
            "-c",
            "retry=connection",
            "-c",
            "retry_for=500ms",
            "-c",
            "interval=20ms",
        ]))
    .expect_code(1)
    .stderr_has("unavailable: http: cannot connect");
    let attempts: u32 = out
        .stderr
        .split(" attempt(s)")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count in:\n{}", out.stderr));
    assert!(attempts > 1, "a refused connection was not retried");

    // After a wrong answer the stage has failed: the check after it gets one
    // attempt, though a timeout would otherwise be retried for `retry_for`.
    let (server, seen) = failing_service(std::time::Duration::from_millis(400));
    run(integration_test(&env, &server).args([
        "-c",
        "check.books=GET /api/v1/books 200",
        "-c",
        "check.slow=GET /slow 200",
        "-c",
        "retry=connection",
        "-c",
        "retry_for=60s",
        "-c",
        "interval=20ms",
        "-c",
        "request_timeout=100ms",
    ]))
    .expect_code(1)
    .stderr_has("2 of 2 checks failed")
    .stderr_has("slow (GET /slow")
    .stderr_has("timeout: http:");
    assert_eq!(
        count(&seen, "/api/v1/books"),
        1,
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(count(&seen, "/slow"), 1, "{:?}", seen.lock().unwrap());
}

#[test]
fn integration_test_config_errors_name_the_setting() {
    let env = Env::new();
    let server = books_service();
    run(&mut env.exec(plugin("integration-test")))
        .expect_code(1)
        .stderr_has("invalid config: missing setting `base_url`");
    run(&mut integration_test(&env, &server))
        .expect_code(1)
        .stderr_has("no checks configured");
    run(integration_test(&env, &server).args(["-c", "check.x=GET health 200"]))
        .expect_code(1)
        .stderr_has("the path must start with /");
    run(integration_test(&env, &server).args([
        "-c",
        "check.x=GET /health 200",
        "-c",
        "retry=sometimes",
    ]))
    .expect_code(1)
    .stderr_has("retry=\"sometimes\": expected `any`");
}

#[test]
fn integration_test_without_the_http_grant_is_denied() {
    let env = Env::new();
    let server = books_service();
    env.exec(plugin("integration-test"))
        .config("base_url", server.url())
        .config("check.h", "GET /health 200")
        .config("retry_for", "100ms")
        .run()
        .expect_code(1)
        .stderr_has("denied: http: origin");
}

fn color(env: &Env, commit: bool) -> common::Output {
    let mut cmd = env.exec(plugin("color"));
    cmd.service("books-ms").allow_kv("books-ms/");
    if commit {
        cmd.config("commit", "true");
    }
    cmd.run()
}

#[test]
fn python_color_stage_alternates_blue_green_and_commits_with_cas() {
    let env = Env::new();
    let first = color(&env, false).expect_code(0);
    assert_eq!(first.output("next").as_deref(), Some("blue"));
    assert_eq!(first.output("current").as_deref(), Some(""));
    run(env.runner().args(["kv", "get", "books-ms/color"])).expect_code(1);

    for expected in ["blue", "green", "blue"] {
        let out = color(&env, true).expect_code(0);
        assert_eq!(out.output("next").as_deref(), Some(expected));
        assert_eq!(
            run(env.runner().args(["kv", "get", "books-ms/color"]))
                .stdout
                .trim(),
            expected
        );
    }
}

#[test]
fn python_color_stage_errors_are_typed() {
    let env = Env::new();
    run(env.exec(plugin("color")).service("books-ms"))
        .expect_code(1)
        .stderr_has("denied: kv: get of key \"books-ms/color\"")
        .stderr_has("--allow-kv books-ms/");
    run(env.runner().args(["kv", "put", "books-ms/color", "purple"])).expect_code(0);
    color(&env, true)
        .expect_code(1)
        .stderr_has("invalid config: books-ms/color holds 'purple'");
    assert_eq!(
        run(env.runner().args(["kv", "get", "books-ms/color"]))
            .stdout
            .trim(),
        "purple"
    );
}

/// `runner exec --plugin NAME` finds NAME.wasm (or Cargo's NAME_WITH_UNDERSCORES.wasm)
/// on the plugin path, as a pipeline stage's `plugin` does; a name found
/// nowhere is a usage error naming where it looked and how to add a directory.
#[test]
fn exec_finds_a_plugin_by_name_on_the_plugin_path() {
    let env = Env::new();
    let dir = plugin("sandbox-probe").parent().unwrap().to_path_buf();
    run(env
        .runner()
        .args(["exec", "--plugin", "sandbox-probe", "--plugin-path"])
        .arg(&dir)
        .args(["--config", "mode=echo", "--config", "who=named"]))
    .expect_code(0)
    .stdout_has("who=named");
    run(env
        .runner()
        .env_remove("RUNNER_PLUGIN_PATH")
        .args(["exec", "--plugin", "no-such-stage"]))
    .expect_code(2)
    .stderr_has("plugin \"no-such-stage\" not found as no-such-stage.wasm in")
    .stderr_has("--plugin-path DIR");
}
