//! The `swarm` interface in-process: every hostile value a plugin can pass
//! is refused before the grant check's engine call, with the fix named.

use super::fake::FakeEngine;
use super::*;
use crate::bindings::runner::plugin::swarm::{self as wit, Host as _};
use crate::caps::Grants;
use crate::caps::catalog::ServiceGrant;
use crate::caps::testing::TestHost;

fn setup() -> (DockerCap, Arc<FakeEngine>) {
    let host = TestHost::with_engine(FakeEngine::new());
    let grants = Grants {
        docker: DockerGrant::parse(&["books-ms-*".into()], &["books-ms*".into()], false, false)
            .unwrap(),
        catalog: ServiceGrant::parse(&["books-ms-*".into()]).unwrap(),
        ..Default::default()
    };
    (host.prepare(&grants), host.engine.clone())
}

fn spec(name: &str) -> wit::ServiceSpec {
    wit::ServiceSpec {
        name: name.into(),
        image: "books-ms:v1".into(),
        env: vec![],
        labels: vec![],
        command: None,
        ports: vec![8080],
        replicas: 3,
        health_check: None,
        service: Some("books-ms-blue".into()),
        tags: vec![],
    }
}

fn health(command: Vec<String>, interval_ms: u32) -> Option<wit::HealthCheck> {
    Some(wit::HealthCheck {
        command,
        interval_ms,
        timeout_ms: 1000,
        retries: 3,
        start_period_ms: 0,
    })
}

#[tokio::test]
async fn hostile_service_specs_are_refused_before_the_engine() {
    let (mut cap, engine) = setup();
    let long = format!("books-ms-{}", "a".repeat(60));
    let invalid = [
        // Names Swarm would read otherwise, or not take at all.
        spec("books-ms-blue.1.abc"),
        spec("books-ms-/../x"),
        spec("books-ms-"),
        spec(&long),
        spec("books-ms-\u{0}"),
        // Images Swarm's nodes could take for an image ID.
        wit::ServiceSpec {
            image: "books-ms".into(),
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            replicas: 33,
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            ports: (1..=17).collect(),
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            ports: vec![],
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            labels: vec![("Runner.service".into(), "payments".into())],
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            health_check: health(vec![], 1000),
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            health_check: health(vec!["x".into(); 65], 1000),
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            health_check: health(vec!["/probe".into()], u32::MAX),
            ..spec("books-ms-blue")
        },
    ];
    for bad in invalid {
        let shown = format!("{} {} {}", bad.name.escape_debug(), bad.image, bad.replicas);
        let result = cap.create(bad).await;
        assert!(
            matches!(result, Err(PluginError::InvalidConfig(_))),
            "{shown}: {result:?}"
        );
    }
    let denied = [
        spec("payments"),
        wit::ServiceSpec {
            image: "evil:v1".into(),
            ..spec("books-ms-blue")
        },
        wit::ServiceSpec {
            service: Some("payments".into()),
            ..spec("books-ms-blue")
        },
    ];
    for bad in denied {
        let Err(PluginError::Denied(msg)) = cap.create(bad).await else {
            panic!("granted")
        };
        assert!(msg.contains("grant it with --allow-"), "{msg}");
    }
    assert_eq!(engine.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn every_service_call_checks_its_name_and_bounds_before_the_engine() {
    let (mut cap, engine) = setup();
    let config = |parallelism| wit::UpdateConfig {
        parallelism,
        start_first: true,
        monitor_ms: 1000,
        delay_ms: 1000,
        rollback_on_failure: true,
    };
    let results = [
        cap.inspect("payments".into()).await.map(|_| ()),
        cap.inspect("books-ms-blue.1.x".into()).await.map(|_| ()),
        cap.scale("books-ms-blue".into(), 33).await,
        cap.scale("payments".into(), 1).await,
        cap.remove("../books-ms-blue".into()).await,
        cap.logs("payments".into(), 10).await.map(|_| ()),
        cap.update(
            "books-ms-blue".into(),
            "books-ms:v2".into(),
            vec![],
            config(0),
        )
        .await,
        cap.update("books-ms-blue".into(), "evil:v2".into(), vec![], config(1))
            .await,
        cap.update(
            "books-ms-blue".into(),
            "sha256:abcd".into(),
            vec![],
            config(1),
        )
        .await,
        cap.update(
            "books-ms-blue".into(),
            "books-ms:v2".into(),
            vec![],
            wit::UpdateConfig {
                delay_ms: u32::MAX,
                ..config(1)
            },
        )
        .await,
        wit::Host::register(
            &mut cap,
            "books-ms-blue".into(),
            Some(vec!["t".into(); 129]),
        )
        .await
        .map(|_| ()),
    ];
    for (i, result) in results.into_iter().enumerate() {
        assert!(
            matches!(
                result,
                Err(PluginError::Denied(_) | PluginError::InvalidConfig(_))
            ),
            "call {i}: {result:?}"
        );
    }
    assert_eq!(engine.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn without_a_swarm_the_error_says_where_services_run() {
    let (mut cap, _) = setup();
    let Err(PluginError::Unavailable(msg)) = cap.create(spec("books-ms-blue")).await else {
        panic!("the fake engine is no Swarm")
    };
    assert!(msg.contains("Swarm manager"), "{msg}");
    let Err(PluginError::Unavailable(_)) = cap.nodes().await else {
        panic!("no Swarm, no nodes")
    };
}
