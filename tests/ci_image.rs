//! The CI image of examples/ci-image end to end on the real engine: a
//! plugin pushed to a real registry, pinned in runner.lock, bundled and
//! precompiled by the static runner that goes into the image; then, with
//! the registry stopped and the container on `--network none`, the locked
//! pipeline runs with `--require-signature`: every plugin found in the
//! bundle, its digest and its team's signature verified, and started from
//! its precompiled artifact (nothing compiled in the container).
//!
//! Needs the musl build of runner (scripts/test builds it:
//! `cargo build --release --target x86_64-unknown-linux-musl --bin runner`).

use crate::common::oci_registry::Registry;
use crate::common::{Env, docker_remove, plugin, repo, require_docker, run, target_dir, unique};
use std::path::PathBuf;
use std::process::Command;

fn musl_runner() -> PathBuf {
    let path = target_dir().join("x86_64-unknown-linux-musl/release/runner");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release --target x86_64-unknown-linux-musl --bin runner` (scripts/test does)",
        path.display()
    );
    path
}

#[test]
fn a_ci_image_runs_a_locked_pipeline_offline_from_its_bundle() {
    require_docker!();
    let mut registry = Registry::start();
    let env = Env::new();
    let label = format!("runner-test={}", unique());
    let image = format!("runner-test-ci:{}", unique());

    // The plugin's team publishes it; the pipeline's team pins it.
    let reference = registry.reference("team/probe:1.0");
    let mut cmd = env.runner();
    cmd.args([
        "plugin",
        "push",
        plugin("sandbox-probe").to_str().unwrap(),
        &reference,
    ]);
    let digest = run(&mut cmd).success().stdout.trim().to_string();
    let checkout = env.path().join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    std::fs::write(
        checkout.join("runner.toml"),
        format!(
            "service = \"svc\"\n\n[[stages]]\nname = \"first\"\nplugin = \"{reference}\"\nconfig = {{ mode = \"echo\", from = \"image\" }}\n"
        ),
    )
    .unwrap();
    let mut cmd = env.runner();
    cmd.current_dir(&checkout).args(["plugin", "lock"]);
    run(&mut cmd).success();
    // The plugin's team signs it; the CI operator trusts that team's key.
    let keys = env.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (team_key, team_pub) = crate::signatures::openssl_key_pair(&keys, "team");
    let mut cmd = env.runner();
    cmd.args([
        "plugin",
        "sign",
        "--key",
        team_key.to_str().unwrap(),
        &reference,
    ]);
    run(&mut cmd).success();
    std::fs::remove_file(&team_key).unwrap();

    // examples/ci-image/build.sh, step by step (its cargo build is the
    // musl binary this test was given).
    let context = env.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(musl_runner(), context.join("runner")).unwrap();
    std::fs::copy(
        repo().join("examples/ci-image/Dockerfile"),
        context.join("Dockerfile"),
    )
    .unwrap();
    let bundled = Command::new(context.join("runner"))
        .args(["plugin", "bundle", "--lock"])
        .arg(checkout.join("runner.lock"))
        .arg("--out")
        .arg(context.join("bundle"))
        .arg("--trust-key")
        .arg(&team_pub)
        .env("RUNNER_CACHE_DIR", env.path().join("bundle-cache"))
        .env("RUNNER_PLUGIN_STORE", env.path().join("bundle-store"))
        .output()
        .unwrap();
    assert!(
        bundled.status.success(),
        "{}",
        String::from_utf8_lossy(&bundled.stderr)
    );
    let bundle_log = String::from_utf8_lossy(&bundled.stdout).into_owned();
    assert!(bundle_log.contains(&digest), "{bundle_log}");
    println!("bundle: {bundle_log}");

    let built = Command::new("docker")
        .args(["build", "--quiet", "--label", &label, "-t", &image])
        .arg(&context)
        .output()
        .unwrap();
    let cleanup = Cleanup(label.clone());
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    // CI: no registry, no network; the checkout mounted at /work, the
    // operator's trusted key beside it (not in the checkout), signatures required.
    registry.stop();
    let ran = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--label", &label])
        .arg("-v")
        .arg(format!("{}:/work", checkout.display()))
        .arg("-v")
        .arg(format!("{}:/keys:ro", keys.display()))
        .args([
            "-e",
            "RUNNER_TRUST_KEYS=/keys/team.pub",
            "-e",
            "RUNNER_REQUIRE_SIGNATURE=true",
        ])
        .args([&image, "run", "--locked", "--json", "-v"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"from\":\"image\""), "{stdout}");
    assert!(
        stderr.contains("loaded the bundle's precompiled artifact"),
        "{stderr}"
    );
    assert!(stderr.contains("signature verified"), "{stderr}");
    assert!(!stderr.contains("compiling"), "{stderr}");
    // Nothing was compiled or pulled into the checkout's caches.
    let compiled = std::fs::read_dir(checkout.join(".cache/runner/components"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(compiled, 0, "the container compiled a plugin");
    assert!(
        !checkout.join(".cache/runner/plugins/blobs").exists(),
        "the container pulled a plugin"
    );
    // The first stage's start inside the image (resolve + verify + load +
    // run, as the JSON event reports it), for the record.
    let first = stdout
        .lines()
        .find(|l| l.contains("\"stage_finished\""))
        .unwrap_or_default();
    println!("first stage in the image: {first}");

    // A stale lock stops the same image before anything runs.
    std::fs::write(
        checkout.join("runner.toml"),
        "service = \"svc\"\n\n[[stages]]\nname = \"first\"\nplugin = \"oci://127.0.0.1:1/team/other:1\"\n",
    )
    .unwrap();
    let ran = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--label", &label])
        .arg("-v")
        .arg(format!("{}:/work", checkout.display()))
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        stderr.contains("has no entry for oci://127.0.0.1:1/team/other:1"),
        "{stderr}"
    );
    drop(cleanup);
}

/// Removes the test's containers and image whatever happens.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={}", self.0);
        docker_remove(&filter, &filter);
    }
}
