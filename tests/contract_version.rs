//! Contract versions (wit/VERSIONING.md): a plugin built against an
//! incompatible `runner:plugin` version fails at load with both versions
//! named (exit 3), with what to do.

use crate::common::{Env, run};

/// A component importing `runner:plugin/log@VERSION` and exporting `run`.
fn component_targeting(version: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (import "runner:plugin/log@{version}" (instance))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $run (canon lift (core func $i "f")))
            (export "run" (func $run))
        )"#
    ))
    .unwrap()
}

#[test]
fn a_plugin_for_an_incompatible_contract_fails_at_load_naming_both_versions() {
    let env = Env::new();
    for (targets, hint) in [
        (
            "0.2.0",
            "run it with a runner that provides runner:plugin@0.2.0",
        ),
        (
            "1.0.0",
            "run it with a runner that provides runner:plugin@1.0.0",
        ),
        ("0.0.9", "rebuild it against this runner's contract"),
    ] {
        let file = env.path().join(format!("targets-{targets}.wasm"));
        std::fs::write(&file, component_targeting(targets)).unwrap();
        let out = run(&mut env.exec(&file)).expect_code(3);
        assert!(
            out.stderr.contains(&format!(
                "targets runner:plugin@{targets}, this runner provides {}",
                runner::CONTRACT_VERSION
            )) && out.stderr.contains(hint),
            "{}",
            out.stderr
        );
    }
}

/// A plugin built against the frozen 0.1.0 contract (tests/guests/contract-0.1.0)
/// runs on this runner, which provides a later compatible version that added
/// `log.enabled`.
#[test]
fn a_plugin_built_against_an_older_compatible_contract_keeps_running() {
    let env = Env::new();
    let old = crate::common::plugin("contract-0-1-0");
    let inspect = run(env.runner().args(["plugin", "inspect"]).arg(&old)).success();
    assert!(
        inspect
            .stdout
            .contains("world:   runner:plugin/stage@0.1.0"),
        "{}",
        inspect.stdout
    );
    assert_ne!(
        runner::CONTRACT_VERSION,
        "0.1.0",
        "the proof needs a newer contract"
    );
    let mut exec = env.exec(&old);
    exec.arg("--service").arg("svc");
    let out = run(&mut exec).success();
    assert_eq!(out.output("contract").as_deref(), Some("0.1.0"));
    assert!(
        out.stderr.contains("built against runner:plugin@0.1.0"),
        "{}",
        out.stderr
    );
}
