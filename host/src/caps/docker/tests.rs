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
