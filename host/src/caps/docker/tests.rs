//! The `docker` capability in-process, against the fake engine and the
//! embedded registry.

use super::fake::FakeEngine;
use super::*;
use crate::bindings::runner::plugin::docker::{self as wit, Host as _};
use crate::caps::Grants;
use crate::caps::catalog::ServiceGrant;
use crate::caps::testing::TestHost;
use std::collections::HashMap;

struct Setup {
    cap: DockerCap,
    engine: Arc<FakeEngine>,
    registry: Arc<dyn Registry>,
}

fn setup(grants: Grants, engine: FakeEngine) -> Setup {
    let host = TestHost::with_engine(engine);
    Setup {
        cap: host.prepare(&grants),
        engine: host.engine.clone(),
        registry: host.registry.clone(),
    }
}

/// Containers `books-ms-*`, images `books-ms:*`, service `books-ms`.
fn books_ms() -> Grants {
    Grants {
        docker: DockerGrant::parse(&["books-ms-*".into()], &["books-ms:*".into()], false, false)
            .unwrap(),
        catalog: ServiceGrant::parse(&["books-ms".into()]).unwrap(),
        ..Default::default()
    }
}

fn run_spec(name: &str, service: Option<&str>) -> wit::RunSpec {
    wit::RunSpec {
        name: name.into(),
        image: "books-ms:v1".into(),
        env: vec![],
        labels: vec![],
        command: None,
        ports: vec![8080],
        restart: wit::RestartPolicy::No,
        service: service.map(String::from),
        tags: vec!["v1".into()],
    }
}

