//! Reconciling the catalog with the Docker engine, which runs before every
//! stage with Docker grants: each registry (state directory, Consul) adopts
//! only the containers it ran when several share one engine, and whatever a
//! failed registration write left wrong is made right at the next run.
//!
//! Containers run from a `FROM scratch` image of the host's `sleep` (nothing
//! is pulled), through the hostile test guest's `docker.run`; everything a
//! test makes carries its label and its unique name, and is removed on drop.

use crate::common::hostile::{Calls, exec};
use crate::common::{Env, Exec, Output, docker_remove, require_docker, run, sleep_context, unique};
use runner::registry::{Catalog, EmbeddedRegistry, Instance, Registry};
use std::process::Command;
use std::time::Duration;

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One test's image `rc<u>-app:v1` and the containers it runs, `rc<u>-*`.
struct Fixture {
    u: String,
    label: String,
    _context: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Self {
        let u = unique();
        let label = format!("runner-test=reconcile-{u}");
        let context = tempfile::tempdir().unwrap();
        sleep_context(context.path(), &label);
        let f = Self {
            u,
            label,
            _context: context,
        };
        docker_ok(&[
            "build",
            "-q",
            "-t",
            &f.image(),
            "--label",
            &f.label,
            f._context.path().to_str().unwrap(),
        ]);
        f
    }

    fn image(&self) -> String {
        format!("rc{}-app:v1", self.u)
    }

    /// A container or service name of this test.
    fn name(&self, suffix: &str) -> String {
        format!("rc{}-{suffix}", self.u)
    }

    /// The catalog ID runner gives container `suffix` on port 80.
    fn id(&self, suffix: &str) -> String {
        format!("runner:{}:80", self.name(suffix))
    }

    /// `runner exec` in `env` of the hostile guest making `calls`, granted
    /// this test's containers, image and services: Docker grants, so every
    /// such run reconciles the catalog first.
    fn exec(&self, env: &Env, calls: &Calls) -> Exec {
        let pattern = format!("rc{}-*", self.u);
        let mut cmd = exec(env, calls);
        cmd.allow_container(&pattern)
            .allow_image(&pattern)
            .allow_service(&pattern);
        cmd
    }

    /// Run container `suffix` for service `service` (port 80) through runner,
    /// in `env`'s registry.
    fn run_service(&self, env: &Env, suffix: &str, service: &str) {
        let calls = Calls::new().call(
            "run",
            "docker.run",
            &[
                ("name", &self.name(suffix)),
                ("image", &self.image()),
                ("labels", &self.label),
                ("service", &self.name(service)),
                ("port", "80"),
            ],
        );
        let out = run(&mut self.exec(env, &calls)).expect_code(0);
        assert_eq!(out.output("run").as_deref(), Some("ok"), "{}", out.stdout);
    }

    /// A run that only reconciles.
    fn reconcile(&self, env: &Env) -> Output {
        run(&mut self.exec(env, &Calls::new())).expect_code(0)
    }

    /// The host port container `suffix` publishes its port 80 on.
    fn host_port(&self, suffix: &str) -> u16 {
        let binding = docker_ok(&["port", &self.name(suffix), "80/tcp"]);
        binding
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no published port in {binding:?}"))
    }

    /// `(service, id, address:port)` of this test's instances in `env`'s catalog.
    fn catalog(&self, env: &Env) -> Vec<(String, String, String)> {
        let out = run(env.runner().args(["catalog", "list"])).expect_code(0);
        let mut list: Vec<(String, String, String)> = out
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .filter(|(service, _, _)| service.starts_with(&self.name("")))
            .collect();
        list.sort();
        list
    }

    /// The catalog entry runner makes for container `suffix` of `service`.
    fn entry(&self, service: &str, suffix: &str) -> (String, String, String) {
        (
            self.name(service),
            self.id(suffix),
            format!("127.0.0.1:{}", self.host_port(suffix)),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        docker_remove(
            &format!("name=rc{}-", self.u),
            &format!("reference=rc{}-*", self.u),
        );
        docker_remove(
            &format!("label={}", self.label),
            &format!("label={}", self.label),
        );
    }
}

/// `env`'s embedded registry, opened in this process (no runner runs meanwhile).
fn registry(env: &Env) -> EmbeddedRegistry {
    EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(10)).expect("open the registry")
}

