//! End-to-end blue-green deploys on the real Docker engine and real nginx:
//! the seed's flow through `runner exec --plugin bluegreen.wasm`, including
//! both failure paths, rollback, reconciliation, and zero failed requests
//! through nginx during a switch.
//!
//! Everything a test creates carries its own label and service name, and is
//! removed when the test ends, even when it fails.

mod common;

use common::{Env, Output, free_port, plugin, repo, run};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One isolated deployment: its own service name, images, nginx and state.
struct Deployment {
    env: Env,
    /// The Consul test server when the Consul backend is under test.
    consul: Option<common::consul::ConsulServer>,
    work: PathBuf,
    port: u16,
    service: String,
    label: String,
}

impl Deployment {
    fn start(name: &str, consul: bool) -> Self {
        let service = format!("{name}-{}", std::process::id());
        let label = format!("runner-test={service}");
        let env = Env::new();
        let work = env.path().join("deploy");
        let port = free_port();
        let plugins = plugin("bluegreen").parent().unwrap().to_path_buf();
        let deployment = Self {
            env,
            consul: consul.then(|| common::consul::ConsulServer::start(None)),
            work,
            port,
            service,
            label,
        };
        // Images first: the Drop below removes them whatever happens next.
        for (tag, version, broken) in [
            ("v1", "v1", ""),
            ("v2", "v2", ""),
            ("badhealth", "v3", "health"),
            ("badbooks", "v5", "books"),
            ("badpost", "v4", "proxied"),
        ] {
            sh(
                Command::new(repo().join("examples/books-service/build-image"))
                    .args([&format!("{}:{tag}", deployment.service), version, broken])
                    .env("IMAGE_LABELS", &deployment.label),
            );
        }
        sh(Command::new(repo().join("examples/bluegreen/env"))
            .arg("up")
            .arg(&deployment.work)
            .arg(port.to_string())
            .arg(&plugins)
            .arg(&deployment.service));
        deployment
    }

    fn runner(&self) -> assert_cmd::Command {
        let mut cmd = self.env.runner();
        cmd.current_dir(&self.work);
        if let Some(consul) = &self.consul {
            cmd.env("CONSUL_HTTP_ADDR", consul.url());
        }
        cmd
    }

    /// `runner exec` of the blue-green stage for image tag `tag`.
    fn bluegreen(&self, args: &[&str]) -> Output {
        let mut cmd = self.runner();
        cmd.args([
            "exec",
            "-f",
            "runner.toml",
            "--plugin",
            "plugins/bluegreen.wasm",
            "--service",
            &self.service,
        ])
        .args(["-c", &format!("proxy_url=http://127.0.0.1:{}", self.port)])
        .args([
            "-c",
            "upstream_template=templates/nginx-upstreams-{color}.ctmpl",
        ])
        .args([
            "-c",
            "restart=no",
            "-c",
            "drain=1s",
            "-c",
            "stop_timeout=5s",
        ])
        .args(["-c", &format!("label.{}", self.label)])
        .args(args);
        run(&mut cmd)
    }

    fn deploy(&self, tag: &str) -> Output {
        self.bluegreen(&[
            "-c",
            &format!("image={}:{tag}", self.service),
            "-c",
            "health_timeout=5s",
        ])
    }

    /// The version the proxy serves, from the books endpoint.
    fn serving(&self) -> String {
        let url = format!("http://127.0.0.1:{}/api/v1/books", self.port);
        let body = sh(Command::new("curl").args(["-s", "--max-time", "5", &url]));
        let doc: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        doc["version"].as_str().unwrap_or_default().to_string()
    }

    /// Wait (bounded) until 20 requests in a row get `version`.
    fn wait_serving(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut streak = 0;
        while streak < 20 {
            assert!(
                Instant::now() < deadline,
                "the proxy never settled on {version}"
            );
            streak = if self.serving() == version {
                streak + 1
            } else {
                0
            };
        }
    }

