//! Hostile plugins: limits. Memory and tables counted per run, caps on
//! instances, memories and tables, plugin files that are not files or are
//! too large, and a cache whose artifacts were tampered with or which other
//! users could write.
//!
//! The components are written in the component-model text format: each
//! exports a `run` of the stage world's type (so it passes the type check at
//! load) whose core module returns `ok` from a zeroed return area; what is
//! hostile is in what instantiating it creates, which happens inside
//! `Runtime::run`.

use crate::common::{Env, Exec, Output, plugin, run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A stage component; `extra` goes into its core module, `instances` into
/// the component after the module is instantiated.
fn stage_component(extra: &str, instances: &str) -> Vec<u8> {
    let text = format!(
        r#"(component
  (type $pair (tuple string string))
  (type $context' (record
    (field "service" string) (field "stage" string)
    (field "config" (list $pair)) (field "inputs" (list $pair))))
  (export $context "context" (type $context'))
  (type $outcome' (record (field "outputs" (list $pair)) (field "message" string)))
  (export $outcome "outcome" (type $outcome'))
  (type $error' (variant
    (case "denied" string) (case "not-found" string) (case "conflict" string)
    (case "invalid-config" string) (case "failed" string) (case "timeout" string)
    (case "unavailable" string)))
  (export $error "error" (type $error'))
  (core module $m
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      global.get $next
      local.get 2 i32.add i32.const 1 i32.sub
      i32.const 0 local.get 2 i32.sub i32.and
      local.tee $p
      local.get 3 i32.add
      global.set $next
      local.get $p)
    ;; The return area at 16 is zeroed: ok({{outputs: [], message: ""}}).
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      i32.const 16)
    {extra})
  (core instance $i (instantiate $m))
  {instances}
  (func $run (param "ctx" $context) (result (result $outcome (error $error)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
  (export "run" (func $run))
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn write_plugin(env: &Env, name: &str, bytes: &[u8]) -> PathBuf {
    let path = env.path().join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `runner exec --plugin PATH` with a deadline of its own: a hang fails the
/// test instead of stalling the suite.
fn exec(env: &Env, plugin: &Path) -> Exec {
    let mut cmd = env.exec(plugin);
    cmd.timeout(Duration::from_secs(60));
    cmd
}

/// A fault (exit 3) carrying `message`; exit 3 also says runner was not
/// killed by a signal (that would be no exit code at all).
fn fault(out: Output, message: &str) -> Output {
    out.expect_code(3).stderr_has(message)
}

fn memories(count: usize, pages: u32) -> String {
    format!("(memory {pages}) ").repeat(count)
}

#[test]
fn a_control_component_runs() {
    let env = Env::new();
    let ok = write_plugin(&env, "ok", &stage_component("", ""));
    run(&mut exec(&env, &ok)).expect_code(0);
}

#[test]
fn ten_extra_memories_count_together_against_memory() {
    let env = Env::new();
    // Ten memories of 16 MiB (256 pages): each under 64 MiB, 160 MiB in all.
    let many = write_plugin(&env, "memories", &stage_component(&memories(10, 256), ""));
    let out = fault(
        exec(&env, &many).memory("64MiB").run(),
        "plugin memories exceeded its memory limit (64 MiB)",
    );
    assert!(out.stderr.contains("--memory"), "{}", out.stderr);
    // The same component within a limit that covers them all runs.
    exec(&env, &many).memory("256MiB").run().success();
}

#[test]
fn large_tables_count_against_memory() {
    let env = Env::new();
    // Twenty tables of a million elements: 20 × 16 MB at 16 bytes an element.
    let tables = "(table 1000000 funcref) ".repeat(20);
    let plugin = write_plugin(&env, "tables", &stage_component(&tables, ""));
    fault(
        run(&mut exec(&env, &plugin)),
        "plugin tables exceeded its memory limit (256 MiB)",
    );
}

#[test]
fn a_hundred_tables_hit_the_table_cap() {
    let env = Env::new();
    let tables = "(table 1000000 funcref) ".repeat(100);
    let plugin = write_plugin(&env, "tables", &stage_component(&tables, ""));
    fault(
        run(&mut exec(&env, &plugin)),
        "plugin tables tried to create more than 32 tables",
    );
}

#[test]
fn too_many_memories_hit_the_memory_cap() {
    let env = Env::new();
    let plugin = write_plugin(&env, "mems", &stage_component(&memories(20, 1), ""));
    fault(
        run(&mut exec(&env, &plugin)),
        "plugin mems tried to create more than 16 linear memories",
    );
}

#[test]
fn too_many_instances_hit_the_instance_cap() {
    let env = Env::new();
    let instances = format!(
        "(core module $empty) {}",
        "(core instance (instantiate $empty)) ".repeat(150)
    );
    let plugin = write_plugin(&env, "instances", &stage_component("", &instances));
    fault(
        run(&mut exec(&env, &plugin)),
        "plugin instances tried to create more than 100 core instances",
    );
}

#[test]
fn dev_zero_is_refused_without_reading_it() {
    let env = Env::new();
    fault(
        run(&mut exec(&env, Path::new("/dev/zero"))),
        "plugin /dev/zero is a character device, not a regular file",
    );
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let env = Env::new();
    let fifo = env.path().join("plugin.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // No writer ever opens it: a blocking open would hang until the timeout.
    let started = std::time::Instant::now();
    fault(
        run(exec(&env, &fifo).timeout(Duration::from_secs(20))),
        "is a FIFO (named pipe), not a regular file",
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn an_oversized_plugin_file_is_refused() {
    let env = Env::new();
    let path = env.path().join("huge.wasm");
    let file = std::fs::File::create(&path).unwrap();
    // Sparse: 64 MiB + 1 byte, the cap plus one, costs no disk.
    file.set_len((64 << 20) + 1).unwrap();
    fault(
        run(&mut exec(&env, &path)),
        "is 64.0 MiB (67108865 bytes), over runner's limit of 64 MiB for a plugin file",
    );
}

#[test]
fn a_tampered_cached_artifact_is_recompiled_not_run() {
    let env = Env::new();
    let probe = plugin("sandbox-probe");
    let noop = |env: &Env| {
        let mut cmd = env.exec(&probe);
        cmd.config("mode", "noop").arg("-v");
        cmd
    };
    run(&mut noop(&env)).expect_code(0).stderr_has("Miss");
    let [artifact] = env.artifacts().try_into().unwrap();
    let good = std::fs::read(&artifact).unwrap();
    // Flip bytes deep in the file (machine code and metadata), header intact.
    let mut bad = good.clone();
    for at in (good.len() / 4..good.len() * 3 / 4).step_by(64) {
        bad[at] ^= 0xa5;
    }
    std::fs::write(&artifact, &bad).unwrap();
    // Through the identity index (the file is unchanged) ...
    run(&mut noop(&env))
        .expect_code(0)
        .stderr_has("is unusable (its content does not match its tag")
        .stderr_has("it was not run, recompiling")
        .stderr_has("Recompiled");
    assert_eq!(
        std::fs::read(&artifact).unwrap(),
        good,
        "artifact rewritten"
    );
    // ... and through the content hash (a copy of the plugin: a new identity).
    std::fs::write(&artifact, &bad).unwrap();
    let copy = env.path().join("sandbox-probe.wasm");
    std::fs::copy(&probe, &copy).unwrap();
    env.exec(&copy)
        .config("mode", "noop")
        .arg("-v")
        .run()
        .expect_code(0)
        .stderr_has("is unusable (its content does not match its tag")
        .stderr_has("Recompiled");
    run(&mut noop(&env)).expect_code(0).stderr_has("Hit");
}

#[test]
fn a_group_writable_cache_dir_is_not_used() {
    let env = Env::new();
    std::fs::create_dir(env.cache_dir()).unwrap();
    std::fs::set_permissions(env.cache_dir(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = run(env.probe("noop").arg("-v"))
        .expect_code(0)
        .stderr_has("is writable by group or others (mode 775)")
        .stderr_has("running without the artifact cache")
        .stderr_has("Disabled");
    assert_eq!(
        out.stderr
            .matches("running without the artifact cache")
            .count(),
        1,
        "warned once:\n{}",
        out.stderr
    );
    assert!(
        env.artifacts().is_empty(),
        "nothing written to the refused cache"
    );
}
