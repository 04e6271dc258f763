//! The sandbox: limits, default-deny grants, and clear errors for files that
//! are not runner stages. Every test runs the real `runner` binary.

use crate::common::{Env, HttpServer, RunnerFile, plugin, run};

#[test]
fn infinite_loop_hits_the_deadline() {
    let env = Env::new();
    run(env.probe("loop").deadline("1s"))
        .expect_code(3)
        .stderr_has("plugin sandbox-probe ran past its deadline (1s)");
}

#[test]
fn memory_bomb_hits_the_cap() {
    let env = Env::new();
    run(env.probe("membomb").memory("64MiB"))
        .expect_code(3)
        .stderr_has("plugin sandbox-probe exceeded its memory limit (64 MiB)");
}

#[test]
fn default_memory_limit_is_256_mib() {
    let env = Env::new();
    run(&mut env.probe("membomb"))
        .expect_code(3)
        .stderr_has("exceeded its memory limit (256 MiB)");
}

#[test]
fn panic_is_a_trap_with_the_plugin_stderr_logged() {
    let env = Env::new();
    let out = run(&mut env.probe("panic"))
        .expect_code(3)
        .stderr_has("plugin sandbox-probe trapped: wasm `unreachable`")
        .stderr_has("[sandbox-probe] ")
        .stderr_has("probe asked to panic");
    assert!(
        !out.stderr.contains("error while executing"),
        "{}",
        out.stderr
    );
    // -v adds the wasm backtrace
    run(env.probe("panic").arg("-v"))
        .expect_code(3)
        .stderr_has("wasm backtrace");
}

#[test]
fn stdout_and_stderr_are_logged_with_the_plugin_name() {
    let env = Env::new();
    run(&mut env.probe("print"))
        .expect_code(0)
        .stderr_has("[sandbox-probe] hello from stdout")
        .stderr_has("[sandbox-probe] hello from stderr");
}

#[test]
fn no_environment_and_no_arguments_reach_the_guest() {
    let env = Env::new();
    let out = run(env.probe("env").env("SECRET_TOKEN", "x")).expect_code(0);
    assert_eq!(out.output("vars").as_deref(), Some("0"));
    assert_eq!(out.output("args").as_deref(), Some("0"));
}

#[test]
fn directories_are_invisible_unless_granted_and_read_only_by_default() {
    let env = Env::new();
    let data = env.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file.txt"), "inside").unwrap();
    let host_file = data.join("file.txt").display().to_string();

    // Not granted: the guest has no preopened directory at all.
    run(env.probe("read-file").config("path", &host_file)).expect_code(1);

    // Granted read-only under a guest path.
    let grant = format!("{}:/data", data.display());
    let out = run(env
        .probe("read-file")
        .allow_dir(&grant)
        .config("path", "/data/file.txt"))
    .expect_code(0);
    assert_eq!(out.output("content").as_deref(), Some("inside"));
    run(env
        .probe("write-file")
        .allow_dir(&grant)
        .config("path", "/data/new.txt"))
    .expect_code(1);
    assert!(!data.join("new.txt").exists());

    // Read-write.
    let grant_rw = format!("{}:/data:rw", data.display());
    run(env
        .probe("write-file")
        .allow_dir(&grant_rw)
        .config("path", "/data/new.txt"))
    .expect_code(0);
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).unwrap(),
        "written"
    );

    // `..` cannot climb out of the preopen.
    std::fs::write(env.path().join("secret.txt"), "secret").unwrap();
    run(env
        .probe("read-file")
        .allow_dir(&grant)
        .config("path", "/data/../secret.txt"))
    .expect_code(1);
}

#[test]
fn ungranted_kv_prefix_is_denied_naming_the_grant() {
    let env = Env::new();
    run(env
        .probe("kv-get")
        .allow_kv("other/")
        .config("key", "books-ms/color"))
    .expect_code(1)
    .stderr_has("denied: kv: get of key \"books-ms/color\" is outside the grant")
    .stderr_has("grant it with --allow-kv books-ms/");
    run(env
        .probe("kv-put")
        .allow_kv("books-ms/")
        .config("key", "books-ms/color")
        .config("value", "blue"))
    .expect_code(0);
}

