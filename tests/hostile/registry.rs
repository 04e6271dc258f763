//! Hostile plugins: the registry (KV, catalog) on both backends, runner's own
//! records in it, and hooks. Keys and names that a backend would resolve
//! outside the grant (`..`, escapes, empty segments), instance IDs that
//! belong to another service, writes to where runner keeps its history and
//! promotion gate, and a caller overriding a hook's configured settings.

use crate::common::consul::ConsulServer;
use crate::common::hostile::{Calls, Verdict, exec, toml_str};
use crate::common::{Env, Exec, Output, plugin, run, unique};

/// One test's registry: the embedded store of its env, or a Consul server.
struct Registry {
    env: Env,
    consul: Option<ConsulServer>,
}

impl Registry {
    fn new(consul: bool) -> Self {
        Self {
            env: Env::new(),
            consul: consul.then(|| ConsulServer::start(None)),
        }
    }

    fn runner(&self) -> assert_cmd::Command {
        let mut cmd = self.env.runner();
        match &self.consul {
            Some(c) => cmd.env("CONSUL_HTTP_ADDR", c.url()),
            None => cmd.env_remove("CONSUL_HTTP_ADDR"),
        };
        cmd
    }

    /// `cmd` against this registry.
    fn with_backend(&self, mut cmd: Exec) -> Exec {
        match &self.consul {
            Some(c) => cmd.env("CONSUL_HTTP_ADDR", c.url()),
            None => cmd.env_remove("CONSUL_HTTP_ADDR"),
        };
        cmd
    }

    fn hostile(&self, calls: &Calls) -> Exec {
        self.with_backend(exec(&self.env, calls))
    }

    fn put(&self, key: &str, value: &str) {
        run(self.runner().args(["kv", "put", key, value])).expect_code(0);
    }

    /// `(value, modify index)` of `key`, as the operator's CLI reads it.
    fn get(&self, key: &str) -> Option<(String, String)> {
        let out = run(self.runner().args(["kv", "get", "--detailed", key]));
        if out.code != 0 {
            return None;
        }
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}\t")))
                .unwrap_or_default()
                .to_string()
        };
        Some((field("value"), field("modify_index")))
    }

    fn catalog(&self, service: &str) -> String {
        run(self.runner().args(["catalog", "list", service]))
            .expect_code(0)
            .stdout
    }
}

/// Keys outside the grammar (each starting with the granted `books-ms/`, or
/// empty): `.`/`..` segments, empty segments, escapes, `\`, `?`, `#`,
/// control characters.
const BAD_KEYS: &[&str] = &[
    "",
    "books-ms/./x",
    "books-ms/.",
    "books-ms/..",
    "books-ms/../other/secret",
    "books-ms//x",
    "books-ms/x//",
    "books-ms/%2e%2e/other/secret",
    "books-ms/..%2fother/secret",
    "books-ms/%41",
    "books-ms\\..\\other\\secret",
    "books-ms/x?recurse",
    "books-ms/x?cas=0",
    "books-ms/x#y",
    "books-ms/x{nul}",
    "books-ms/x{nl}y",
    "books-ms/x{esc}",
    "books-ms/x{del}",
];

/// Prefixes a list would resolve outside `books-ms/`.
const BAD_PREFIXES: &[&str] = &[
    "books-ms/../other/",
    "books-ms/%2e%2e/other/",
    "books-ms/..%2fother/",
    "books-ms/../",
];

fn kv_keys_are_checked(consul: bool) {
    let r = Registry::new(consul);
    for (k, v) in [
        ("books-ms/a", "1"),
        ("books-ms/b/c", "2"),
        ("books-ms-evil/x", "3"),
        ("other/secret", "s3cret"),
    ] {
        r.put(k, v);
    }
    let before = r.get("other/secret").expect("seeded");
    let mut calls = Calls::new().call("list-granted", "kv.list", &[("prefix", "books-ms/")]);
    for (i, key) in BAD_KEYS.iter().enumerate() {
        calls = calls
            .call(&format!("get-{i}"), "kv.get", &[("key", key)])
            .call(
                &format!("put-{i}"),
                "kv.put",
                &[("key", key), ("value", "pwned")],
            )
            .call(
                &format!("cas-{i}"),
                "kv.cas",
                &[("key", key), ("value", "pwned"), ("index", &before.1)],
            )
            .call(&format!("delete-{i}"), "kv.delete", &[("key", key)]);
    }
    for (i, prefix) in BAD_PREFIXES.iter().enumerate() {
        calls = calls.call(&format!("list-{i}"), "kv.list", &[("prefix", prefix)]);
    }
    let out = run(r.hostile(&calls).allow_kv("books-ms/")).expect_code(0);
    let mut v = Verdict::new(&out);

    let listed = out.output("list-granted.keys").unwrap_or_default();
    v.check(
        listed == "books-ms/a,books-ms/b/c",
        format!("a list of books-ms/ returned {listed:?}"),
    );
    for i in 0..BAD_KEYS.len() {
        for op in ["get", "put", "cas", "delete"] {
            v.refused(&format!("{op}-{i}"), "invalid-config", &["kv: key"]);
        }
    }
    for i in 0..BAD_PREFIXES.len() {
        v.refused_as(
            &format!("list-{i}"),
            &["invalid-config", "denied"],
            &["kv:"],
        );
    }
    v.check(
        !out.stdout.contains("s3cret"),
        "the secret leaked to the plugin",
    );
    let after = r.get("other/secret");
    v.check(
        after.as_ref() == Some(&before),
        format!("other/secret was {before:?}, is now {after:?}"),
    );
    v.finish();
}

