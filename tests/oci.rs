//! Plugins as OCI artifacts against the real Debian docker-registry on
//! 127.0.0.1: push → pull → run by tag and by digest; reproducible pushes;
//! the lock (moved tag, stale and missing lock under --locked, capability
//! drift); corrupted blobs (store and registry); an ordinary container
//! image given as a plugin; a registry that is down; credentials (htpasswd).
//! The CI image end to end is in `ci_image.rs`.

use crate::common::oci_registry::{PASSWORD, Registry, USER};
use crate::common::{Env, Output, docker_remove, plugin, require_docker, run, unique};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

pub(crate) fn runner(env: &Env, args: &[&str]) -> Output {
    let mut cmd = env.runner();
    cmd.args(args);
    run(&mut cmd)
}

pub(crate) fn push(env: &Env, file: &Path, reference: &str) -> String {
    let out = runner(env, &["plugin", "push", file.to_str().unwrap(), reference]).success();
    let digest = out.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{out:?}"
    );
    digest
}

/// A pipeline of one echo stage run by `plugin`, in the env's directory.
pub(crate) fn pipeline(env: &Env, plugin: &str) -> PathBuf {
    let file = env.path().join("runner.toml");
    std::fs::write(
        &file,
        format!(
            "service = \"svc\"\n\n[[stages]]\nname = \"one\"\nplugin = \"{plugin}\"\nconfig = {{ mode = \"echo\", marker = \"probe\" }}\n"
        ),
    )
    .unwrap();
    file
}

fn curl_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            url,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn push_pull_and_run_by_tag_and_by_digest() {
    let registry = Registry::start();
    let env = Env::new();
    let probe = plugin("sandbox-probe");
    let reference = registry.reference("team/probe:1.0");

    // Reproducible: the same bytes give the same manifest digest.
    let digest = push(&env, &probe, &reference);
    assert_eq!(push(&env, &probe, &reference), digest);

    // The CNCF Wasm layout, as other tools read it.
    let manifest = curl_json(&format!(
        "http://{}/v2/team/probe/manifests/1.0",
        registry.host()
    ));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256_file(&probe).as_str()
    );
    assert_eq!(
        manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "sandbox-probe.wasm"
    );
    let config = curl_json(&format!(
        "http://{}/v2/team/probe/blobs/{}",
        registry.host(),
        manifest["config"]["digest"].as_str().unwrap()
    ));
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    let imports = config["component"]["imports"].as_array().unwrap();
    assert!(
        imports.iter().any(|i| i == "runner:plugin/kv@0.1.4"),
        "{config}"
    );
    assert!(
        !imports.iter().any(|i| i == "pair"),
        "type imports are not capabilities: {config}"
    );

    // Inspect from the config, without the component.
    let out = runner(&env, &["plugin", "inspect", &reference]).success();
    assert!(
        out.stdout.contains(&format!("digest:  {digest}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("runner:plugin/kv@0.1.4") && l.ends_with("--allow-kv PREFIX")),
        "{}",
        out.stdout
    );

    // exec by tag and by digest.
    let mut by_tag = env.exec(&reference);
    by_tag.config("mode", "echo");
    let out = run(&mut by_tag).success();
    assert_eq!(out.output("mode").as_deref(), Some("echo"), "{out:?}");
    let pinned = registry.reference(&format!("team/probe@{digest}"));
    let mut by_digest = env.exec(&pinned);
    by_digest.config("mode", "echo");
    run(&mut by_digest).success();

    // A pipeline stage, by tag; the blob is in the store now.
    let file = pipeline(&env, &reference);
    let out = runner(&env, &["run", file.to_str().unwrap(), "--json"]).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("is not in runner.lock"),
        "{}",
        out.stderr
    );
    let listed = runner(&env, &["plugin", "list"]).success();
    assert!(
        listed.stdout.contains(&reference) && listed.stdout.contains(&digest[..19]),
        "{}",
        listed.stdout
    );

    // The store holds the blob under its digest.
    let blob = env
        .plugin_store()
        .join("blobs/sha256")
        .join(&sha256_file(&probe)["sha256:".len()..]);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(&probe).unwrap()
    );

    // SOURCE_DATE_EPOCH changes the config's time and so the digest.
    let mut cmd = env.runner();
    cmd.args([
        "plugin",
        "push",
        probe.to_str().unwrap(),
        &registry.reference("team/probe:2"),
    ])
    .env("SOURCE_DATE_EPOCH", "1700000000");
    let other = run(&mut cmd).success().stdout.trim().to_string();
    assert_ne!(other, digest);
}

