//! Runtime benchmarks: plugin start from the artifact cache, host-call
//! overhead, and cache-miss compiles. Prints medians (and p90) of repeated
//! runs measured side by side in one process.
//!
//! Run: `scripts/build-plugins && cargo bench --bench runtime`
//! (`RUNNER_BENCH_QUICK=1` runs fewer iterations.)

use runner::bindings::Context;
use runner::caps::{Capabilities, Grants, GrantsSpec, HostServices, RunContext};
use runner::registry::EmbeddedRegistry;
use runner::runtime::{ArtifactCache, Limits, Plugin, RunRequest, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// The same allocator as the `runner` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The end-to-end tests' plugin lookup, shared rather than copied.
#[allow(dead_code)]
#[path = "../../tests/common/paths.rs"]
mod paths;
use paths::plugin as plugin_path;

struct Stats {
    p50: Duration,
    p90: Duration,
    n: usize,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    Stats {
        p50: samples[n / 2],
        p90: samples[(n * 9 / 10).min(n - 1)],
        n,
    }
}

fn report(name: &str, s: &Stats, target: Option<Duration>) {
    let verdict = match target {
        Some(t) if s.p50 <= t => format!("target {t:?}: met"),
        Some(t) => format!(
            "target {t:?}: MISSED by {:.1}x",
            s.p50.as_secs_f64() / t.as_secs_f64()
        ),
        None => String::new(),
    };
    println!(
        "{name:<58} p50 {:>10.1?}  p90 {:>10.1?}  (n={})  {verdict}",
        s.p50, s.p90, s.n
    );
}

struct Bench {
    runtime: Runtime,
    services: HostServices,
    grants: Grants,
}

impl Bench {
    fn new(cache_dir: Option<PathBuf>, state: &Path) -> Self {
        let registry = EmbeddedRegistry::open(state, Duration::from_secs(5)).expect("registry");
        let spec = GrantsSpec {
            kv: runner::caps::kv::KvSpec {
                kv: vec!["bench/".into()],
            },
            ..Default::default()
        };
        Self {
            runtime: Runtime::new(RuntimeConfig {
                cache: ArtifactCache::new(cache_dir),
                ..RuntimeConfig::default()
            })
            .expect("runtime"),
            services: HostServices {
                registry: Arc::new(registry),
                docker: runner::caps::docker::DockerEngine::new(None),
                hooks: None,
                journal_service: None,
            },
            grants: spec.validate_with(&[], &[]).expect("grants"),
        }
    }

    /// Load `path` from the artifact cache and run it, `n` times: the
    /// (load + run, load only) timings.
    async fn start_from_cache(
        &self,
        path: &Path,
        config: &[(&str, &str)],
        n: usize,
    ) -> (Stats, Stats) {
        let (mut start, mut load) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            let plugin = self.runtime.load(path).expect("load from cache");
            load.push(t.elapsed());
            self.run(&plugin, config).await;
            start.push(t.elapsed());
        }
        (stats(start), stats(load))
    }

    async fn run(&self, plugin: &Plugin, config: &[(&str, &str)]) {
        let request = RunRequest {
            context: Context {
                service: "bench".into(),
                stage: "bench".into(),
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                inputs: vec![],
            },
            capabilities: Capabilities::prepare(&RunContext {
                plugin: plugin.name(),
                grants: &self.grants,
                host: &self.services,
                limits: &Limits::default(),
            }),
            limits: Limits::default(),
        };
        let outcome = self.runtime.run(plugin, request).await.expect("no fault");
        outcome.unwrap_or_else(|e| panic!("stage failed: {}", runner::bindings::describe(&e)));
    }
}