/// Two state directories deploying on one engine: each one's reconcile
/// registers its own containers only, never the other's, and never one
/// without the registry label (run by an older runner); an instance of such
/// a container already in the catalog stays while it runs, as before.
#[tokio::test]
async fn registries_sharing_an_engine_reconcile_only_their_own_containers() {
    require_docker!();
    let f = Fixture::start();
    let (a, b) = (Env::new(), Env::new());
    f.run_service(&a, "a", "alpha");
    f.run_service(&b, "b", "beta");
    // What runners before the registry label put on a service container.
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &f.name("old"),
        "--label",
        &f.label,
        "--label",
        "runner.managed=true",
        "--label",
        &format!("runner.service={}", f.name("legacy")),
        "--label",
        "runner.service-port=80",
        "--label",
        "runner.service-tags=",
        "-p",
        "127.0.0.1::80",
        &f.image(),
    ]);
    let label = |suffix: &str| {
        docker_ok(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"runner.registry\"}}",
            &f.name(suffix),
        ])
    };
    let (label_a, label_b) = (label("a"), label("b"));
    assert!(label_a.starts_with("embedded:"), "{label_a}");
    assert_ne!(label_a, label_b, "two state directories, one identity");
    assert_eq!(label_a, registry(&a).identity());

    // Each run reconciles, in both orders: neither adopts the other's.
    for env in [&a, &b, &a] {
        f.reconcile(env);
    }
    assert_eq!(f.catalog(&a), [f.entry("alpha", "a")]);
    assert_eq!(f.catalog(&b), [f.entry("beta", "b")]);

    // An unlabelled container some older runner registered here stays
    // registered while it runs, and goes when it stops.
    registry(&a)
        .register(&Instance {
            id: f.id("old"),
            name: f.name("legacy"),
            address: "127.0.0.1".into(),
            port: f.host_port("old"),
            tags: vec![],
            ..Instance::default()
        })
        .await
        .unwrap();
    f.reconcile(&a);
    assert_eq!(
        f.catalog(&a),
        [f.entry("alpha", "a"), f.entry("legacy", "old")]
    );
    docker_ok(&["stop", "-t", "0", &f.name("old")]);
    f.reconcile(&a)
        .stderr_has(&format!("{} no longer runs; deregistered", f.id("old")));
    assert_eq!(f.catalog(&a), [f.entry("alpha", "a")]);
    assert_eq!(f.catalog(&b), [f.entry("beta", "b")]);
}

/// A deploy whose registry writes failed part way leaves the catalog wrong;
/// the next run's reconcile makes it true: a running container missing from
/// the catalog is registered, a stopped one still registered as passing is
/// dropped, and one registered at a port it no longer publishes, or under
/// another service, is registered again as it runs.
#[tokio::test]
async fn reconcile_makes_the_catalog_true_after_failed_registration_writes() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    for suffix in ["missing", "stopped", "moved", "renamed"] {
        f.run_service(&env, suffix, "svc");
    }
    let registry = registry(&env);
    let service = f.name("svc");
    // The registration of `missing` never landed.
    assert!(
        registry
            .deregister(&service, &f.id("missing"))
            .await
            .unwrap()
    );
    // `stopped` stopped, but its deregistration never landed.
    let stopped = f.entry("svc", "stopped");
    docker_ok(&["stop", "-t", "0", &f.name("stopped")]);
    // `moved` is registered at a port it does not publish.
    registry
        .register(&Instance {
            id: f.id("moved"),
            name: service.clone(),
            address: "127.0.0.1".into(),
            port: 1,
            tags: vec![],
            ..Instance::default()
        })
        .await
        .unwrap();
    // `renamed` is registered under another service (one listed before it).
    registry
        .deregister(&service, &f.id("renamed"))
        .await
        .unwrap();
    registry
        .register(&Instance {
            id: f.id("renamed"),
            name: f.name("other"),
            address: "127.0.0.1".into(),
            port: f.host_port("renamed"),
            tags: vec![],
            ..Instance::default()
        })
        .await
        .unwrap();
    drop(registry);
    assert_eq!(
        f.catalog(&env),
        [
            (
                f.name("other"),
                f.id("renamed"),
                format!("127.0.0.1:{}", f.host_port("renamed"))
            ),
            (service.clone(), f.id("moved"), "127.0.0.1:1".to_string()),
            stopped
        ]
    );

    f.reconcile(&env)
        .stderr_has(&format!(
            "registered running {} in {service}",
            f.id("missing")
        ))
        .stderr_has(&format!(
            "{} no longer runs; deregistered from {service}",
            f.id("stopped")
        ))
        .stderr_has(&format!(
            "{} in {service} was registered at 127.0.0.1:1",
            f.id("moved")
        ))
        .stderr_has("catalog reconciled: 1 gone, 3 registered");
    assert_eq!(
        f.catalog(&env),
        [
            f.entry("svc", "missing"),
            f.entry("svc", "moved"),
            f.entry("svc", "renamed")
        ]
    );
    // Now true, the next reconcile changes nothing.
    let again = f.reconcile(&env);
    assert!(
        !again.stderr.contains("catalog reconciled"),
        "{}",
        again.stderr
    );
}