#[test]
fn kv_keys_outside_the_grammar_are_invalid_config_embedded() {
    kv_keys_are_checked(false);
}

#[test]
fn kv_keys_outside_the_grammar_are_invalid_config_consul() {
    kv_keys_are_checked(true);
}

fn catalog_names_are_checked(consul: bool) {
    let r = Registry::new(consul);
    // The victim: payments' own instance, registered under its own grant.
    let seed = Calls::new().call(
        "reg",
        "catalog.register",
        &[("service", "payments"), ("id", "pay-1"), ("port", "8080")],
    );
    let out = run(r.hostile(&seed).allow_service("payments")).expect_code(0);
    assert_eq!(out.answer("reg"), "ok");

    let long_id = "x".repeat(257);
    let bad_services = [
        "books-ms-x/../payments",
        "books-ms-x/%2e%2e/payments",
        "books-ms-x%2f..%2fpayments",
        "books-ms-x/y",
        "books-ms-x y",
        "books-ms-x?passing",
        "books-ms-x#y",
        "books-ms-x{nul}",
    ];
    let bad_ids = [
        "",
        "../pay-1",
        "x/../pay-1",
        "x/y",
        "x y",
        "x?y",
        "x#y",
        "x%2f..",
        "-x",
        "x{nul}",
        long_id.as_str(),
    ];
    let mut calls = Calls::new();
    for (i, s) in bad_services.iter().enumerate() {
        calls = calls
            .call(
                &format!("reg-svc-{i}"),
                "catalog.register",
                &[("service", s), ("id", "books-ms-x-1")],
            )
            .call(
                &format!("instances-{i}"),
                "catalog.instances",
                &[("service", s)],
            )
            .call(
                &format!("dereg-svc-{i}"),
                "catalog.deregister",
                &[("service", s), ("id", "pay-1")],
            );
    }
    for (i, id) in bad_ids.iter().enumerate() {
        calls = calls
            .call(
                &format!("reg-id-{i}"),
                "catalog.register",
                &[("service", "books-ms-x"), ("id", id)],
            )
            .call(
                &format!("dereg-id-{i}"),
                "catalog.deregister",
                &[("service", "books-ms-x"), ("id", id)],
            );
    }
    calls = calls
        .call(
            "steal",
            "catalog.register",
            &[("service", "books-ms-x"), ("id", "pay-1"), ("port", "6666")],
        )
        .call(
            "evict",
            "catalog.deregister",
            &[("service", "books-ms-x"), ("id", "pay-1")],
        );
    let out = run(r.hostile(&calls).allow_service("books-ms-*")).expect_code(0);
    let mut v = Verdict::new(&out);

    for i in 0..bad_services.len() {
        for op in ["reg-svc", "instances", "dereg-svc"] {
            v.refused(&format!("{op}-{i}"), "invalid-config", &[]);
        }
    }
    for i in 0..bad_ids.len() {
        for op in ["reg-id", "dereg-id"] {
            v.refused(&format!("{op}-{i}"), "invalid-config", &[]);
        }
    }
    v.refused("steal", "conflict", &["belongs to", "pay-1"]);
    let evict = out.answer("evict");
    v.check(
        evict.starts_with("conflict: ")
            || (evict == "ok" && out.output("evict.existed").as_deref() == Some("false")),
        format!(
            "deregistering another service's instance: {evict}, existed={:?}",
            out.output("evict.existed")
        ),
    );

    let payments = r.catalog("payments");
    v.check(
        payments.contains("payments\tpay-1\t127.0.0.1:8080"),
        format!(
            "payments lost its instance: {}",
            payments.replace('\n', " | ")
        ),
    );
    let attacker = r.catalog("books-ms-x");
    v.check(
        !attacker.contains("pay-1"),
        format!("the attacker took pay-1: {}", attacker.replace('\n', " | ")),
    );
    v.finish();
}