#[test]
fn ungranted_http_origin_is_denied_and_redirects_stay_inside_the_allowlist() {
    let env = Env::new();
    let outside = HttpServer::start(|_, _| (200, vec![], "outside".into()));
    let target = outside.url();
    let inside = HttpServer::start(move |_, url| match url {
        "/hop" => (
            302,
            vec![("Location".into(), format!("{target}/x"))],
            String::new(),
        ),
        _ => (200, vec![], "inside".into()),
    });
    let allow = format!("http://127.0.0.1:{}", inside.port);

    run(env
        .probe("http-get")
        .config("url", format!("{}/ok", inside.url())))
    .expect_code(1)
    .stderr_has(&format!(
        "denied: http: origin {allow} is not in the allowlist; grant it with --allow-http {allow}"
    ));

    let out = run(env
        .probe("http-get")
        .allow_http(&allow)
        .config("url", format!("{}/ok", inside.url())))
    .expect_code(0);
    assert_eq!(out.output("body").as_deref(), Some("inside"));

    run(env
        .probe("http-get")
        .allow_http(&allow)
        .config("url", format!("{}/hop", inside.url())))
    .expect_code(1)
    .stderr_has("denied: http:")
    .stderr_has("leaves the allowlist");
}

#[test]
fn http_response_body_is_capped() {
    let env = Env::new();
    let big = HttpServer::start(|_, _| (200, vec![], "x".repeat(64 * 1024)));
    run(env
        .probe("http-get")
        .allow_http(&big.url())
        .args(["--http-max-body", "16KiB"])
        .config("url", format!("{}/", big.url())))
    .expect_code(1)
    .stderr_has("exceeds the 16.0 KiB cap");
}

#[test]
fn template_output_refuses_parent_components_and_symlink_escapes() {
    let env = Env::new();
    let out_dir = env.path().join("out");
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out_dir.join("link")).unwrap();
    let grant = out_dir.display().to_string();
    let render = |dest: String| {
        env.probe("template")
            .allow_template_out(&grant)
            .config("text", "hello")
            .config("dest", dest)
            .run()
    };

    render(format!("{grant}/../escaped.conf"))
        .expect_code(1)
        .stderr_has("contains `..`");
    render(format!("{grant}/link/escaped.conf"))
        .expect_code(1)
        .stderr_has("leads outside the granted directory");
    assert!(!outside.join("escaped.conf").exists());
    assert!(!env.path().join("escaped.conf").exists());

    let ok = render(format!("{grant}/site.conf")).expect_code(0);
    assert_eq!(ok.output("changed").as_deref(), Some("true"));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("site.conf")).unwrap(),
        "hello"
    );
    let again = render(format!("{grant}/site.conf")).expect_code(0);
    assert_eq!(again.output("changed").as_deref(), Some("false"));

    // Without any output grant the call is denied, naming the flag.
    run(env
        .probe("template")
        .config("text", "x")
        .config("dest", format!("{grant}/a.conf")))
    .expect_code(1)
    .stderr_has("--allow-template-out");
}

#[test]
fn garbage_core_modules_and_other_worlds_are_clear_plugin_faults() {
    let env = Env::new();
    let garbage = env.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    run(&mut env.exec(&garbage))
        .expect_code(3)
        .stderr_has("is not a WebAssembly file");

    let core = env.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    run(&mut env.exec(&core))
        .expect_code(3)
        .stderr_has("is a core WebAssembly module, not a component");

    run(&mut env.exec(plugin("not-a-stage")))
        .expect_code(3)
        .stderr_has("is a component but not a runner stage: it does not export `run`")
        .stderr_has("wasi:cli/run");

    // A component cut short is invalid, not a crash.
    let bytes = std::fs::read(plugin("sandbox-probe")).unwrap();
    let truncated = env.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    run(&mut env.exec(&truncated))
        .expect_code(3)
        .stderr_has("is not a valid component");
}