#[tokio::test]
async fn a_denied_call_never_reaches_the_engine() {
    let mut s = setup(books_ms(), FakeEngine::new());
    let denied = [
        s.cap.run(run_spec("payments", None)).await,
        s.cap
            .run(wit::RunSpec {
                image: "evil:latest".into(),
                ..run_spec("books-ms-blue", None)
            })
            .await,
        s.cap.inspect("payments".into()).await,
        s.cap.start("../books-ms-blue".into()).await,
    ];
    for result in denied {
        let Err(e) = result else { panic!("granted") };
        assert!(
            matches!(e, PluginError::Denied(_) | PluginError::InvalidConfig(_)),
            "{e:?}"
        );
    }
    let Err(PluginError::Denied(msg)) = s
        .cap
        .build(".".into(), None, "books-ms:v2".into(), vec![])
        .await
    else {
        panic!("build is not granted")
    };
    assert!(msg.contains("--allow-build"), "{msg}");
    // A reserved label is refused before the engine is asked.
    let labelled = wit::RunSpec {
        labels: vec![("runner.service".into(), "payments".into())],
        ..run_spec("books-ms-blue", None)
    };
    assert!(matches!(
        s.cap.run(labelled).await,
        Err(PluginError::InvalidConfig(_))
    ));
    assert_eq!(s.engine.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn run_for_a_service_registers_its_published_port_and_remove_deregisters_it() {
    let engine = FakeEngine::new();
    engine.add_image("books-ms:v1");
    let mut s = setup(books_ms(), engine);
    let container = s
        .cap
        .run(run_spec("books-ms-blue", Some("books-ms")))
        .await
        .unwrap();
    assert!(container.running);
    let [port] = container.ports.as_slice() else {
        panic!("{:?}", container.ports)
    };
    assert_eq!(
        (port.container_port, port.host_ip.as_str()),
        (8080, "127.0.0.1")
    );
    let labels: HashMap<_, _> = container.labels.iter().cloned().collect();
    assert_eq!(labels.get(LABEL_REGISTRY), Some(&s.registry.identity()));

    let instances = s.registry.instances("books-ms").await.unwrap();
    let [instance] = instances.as_slice() else {
        panic!("{instances:?}")
    };
    assert_eq!(instance.id, "runner:books-ms-blue:8080");
    assert_eq!(
        (instance.address.as_str(), instance.port),
        ("127.0.0.1", port.host_port)
    );
    assert_eq!(instance.tags, vec!["v1".to_string()]);

    s.cap.remove("books-ms-blue".into(), true).await.unwrap();
    assert!(s.registry.instances("books-ms").await.unwrap().is_empty());
    assert!(s.engine.containers().is_empty());
}

#[tokio::test]
async fn the_address_policy_sets_the_registered_address() {
    let engine = FakeEngine::new().with_address_policy(AddressPolicy::Fixed("10.1.2.3".into()));
    engine.add_image("books-ms:v1");
    let mut s = setup(books_ms(), engine);
    s.cap
        .run(run_spec("books-ms-green", Some("books-ms")))
        .await
        .unwrap();
    let instances = s.registry.instances("books-ms").await.unwrap();
    assert_eq!(instances[0].address, "10.1.2.3");
    // Stopped behind runner's back, then reconciled: the instance goes.
    s.engine.stop("books-ms-green", 0).await.unwrap();
    let done = reconcile(&*s.engine, &*s.registry).await.unwrap();
    assert_eq!(done.dropped, 1);
    assert!(s.registry.instances("books-ms").await.unwrap().is_empty());
}

#[tokio::test]
async fn engine_errors_reach_the_plugin_as_wit_errors() {
    let engine = FakeEngine::new();
    engine.add_image("books-ms:v1");
    let mut s = setup(books_ms(), engine);
    let Err(PluginError::NotFound(msg)) = s.cap.inspect("books-ms-gone".into()).await else {
        panic!("a missing container is not-found")
    };
    assert_eq!(
        msg,
        "docker inspect books-ms-gone: No such container: books-ms-gone"
    );
    // An image ID where a name is expected is refused, though the engine
    // would resolve it.
    let Err(PluginError::NotFound(msg)) = s
        .cap
        .run(wit::RunSpec {
            image: "books-ms:v2".into(),
            ..run_spec("books-ms-blue", None)
        })
        .await
    else {
        panic!("no such image")
    };
    assert!(msg.starts_with("docker run books-ms:v2:"), "{msg}");
    s.cap.run(run_spec("books-ms-blue", None)).await.unwrap();
    let Err(PluginError::Conflict(msg)) = s.cap.run(run_spec("books-ms-blue", None)).await else {
        panic!("the name is taken")
    };
    assert!(msg.starts_with("docker create books-ms-blue: "), "{msg}");
    s.engine.fail(
        "connect",
        EngineError::Unreachable {
            endpoint: "fake://engine".into(),
            reason: "down".into(),
        },
    );
    let Err(PluginError::Unavailable(msg)) = s.cap.logs("books-ms-blue".into(), 10).await else {
        panic!("the engine is down")
    };
    assert!(
        msg.starts_with("docker: cannot reach the engine at fake://engine: down;"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_name_resolves_exactly_never_by_id_prefix() {
    let engine = FakeEngine::new();
    engine.add_image("books-ms:v1");
    let mut s = setup(
        Grants {
            docker: DockerGrant::parse(&["*".into()], &["books-ms:*".into()], false, false)
                .unwrap(),
            ..Default::default()
        },
        engine,
    );
    let blue = s.cap.run(run_spec("books-ms-blue", None)).await.unwrap();
    let prefix = &blue.id[..12];
    let Err(PluginError::NotFound(msg)) = s.cap.stop(prefix.to_string(), 0).await else {
        panic!("an ID prefix reached a container")
    };
    assert!(msg.contains("no container has that name"), "{msg}");
    assert!(s.engine.containers()[0].running);
}

/// Hosts `a` and `b` as a fleet of fakes, the stage granted `granted`.
fn fleet_setup(granted: &[&str]) -> (DockerCap, Vec<Arc<FakeEngine>>, Arc<dyn Registry>) {
    let mut host = TestHost::new();
    let members: Vec<Arc<FakeEngine>> = (1..=2)
        .map(|i| {
            let engine = FakeEngine::new().with_id_base(i);
            engine.add_image("books-ms:v1");
            Arc::new(engine)
        })
        .collect();
    let hosts = ["a", "b"]
        .iter()
        .zip(&members)
        .enumerate()
        .map(|(i, (name, engine))| FleetHost {
            name: name.to_string(),
            address: format!("10.0.0.{}", i + 1),
            publish_ip: format!("10.0.0.{}", i + 1),
            timeout: std::time::Duration::from_secs(5),
            engine: engine.clone(),
        })
        .collect();
    host.services.docker = DockerEngine::from_engine(Arc::new(FleetEngine::new(hosts)));
    let mut grants = books_ms();
    grants.docker = grants.docker.with_hosts(
        crate::caps::globs::Globs::parse(
            &granted.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        )
        .unwrap(),
    );
    (host.prepare(&grants), members, host.registry.clone())
}

#[tokio::test]
async fn placement_stays_on_granted_hosts_and_registers_the_hosts_address() {
    let (mut cap, members, registry) = fleet_setup(&["a", "b"]);
    let specs = (1..=3)
        .map(|i| {
            (
                None,
                run_spec(&format!("books-ms-blue-{i}"), Some("books-ms")),
            )
        })
        .collect();
    let placed = cap.run_placed(specs).await;
    let hosts: Vec<String> = placed
        .iter()
        .map(|p| p.as_ref().unwrap().host.clone())
        .collect();
    assert_eq!(hosts.iter().filter(|h| *h == "a").count(), 2, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| *h == "b").count(), 1, "{hosts:?}");
    // Each instance at its own host's address; the stage sees the same.
    let mut addresses: Vec<String> = registry
        .instances("books-ms")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.address)
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["10.0.0.1", "10.0.0.1", "10.0.0.2"]);
    for p in placed.into_iter().map(Result::unwrap) {
        let want = if p.host == "a" {
            "10.0.0.1"
        } else {
            "10.0.0.2"
        };
        assert_eq!(p.container.ports[0].host_ip, want);
    }
    let listed = cap.hosts().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[1].name.as_str(), listed[1].address.as_str()),
        ("b", "10.0.0.2")
    );
    assert_eq!(
        members[0].containers().len() + members[1].containers().len(),
        3
    );
}