#[test]
fn catalog_names_and_ids_are_checked_embedded() {
    catalog_names_are_checked(false);
}

#[test]
fn catalog_names_and_ids_are_checked_consul() {
    catalog_names_are_checked(true);
}

fn runner_records_are_reserved(consul: bool) {
    let r = Registry::new(consul);
    // A real run first, so runner's own records exist wherever it keeps them.
    let file = probe_pipeline(&r, "noop");
    run(r.runner().arg("run").arg(&file)).expect_code(0);

    let keys = [
        "_runner/x",
        "_runner/history/books-ms/9999999999999",
        "_runner/paused/books-ms",
        "_runner/",
    ];
    let mut calls = Calls::new();
    for (i, key) in keys.iter().enumerate() {
        calls = calls
            .call(&format!("get-{i}"), "kv.get", &[("key", key)])
            .call(&format!("delete-{i}"), "kv.delete", &[("key", key)])
            .call(&format!("list-{i}"), "kv.list", &[("prefix", key)])
            .call(
                &format!("put-{i}"),
                "kv.put",
                &[("key", key), ("value", "forged")],
            )
            .call(
                &format!("cas-{i}"),
                "kv.cas",
                &[("key", key), ("value", "forged"), ("index", "0")],
            );
    }
    calls = calls
        .call("list-underscore", "kv.list", &[("prefix", "_")])
        .call("list-all", "kv.list", &[("prefix", "")]);
    let out = run(r.hostile(&calls).allow_kv("*")).expect_code(0);
    let mut v = Verdict::new(&out);
    for i in 0..keys.len() {
        for op in ["get", "delete", "list", "put", "cas"] {
            v.refused(&format!("{op}-{i}"), "denied", &["reserved"]);
        }
    }
    // Wider lists may be refused, or leave runner's records out.
    for label in ["list-underscore", "list-all"] {
        let answer = out.answer(label);
        let keys = out.output(&format!("{label}.keys")).unwrap_or_default();
        v.check(
            answer.starts_with("denied: ")
                || (answer == "ok" && !keys.split(',').any(|k| k.starts_with("_runner/"))),
            format!("{label}: {answer}, keys {keys}"),
        );
    }
    for key in keys {
        v.check(r.get(key).is_none(), format!("{key} was written"));
    }
    v.finish();
}

/// A pipeline for `books-ms` whose one stage, `deploy`, is the sandbox probe in `mode`.
fn probe_pipeline(r: &Registry, mode: &str) -> std::path::PathBuf {
    let file = r.env.path().join("runner.toml");
    std::fs::write(
        &file,
        format!(
            "service = \"books-ms\"\n\n[[stages]]\nname = \"deploy\"\nplugin = {}\nconfig = {{ mode = \"{mode}\" }}\ngrants = {{ kv = [\"books-ms/\"], http = [\"http://127.0.0.1:9\"], containers = [\"books-ms-none\"] }}\n",
            toml_str(plugin("sandbox-probe").to_str().unwrap())
        ),
    )
    .unwrap();
    file
}

#[test]
fn runner_records_are_reserved_embedded() {
    runner_records_are_reserved(false);
}

#[test]
fn runner_records_are_reserved_consul() {
    runner_records_are_reserved(true);
}