#[test]
fn usage_and_config_errors_exit_2_naming_the_fix() {
    let env = Env::new();
    run(&mut env.exec("missing.wasm"))
        .expect_code(2)
        .stderr_has("plugin file missing.wasm does not exist");
    run(env.probe("noop").allow_http("localhost"))
        .expect_code(2)
        .stderr_has("invalid --allow-http grant")
        .stderr_has("scheme://host:port");
    run(env.probe("noop").allow_dir("/no/such/dir"))
        .expect_code(2)
        .stderr_has("create it first");
    run(env.probe("noop").deadline("soon")).expect_code(2);
    run(env.probe("noop").lock())
        .expect_code(2)
        .stderr_has("--lock needs --service");
    run(env.runner().args(["exec"]))
        .expect_code(2)
        .stderr_has("--plugin");
}

#[test]
fn grants_file_is_read_and_merged_with_flags() {
    let env = Env::new();
    let file = env.path().join("grants.toml");
    RunnerFile::new().grant("kv", ["books-ms/"]).write_as(&file);
    run(env
        .probe("kv-put")
        .file(&file)
        .config("key", "books-ms/color")
        .config("value", "blue"))
    .expect_code(0);
    RunnerFile::new()
        .grant("kvv", Vec::<String>::new())
        .write_as(&file);
    run(env.probe("noop").arg("--file").arg(&file))
        .expect_code(2)
        .stderr_has("runner file")
        .stderr_has("kvv");
}

#[test]
fn stage_context_reaches_the_plugin() {
    let env = Env::new();
    let out = run(env
        .probe("echo")
        .service("books-ms")
        .input("color.next", "green")
        .arg("--json"))
    .expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(doc["message"], "service=books-ms stage=sandbox-probe");
    assert_eq!(doc["outputs"]["color.next"], "green");
    assert_eq!(doc["outputs"]["mode"], "echo");
}

#[test]
fn inspect_lists_world_imports_and_grants() {
    let env = Env::new();
    let out = run(env
        .runner()
        .args(["plugin", "inspect"])
        .arg(plugin("integration-test")))
    .expect_code(0);
    assert!(
        out.stdout.contains("world:   runner:plugin/stage"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("runner:plugin/http@0.1.4"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("grants it can use: --allow-http ORIGIN"),
        "{}",
        out.stdout
    );
    let out = run(env
        .runner()
        .args(["plugin", "inspect"])
        .arg(plugin("not-a-stage")))
    .expect_code(0);
    assert!(out.stdout.contains("not a runner stage"), "{}", out.stdout);
}

/// A server that answers only after `delay`, to hold a plugin inside a host call.
fn slow_server(delay: std::time::Duration) -> HttpServer {
    HttpServer::start(move |_, _| {
        std::thread::sleep(delay);
        (200, vec![], "late".into())
    })
}

#[test]
fn a_slow_host_call_returns_timeout_to_the_plugin() {
    let env = Env::new();
    let slow = slow_server(std::time::Duration::from_secs(3));
    run(env
        .probe("http-get")
        .allow_http(&slow.url())
        .args(["--host-call-timeout", "300ms"])
        .config("url", format!("{}/", slow.url())))
    .expect_code(1)
    .stderr_has("timeout: http:")
    .stderr_has("did not answer within 300ms");
}

#[test]
fn the_deadline_holds_while_the_plugin_waits_in_a_host_call() {
    let env = Env::new();
    let slow = slow_server(std::time::Duration::from_secs(4));
    run(env
        .probe("http-get")
        .allow_http(&slow.url())
        .deadline("1s")
        .config("url", format!("{}/", slow.url())))
    .expect_code(3)
    .stderr_has("plugin sandbox-probe ran past its deadline (1s)");
}

#[test]
fn stages_that_never_touch_the_registry_leave_no_state_behind() {
    let env = Env::new();
    run(&mut env.probe("noop")).expect_code(0);
    assert!(
        !env.state_dir().exists(),
        "state dir created by a stage that used no registry"
    );
    run(env
        .probe("kv-put")
        .allow_kv("a/")
        .config("key", "a/b")
        .config("value", "c"))
    .expect_code(0);
    assert!(env.state_dir().join("registry.sqlite3").exists());
}
