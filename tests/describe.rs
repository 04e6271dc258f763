//! Plugins describe themselves (the `described-stage` world): `runner
//! plugin inspect` prints their typed settings and outputs (from a file, or
//! from a registry artifact's config), `runner validate` rejects unknown,
//! mistyped and missing settings and `${stage.key}` an earlier stage never
//! outputs; a plain `stage` plugin still runs, with a warning; a hostile
//! description is refused by its size.

use crate::common::oci_registry::Registry;
use crate::common::{Env, plugin, run};
use std::path::PathBuf;

fn pipeline(env: &Env, text: &str) -> PathBuf {
    let file = env.path().join("runner.toml");
    std::fs::write(&file, text).unwrap();
    let link = env.path().join("plugins");
    if !link.exists() {
        std::os::unix::fs::symlink(plugin("sandbox-probe").parent().unwrap(), link).unwrap();
    }
    file
}

#[test]
fn inspect_prints_the_settings_and_outputs_a_plugin_declares() {
    let env = Env::new();
    let out = run(env
        .runner()
        .args(["plugin", "inspect"])
        .arg(plugin("integration-test")))
    .success();
    let line = |needle: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in:\n{}", out.stdout))
            .to_string()
    };
    assert!(line("base_url").contains("url, required"), "{}", out.stdout);
    assert!(
        line("retry_for").contains("duration, default \"30s\""),
        "{}",
        out.stdout
    );
    assert!(
        line("passed").contains("how many checks passed"),
        "{}",
        out.stdout
    );

    // Without the export: said so, and it still runs.
    let old = run(env
        .runner()
        .args(["plugin", "inspect"])
        .arg(plugin("contract-0-1-0")))
    .success();
    assert!(
        old.stdout.contains("settings and outputs: not declared"),
        "{}",
        old.stdout
    );

    // From a registry, out of the artifact's config, without the component.
    let registry = Registry::start();
    let reference = registry.reference("team/integration-test:1");
    run(env
        .runner()
        .args(["plugin", "push"])
        .arg(plugin("integration-test"))
        .arg(&reference))
    .success();
    let remote = run(env.runner().args(["plugin", "inspect", &reference])).success();
    assert!(remote.stdout.contains("check.*"), "{}", remote.stdout);
    assert!(remote.stdout.contains("junit_report"), "{}", remote.stdout);
}

#[test]
fn validate_checks_config_against_what_plugins_declare() {
    let env = Env::new();
    let file = pipeline(
        &env,
        r#"service = "svc"

[[stages]]
name = "tests"
plugin = "integration-test"
config = { base_url = "http://127.0.0.1:9", retry_for = "soon", retries = "3", "check.health" = "GET /health 200" }
grants = { http = ["http://127.0.0.1:9"] }

[[stages]]
name = "after"
plugin = "integration-test"
config = { base_url = "${env.URL:-http://127.0.0.1:9}", suite = "${tests.colour}", interval = "${tests.passed}" }
grants = { http = ["http://127.0.0.1:9"] }

[[stages]]
name = "push"
plugin = "push"
config = { also_tag = "latest" }
"#,
    );
    let out = run(env.runner().arg("validate").arg(&file)).expect_code(2);
    for needle in [
        "stage \"tests\": setting \"retry_for\" = \"soon\" is not a duration: it expects a duration, e.g. 30s or 5m",
        "stage \"tests\": setting \"retries\" is not one the plugin declares (it has: base_url, check.*, retry_for",
        "stage \"after\": config suite: \"${tests.colour}\": stage \"tests\" never outputs \"colour\" (it declares: passed, junit_report)",
        "stage \"push\": setting \"image\" is required",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            out.stderr
        );
    }
    // `${tests.passed}` is declared, and a `${...}` value is the stage's to check.
    assert!(!out.stderr.contains("tests.passed"), "{}", out.stderr);

    // A plain `stage` plugin (no describe) validates loosely, with a warning.
    let file = pipeline(
        &env,
        "service = \"svc\"\n\n[[stages]]\nname = \"old\"\nplugin = \"contract-0-1-0\"\nconfig = { anything = \"goes\" }\n",
    );
    let out = run(env.runner().arg("validate").arg(&file)).success();
    assert!(
        out.stderr
            .contains("stage \"old\": its plugin does not describe its settings"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_hostile_description_is_refused_by_its_size() {
    let env = Env::new();
    let out = run(env
        .runner()
        .args(["plugin", "inspect"])
        .arg(plugin("hostile-describe")))
    .expect_code(3);
    assert!(
        out.stderr.contains("over 256 settings or outputs"),
        "{}",
        out.stderr
    );
}