/// A stage granted `books-ms/` writes where runner used to keep the history
/// and the promotion gate (`books-ms/runner/...`); neither `runner history`
/// nor `runner promote` may believe it.
fn old_record_locations_cannot_forge_a_deploy(consul: bool) {
    let r = Registry::new(consul);
    let forged_record = r#"{"id":"9999999999999","kind":"run","started_at":"2026-01-01T00:00:00Z","user":"admin","host":"ci","version":"forged/evil:666","color":"blue","outcome":"succeeded","duration_ms":1,"stages":[]}"#;
    let forged_pause = r#"{"record":"9999999999999","stage":"deploy","outputs":{"build.image":"forged/evil:666"}}"#;
    let calls = Calls::new()
        .call(
            "history",
            "kv.put",
            &[
                ("key", "books-ms/runner/history/9999999999999"),
                ("value", forged_record),
            ],
        )
        .call(
            "paused",
            "kv.put",
            &[("key", "books-ms/runner/paused"), ("value", forged_pause)],
        );
    let attack = run(r
        .hostile(&calls)
        .args(["--service", "books-ms", "--allow-kv", "books-ms/"]))
    .expect_code(0);
    let mut v = Verdict::new(&attack);

    let history = run(r.runner().args(["history", "books-ms"]));
    let json = run(r.runner().args(["history", "books-ms", "--json"]));
    for out in [&history, &json] {
        v.check(
            !out.stdout.contains("forged"),
            format!("runner history shows the forged deploy: {}", out.stdout),
        );
    }

    // The pipeline the gate would resume: a deploy stage that shows its inputs.
    let file = probe_pipeline(&r, "echo");
    let status = run(r.runner().args(["status", "books-ms", "-f"]).arg(&file));
    v.check(
        !status.stdout.contains("waiting at stage deploy"),
        format!(
            "runner status shows the forged promotion gate: {}",
            status.stdout.replace('\n', " | ")
        ),
    );
    let promote = run(r.runner().args(["promote", "books-ms", "-f"]).arg(&file));
    v.check(
        !promote.stdout.contains("forged") && !promote.stderr.contains("forged/evil:666"),
        format!(
            "runner promote resumed the forged gate (exit {}), the deploy stage got build.image=forged/evil:666",
            promote.code
        ),
    );
    v.check(
        promote.code != 0,
        "runner promote succeeded though nothing was paused",
    );
    v.finish();
}

#[test]
fn old_record_locations_cannot_forge_a_deploy_embedded() {
    old_record_locations_cannot_forge_a_deploy(false);
}

#[test]
fn old_record_locations_cannot_forge_a_deploy_consul() {
    old_record_locations_cannot_forge_a_deploy(true);
}

/// `[hooks.peek]`: the hostile guest reading the key its config names.
fn hook_file(r: &Registry, overridable: Option<&str>) -> std::path::PathBuf {
    let hook = Calls::new().call("read", "kv.get", &[("key", "public/x")]);
    let file = r.env.path().join("hooks.toml");
    let mut text = format!(
        "[hooks.peek]\nplugin = {}\nconfig = {}\ngrants = {{ kv = [\"secret/\"] }}\n",
        toml_str(plugin("hostile").to_str().unwrap()),
        hook.toml()
    );
    if let Some(list) = overridable {
        text.push_str(&format!("overridable = {list}\n"));
    }
    std::fs::write(&file, text).unwrap();
    file
}

fn call_hook(r: &Registry, file: &std::path::Path, config: &str) -> Output {
    let calls = Calls::new().call("h", "hooks.run", &[("name", "peek"), ("config", config)]);
    let mut cmd = r.hostile(&calls);
    cmd.arg("-f").arg(file).args(["--allow-hook", "peek"]);
    run(&mut cmd).expect_code(0)
}

