//! `runner plugin new`: the scaffolded Rust and Python plugins test, build and
//! run as they are, alone and in their one-stage pipeline.

use crate::common::oci_registry::Registry;
use crate::common::{Env, run, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run `cmd` in `dir`, failing the test with its output.
fn ok(cmd: &mut Command, dir: &Path) -> String {
    let out = cmd
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scaffolds build in their own target dir beside the tests' (kept between
/// runs, so wit-bindgen compiles once).
fn scaffold_target() -> PathBuf {
    target_dir().join("scaffolds")
}

fn new_plugin(env: &Env, name: &str, lang: &str) -> PathBuf {
    let dir = env.path().join(name);
    run(env
        .runner()
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(&dir))
    .expect_code(0);
    dir
}

/// `runner exec` the plugin with who=ci, then `runner run` its pipeline.
fn runs_alone_and_in_its_pipeline(env: &Env, plugin: &Path, dir: &Path, plugin_path: &Path) {
    // It describes itself: its setting and output, typed.
    let inspect = run(env.runner().args(["plugin", "inspect"]).arg(plugin)).expect_code(0);
    assert!(
        inspect
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("who") && l.contains("text, default \"world\"")),
        "{}",
        inspect.stdout
    );
    assert!(inspect.stdout.contains("greeting"), "{}", inspect.stdout);
    let out = env.exec(plugin).config("who", "ci").run().success();
    assert_eq!(out.output("greeting").as_deref(), Some("hello, ci"));
    run(env
        .runner()
        .current_dir(dir)
        .env("WHO", "ops")
        .env("CI", "true")
        .args(["run", "runner.toml", "--plugin-path"])
        .arg(plugin_path))
    .expect_code(0)
    .stderr_has("hello, ops")
    .stderr_has("pipeline succeeded");
}

#[test]
fn the_rust_scaffold_tests_builds_and_runs() {
    let env = Env::new();
    let dir = new_plugin(&env, "hello-stage", "rust");
    let target = scaffold_target();
    ok(
        Command::new("cargo")
            .arg("test")
            .env("CARGO_TARGET_DIR", &target),
        &dir,
    );
    ok(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", &target),
        &dir,
    );
    let release = target.join("wasm32-wasip2/release");
    runs_alone_and_in_its_pipeline(&env, &release.join("hello_stage.wasm"), &dir, &release);

    // Published with its script, then pinned by digest in another team's pipeline.
    let registry = Registry::start();
    let reference = registry.reference("team/hello-stage:0.1.0");
    let runner_bin = assert_cmd::cargo::cargo_bin("runner");
    let runner_dir = runner_bin.parent().unwrap();
    let path = format!(
        "{}:{}",
        runner_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let published = ok(
        Command::new(dir.join("publish.sh"))
            .arg(&reference)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", &target)
            .env("RUNNER_CACHE_DIR", env.cache_dir())
            .env("RUNNER_PLUGIN_STORE", env.plugin_store())
            .env(
                "DOCKER_CONFIG",
                env.cache_dir().with_extension("docker-config"),
            ),
        &dir,
    );
    let pinned = published
        .lines()
        .find_map(|l| l.strip_prefix("pin it in a pipeline:  plugin = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no pinned reference in:\n{published}"))
        .to_string();
    assert!(
        pinned.starts_with(&registry.reference("team/hello-stage@sha256:")),
        "{pinned}"
    );

    let other = env.path().join("other-team");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("runner.toml"),
        format!("service = \"other\"\n\n[[stages]]\nname = \"greet\"\nplugin = \"{pinned}\"\nconfig = {{ who = \"other team\" }}\n"),
    )
    .unwrap();
    run(env.runner().current_dir(&other).args(["plugin", "lock"])).expect_code(0);
    run(env
        .runner()
        .current_dir(&other)
        .env("CI", "true")
        .args(["run", "--locked"]))
    .expect_code(0)
    .stderr_has("hello, other team");
}

#[test]
fn the_python_scaffold_tests_builds_and_runs() {
    let env = Env::new();
    let dir = new_plugin(&env, "py-stage", "python");
    ok(Command::new("python3").args(["-m", "unittest"]), &dir);
    ok(
        Command::new("componentize-py").args([
            "-d",
            "wit",
            "-w",
            "described-stage",
            "componentize",
            "app",
            "-o",
            "py-stage.wasm",
        ]),
        &dir,
    );
    runs_alone_and_in_its_pipeline(&env, &dir.join("py-stage.wasm"), &dir, &dir);
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_directories() {
    let env = Env::new();
    run(env.runner().args(["plugin", "new", "Bad_Name"]))
        .expect_code(2)
        .stderr_has("use lowercase letters, digits and '-'");
    std::fs::create_dir(env.path().join("taken")).unwrap();
    run(env.runner().args(["plugin", "new", "taken"]))
        .expect_code(2)
        .stderr_has("already exists; pick another name or --dir");
}