    fn color(&self) -> String {
        run(self
            .runner()
            .args(["kv", "get", &format!("{}/color", self.service)]))
        .stdout
        .trim()
        .to_string()
    }

    /// (name, running) of this deployment's containers.
    fn containers(&self) -> Vec<(String, bool)> {
        let out = sh(Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &format!("label={}", self.label),
            "--format",
            "{{.Names}} {{.State}}",
        ]));
        let mut list: Vec<(String, bool)> = out
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(n, s)| (n.to_string(), s == "running"))
            })
            .collect();
        list.sort();
        list
    }

    fn catalog(&self) -> Vec<String> {
        run(self.runner().args(["catalog", "list"]))
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').next().map(str::to_string))
            .filter(|s| s.starts_with(&self.service))
            .collect()
    }

    fn name(&self, color: &str) -> String {
        format!("{}-{color}", self.service)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("examples/bluegreen/env"))
            .arg("down")
            .arg(&self.work)
            .status();
        let filter = format!("label={}", self.label);
        common::docker_remove(&filter, &filter);
    }
}

/// Requests through nginx until `stop` is set and at least `min` were sent
/// (bounded by `max` and a deadline), each on a new connection; returns
/// (sent, failed, versions seen).
fn load(
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    min: usize,
    max: usize,
) -> (usize, Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/api/v1/books");
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut sent, mut failures, mut versions) = (0, Vec::new(), Vec::<String>::new());
        while sent < max
            && Instant::now() < deadline
            && (sent < min || !stop.load(std::sync::atomic::Ordering::SeqCst))
        {
            sent += 1;
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    let version = r
                        .headers()
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                }
                Ok(r) => failures.push(format!("status {}", r.status())),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (sent, failures, versions)
    })
}

#[test]
fn blue_green_deploys_fail_safely_roll_back_and_switch_without_dropping_requests() {
    scenario(&Deployment::start("bgtest", false));
}

/// The same deploys with Consul (the API-faithful test server) as the registry.
#[test]
fn blue_green_with_the_consul_backend() {
    let d = Deployment::start("bgconsul", true);
    scenario(&d);
    assert!(
        !d.env.state_dir().exists(),
        "the embedded store was not used"
    );
}