#[test]
fn a_caller_cannot_override_a_hooks_configured_settings() {
    let r = Registry::new(false);
    let secret = format!("TOPSECRET-{}", unique());
    r.put("secret/y", &secret);

    // No `overridable`: the caller may set nothing.
    let file = hook_file(&r, None);
    let out = call_hook(&r, &file, "arg.read.key=secret/y");
    let mut v = Verdict::new(&out);
    v.check(
        !out.stdout.contains(&secret),
        "the hook returned secret/y to its caller",
    );
    v.refused("h", "denied", &["overridable"]);
    v.finish();

    // `overridable = ["base_url"]`: that key may be set, the others still not.
    let file = hook_file(&r, Some(r#"["base_url"]"#));
    let out = call_hook(&r, &file, "base_url=http://127.0.0.1:9");
    assert_eq!(out.answer("h"), "ok");
    let out = call_hook(
        &r,
        &file,
        "base_url=http://127.0.0.1:9,arg.read.key=secret/y",
    );
    let mut v = Verdict::new(&out);
    v.check(
        !out.stdout.contains(&secret),
        "the hook returned secret/y to its caller",
    );
    v.refused("h", "denied", &["overridable"]);
    v.finish();
}

/// One raw HTTP/1.1 request, the target sent exactly as given (an HTTP
/// client would resolve `..` itself): `(status, Location, body)`.
fn raw_http(port: u16, method: &str, target: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, location, body.to_string())
}

/// The Consul test server resolves paths as Consul's Go HTTP server does, so
/// it cannot hide a traversal: decoded, then a non-clean path redirected.
#[test]
fn the_consul_test_server_resolves_paths_as_consul_does() {
    let consul = ConsulServer::start(None);
    consul.put("other/secret", "s3cret");
    consul.put("books-ms/A", "a");
    let port = consul.port;
    let get = |target: &str| raw_http(port, "GET", target, "");

    for (target, location) in [
        ("/v1/kv/books-ms/../other/secret", "/v1/kv/other/secret"),
        (
            "/v1/kv/books-ms/%2e%2e/other/secret?raw",
            "/v1/kv/other/secret?raw",
        ),
        ("/v1/kv/books-ms/..%2fother/secret", "/v1/kv/other/secret"),
        ("/v1/kv/books-ms/./x", "/v1/kv/books-ms/x"),
        ("/v1/kv/books-ms//x", "/v1/kv/books-ms/x"),
        ("/v1/kv/books-ms/../../../v1/kv/other/", "/v1/kv/other/"),
    ] {
        let (status, to, _) = get(target);
        assert_eq!((status, to.as_str()), (301, location), "GET {target}");
    }
    // Following the redirect reads the other key, as it would on Consul.
    assert_eq!(get("/v1/kv/other/secret?raw").2, "s3cret");
    // Decoded, not redirected: `%41` is `A`; a trailing slash stays.
    assert_eq!(
        get("/v1/kv/books-ms/%41?raw"),
        (200, String::new(), "a".into())
    );
    assert_eq!(get("/v1/kv/books-ms/?keys").0, 200);
    assert_eq!(get("/v1/kv/books-ms/%zz").0, 400);

    // A PUT through `..` is redirected before anything is written...
    let (status, to, _) = raw_http(port, "PUT", "/v1/kv/books-ms/../other/secret", "pwned");
    assert_eq!((status, to.as_str()), (301, "/v1/kv/other/secret"));
    assert_eq!(get("/v1/kv/other/secret?raw").2, "s3cret");
    // ...and lands on other/secret for a client that repeats the PUT at the
    // new location (curl -X PUT -L; Go's and reqwest's clients turn a 301'd
    // PUT into a GET without the body instead).
    let (status, _, answer) = raw_http(port, "PUT", &to, "pwned");
    assert_eq!((status, answer.as_str()), (200, "true"));
    assert_eq!(get("/v1/kv/other/secret?raw").2, "pwned");
}

/// `--allow-http 'http://127.0.0.1:*'` (what the shipped examples grant, since
/// services publish random ports) must not open runner's own Consul: a plugin
/// reaching it directly would bypass every kv and catalog grant.
#[test]
fn an_http_grant_does_not_reach_runners_own_consul() {
    let registry = Registry::new(true);
    let consul = registry.consul.as_ref().expect("consul");
    registry.put("other/secret", "s3cret");
    let port = consul
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for url in [
        format!("http://127.0.0.1:{port}/v1/kv/other/secret?raw"),
        format!("http://localhost:{port}/v1/kv/other/secret?raw"),
    ] {
        let out = run(registry
            .with_backend(registry.env.probe("http-get"))
            .args([
                "--allow-http",
                "http://127.0.0.1:*",
                "--allow-http",
                "http://localhost:*",
            ])
            .args(["--config", &format!("url={url}")]));
        let out = out.expect_code(1).stderr_has("runner's own registry");
        assert!(!out.stdout.contains("s3cret"), "{url}: {}", out.stdout);
        assert!(!out.stderr.contains("s3cret"), "{url}: {}", out.stderr);
    }
}

/// `runner:<container>:<port>` IDs are the ones the host gives the containers
/// it registers: a plugin taking one first would block another service's
/// registration (or shadow it in the catalog's reconcile).
#[test]
fn the_hosts_instance_ids_are_not_a_plugins() {
    for consul in [false, true] {
        let r = Registry::new(consul);
        let calls = Calls::new()
            .call(
                "register",
                "catalog.register",
                &[("id", "runner:payments-blue:8080"), ("service", "books-ms")],
            )
            .call(
                "deregister",
                "catalog.deregister",
                &[("id", "runner:payments-blue:8080"), ("service", "books-ms")],
            );
        let out = run(r.hostile(&calls).allow_service("books-ms")).expect_code(0);
        let mut v = Verdict::new(&out);
        v.refused("register", "invalid-config", &["reserved"]);
        v.refused("deregister", "invalid-config", &["reserved"]);
        v.check(
            !r.catalog("books-ms").contains("runner:"),
            "the plugin registered a host ID",
        );
        v.finish();
    }
}
