//! Registry plugins: pull + verify + precompile of the shipped plugin set
//! (`runner plugin bundle` from a real docker-registry on 127.0.0.1), and
//! the start of a stage from a bundle against the start from the artifact
//! cache (a plugin file, as today), measured side by side, alternating.
//!
//! Run: `scripts/build-plugins && cargo bench --bench plugins`
//! (`RUNNER_BENCH_QUICK=1` runs fewer iterations.) Needs docker-registry.

use runner::oci::OciRef;
use runner::oci::resolve::{Resolver, Settings};
use runner::plugin_ref::PluginSource;
use runner::runtime::{ArtifactCache, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "../../tests/common/paths.rs"]
mod paths;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct RegistryProcess(std::process::Child);

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path, port: u16) -> RegistryProcess {
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry-data").display()
        ),
    )
    .expect("registry config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package) must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    RegistryProcess(child)
}

fn runner(exe: &str, scratch: &Path, args: &[&str]) -> (String, Duration) {
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .env("RUNNER_CACHE_DIR", scratch.join("cache"))
        .env("RUNNER_PLUGIN_STORE", scratch.join("store"))
        .env("RUNNER_STATE_DIR", scratch.join("state"))
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn runner");
    let took = t.elapsed();
    assert!(out.status.success(), "runner {args:?} failed");
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

fn main() {
    let quick = std::env::var_os("RUNNER_BENCH_QUICK").is_some();
    let exe = env!("CARGO_BIN_EXE_runner");
    let scratch = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let registry = start_registry(scratch.path(), port);

    // The shipped plugin set (plugins/), the Python example, and the probe.
    let mut set: Vec<(String, PathBuf)> = [
        "bluegreen",
        "build",
        "container-test",
        "integration-test",
        "push",
        "color",
        "sandbox-probe",
    ]
    .iter()
    .map(|name| (name.to_string(), paths::plugin(name)))
    .collect();
    set.sort();
    let mut references = Vec::new();
    for (name, path) in &set {
        let reference = format!("oci://127.0.0.1:{port}/shipped/{name}:1");
        let (digest, _) = runner(
            exe,
            scratch.path(),
            &["plugin", "push", path.to_str().unwrap(), &reference],
        );
        references.push((
            name.clone(),
            format!("oci://127.0.0.1:{port}/shipped/{name}@{}", digest.trim()),
        ));
    }
    println!(
        "runner plugin benchmarks ({} plugins, {} KB in all)\n",
        set.len(),
        set.iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
            / 1024
    );

    // 1. Pull + verify + precompile (a cold bundle: empty store and cache).
    let rounds = if quick { 1 } else { 3 };
    let mut totals = Vec::new();
    let mut per_plugin: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    for round in 0..rounds {
        let dir = scratch.path().join(format!("bundle-round-{round}"));
        std::fs::create_dir_all(&dir).expect("round dir");
        let out = dir.join("bundle");
        let mut args = vec![
            "plugin".to_string(),
            "bundle".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(references.iter().map(|(_, r)| r.clone()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (stdout, took) = runner(exe, &dir, &args);
        totals.push(took);
        for line in stdout.lines() {
            // "<digest>  <ref>  (from registry N ms, precompiled M ms)"
            let name = references
                .iter()
                .find(|(_, r)| line.contains(r.as_str()))
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let numbers: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0))
                .collect();
            if let [.., fetch, compile] = numbers.as_slice() {
                per_plugin.entry(name).or_default().push((*fetch, *compile));
            }
        }
    }
    println!("pull + verify + precompile, cold ({rounds} rounds, medians):");
    for (name, samples) in &per_plugin {
        let mut fetch: Vec<u64> = samples.iter().map(|s| s.0).collect();
        let mut compile: Vec<u64> = samples.iter().map(|s| s.1).collect();
        fetch.sort();
        compile.sort();
        println!(
            "  {name:<18} pull + verify {:>5} ms   precompile {:>6} ms",
            fetch[fetch.len() / 2],
            compile[compile.len() / 2]
        );
    }
    println!("  whole `runner plugin bundle`: {:.2?}\n", median(totals));

    // The bundle the start measurements use; the registry goes away first,
    // so nothing below can touch it.
    let bundle = scratch.path().join("bundle-round-0/bundle");
    drop(registry);

    // 2. Start in one process, alternating: a plugin file through the
    //    artifact cache (identity hit) vs the same plugin from the bundle
    //    (read + sha256 the component, blake3 + load the precompiled
    //    artifact, link). Both end with a linked plugin ready to run.
    let cache = scratch.path().join("start-cache");
    let runtime = Runtime::new(RuntimeConfig {
        cache: ArtifactCache::new(Some(cache.clone())),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let iters = if quick { 30 } else { 200 };
    println!(
        "stage start, plugin file from the artifact cache vs from the bundle ({iters} iterations, p50):"
    );
    for name in ["sandbox-probe", "bluegreen", "color"] {
        let path = paths::plugin(name);
        let pinned = &references
            .iter()
            .find(|(n, _)| n == name)
            .expect("pushed")
            .1;
        let reference = OciRef::parse(pinned).expect("reference");
        runtime.load(&path).expect("warm the cache");
        let mut from_cache = Vec::new();
        let mut from_bundle = Vec::new();
        let n = if name == "color" { iters / 5 } else { iters };
        for _ in 0..n {
            let t = Instant::now();
            std::hint::black_box(runtime.load(&path).expect("load from cache"));
            from_cache.push(t.elapsed());
            let t = Instant::now();
            let resolver = Resolver::new(
                Settings {
                    store: Some(scratch.path().join("empty-store")),
                    max_plugin_bytes: runner::runtime::DEFAULT_MAX_PLUGIN_BYTES,
                    ..Settings::default()
                },
                None,
            );
            let stored = resolver
                .resolve(&reference, std::slice::from_ref(&bundle))
                .expect("resolve from the bundle");
            let plugin = runtime
                .load_source(&PluginSource::Stored(Arc::new(stored)))
                .expect("load from the bundle");
            std::hint::black_box(plugin);
            from_bundle.push(t.elapsed());
        }
        let (a, b) = (median(from_cache), median(from_bundle));
        println!(
            "  {name:<14} cache {a:>9.1?}   bundle {b:>9.1?}   ratio {:.2}x",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }

    // 3. The whole `runner exec` process of a stage, alternating.
    let spawn = |plugin: &str, bundle_path: Option<&Path>, args: &[&str]| {
        let mut cmd = Command::new(exe);
        cmd.args(["exec", "--plugin", plugin])
            .args(args)
            .env("RUNNER_CACHE_DIR", &cache)
            .env("RUNNER_PLUGIN_STORE", scratch.path().join("empty-store"))
            .env("RUNNER_STATE_DIR", scratch.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(b) = bundle_path {
            cmd.env("RUNNER_PLUGIN_PATH", b);
        }
        let t = Instant::now();
        assert!(
            cmd.status().expect("spawn").success(),
            "exec {plugin} failed"
        );
        t.elapsed()
    };
    println!();
    for (name, args) in [
        ("sandbox-probe", &["--config", "mode=noop"][..]),
        ("color", &["--service", "bench", "--allow-kv", "bench/"][..]),
    ] {
        let file = paths::plugin(name);
        let pinned = &references
            .iter()
            .find(|(n, _)| n == name)
            .expect("pushed")
            .1;
        spawn(file.to_str().unwrap(), None, args);
        spawn(pinned, Some(&bundle), args);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..if quick { 5 } else { 30 } {
            a.push(spawn(file.to_str().unwrap(), None, args));
            b.push(spawn(pinned, Some(&bundle), args));
        }
        let (a, b) = (median(a), median(b));
        println!(
            "whole process `runner exec` {name:<14} file {a:>8.2?}   oci://…@digest from the bundle {b:>8.2?}   ratio {:.2}x",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
}