fn scenario(d: &Deployment) {
    let (blue, green) = (d.name("blue"), d.name("green"));

    // First deploy: blue serves v1.
    let out = d.deploy("v1").expect_code(0);
    assert_eq!(out.output("color").as_deref(), Some("blue"));
    assert_eq!(d.serving(), "v1");
    assert_eq!(d.color(), "blue");
    assert_eq!(d.catalog(), [blue.as_str()]);

    // Second deploy, under a steady bounded load through nginx: zero failures.
    d.wait_serving("v1");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (deployed, (sent, failures, versions)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(d.port, &stop, 2000, 50_000));
        let out = d.deploy("v2");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, load.join().unwrap())
    });
    deployed.expect_code(0);
    assert!(sent >= 2000, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the switch: {:?}\nnginx error log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        std::fs::read_to_string(d.work.join("nginx/logs/error.log")).unwrap_or_default()
    );
    assert!(
        versions.contains(&"v1".to_string()) && versions.contains(&"v2".to_string()),
        "the load did not span the switch: {versions:?}"
    );
    assert_eq!(d.serving(), "v2");
    assert_eq!(d.color(), "green");
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)],
        "blue stopped, not removed"
    );
    assert_eq!(
        d.catalog(),
        [green.as_str()],
        "only the running instance is listed"
    );

    // Rollback: the stopped blue comes back and serves v1.
    d.bluegreen(&["-c", "action=rollback"]).expect_code(0);
    assert_eq!(d.serving(), "v1");
    assert_eq!(d.color(), "blue");
    assert_eq!(
        d.containers(),
        [(blue.clone(), true), (green.clone(), false)]
    );
    assert_eq!(d.catalog(), [blue.as_str()]);

    // And forward again to v2 on green.
    d.deploy("v2").expect_code(0);
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );

    // A version failing its health check is never switched to.
    d.deploy("badhealth")
        .expect_code(1)
        .stderr_has(&format!("{blue} did not answer"))
        .stderr_has("proxy and color untouched")
        .stderr_has("Last log lines of")
        .stderr_has("books-service v3 listening");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)],
        "the failed container is stopped"
    );
    assert_eq!(d.catalog(), [green.as_str()]);

    // Healthy but failing the pre-integration tests: stopped, never switched,
    // the failed check named.
    d.deploy("badbooks")
        .expect_code(1)
        .stderr_has("1 of 2 checks failed: books (GET /api/v1/books")
        .stderr_has("expected status 200, got 500")
        .stderr_has("proxy and color untouched")
        .stderr_has("books-service v5 listening");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)]
    );

    // A version failing only behind the proxy: switched, tested, switched back.
    d.deploy("badpost")
        .expect_code(1)
        .stderr_has("1 of 1 checks failed: books (GET /api/v1/books")
        .stderr_has(&format!(
            "failed after the switch; switched back to green, color restored, {blue} stopped"
        ));
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)]
    );
    assert_eq!(d.catalog(), [green.as_str()]);

    if let Some(consul) = &d.consul {
        consul_outage_keeps_the_old_color_serving(d, consul);
    }

    // A container stopped behind runner's back leaves the catalog at the next run.
    sh(Command::new("docker").args(["stop", "-t", "1", &green]));
    let mut reconcile = d.runner();
    reconcile
        .args(["exec", "--plugin"])
        .arg(plugin("sandbox-probe"))
        .args([
            "-c",
            "mode=noop",
            "--allow-container",
            &format!("{}-*", d.service),
        ]);
    run(&mut reconcile)
        .expect_code(0)
        .stderr_has("no longer runs; deregistered");
    assert!(d.catalog().is_empty(), "{:?}", d.catalog());
}

/// Consul dies mid-deploy, right after the new color registered: the stage
/// fails as `unavailable`, nginx keeps serving the old color without one
/// failed request, and once Consul is back the stored color is still the old
/// one. (Runs green on v2, blue stopped; leaves it so.)
fn consul_outage_keeps_the_old_color_serving(
    d: &Deployment,
    consul: &common::consul::ConsulServer,
) {
    let (blue, green) = (d.name("blue"), d.name("green"));
    let registering_blue = format!("\"{blue}\"");
    consul.go_down_after(move |method, path, body| {
        method == "PUT"
            && path == "/v1/agent/service/register"
            && String::from_utf8_lossy(body).contains(&registering_blue)
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (deployed, (sent, failures, versions)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(d.port, &stop, 500, 50_000));
        let out = d.deploy("v1");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, load.join().unwrap())
    });
    assert!(
        consul.is_down(),
        "Consul never went down: blue was never registered\n{}",
        deployed.stderr
    );
    consul.set_down(false);
    deployed
        .expect_code(1)
        .stderr_has(&format!("switching the proxy to {blue} failed"))
        .stderr_has("unavailable");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed while Consul was down: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(versions, ["v2"], "only the old color served");
    assert_eq!(
        (d.serving(), d.color()),
        ("v2".to_string(), "green".to_string())
    );
    assert_eq!(
        d.containers(),
        [(blue.clone(), false), (green.clone(), true)]
    );
}

#[test]
fn docker_grants_are_enforced() {
    let env = Env::new();
    let probe = plugin("bluegreen");
    // No container grant: the first Docker call is denied, naming the flag.
    let mut cmd = env.runner();
    cmd.arg("exec")
        .arg("--plugin")
        .arg(&probe)
        .args([
            "--service",
            "nogrant",
            "--allow-kv",
            "nogrant/",
            "-c",
            "image=nogrant:v1",
            "-c",
            "pre_hook=none",
        ])
        .args(["-c", "post_hook=none"]);
    run(&mut cmd)
        .expect_code(1)
        .stderr_has("denied: docker:")
        .stderr_has("--allow-container nogrant-blue");
}