#[test]
fn the_lock_pins_a_moved_tag_and_locked_refuses_a_stale_or_missing_lock() {
    let registry = Registry::start();
    let env = Env::new();
    let reference = registry.reference("team/notify:1.2");
    let probe_digest = push(&env, &plugin("sandbox-probe"), &reference);
    let file = pipeline(&env, &reference);
    let file_arg = file.to_str().unwrap();

    // No lock: --locked refuses, and says how to make one.
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(out.stderr.contains("runner plugin lock"), "{}", out.stderr);

    let out = runner(&env, &["plugin", "lock", file_arg]).success();
    assert!(out.stdout.contains(&probe_digest), "{}", out.stdout);
    let lock_path = env.path().join("runner.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        lock.contains(&format!("digest = \"{probe_digest}\"")),
        "{lock}"
    );

    // The tag moves to another component that imports more (proxy, hooks).
    let moved = push(&env, &plugin("bluegreen"), &reference);
    assert_ne!(moved, probe_digest);

    // run --locked still runs the locked digest: the probe's echo.
    let out = runner(&env, &["run", file_arg, "--locked", "--json"]).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );

    // update shows the drift, and refuses it under --locked, writing nothing.
    let out = runner(&env, &["plugin", "update", "--file", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stdout
            .contains("NEW CAPABILITY runner:plugin/proxy@0.1.4"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("refused (--locked)"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // A lock edited by hand to the new digest, imports unchanged: refused.
    let edited = lock.replace(&probe_digest, &moved);
    std::fs::write(&lock_path, &edited).unwrap();
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr.contains("imports") && out.stderr.contains("which runner.lock does not record"),
        "{}",
        out.stderr
    );
    std::fs::write(&lock_path, &lock).unwrap();

    // A stage the lock does not cover: missing entry.
    let two = registry.reference("team/other:1");
    push(&env, &plugin("sandbox-probe"), &two);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{text}\n[[stages]]\nname = \"two\"\nplugin = \"{two}\"\nconfig = {{ mode = \"noop\" }}\n"),
    )
    .unwrap();
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr.contains(&format!("has no entry for {two}")),
        "{}",
        out.stderr
    );

    // An entry the pipeline no longer uses: stale.
    runner(&env, &["plugin", "lock", file_arg]).success();
    std::fs::write(&file, &text).unwrap();
    let out = runner(&env, &["validate", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr.contains("is stale") && out.stderr.contains(&two),
        "{}",
        out.stderr
    );
    std::fs::write(&lock_path, &lock).unwrap();

    // Accepting the update moves the lock to the new digest and imports.
    let out = runner(&env, &["plugin", "update", "notify", "--file", file_arg]).success();
    assert!(
        out.stdout
            .contains(&format!("{} -> {}", &probe_digest[..19], &moved[..19])),
        "{}",
        out.stdout
    );
    let updated = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        updated.contains(&moved) && updated.contains("runner:plugin/proxy@0.1.4"),
        "{updated}"
    );
}

#[test]
fn corrupted_blobs_never_run_and_the_store_runs_without_the_registry() {
    let mut registry = Registry::start();
    let env = Env::new();
    let reference = registry.reference("team/probe:1");
    let digest = push(&env, &plugin("sandbox-probe"), &reference);
    let file = pipeline(&env, &reference);
    let file_arg = file.to_str().unwrap();
    runner(&env, &["plugin", "lock", file_arg]).success();

    // The registry is down: the lock and the store let the run go on.
    registry.stop();
    let out = runner(&env, &["run", file_arg, "--locked", "--json"]).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );

    // A blob changed in the store is refused, named, and nothing runs.
    let layer = sha256_file(&plugin("sandbox-probe"));
    let blob = env
        .plugin_store()
        .join("blobs/sha256")
        .join(&layer["sha256:".len()..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let out = runner(&env, &["run", file_arg, "--locked", "--json"]).expect_code(2);
    assert!(
        out.stderr.contains("does not match its digest"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("pull again"), "{}", out.stderr);
    assert!(!out.stdout.contains("stage_started"), "{}", out.stdout);
    std::fs::remove_file(&blob).unwrap();

    // Down, with the blob gone: the registry is named, with what to do.
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr
            .contains(&format!("cannot reach registry {}", registry.host())),
        "{}",
        out.stderr
    );

    // A registry serving corrupted content: refused on pull.
    registry.restart();
    let data = registry
        .data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[7..9])
        .join(&layer[7..])
        .join("data");
    std::fs::write(&data, &bytes).unwrap();
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr.contains("does not match its digest"),
        "{}",
        out.stderr
    );
    let pinned = registry.reference(&format!("team/probe@{digest}"));
    let out = runner(&env, &["plugin", "pull", &pinned]).expect_code(2);
    assert!(out.stderr.contains(&layer), "{}", out.stderr);
}

#[test]
fn a_container_image_is_not_a_plugin() {
    require_docker!();
    let registry = Registry::start();
    let env = Env::new();
    let label = format!("runner-test={}", unique());
    let context = env.path().join("image");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "hello").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    let image = format!("{}/team/image:1", registry.host());
    let built = Command::new("docker")
        .args(["build", "-q", "--label", &label, "-t", &image])
        .arg(&context)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let pushed = Command::new("docker")
        .args(["push", &image])
        .output()
        .unwrap();
    docker_remove(&format!("label={label}"), &format!("label={label}"));
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let reference = format!("oci://{image}");
    let mut exec = env.exec(&reference);
    exec.config("mode", "echo");
    let out = run(&mut exec).expect_code(2);
    assert!(
        out.stderr
            .contains("is not a runner plugin: it is an ordinary container image"),
        "{}",
        out.stderr
    );
    let out = runner(&env, &["plugin", "inspect", &reference]).expect_code(2);
    assert!(
        out.stderr.contains("ordinary container image"),
        "{}",
        out.stderr
    );
}

