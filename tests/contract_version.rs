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
