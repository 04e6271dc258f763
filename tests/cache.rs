//! The precompiled-artifact cache: hits, and recovery from bad files.

use crate::common::{Env, run};

#[test]
fn first_run_stores_an_artifact_and_later_runs_use_it() {
    let env = Env::new();
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Miss");
    assert_eq!(env.artifacts().len(), 1);
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Hit");
}

#[test]
fn corrupt_or_truncated_cache_files_are_recompiled() {
    let env = Env::new();
    run(&mut env.probe("noop")).expect_code(0);
    let [artifact] = env.artifacts().try_into().unwrap();
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

#[test]
fn a_cache_copied_from_elsewhere_is_verified_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let origin = Env::new();
    run(&mut origin.probe("noop")).expect_code(0);
    // The key is beside the cache dir, private, and not part of it.
    let key = std::fs::metadata(origin.path().join("cache.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(key.len(), 32);

    // A restored CI cache or another machine's: the artifacts come, the key does not.
    let env = Env::new();
    std::fs::create_dir(env.cache_dir()).unwrap();
    for artifact in std::fs::read_dir(origin.cache_dir()).unwrap() {
        let path = artifact.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, env.cache_dir().join(path.file_name().unwrap())).unwrap();
        }
    }
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("its content does not match its tag")
        .stderr_has("Recompiled");
    run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("Hit");
}
