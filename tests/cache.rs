//! The precompiled-artifact cache: hits, and recovery from bad files.

mod common;

use common::{Env, run};
use std::path::PathBuf;

fn artifacts(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(env.cache_dir())
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn first_run_stores_an_artifact_and_later_runs_use_it() {
    let env = Env::new();
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Miss");
    assert_eq!(artifacts(&env).len(), 1);
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Hit");
}

#[test]
fn corrupt_or_truncated_cache_files_are_recompiled() {
    let env = Env::new();
    run(&mut env.probe("noop")).expect_code(0);
    let [artifact] = artifacts(&env).try_into().unwrap();
    let good = std::fs::read(&artifact).unwrap();

    std::fs::write(&artifact, b"garbage, not an artifact").unwrap();
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("is unusable")
        .stderr_has("Recompiled");
    assert_eq!(
        std::fs::read(&artifact).unwrap().len(),
        good.len(),
        "artifact rewritten"
    );

    std::fs::write(&artifact, &good[..good.len() / 3]).unwrap();
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Recompiled");

    std::fs::write(&artifact, b"").unwrap();
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Recompiled");
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Hit");
}

#[test]
fn an_unwritable_cache_only_costs_speed() {
    let env = Env::new();
    std::fs::write(env.cache_dir(), b"a file where the cache dir should be").unwrap();
    run(&mut env.probe("noop"))
        .expect_code(0)
        .stderr_has("cannot write artifact cache");
    run(env.probe("noop").arg("--no-cache")).expect_code(0);
}