#[tokio::test]
async fn hostile_host_names_and_ungranted_hosts_are_refused_before_the_engine() {
    let (mut cap, members, _) = fleet_setup(&["a"]);
    let pinned = |host: &str, name: &str| (Some(host.to_string()), run_spec(name, None));
    let results = cap
        .run_placed(vec![
            pinned("b", "books-ms-1"),
            pinned("../a", "books-ms-2"),
            pinned("a b", "books-ms-3"),
            pinned(&"a".repeat(64), "books-ms-4"),
            pinned("a%2f", "books-ms-5"),
            pinned("", "books-ms-6"),
            pinned("c", "books-ms-7"),
        ])
        .await;
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Err(PluginError::Denied(_)) => "denied",
            Err(PluginError::InvalidConfig(_)) => "invalid",
            Err(PluginError::NotFound(_)) => "not-found",
            other => panic!("{other:?}"),
        })
        .collect();
    // "c" is validated and not granted: denied before it is looked up.
    assert_eq!(
        kinds,
        [
            "denied", "invalid", "invalid", "invalid", "invalid", "invalid", "denied"
        ]
    );
    // 33 specs: one refusal, nothing run.
    let many = (0..33).map(|i| (None, run_spec(&format!("books-ms-{i}"), None)));
    assert_eq!(cap.run_placed(many.collect()).await.len(), 1);
    for m in &members {
        assert!(
            m.calls().iter().all(|c| !c.starts_with("create")),
            "{:?}",
            m.calls()
        );
    }
    // Spread places only on the granted host.
    let spread = cap
        .run_placed(vec![
            (None, run_spec("books-ms-blue", None)),
            (None, run_spec("books-ms-green", None)),
        ])
        .await;
    assert!(spread.iter().all(|r| r.as_ref().unwrap().host == "a"));
    assert!(members[1].containers().is_empty());
    // A container on an ungranted host: hidden from the list, refused by name.
    let id = members[1]
        .create(ContainerSpec {
            hosts: vec![],
            ..spec_for_fake("books-ms-other")
        })
        .await
        .unwrap();
    members[1].start(&id).await.unwrap();
    let listed = cap.list(None, None).await.unwrap();
    assert!(
        listed.iter().all(|c| c.name != "books-ms-other"),
        "{listed:?}"
    );
    let Err(PluginError::Denied(msg)) = cap.stop("books-ms-other".into(), 1).await else {
        panic!("acting on an ungranted host's container")
    };
    assert!(msg.contains("--allow-docker-host b"), "{msg}");
    assert!(members[1].containers()[0].running);
}