fn main() {
    let quick = std::env::var_os("RUNNER_BENCH_QUICK").is_some();
    let iters = if quick { 30 } else { 300 };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let scratch = tempfile::tempdir().expect("tempdir");
    let cache = scratch.path().join("cache");
    let probe = plugin_path("sandbox-probe");
    let color = plugin_path("color");
    println!("runner runtime benchmarks ({iters} iterations unless noted)\n");

    // 0. The whole `runner exec` process (start, engine, cache hit, run, exit),
    //    as a CLI user sees it. Measured first, while this process is small:
    //    spawning from a process with large mappings costs more.
    let exe = env!("CARGO_BIN_EXE_runner");
    let spawn = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new(exe)
            .args(args)
            .env("RUNNER_CACHE_DIR", &cache)
            .env("RUNNER_STATE_DIR", scratch.path().join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("spawn runner");
        assert!(status.success(), "runner {args:?} failed");
    };
    for (label, plugin, args) in [
        (
            "process: runner --version (binary start only)",
            None,
            vec!["--version"],
        ),
        (
            "process: runner exec rust plugin (noop)",
            Some(&probe),
            vec!["--config", "mode=noop"],
        ),
        (
            "process: runner exec python plugin (color)",
            Some(&color),
            vec!["--service", "bench", "--allow-kv", "bench/"],
        ),
    ] {
        let mut argv: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(plugin) = plugin {
            argv.extend(["exec".as_ref(), "--plugin".as_ref(), plugin.as_os_str()]);
        }
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        spawn(&argv); // warm the artifact cache
        let mut samples = Vec::new();
        for _ in 0..if quick { 5 } else { 30 } {
            let t = Instant::now();
            spawn(&argv);
            samples.push(t.elapsed());
        }
        report(label, &stats(samples), None);
    }
    println!();

    tokio.block_on(async {
        let bench = Bench::new(Some(cache.clone()), &scratch.path().join("state"));
        bench
            .services
            .registry
            .kv_put("bench/key", b"value")
            .await
            .expect("seed key");
        // Populate the cache once.
        bench.runtime.load(&probe).expect("load probe");
        bench.runtime.load(&color).expect("load color");

        // 1. Rust plugin: start from the cache (read + hash + mmap artifact +
        //    type-check/link) + instantiate + trivial run.
        let (start, load) = bench
            .start_from_cache(&probe, &[("mode", "noop")], iters)
            .await;
        report(
            "rust plugin: load from cache + instantiate + run",
            &start,
            Some(Duration::from_micros(100)),
        );
        report(
            "  of which load from cache (stat + mmap + link)",
            &load,
            None,
        );

        // 2. Instantiate + run with the plugin already loaded (InstancePre reused).
        let plugin = bench.runtime.load(&probe).expect("load");
        let mut warm = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            bench.run(&plugin, &[("mode", "noop")]).await;
            warm.push(t.elapsed());
        }
        report(
            "rust plugin: instantiate + run (loaded once)",
            &stats(warm),
            None,
        );

        // 3. Host-call overhead: 10 000 kv.get in one run, minus an empty run,
        //    alternating so both see the same machine load.
        let calls = 10_000u32;
        let mut per_call = Vec::new();
        for _ in 0..(iters / 10).max(10) {
            let t = Instant::now();
            bench
                .run(
                    &plugin,
                    &[
                        ("mode", "kv-get-loop"),
                        ("key", "bench/key"),
                        ("n", "10000"),
                    ],
                )
                .await;
            let full = t.elapsed();
            let t = Instant::now();
            bench
                .run(
                    &plugin,
                    &[("mode", "kv-get-loop"), ("key", "bench/key"), ("n", "0")],
                )
                .await;
            let empty = t.elapsed();
            per_call.push(full.saturating_sub(empty) / calls);
        }
        report(
            "host call: kv.get (embedded registry), per call",
            &stats(per_call),
            Some(Duration::from_micros(5)),
        );

        // 4. Python plugin (componentize-py, ~18 MB): start from cache + run.
        let (start, load) = bench
            .start_from_cache(&color, &[], (iters / 5).max(10))
            .await;
        report(
            "python plugin: load from cache + instantiate + run",
            &start,
            Some(Duration::from_millis(5)),
        );
        report(
            "  of which load from cache (stat + mmap + link)",
            &load,
            None,
        );

        // 5. Cache miss: compile with Cranelift.
        let nocache = Bench::new(None, &scratch.path().join("state"));
        let mut compile = Vec::new();
        for _ in 0..if quick { 3 } else { 10 } {
            let t = Instant::now();
            nocache.runtime.load(&probe).expect("compile probe");
            compile.push(t.elapsed());
        }
        report(
            "cache miss: compile rust plugin (143 KB)",
            &stats(compile),
            None,
        );
        let mut compile_py = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            nocache.runtime.load(&color).expect("compile color");
            compile_py.push(t.elapsed());
        }
        report(
            "cache miss: compile python plugin (18 MB)",
            &stats(compile_py),
            None,
        );
    });
}