fn login(env: &Env, registry: &Registry, password: &str) -> Output {
    let mut cmd = env.runner();
    cmd.args([
        "plugin",
        "login",
        &registry.host(),
        "-u",
        USER,
        "--password-stdin",
    ])
    .write_stdin(format!("{password}\n"));
    run(&mut cmd)
}

#[test]
fn credentials_from_login_docker_config_and_the_environment() {
    let registry = Registry::start_with_auth();
    let env = Env::new();
    let reference = registry.reference("team/probe:1");
    let probe = plugin("sandbox-probe");
    let probe_arg = probe.to_str().unwrap();

    // No credentials: the registry is named, with how to log in.
    let out = runner(&env, &["plugin", "push", probe_arg, &reference]).expect_code(2);
    assert!(
        out.stderr
            .contains(&format!("registry {} refused access", registry.host()))
            && out
                .stderr
                .contains(&format!("runner plugin login {}", registry.host())),
        "{}",
        out.stderr
    );

    // A wrong password is refused at login, and nothing is written.
    let out = login(&env, &registry, "wrong");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("refused access"), "{}", out.stderr);
    let config = env
        .cache_dir()
        .with_extension("docker-config")
        .join("config.json");
    assert!(!config.exists());

    // The right one is stored as docker login stores it, and works.
    let out = login(&env, &registry, PASSWORD);
    assert_eq!(out.code, 0, "{out:?}");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(
        stored["auths"][registry.host()]["auth"].is_string(),
        "{stored}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let digest = push(&env, &probe, &reference);

    // CI: credentials in the environment, bad then good, with no config.
    std::fs::remove_file(&config).unwrap();
    let mut cmd = env.runner();
    cmd.args(["plugin", "pull", &reference])
        .env("RUNNER_REGISTRY_HOST", registry.host())
        .env("RUNNER_REGISTRY_USERNAME", USER)
        .env("RUNNER_REGISTRY_PASSWORD", "wrong");
    let out = run(&mut cmd).expect_code(2);
    assert!(out.stderr.contains("refused access"), "{}", out.stderr);
    let mut cmd = env.runner();
    cmd.args(["plugin", "pull", &reference])
        .env("RUNNER_REGISTRY_HOST", registry.host())
        .env("RUNNER_REGISTRY_USERNAME", USER)
        .env("RUNNER_REGISTRY_PASSWORD", PASSWORD);
    assert_eq!(run(&mut cmd).success().stdout.trim(), digest);

    // Never sent to a registry RUNNER_REGISTRY_HOST does not name.
    let mut cmd = env.runner();
    cmd.args(["plugin", "pull", &reference])
        .env("RUNNER_REGISTRY_HOST", "registry.example.com")
        .env("RUNNER_REGISTRY_USERNAME", USER)
        .env("RUNNER_REGISTRY_PASSWORD", PASSWORD);
    run(&mut cmd).expect_code(2).stderr_has("refused access");
    let mut cmd = env.runner();
    cmd.args(["plugin", "pull", &reference])
        .env("RUNNER_REGISTRY_USERNAME", USER)
        .env("RUNNER_REGISTRY_PASSWORD", PASSWORD);
    run(&mut cmd)
        .expect_code(2)
        .stderr_has("RUNNER_REGISTRY_HOST is not");
}

/// A bundle's precompiled artifacts are native code: only a directory the
/// operator put on the plugin path (`--plugin-path`, `RUNNER_PLUGIN_PATH`)
/// is searched for bundles, never the pipeline's own `plugins/`, which is
/// the checkout's (a pull request could add one).
#[test]
fn a_bundle_counts_only_on_the_operators_plugin_path() {
    let mut registry = Registry::start();
    let env = Env::new();
    let reference = registry.reference("team/probe:1");
    push(&env, &plugin("sandbox-probe"), &reference);
    let file = pipeline(&env, &reference);
    let file_arg = file.to_str().unwrap();
    runner(&env, &["plugin", "lock", file_arg]).success();
    let bundle = env.path().join("plugins");
    runner(
        &env,
        &[
            "plugin",
            "bundle",
            "--lock",
            "runner.lock",
            "--out",
            bundle.to_str().unwrap(),
        ],
    )
    .success();
    std::fs::remove_dir_all(env.plugin_store()).unwrap();
    registry.stop();

    // In the pipeline's own plugins/: not a source; the registry is needed.
    let out = runner(&env, &["run", file_arg, "--locked"]).expect_code(2);
    assert!(
        out.stderr.contains("cannot reach registry"),
        "{}",
        out.stderr
    );

    // Named by the operator: found, verified, run from its artifact.
    let mut cmd = env.runner();
    cmd.args(["run", file_arg, "--locked", "--json", "-v"])
        .env("RUNNER_PLUGIN_PATH", &bundle);
    let out = run(&mut cmd).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("loaded the bundle's precompiled artifact"),
        "{}",
        out.stderr
    );
}