#[tokio::test]
async fn with_no_host_granted_nothing_is_placed_and_the_fix_is_named() {
    let (mut cap, _, _) = fleet_setup(&[]);
    let Err(PluginError::Denied(msg)) = cap.run(run_spec("books-ms-blue", None)).await else {
        panic!("placed without a host grant")
    };
    assert!(
        msg.contains("no host is granted (the hosts are a, b)"),
        "{msg}"
    );
    assert!(msg.contains("--allow-docker-host a"), "{msg}");
    assert!(cap.hosts().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_single_engine_takes_no_host() {
    let mut s = setup(books_ms(), FakeEngine::new());
    s.engine.add_image("books-ms:v1");
    let results = s
        .cap
        .run_placed(vec![
            (Some("a".into()), run_spec("books-ms-1", None)),
            (None, run_spec("books-ms-2", None)),
        ])
        .await;
    assert!(
        matches!(&results[0], Err(PluginError::InvalidConfig(m)) if m.contains("single engine")),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().unwrap().host, "");
    assert!(s.cap.hosts().await.unwrap().is_empty());
}

fn spec_for_fake(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "books-ms:v1".into(),
        env: vec![],
        command: None,
        labels: HashMap::new(),
        ports: vec![8080],
        publish_ip: "10.0.0.2".into(),
        memory_bytes: 1 << 30,
        pids: 1024,
        nano_cpus: None,
        restart: Restart::No,
        hosts: vec![],
    }
}

#[tokio::test]
async fn stop_all_and_remove_all_check_every_name_and_bound_their_lists() {
    let (mut cap, members, _) = fleet_setup(&["a", "b"]);
    let specs = (1..=3)
        .map(|i| {
            (
                None,
                run_spec(&format!("books-ms-blue-{i}"), Some("books-ms")),
            )
        })
        .collect();
    assert!(cap.run_placed(specs).await.iter().all(Result::is_ok));
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let stopped = cap
        .stop_all(
            names(&[
                "books-ms-blue-1",
                "payments",
                "books-ms-blue-2/../x",
                "books-ms-blue-2",
            ]),
            1,
        )
        .await;
    let kinds: Vec<&str> = stopped
        .iter()
        .map(|r| match r {
            Ok(()) => "ok",
            Err(PluginError::Denied(_)) => "denied",
            Err(PluginError::InvalidConfig(_)) => "invalid",
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(kinds, ["ok", "denied", "invalid", "ok"]);
    let running = |m: &FakeEngine| m.containers().iter().filter(|c| c.running).count();
    assert_eq!(running(&members[0]) + running(&members[1]), 1);
    let many: Vec<String> = (0..33).map(|i| format!("books-ms-{i}")).collect();
    assert_eq!(cap.stop_all(many.clone(), 1).await.len(), 1);
    assert_eq!(cap.remove_all(many, true).await.len(), 1);
    let removed = cap
        .remove_all(
            names(&["books-ms-blue-1", "books-ms-blue-2", "books-ms-blue-3"]),
            true,
        )
        .await;
    assert!(removed.iter().all(Result::is_ok), "{removed:?}");
    assert!(members.iter().all(|m| m.containers().is_empty()));
}
